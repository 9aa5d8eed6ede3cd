"""One settings object for every process (API, dispatcher, CLI).

Every field can come from a ``PIGEONHOLE_<NAME>`` environment variable. The embedded defaults
need no other server: a SQLite file and a blob directory under ``data_dir``. Derived values
(database URL, blob URL, secret key) are resolved here so that no other module guesses them.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values people leave in config files by mistake; never accepted as a production secret.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "change_me", "changethis", "secret", "dev", "development",
     "placeholder", "please-change", "xxx", "test"}
)
MIN_SECRET_LENGTH = 32
SECRET_FILE_NAME = "secret_key"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIGEONHOLE_", extra="ignore", frozen=False)

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite under data_dir")
    blob_url: str | None = Field(default=None, description="fsspec URL of the blob store; default: data_dir/blobs")
    weights_dir: Path | None = Field(default=None, description="pretrained weights and their weights.json")
    cache_dir: Path | None = Field(default=None, description="node-local cache of pixels and features")
    secret_key: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None

    signup_open: bool = True
    session_ttl_s: int = 14 * 24 * 3600
    cookie_secure: Literal["auto", "always", "never"] = "auto"
    login_max_failures_per_account: int = 5
    login_max_failures_per_address: int = 30
    login_failure_window_s: int = 15 * 60

    argon2_time_cost: int = 3
    argon2_memory_kib: int = 64 * 1024
    argon2_parallelism: int = 2

    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    quota_bytes_per_user: int = 50 * 1024**3
    quota_images_per_user: int = 1_000_000
    cache_max_bytes: int = 10 * 1024**3  # node-local derived data: thumbnails, pixels, features
    # Unreferenced blobs younger than this are kept: longer than any upload takes, so a blob that an
    # upload is about to reference is never swept from under it.
    blob_sweep_grace_s: float = 3600.0

    # Remote image imports (dataset imports and predictions by URL).
    fetch_allow_private: bool = Field(default=False, description="allow URLs on private, loopback or "
                                      "link-local addresses (off: protects internal services from SSRF)")
    fetch_timeout_s: float = 20.0
    fetch_max_items: int = 10_000

    # Predictions.
    predict_max_images: int = 64
    predict_max_batch: int = 32
    predict_batch_wait_s: float = 0.005
    serving_cache_bytes: int = 2 * 1024**3
    serving_threads: int | None = None
    # Generous defaults: a client with 32 requests in flight at a time stays well below them.
    predict_rate_per_s: float = Field(default=200.0, description="prediction calls per second per API token "
                                      "(or per user for the web app); 0 turns the limit off")
    predict_burst: int = 400
    predict_monthly_images_per_user: int = Field(default=0, description="images a user may classify per month "
                                                 "(0: no limit)")

    max_body_bytes: int = 32 * 1024 * 1024
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    usage_flush_interval_s: float = 1.0
    db_pool_size: int = 10

    # Compute (the dispatcher and its Ray cluster).
    ray_address: str | None = Field(default=None, description="address of an existing Ray cluster (ray start "
                                    "--head); default: the dispatcher starts a local Ray runtime")
    ray_num_cpus: int | None = Field(default=None, description="CPUs of the local Ray runtime (default: all)")
    jobs_max_running_per_user: int = 2
    jobs_max_queued_per_user: int = 100
    job_max_attempts: int = Field(default=3, description="tries of a job whose node or worker died")
    affinity_wait_s: float = Field(default=30.0, description="how long a job waits for the busy node that "
                                   "caches its data before it runs elsewhere (and rebuilds the cache there)")
    dispatcher_poll_interval_s: float = 0.05
    dispatcher_lease_ttl_s: float = 15.0
    node_sync_interval_s: float = 2.0
    cancel_grace_s: float = 5.0
    gpu_class_resource: str = Field(default="gpu_node", description="custom Ray resource that marks a GPU-class "
                                    "node (nodes with real GPUs count too)")

    @model_validator(mode="after")
    def _absolute_paths_and_safe_secret(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        for name in ("weights_dir", "cache_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.expanduser().resolve())
        if self.env == "production":
            key = self.secret_key.get_secret_value() if self.secret_key else ""
            if key.strip().lower() in PLACEHOLDER_SECRETS or len(key) < MIN_SECRET_LENGTH:
                raise ValueError(
                    "PIGEONHOLE_SECRET_KEY must be set to a random value of at least "
                    f"{MIN_SECRET_LENGTH} characters in production (for example: "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`)."
                )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'pigeonhole.db'}"

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or str(self.data_dir / "blobs")

    @property
    def resolved_weights_dir(self) -> Path:
        return self.weights_dir or self.data_dir / "weights"

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    @cached_property
    def secret(self) -> bytes:
        """The key for HMACs of tokens and sessions.

        In development with no key configured, one is generated on first start and persisted
        (mode 0600) under the data dir, so restarts keep existing tokens valid.
        """
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / SECRET_FILE_NAME
        if path.exists():
            return path.read_text().strip().encode()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        try:
            os.link(tmp, path)  # never overwrite a key another process wrote first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text().strip().encode()


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags, tests) on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
