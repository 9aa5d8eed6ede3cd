"""Fetching weights from a publisher (a local HTTP server made from ../shared/weights) and importing the operator's."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from pigeonhole.learn.weights import (
    WeightsCatalog,
    WeightsDownloadError,
    WeightsEntry,
    WeightsError,
    WeightsIntegrityError,
    sha256_file,
)
from pigeonhole.learn.weights_fetch import fetch, import_dir, import_onnx, prefetch

MOBILENET = "mobilenet_v2-imagenet-dequant.safetensors"


class Publisher:
    """Serves one file with HTTP ranges; ``cut_after`` bytes: the next answer stops there (a dropped connection)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.cut_after: int | None = None
        self.ranges: list[str | None] = []

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                asked = self.headers.get("Range")
                publisher.ranges.append(asked)
                start = int(asked.split("=")[1].rstrip("-")) if asked else 0
                body = publisher.body[start:]
                self.send_response(206 if asked else 200)
                if asked:
                    self.send_header("Content-Range", f"bytes {start}-{len(publisher.body) - 1}/{len(publisher.body)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut, publisher.cut_after = publisher.cut_after, None
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body[:cut] if cut is not None else body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


@pytest.fixture()
def publisher(shared_weights: Path) -> Publisher:
    return Publisher((shared_weights / MOBILENET).read_bytes())


def _catalog(root: Path, url: str, sha256: str) -> WeightsCatalog:
    root.mkdir(parents=True, exist_ok=True)
    entry = {"name": "mnv2", "file": "mnv2.safetensors", "sha256": sha256, "architecture": "mobilenet_v2",
             "url": f"{url}/mobilenet_v2.safetensors"}
    (root / "weights.json").write_text(json.dumps({"weights": [entry]}))
    return WeightsCatalog(root, builtin=False)


def _visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_fetch_verifies_and_places_the_file_with_progress(tmp_path: Path, publisher: Publisher,
                                                          shared_weights: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    with publisher.serve() as url:
        catalog = _catalog(tmp_path / "w", url, sha256_file(shared_weights / MOBILENET))
        path = fetch(catalog, "mnv2", progress=lambda got, total: seen.append((got, total)))
    assert path.read_bytes() == publisher.body
    assert seen[-1] == (len(publisher.body), len(publisher.body)) and len(seen) > 1
    assert _visible(tmp_path / "w") == ["mnv2.safetensors", "weights.json"]
    assert catalog.load_state_dict("mnv2")["features.0.0.weight"].shape == (32, 3, 3, 3)


def test_a_truncated_download_is_kept_and_the_next_fetch_resumes(tmp_path: Path, publisher: Publisher,
                                                                 shared_weights: Path) -> None:
    with publisher.serve() as url:
        catalog = _catalog(tmp_path / "w", url, sha256_file(shared_weights / MOBILENET))
        publisher.cut_after = 1_000_000
        with pytest.raises(WeightsDownloadError, match="stopped after 1,000,000 of .*resumes"):
            fetch(catalog, "mnv2")
        assert not catalog.is_present("mnv2")  # nothing under the real name
        assert (tmp_path / "w" / "mnv2.safetensors.part").stat().st_size == 1_000_000
        fetch(catalog, "mnv2")
    assert publisher.ranges == [None, "bytes=1000000-"]
    assert (tmp_path / "w" / "mnv2.safetensors").read_bytes() == publisher.body
    assert _visible(tmp_path / "w") == ["mnv2.safetensors", "weights.json"]


def test_a_download_with_the_wrong_hash_is_discarded(tmp_path: Path, publisher: Publisher) -> None:
    with publisher.serve() as url:
        catalog = _catalog(tmp_path / "w", url, "ab" * 32)
        with pytest.raises(WeightsIntegrityError, match="discarded"):
            fetch(catalog, "mnv2")
        assert _visible(tmp_path / "w") == ["weights.json"]
    prefix = WeightsEntry.from_json({"name": "x", "file": "x-7ebf99e0.pth", "sha256": "7ebf99e0", "architecture": "a"})
    assert not prefix.full_hash
    with pytest.raises(WeightsError, match="hex digits"):
        WeightsEntry.from_json({"name": "x", "file": "x.pth", "sha256": "7ebf", "architecture": "a"})


def test_a_hash_prefix_entry_accepts_only_files_starting_with_it(tmp_path: Path, publisher: Publisher,
                                                                 shared_weights: Path) -> None:
    digest = sha256_file(shared_weights / MOBILENET)
    with publisher.serve() as url:
        assert fetch(_catalog(tmp_path / "a", url, digest[:8]), "mnv2").is_file()
        with pytest.raises(WeightsIntegrityError):
            fetch(_catalog(tmp_path / "b", url, "0" + digest[1:8]), "mnv2")


def test_prefetch_never_raises_and_says_why(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path / "w", "http://127.0.0.1:9", "ab" * 32)  # port 9 refuses at once
    outcome = prefetch(catalog, ["mnv2"])
    assert "downloading" in outcome["mnv2"] and "pigeonhole weights import" in outcome["mnv2"]


def test_the_packaged_extractor_is_present_on_every_install(tmp_path: Path) -> None:
    catalog = WeightsCatalog(tmp_path / "empty")
    entry = catalog.get("efficientnet_lite0-imagenet")
    assert entry.origin == "package" and catalog.is_present(entry.name)
    assert not catalog.is_present("dinov2_vits14") and "weights fetch dinov2_vits14" in catalog.missing_reason(
        catalog.get("dinov2_vits14"))
    state = catalog.load_state_dict(entry.name)  # sha256-checked
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)


def test_import_dir_copies_and_registers_a_weights_folder(tmp_path: Path, shared_weights: Path) -> None:
    catalog = WeightsCatalog(tmp_path / "w")
    imported = import_dir(catalog, shared_weights)
    assert {e.name for e in imported} == {"mobilenet_v2-imagenet", "squeezenet1_0-imagenet"}
    again = WeightsCatalog(tmp_path / "w")
    assert again.is_present("mobilenet_v2-imagenet") and again.get("mobilenet_v2-imagenet").origin == "operator"
    assert again.is_present("efficientnet_lite0-imagenet")  # built-ins stay
    # a folder of bare files (say torchvision's downloads) is matched by file name against the catalog
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(shared_weights / MOBILENET, loose / MOBILENET)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(WeightsError, match="no weights.json and no file"):
        import_dir(WeightsCatalog(tmp_path / "v"), tmp_path / "nothing")
    assert [e.name for e in import_dir(again, loose)] == ["mobilenet_v2-imagenet"]


def test_import_onnx_checks_the_graph_and_records_its_contract(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    path = tmp_path / "mine.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(path), input_names=["image"], output_names=["vec"],
                      dynamic_axes={"image": {0: "n"}, "vec": {0: "n"}}, opset_version=17, dynamo=False)
    catalog = WeightsCatalog(tmp_path / "w")
    entry = import_onnx(catalog, path, name="mine", size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert entry.feature_dim == 8 and entry.format == "onnx" and entry.extra["mflops"] > 0.1
    again = WeightsCatalog(tmp_path / "w")
    assert again.is_present("mine") and again.get("mine").preprocessing["size"] == 64
    with pytest.raises(WeightsError, match="does not run"):
        import_onnx(catalog, path, name="wrong", size=64, color="L", mean=(0.5,), std=(0.25,))
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(WeightsError, match="not a valid ONNX file"):
        import_onnx(catalog, tmp_path / "bad.onnx", name="bad", size=64)
    with pytest.raises(WeightsError, match="letters, digits"):
        import_onnx(catalog, path, name="../evil", size=64)


def test_prefetch_skips_an_architecture_the_operator_already_has(tmp_path: Path, shared_weights: Path) -> None:
    import_dir(WeightsCatalog(tmp_path / "w"), shared_weights)  # the operator's MobileNetV2
    listed = json.loads((tmp_path / "w" / "weights.json").read_text())
    # the other recommended entry points at a closed port on this machine: a test never reaches a publisher
    dino = {**WeightsCatalog(None).get("dinov2_vits14").to_json(), "url": "http://127.0.0.1:9/dinov2.pth"}
    (tmp_path / "w" / "weights.json").write_text(json.dumps({"weights": [*listed["weights"], dino]}))
    catalog = WeightsCatalog(tmp_path / "w", download_timeout_s=1)
    outcome = prefetch(catalog, None)
    assert outcome["mobilenet_v2-imagenet1k_v2"] == "present"  # torchvision's is not fetched on top
    assert "downloading" in outcome["dinov2_vits14"]  # no network: said, not raised
