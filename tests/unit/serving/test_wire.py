"""The array exchange between the API and Ray Serve, and the contract the API reads without a session."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pigeonhole.serving import wire
from pigeonhole.serving.model import ModelContract, load_model, read_contract
from tests.model_factories import dark_bright_onnx, dark_bright_version


@pytest.mark.parametrize("array", [np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5),
                                   np.random.default_rng(0).random((7, 3), dtype=np.float32)])
def test_arrays_cross_bit_for_bit(array: np.ndarray) -> None:
    body, headers = wire.encode(array)
    back = wire.decode(body, headers)
    assert back.dtype == array.dtype and back.shape == array.shape and back.tobytes() == array.tobytes()


@pytest.mark.parametrize("headers", [
    {wire.SHAPE_HEADER: "2,2", wire.DTYPE_HEADER: "object"},  # never unpickled
    {wire.SHAPE_HEADER: "2,3", wire.DTYPE_HEADER: "uint8"},  # length disagrees
    {wire.SHAPE_HEADER: "two", wire.DTYPE_HEADER: "uint8"},
    {wire.DTYPE_HEADER: "uint8"},
    {wire.SHAPE_HEADER: "1,1,1,1,4", wire.DTYPE_HEADER: "uint8"},
])
def test_malformed_arrays_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        wire.decode(b"\x00" * 4, headers)


@pytest.mark.parametrize("growable", [False, True])
def test_the_contract_read_from_metadata_equals_the_loaded_models(growable: bool) -> None:
    onnx_bytes = dark_bright_version()[0] if growable else dark_bright_onnx()
    contract = read_contract(onnx_bytes)
    model = load_model(onnx_bytes, threads=1)
    names = [f.name for f in dataclasses.fields(ModelContract)]
    assert {n: getattr(contract, n) for n in names} == {n: getattr(model, n) for n in names}
