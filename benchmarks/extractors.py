"""Feature extraction speed of every pretrained extractor present, in ONNX Runtime with 1 and 2 threads.

The exported graph is the one the search runs (uint8 pixels in, normalisation inside), at the extractor's usual
size; speed is images per second at batch 32 and the median latency of one image.

    .venv/bin/python benchmarks/extractors.py [--weights ../shared/weights] [--fresh]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import WEIGHTS  # noqa: E402

from pigeonhole.learn.backbones import PixelExtractor, available_specs, build_extractor  # noqa: E402
from pigeonhole.learn.export import INPUT_NAME, export_onnx, open_session  # noqa: E402
from pigeonhole.learn.weights import WeightsCatalog  # noqa: E402


def speed(model: bytes, size: int, threads: int) -> tuple[float, float]:
    session = open_session(model, intra_op_threads=threads)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    batch = rng.integers(0, 256, (32, 3, size, size), dtype=np.uint8)
    session.run(None, {INPUT_NAME: one})
    times = []
    for _ in range(15):
        t = time.perf_counter()
        session.run(None, {INPUT_NAME: one})
        times.append(time.perf_counter() - t)
    session.run(None, {INPUT_NAME: batch})
    t, runs = time.perf_counter(), 0
    while runs < 2 or time.perf_counter() - t < 3.0:
        session.run(None, {INPUT_NAME: batch})
        runs += 1
    return 32 * runs / (time.perf_counter() - t), float(np.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--fresh", action="store_true", help="only what ships with the product")
    args = parser.parse_args()
    catalog = WeightsCatalog(None if args.fresh else args.weights)
    print(f"{'extractor':22} {'size':>4} {'MFLOPs':>7}  {'1 thread img/s':>14} {'ms/img':>7}  {'2 threads img/s':>15} "
          f"{'ms/img':>7}")
    for spec in available_specs(catalog):
        if not spec.pretrained:
            continue
        size = 224 if 224 in spec.sizes else spec.sizes[-1]
        spec = spec.at_size(size)
        model = export_onnx(PixelExtractor(spec, build_extractor(spec, catalog)), spec.input_spec())
        (one_rate, one_ms), (two_rate, two_ms) = speed(model, size, 1), speed(model, size, 2)
        print(f"extractors: {spec.id:22} {size:>4} {spec.mflops:>7.0f}  {one_rate:>14.0f} {one_ms:>7.1f}  "
              f"{two_rate:>15.0f} {two_ms:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
