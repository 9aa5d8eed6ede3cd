"""ONNX export: same numbers as eager PyTorch, dynamic batch, self-describing file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pigeonhole.learn.backbones import PixelExtractor, build_architecture, build_extractor, get_spec
from pigeonhole.learn.export import INPUT_NAME, export_onnx, open_session, read_input_spec, write_atomic
from pigeonhole.learn.preprocess import images_to_batch


@pytest.mark.parametrize("extractor_id", ["mobilenet_v2", "squeezenet1_0"])
def test_onnx_matches_eager_on_real_images(extractor_id: str, catalog, flowers, tmp_path) -> None:
    spec = get_spec(extractor_id)
    model = PixelExtractor(spec, build_extractor(spec, catalog))
    path = write_atomic(export_onnx(model, spec.input_spec()), tmp_path / "extractor.onnx")
    session = open_session(path, intra_op_threads=2)
    assert session.get_inputs()[0].type == "tensor(uint8)"
    pixels = images_to_batch([b for b, _ in flowers.test[:5]], spec.input_size)
    with torch.no_grad():
        eager = model(torch.from_numpy(pixels)).numpy()
    for batch in (pixels[:1], pixels):  # dynamic batch axis
        got = session.run(None, {INPUT_NAME: batch})[0]
        np.testing.assert_allclose(got, eager[: len(batch)], rtol=1e-3, atol=1e-3 * np.abs(eager).max())
    assert read_input_spec(path) == spec.input_spec().as_dict()


def test_small_cnn_exports_grey_input(mnist) -> None:
    images, _ = mnist
    spec = get_spec("smallcnn_l")
    torch.manual_seed(0)
    model = PixelExtractor(spec, build_architecture(spec))
    exported = export_onnx(model, spec.input_spec())
    session = open_session(exported)
    pixels = images[:7, None]
    with torch.no_grad():
        eager = model(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(session.run(None, {INPUT_NAME: pixels})[0], eager, rtol=1e-4, atol=1e-5)
    assert read_input_spec(exported)["color"] == "L"
