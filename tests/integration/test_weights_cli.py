"""``pigeonhole weights list | fetch | import`` as an operator runs them: real subprocesses on a fresh data dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

from tests.conftest import SHARED_DIR
from tests.integration.live_server import PIGEONHOLE


def _run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEONHOLE_")}
    env.update(PIGEONHOLE_DATA_DIR=str(data_dir), PIGEONHOLE_WEIGHTS_FETCH="false")
    return subprocess.run([str(PIGEONHOLE), "weights", *args], capture_output=True, text=True, timeout=120, env=env)


def test_an_operator_lists_imports_and_is_told_what_fails(tmp_path: Path) -> None:
    listed = _run(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert "present  efficientnet_lite0-imagenet" in listed.stdout
    assert "pigeonhole weights fetch dinov2_vits14" in listed.stdout

    imported = _run(tmp_path, "import", str(SHARED_DIR / "weights"))
    assert imported.returncode == 0 and "imported mobilenet_v2-imagenet" in imported.stdout
    rows = {r["name"]: r for r in json.loads(_run(tmp_path, "list", "--json").stdout)["weights"]}
    assert rows["mobilenet_v2-imagenet"]["present"] and rows["mobilenet_v2-imagenet"]["origin"] == "operator"
    assert (tmp_path / "weights" / "weights.json").is_file()

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    onnx_file = tmp_path / "edge.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(onnx_file), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    no_size = _run(tmp_path, "import", str(onnx_file), "--name", "edge")
    assert no_size.returncode == 2 and "needs --name and --size" in no_size.stderr
    ok = _run(tmp_path, "import", str(onnx_file), "--name", "edge", "--size", "32", "--mean", "0.5,0.5,0.5",
              "--std", "0.25,0.25,0.25")
    assert ok.returncode == 0, ok.stderr
    rows = {r["name"]: r for r in json.loads(_run(tmp_path, "list", "--json").stdout)["weights"]}
    assert rows["edge"]["present"] and rows["edge"]["feature_dim"] == 4 and rows["edge"]["format"] == "onnx"
    bad = _run(tmp_path, "import", str(onnx_file), "--name", "bad", "--size", "32", "--mean", "a,b")
    assert bad.returncode == 2 and "numbers separated by commas" in bad.stderr

    unknown = _run(tmp_path, "fetch", "no-such-extractor")
    assert unknown.returncode == 1 and "no such extractor" in unknown.stderr
    assert _run(tmp_path, "fetch").returncode == 2  # nothing named: a usage error, not a silent success
    present = _run(tmp_path, "fetch", "efficientnet_lite0-imagenet")
    assert present.returncode == 0 and "already present" in present.stdout
