"""Weights catalog: integrity checks, missing files, atomic downloads."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pigeonhole.learn.weights import (
    WeightsCatalog,
    WeightsDownloadError,
    WeightsError,
    WeightsIntegrityError,
    WeightsNotFoundError,
)
from pigeonhole.learn.weights_fetch import fetch


def _write_catalog(root: Path, **entry: object) -> None:
    base = {"name": "tiny", "file": "tiny.safetensors", "architecture": "test.tiny", "format": "safetensors"}
    (root / "weights.json").write_text(json.dumps({"weights": [{**base, **entry}]}))


def _tiny_file(path: Path) -> str:
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shared_catalog_lists_real_entries(catalog: WeightsCatalog) -> None:
    names = {e.name for e in catalog}
    assert {"mobilenet_v2-imagenet", "squeezenet1_0-imagenet"} <= names
    entry = catalog.get("mobilenet_v2-imagenet")
    assert entry.arch_name == "mobilenet_v2" and entry.feature_dim == 1280
    assert catalog.find("squeezenet1_0") is not None
    assert catalog.is_present("mobilenet_v2-imagenet")


def test_loads_when_sha_matches(tmp_path: Path) -> None:
    sha = _tiny_file(tmp_path / "tiny.safetensors")
    _write_catalog(tmp_path, sha256=sha)
    state = WeightsCatalog(tmp_path).load_state_dict("tiny")
    assert torch.equal(state["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_sha_mismatch_is_refused(tmp_path: Path) -> None:
    _tiny_file(tmp_path / "tiny.safetensors")
    _write_catalog(tmp_path, sha256="0" * 64)
    with pytest.raises(WeightsIntegrityError, match="refusing"):
        WeightsCatalog(tmp_path).load_state_dict("tiny")


def test_file_changed_after_verification_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    _write_catalog(tmp_path, sha256=_tiny_file(path))
    catalog = WeightsCatalog(tmp_path)
    catalog.load_state_dict("tiny")
    save_file({"w": torch.zeros(2, 3)}, str(path))
    with pytest.raises(WeightsIntegrityError):
        catalog.load_state_dict("tiny")


def test_missing_file_without_url_is_a_clear_error(tmp_path: Path) -> None:
    _write_catalog(tmp_path, sha256="0" * 64, url=None)
    with pytest.raises(WeightsNotFoundError, match="tiny.safetensors is missing.*no download URL"):
        WeightsCatalog(tmp_path).path("tiny")


def test_unknown_name_and_malformed_catalog(tmp_path: Path) -> None:
    assert len(WeightsCatalog(tmp_path / "absent", builtin=False)) == 0
    with pytest.raises(WeightsNotFoundError, match="no weights named"):
        WeightsCatalog(tmp_path).get("nope")
    (tmp_path / "weights.json").write_text("{not json")
    with pytest.raises(WeightsError):
        WeightsCatalog(tmp_path)


def test_download_failure_without_network(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback refuses the connection at once: same path as no network.
    _write_catalog(tmp_path, sha256="0" * 64, url="http://127.0.0.1:9/tiny.safetensors")
    with pytest.raises(WeightsDownloadError, match="downloading"):
        fetch(WeightsCatalog(tmp_path, download_timeout_s=5), "tiny")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["weights.json"]


@pytest.fixture()
def file_server(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_into_dir_then_verify(tmp_path: Path, file_server) -> None:
    served, base = file_server
    sha = _tiny_file(served / "tiny.safetensors")
    root = tmp_path / "weights"
    root.mkdir()
    _write_catalog(root, sha256=sha, url=f"{base}/tiny.safetensors")
    catalog = WeightsCatalog(root)
    with pytest.raises(WeightsNotFoundError, match="weights fetch tiny"):  # loading never downloads
        catalog.load_state_dict("tiny")
    assert not catalog.is_present("tiny")
    fetch(catalog, "tiny")
    assert catalog.load_state_dict("tiny")["w"].shape == (2, 3)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["tiny.safetensors", "weights.json"]


def test_download_with_wrong_sha_is_discarded(tmp_path: Path, file_server) -> None:
    served, base = file_server
    _tiny_file(served / "tiny.safetensors")
    root = tmp_path / "weights"
    root.mkdir()
    _write_catalog(root, sha256="1" * 64, url=f"{base}/tiny.safetensors")
    with pytest.raises(WeightsIntegrityError, match="discarded"):
        fetch(WeightsCatalog(root), "tiny")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["weights.json"]
