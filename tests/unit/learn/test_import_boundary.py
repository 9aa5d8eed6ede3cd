"""The ML core must import without the web stack (compute workers, benchmarks)."""

from __future__ import annotations

import subprocess
import sys


def test_learn_imports_no_web_stack() -> None:
    code = (
        "import sys\n"
        "import pigeonhole.learn.backbones, pigeonhole.learn.export, pigeonhole.learn.features\n"
        "import pigeonhole.learn.head, pigeonhole.learn.evaluate, pigeonhole.learn.weights\n"
        "import pigeonhole.learn.data, pigeonhole.learn.candidates, pigeonhole.learn.train\n"
        "import pigeonhole.learn.artifacts, pigeonhole.learn.memory, pigeonhole.learn.search, pigeonhole.learn.tune\n"
        "bad = [m for m in ('fastapi', 'sqlalchemy', 'starlette', 'pydantic_settings', 'pigeonhole.settings',"
        " 'pigeonhole.api', 'pigeonhole.db', 'pigeonhole.datasets', 'ray') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
