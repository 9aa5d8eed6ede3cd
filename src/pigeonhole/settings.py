"""One settings object for every process (API, dispatcher, CLI).

Every field can come from a ``PIGEONHOLE_<NAME>`` environment variable. The embedded defaults
need no other server: a SQLite file and a blob directory under ``data_dir``. Derived values
(database URL, blob URL, secret key) are resolved here so that no other module guesses them.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pigeonhole.machine import available_cores, memory_bytes

# Values people leave in config files by mistake; never accepted as a production secret.
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "change_me", "changethis", "secret", "dev", "development",
     "placeholder", "please-change", "xxx", "test"}
)
MIN_SECRET_LENGTH = 32
SECRET_FILE_NAME = "secret_key"
# The automatic number of API processes (``resolved_api_workers``).
API_CORES_PER_WORKER = 1  # measured on 2 cores: 2 processes answer 386 predictions/s, 1 process 300
API_WORKER_MEMORY_BYTES = 2 * 1024**3  # one process with a few loaded models, and room for the rest
MAX_AUTO_API_WORKERS = 8
LANES_PER_CORE_SHARE = 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIGEONHOLE_", extra="ignore", frozen=False)

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite under data_dir")
    blob_url: str | None = Field(default=None, description="fsspec URL of the blob store; default: data_dir/blobs")
    weights_dir: Path | None = Field(default=None, description="pretrained weights and their weights.json")
    builtin_weights: bool = Field(default=True, description="use the extractors that ship with the product and "
                                  "those fetched from their publishers, beside weights.json's own")
    weights_fetch: bool | None = Field(default=None, description="fetch the recommended extractors from their "
                                       "publishers before a training when they are missing (default: on in "
                                       "development, the embedded install; off in production)")
    cache_dir: Path | None = Field(default=None, description="node-local cache of pixels and features")
    secret_key: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int | None = Field(default=None, ge=1, le=64, description="API processes `serve` runs on its "
                                    "port (default: chosen from the cores and memory, see resolved_api_workers; "
                                    "each holds its own loaded models)")
    public_url: str | None = None
    # HTTPS served by `pigeonhole serve` itself (both or neither); behind a reverse proxy, leave them unset.
    tls_certfile: Path | None = Field(default=None, description="PEM certificate (chain) for HTTPS")
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of that certificate")
    trusted_proxies: str = Field(default="127.0.0.1", description="comma-separated IPs or networks (CIDR) of "
                                 "reverse proxies whose X-Forwarded-For/-Proto headers are believed; '*' trusts "
                                 "every peer (only when nothing but the proxy can reach this server)")

    signup_open: bool = True
    token_cache_ttl_s: float = Field(default=5.0, ge=0, description="how long an API process remembers who a "
                                     "token belongs to (a revocation reaches other API replicas within this; 0: "
                                     "look every token up on every call)")
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

    # Models. Head-only class additions can fall behind a retrain when the extractor was fine-tuned on
    # the original classes; above this gap (validation recall, in points) a retrain is suggested.
    drift_retrain_gap_points: float = Field(default=2.0, ge=0, description="suggest (or, with a model's "
                                            "auto_retrain, start) a retrain when classes added without "
                                            "retraining are recognised this many points less well")

    # Remote image imports (dataset imports and predictions by URL).
    fetch_allow_private: bool = Field(default=False, description="allow URLs on private, loopback or "
                                      "link-local addresses (off: protects internal services from SSRF)")
    fetch_timeout_s: float = 20.0
    fetch_max_items: int = 10_000

    # Predictions.
    predict_max_images: int = 64
    predict_max_batch: int = Field(default=32, ge=1, description="most images in one inference call; requests "
                                   "that wait together are batched up to this")
    predict_lanes: int | None = Field(default=None, ge=1, le=256, description="inference calls one API process "
                                      "runs at once (default: its share of the cores)")
    predict_max_in_flight: int = Field(default=64, ge=1, description="prediction calls an API process takes on "
                                       "at once (being read, decoded, waiting or inferred); past this a call is "
                                       "answered 503 with Retry-After at once instead of queueing")
    serving_cache_bytes: int = 2 * 1024**3
    serving_threads: int | None = Field(default=None, ge=1, le=256, description="ONNX Runtime threads per "
                                        "inference call (default 1: the lanes share out the cores)")
    # Generous defaults: above what this service answers on a small machine, so they only stop a runaway client.
    predict_rate_per_s: float = Field(default=1000.0, description="prediction calls per second per API token "
                                      "(or per user for the web app); 0 turns the limit off")
    predict_burst: int = 2000
    predict_monthly_images_per_user: int = Field(default=0, description="images a user may classify per month "
                                                 "(0: no limit)")
    # Where predictions run: "inline" in each API process, or "ray": a Ray Serve application that the
    # dispatcher deploys on the Ray cluster (model multiplexing, autoscaling); the API still authenticates,
    # authorises, decodes, meters and applies thresholds, and forwards only the decoded pixels.
    predict_mode: Literal["inline", "ray"] = Field(default="inline", description="'inline' (the API runs the "
                                                   "models) or 'ray' (a Ray Serve deployment on the workers)")
    serve_host: str = Field(default="127.0.0.1", description="address the Ray Serve HTTP proxy binds to (ray mode)")
    serve_port: int = Field(default=8001, description="port of the Ray Serve HTTP proxy (ray mode)")
    serve_url: str | None = Field(default=None, description="where API processes reach Ray Serve; default: "
                                  "http://<serve_host>:<serve_port>")
    serve_max_replicas: int = Field(default=2, ge=1, description="most prediction replicas Ray Serve scales to")
    serve_models_per_replica: int = Field(default=3, ge=1, description="model versions one replica keeps loaded "
                                          "(least recently used ones are unloaded)")
    serve_replica_cpus: float = Field(default=0.5, ge=0, description="CPUs Ray reserves for each replica")
    serve_timeout_s: float = Field(default=30.0, gt=0, description="longest wait for Ray Serve's answer")

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
        for name in ("weights_dir", "cache_dir", "tls_certfile", "tls_keyfile"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.expanduser().resolve())
        self.trusted_proxies = ",".join(parse_trusted_proxies(self.trusted_proxies))
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
    def resolved_serve_url(self) -> str:
        """A wildcard bind address is reached on this machine's loopback."""
        host = "127.0.0.1" if self.serve_host in ("0.0.0.0", "::", "") else self.serve_host
        host = f"[{host}]" if ":" in host else host
        return (self.serve_url or f"http://{host}:{self.serve_port}").rstrip("/")

    @property
    def resolved_weights_dir(self) -> Path:
        return self.weights_dir or self.data_dir / "weights"

    @property
    def resolved_weights_fetch(self) -> bool:
        return self.weights_fetch if self.weights_fetch is not None else self.env == "development"

    @property
    def resolved_api_workers(self) -> int:
        """API processes: as set, or one per API_CORES_PER_WORKER cores that the memory can hold.

        Predictions are bound by Python's one-core-per-process lock around the parsing and bookkeeping of each
        request, while ONNX Runtime (which releases it) runs on the lanes; see ``benchmarks/RESULTS.md``
        ("Predictions") for the measurements behind the rule.
        """
        if self.api_workers is not None:
            return self.api_workers
        by_cores = available_cores() // API_CORES_PER_WORKER
        by_memory = int(memory_bytes() // API_WORKER_MEMORY_BYTES)
        return max(1, min(by_cores, by_memory, MAX_AUTO_API_WORKERS))

    @property
    def resolved_predict_lanes(self) -> int:
        """Inference calls at once per API process: twice the process's share of the cores, one ONNX Runtime
        thread each (measured here: one thread runs a single image in 2.0 ms, two threads in 3.5 ms). Twice,
        because the kernel does not spread connections evenly: with one lane per process, two clients sending
        32-image batches that landed on the same process got 285 images/s, with two lanes 407."""
        if self.predict_lanes is not None:
            return self.predict_lanes
        share = available_cores() // (self.resolved_api_workers * self.resolved_serving_threads)
        return max(1, LANES_PER_CORE_SHARE * share)

    @property
    def resolved_serving_threads(self) -> int:
        return self.serving_threads or 1

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


def parse_trusted_proxies(value: str) -> list[str]:
    """The entries of PIGEONHOLE_TRUSTED_PROXIES, each checked to be an IP, a network or '*'.

    A typo must fail loudly: uvicorn would silently treat it as a name no peer ever has, and
    forwarded headers would then be ignored (or, with a wrong network, believed from the wrong peers).
    """
    entries = [item.strip() for item in value.split(",") if item.strip()]
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"PIGEONHOLE_TRUSTED_PROXIES: '{entry}' is not an IP address or a network "
                             "like 10.0.0.0/8 (separate several with commas, or use '*' to trust every peer)."
                             ) from None
    return entries


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags, tests) on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
