"""Settings: environment variables, derived defaults, and the secret-key rules."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pigeonhole.settings import Settings, load_settings


def test_environment_variables_configure_everything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIGEONHOLE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("PIGEONHOLE_PORT", "9123")
    monkeypatch.setenv("PIGEONHOLE_SIGNUP_OPEN", "false")
    settings = load_settings()
    assert settings.data_dir == (tmp_path / "d").resolve()
    assert settings.port == 9123 and settings.signup_open is False
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'd' / 'pigeonhole.db'}"
    assert settings.resolved_blob_url == str(tmp_path / "d" / "blobs")


def test_explicit_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIGEONHOLE_PORT", "9123")
    assert load_settings(port=8001, data_dir=tmp_path).port == 8001


def test_development_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path).secret
    again = Settings(data_dir=tmp_path).secret
    assert first == again and len(first) >= 32
    mode = stat.S_IMODE((tmp_path / "secret_key").stat().st_mode)
    assert mode == 0o600


@pytest.mark.parametrize("secret", [None, "changeme", "secret", "short-but-not-placeholder"])
def test_production_refuses_missing_or_placeholder_secrets(tmp_path: Path, secret: str | None) -> None:
    with pytest.raises(ValueError, match="PIGEONHOLE_SECRET_KEY"):
        Settings(env="production", data_dir=tmp_path, secret_key=secret)


def test_production_accepts_a_real_secret(tmp_path: Path) -> None:
    settings = Settings(env="production", data_dir=tmp_path, secret_key="k" * 8 + "9a8s7d6f5g4h3j2k1l0qwertyuiop")
    assert settings.secret.startswith(b"kkkk")
    assert not (tmp_path / "secret_key").exists()


def test_api_processes_and_inference_lanes_follow_the_cores_and_memory(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pigeonhole.settings as module

    def machine(cores: int, gib: int) -> None:
        monkeypatch.setattr(module, "available_cores", lambda: cores)
        monkeypatch.setattr(module, "memory_bytes", lambda: gib * 1024**3)

    machine(2, 24)  # this project's machine: one process per core, two one-thread ONNX Runtime lanes each
    settings = Settings(data_dir=tmp_path)
    chosen_here = (settings.resolved_api_workers, settings.resolved_predict_lanes, settings.resolved_serving_threads)
    assert chosen_here == (2, 2, 1)
    machine(1, 8)
    assert (settings.resolved_api_workers, settings.resolved_predict_lanes) == (1, 2)
    machine(16, 3)  # little memory: fewer processes, the cores go to more lanes in each
    assert (settings.resolved_api_workers, settings.resolved_predict_lanes) == (1, 32)
    machine(64, 256)
    assert settings.resolved_api_workers == module.MAX_AUTO_API_WORKERS and settings.resolved_predict_lanes == 16
    chosen = Settings(data_dir=tmp_path, api_workers=1, serving_threads=2)  # what the operator sets wins
    machine(2, 24)
    assert (chosen.resolved_api_workers, chosen.resolved_predict_lanes, chosen.resolved_serving_threads) == (1, 2, 2)
