"""Write the API's OpenAPI document to a file (the source of the web app's generated TypeScript client).

Usage: python web/scripts/dump_openapi.py web/src/lib/api/openapi.json
The app is built in a throw-away data directory, so no database or secret of a real install is touched.
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any


def openapi_document() -> dict[str, Any]:
    from pigeonhole.api.app import create_app
    from pigeonhole.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir), secret_key=secrets.token_urlsafe(32))
        app = create_app(settings, migrate=False)
        document = app.openapi()
        app.state.engine.dispose()
        return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "web/src/lib/api/openapi.json")
    target.write_text(render(openapi_document()), encoding="utf-8")
    print(f"wrote {target}")
