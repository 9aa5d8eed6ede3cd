"""CLI client commands as a user runs them: real subprocesses against a real server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SHARED_DIR
from tests.factories import jpeg_bytes, png_bytes
from tests.integration.live_server import PIGEONHOLE, LiveServer, free_port, start_live_server
from tests.model_factories import grey_png


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("cli-server"),
                             extra_env={"PIGEONHOLE_WEIGHTS_DIR": str(SHARED_DIR / "weights")}, timeout_s=180)
    yield live
    live.stop()


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k not in ("PIGEONHOLE_URL", "PIGEONHOLE_TOKEN")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")

    def run(*args: str, stdin: str | None = None, extra_env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PIGEONHOLE), *args], input=stdin, capture_output=True, text=True, timeout=120,
                              env={**env, **(extra_env or {})})

    run.config = tmp_path / "config"  # type: ignore[attr-defined]
    return run


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "birds"
    for label, seed in (("robin", 0), ("wren", 50)):
        (root / label).mkdir(parents=True)
        for i in range(5):
            (root / label / f"{i}.png").write_bytes(png_bytes(seed=seed + i))
    return root


def test_login_then_dataset_and_token_commands(server: LiveServer, cli, photos: Path, tmp_path: Path) -> None:
    server.signup_token("cli@example.com")
    login = cli("login", "--url", server.base, "--email", "cli@example.com", "--password-stdin",
                stdin="a long password\n")
    assert login.returncode == 0, login.stderr
    saved = cli.config / "pigeonhole" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and json.loads(saved.read_text())["url"] == server.base

    created = cli("dataset", "create", "birds", "--json")
    dataset_id = json.loads(created.stdout)["id"]
    uploaded = cli("dataset", "upload", dataset_id, str(photos), "--json")
    assert uploaded.returncode == 0 and json.loads(uploaded.stdout)["accepted"] == 10
    single = tmp_path / "extra.jpg"
    single.write_bytes(jpeg_bytes(seed=7))
    assert json.loads(cli("dataset", "upload", dataset_id, str(single), "--label", "robin", "--json").stdout
                      )["accepted"] == 1
    listed = json.loads(cli("dataset", "list", "--json").stdout)
    assert [(d["name"], d["image_count"]) for d in listed] == [("birds", 11)]
    exported = tmp_path / "birds.zip"
    assert cli("dataset", "export", dataset_id, str(exported)).returncode == 0 and exported.stat().st_size > 0

    token = cli("token", "create", "ci", "--scope", "predict")
    assert token.returncode == 0 and token.stdout.startswith("pgh_")
    tokens = json.loads(cli("token", "list", "--json").stdout)
    ci = next(t for t in tokens if t["name"] == "ci")
    assert ci["scopes"] == ["predict"]
    assert cli("token", "revoke", ci["id"]).returncode == 0
    assert cli("usage", "--json").returncode == 0
    assert json.loads(cli("model", "list", "--json").stdout) == []


def test_errors_have_clear_messages_and_exit_codes(server: LiveServer, cli, tmp_path: Path) -> None:
    not_signed_in = cli("dataset", "list")
    assert not_signed_in.returncode == 3 and "pigeonhole login" in not_signed_in.stderr
    bad_token = cli("dataset", "list", extra_env={"PIGEONHOLE_URL": server.base,
                                                  "PIGEONHOLE_TOKEN": "pgh_" + "x" * 36})
    assert bad_token.returncode == 3 and "not valid" in bad_token.stderr
    token = server.signup_token("errors@example.com")
    env = {"PIGEONHOLE_URL": server.base, "PIGEONHOLE_TOKEN": token}
    missing = cli("model", "train", str(tmp_path / "no-such-folder"), extra_env=env)
    assert missing.returncode == 4 and "no folder" in missing.stderr
    unknown = cli("model", "status", "01aaaaaaaaaaaaaaaaaaaaaaaa", extra_env=env)
    assert unknown.returncode == 4 and "no such model" in unknown.stderr
    down = cli("dataset", "list", extra_env={"PIGEONHOLE_URL": f"http://127.0.0.1:{free_port()}",
                                             "PIGEONHOLE_TOKEN": token})
    assert down.returncode == 5 and "Is the server running?" in down.stderr
    refused = cli("dataset", "create", "   ", extra_env=env)
    assert refused.returncode == 6 and "name" in refused.stderr


@pytest.mark.slow
def test_model_commands_from_folder_to_export(server: LiveServer, cli, tmp_path: Path) -> None:
    root = tmp_path / "shades"
    for label, level, seed in (("dark", 40, 0), ("bright", 210, 100), ("mid", 128, 200)):
        (root / label).mkdir(parents=True)
        for i in range(8):
            (root / label / f"{i}.png").write_bytes(grey_png(level, seed + i))
    env = {"PIGEONHOLE_URL": server.base, "PIGEONHOLE_TOKEN": server.signup_token("models@example.com")}
    trained = cli("model", "train", str(root), "--name", "shades", "--budget", "10", "--preference", "fast",
                  "--json", extra_env=env)
    assert trained.returncode == 0, trained.stderr
    model = json.loads(trained.stdout)["model"]
    assert model["active_version"] is not None and sorted(model["classes"]) == ["bright", "dark", "mid"]
    probe = tmp_path / "probe.png"
    probe.write_bytes(grey_png(40, 999))
    predicted = cli("model", "predict", model["id"], str(probe), extra_env=env)
    assert predicted.returncode == 0 and str(probe) in predicted.stdout and "familiarity" in predicted.stdout
    alike = cli("model", "predict", model["id"], str(probe), "--neighbours", "2", "--json", extra_env=env)
    assert alike.returncode == 0, alike.stderr
    near = json.loads(alike.stdout)["predictions"][0]["neighbours"]
    assert len(near) == 2 and all(n["image_id"] and n["label"] == "dark" for n in near)
    cautious = cli("model", "caution", model["id"], "20", "--json", extra_env=env)
    assert cautious.returncode == 0, cautious.stderr
    with_caution = json.loads(cli("model", "status", model["id"], "--json", extra_env=env).stdout)
    from pigeonhole.client import Client as _Client

    with _Client(server.base, env["PIGEONHOLE_TOKEN"]) as pgh:
        assert pgh.get_version(model["id"], with_caution["active_version"])["threshold"] == 0.2
    removed = cli("model", "remove-class", model["id"], "mid", "--json", extra_env=env)
    assert removed.returncode == 0, removed.stderr
    status = json.loads(cli("model", "status", model["id"], "--json", extra_env=env).stdout)
    assert sorted(status["classes"]) == ["bright", "dark"]
    added = cli("model", "add-class", model["id"], "mid", extra_env=env)
    assert added.returncode == 0, added.stderr
    renamed = cli("model", "rename-class", model["id"], "mid", "middle", "--json", extra_env=env)
    assert renamed.returncode == 0, renamed.stderr
    assert sorted(json.loads(renamed.stdout)["classes"]) == ["bright", "dark", "middle"]
    taken = cli("model", "rename-class", model["id"], "middle", "dark", extra_env=env)
    assert taken.returncode != 0 and "already has a class" in taken.stderr
    exported = tmp_path / "shades.onnx"
    assert cli("model", "export", model["id"], str(exported), extra_env=env).returncode == 0
    assert exported.stat().st_size > 0
    # 28 px images are squeezed whole, not cropped: the version says so, as the exported file does
    from pigeonhole.client import Client
    from pigeonhole.learn.export import read_input_spec

    with Client(server.base, env["PIGEONHOLE_TOKEN"]) as pgh:
        trained_first = pgh.get_version(model["id"], 1)  # from the training job
        grown = pgh.get_version(model["id"], pgh.get_model(model["id"])["active_version"])  # from class changes
    assert trained_first["input"]["crop"] == grown["input"]["crop"] == "resize"
    assert read_input_spec(exported.read_bytes())["crop"] == "resize"
    missing = cli("model", "predict", model["id"], str(tmp_path / "nope.png"), extra_env=env)
    assert missing.returncode == 4

    # the data itself: a dark image labelled "bright" is found, images to label later are ordered (and exported),
    # and an image sent back from production joins the dataset
    dataset_id = model["dataset_id"]
    wrong = tmp_path / "wrong.png"
    wrong.write_bytes(grey_png(38, 555))
    assert cli("dataset", "upload", dataset_id, str(wrong), "--label", "bright", extra_env=env).returncode == 0
    suspects = cli("dataset", "suspects", dataset_id, "--model", model["id"], "--json", extra_env=env)
    assert suspects.returncode == 0, suspects.stderr
    found = json.loads(suspects.stdout)["items"]
    assert any(i["label"] == "bright" and i["suggested_label"] == "dark" for i in found), found
    later = tmp_path / "later"
    later.mkdir()
    for i, level in enumerate((45, 128, 205)):
        (later / f"{i}.png").write_bytes(grey_png(level, 600 + i))
    uploaded = cli("dataset", "upload", dataset_id, str(later), "--unlabelled", "--json", extra_env=env)
    assert uploaded.returncode == 0 and json.loads(uploaded.stdout)["accepted"] == 3, uploaded.stderr
    queue_csv = tmp_path / "queue.csv"
    suggested = cli("dataset", "suggestions", dataset_id, "--model", model["id"], "--export", str(queue_csv),
                    "--json", extra_env=env)
    assert suggested.returncode == 0, suggested.stderr
    assert len(json.loads(suggested.stdout)["items"]) == 3 and len(queue_csv.read_text().splitlines()) == 4
    sent = cli("model", "feedback", model["id"], str(probe), "--label", "bright", extra_env=env)
    assert sent.returncode == 0 and "added to the dataset" in sent.stderr, sent.stderr
    both = cli("model", "feedback", model["id"], str(probe), "--label", "dark", "--unsure", extra_env=env)
    assert both.returncode == 2 and "either --label" in both.stderr
