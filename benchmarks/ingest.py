"""Ingest throughput and memory: upload a zip of N small images through the HTTP API.

Prints images/second and the server's peak memory for two archive sizes; with streaming, peak
memory must not grow with the archive size.

    .venv/bin/python benchmarks/ingest.py [--images 10000] [--small 2000]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import start_server  # noqa: E402


def make_archive(path: Path, images: int, classes: int = 10, side: int = 32) -> None:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(images):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, "PNG")
            archive.writestr(f"digits/class{i % classes}/{i:06d}.png", out.getvalue())


def run(images: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "images.zip"
        make_archive(archive, images)
        size_mib = archive.stat().st_size / 2**20
        server = start_server()
        try:
            with server.client() as client:
                dataset = client.post("/api/v1/datasets", json={"name": f"ingest {images}"}).json()["id"]
                started = time.perf_counter()
                with archive.open("rb") as f:
                    response = client.post(f"/api/v1/datasets/{dataset}/uploads",
                                           files={"files": ("images.zip", f, "application/zip")})
                elapsed = time.perf_counter() - started
                body = response.json()
                assert response.status_code == 201 and body["accepted"] == images, body
            return images / elapsed, server.peak_rss_mib(), size_mib
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2_000)
    args = parser.parse_args()
    results = {}
    for n in (args.small, args.images):
        rate, peak, size = run(n)
        results[n] = peak
        print(f"ingest: {n:>6} images ({size:.1f} MiB zip): {rate:7.1f} images/s, server peak RSS {peak:.0f} MiB")
    growth = results[args.images] - results[args.small]
    print(f"ingest: peak memory growth from {args.small} to {args.images} images: {growth:+.0f} MiB")


if __name__ == "__main__":
    main()
