"""Where the CLI keeps the server URL and API token: the user's config dir, readable by the user only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pigeonhole"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


@dataclass
class Credentials:
    url: str
    token: str


def save(credentials: Credentials) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": credentials.url, "token": credentials.token}, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def load() -> Credentials | None:
    """Environment (PIGEONHOLE_URL, PIGEONHOLE_TOKEN) first, then the saved file."""
    url, token = os.environ.get("PIGEONHOLE_URL"), os.environ.get("PIGEONHOLE_TOKEN")
    saved: dict[str, str] = {}
    path = credentials_path()
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
    url, token = url or saved.get("url"), token or saved.get("token")
    return Credentials(url=url, token=token) if url and token else None
