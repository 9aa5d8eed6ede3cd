"""How the API and the Ray Serve deployment exchange arrays: raw bytes plus shape and dtype headers.

Plain bytes rather than JSON or pickles: a batch of pixels crosses as-is (no base64, no float text
rounding, so probabilities come back bit for bit) and nothing executable is ever deserialised.
This module must not import Ray: the API process uses it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

APP_NAME = "pigeonhole-predict"
ROUTE_PREFIX = "/predict"
# Ray Serve routes on this header to a replica that already holds the model (model multiplexing).
MODEL_HEADER = "serve_multiplexed_model_id"
SHAPE_HEADER = "x-pigeonhole-shape"
DTYPE_HEADER = "x-pigeonhole-dtype"
DTYPES = frozenset({"uint8", "float32", "float64"})
MAX_DIMS = 4


def encode(array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    array = np.ascontiguousarray(array)
    if array.dtype.name not in DTYPES:
        raise ValueError(f"arrays of {array.dtype.name} are not exchanged")
    headers = {SHAPE_HEADER: ",".join(str(n) for n in array.shape), DTYPE_HEADER: array.dtype.name,
               "content-type": "application/octet-stream"}
    return array.tobytes(), headers


def decode(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    """The array described by the headers; ValueError when they and the body disagree."""
    dtype = headers.get(DTYPE_HEADER, "")
    if dtype not in DTYPES:
        raise ValueError(f"unknown or missing dtype {dtype!r}")
    try:
        shape = tuple(int(n) for n in headers.get(SHAPE_HEADER, "").split(","))
    except ValueError:
        raise ValueError("missing or malformed shape") from None
    if not 1 <= len(shape) <= MAX_DIMS or any(n < 0 for n in shape):
        raise ValueError(f"unexpected shape {shape}")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(body) != expected:
        raise ValueError(f"{len(body)} bytes for shape {shape} of {dtype} (expected {expected})")
    return np.frombuffer(body, dtype=dtype).reshape(shape)
