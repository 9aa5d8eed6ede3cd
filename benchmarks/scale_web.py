"""The web app at 1,000 classes and 100,000 images, in Chromium (``benchmarks/scale.py --stage web``): how long each
page takes from navigation until it can be used (its main content visible; the app's own files already cached, as
for anyone who has opened it once), signed in as the benchmark's user, on
the data an earlier ``ingest``/``train`` run left (``--reuse``). Screenshots go to ``--work``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

PASSWORD = "benchmark password"


def _timed(page: Any, url: str, ready: Any) -> float:
    from playwright.sync_api import expect

    started = time.perf_counter()
    page.goto(url)
    expect(ready).to_be_visible(timeout=60_000)
    return time.perf_counter() - started


def pages(base: str, dataset_id: str, model_id: str | None, work: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base)
        page = context.new_page()
        page.goto("/signin")
        page.get_by_label("Email").fill("bench@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name=re.compile("Sign in")).click()
        page.wait_for_url(re.compile(r"/models$"))
        figures = {}
        classes = page.get_by_role("navigation", name="Classes")
        _timed(page, f"/datasets/{dataset_id}", classes)  # the app's own files are cached from here on
        figures["dataset page: class list"] = _timed(page, f"/datasets/{dataset_id}",
                                                     classes.get_by_role("button", name=re.compile("^glyph-")).last)
        figures["dataset page: first thumbnails"] = _timed(page, f"/datasets/{dataset_id}",
                                                           page.locator("img[src*='thumbnail']").first)
        started = time.perf_counter()
        classes.get_by_role("searchbox").fill("glyph-5")
        page.get_by_role("status").first.wait_for()
        figures["class search"] = time.perf_counter() - started
        page.screenshot(path=str(work / "web-dataset.png"))
        figures["datasets list"] = _timed(page, "/datasets", page.get_by_role("link", name="glyphs"))
        if model_id:
            figures["model page: results"] = _timed(page, f"/models/{model_id}",
                                                    page.get_by_role("heading", name="Class by class"))
            page.screenshot(path=str(work / "web-model.png"), full_page=False)
        for name, seconds in figures.items():
            print(f"scale web: {name}: {1000 * seconds:.0f} ms", flush=True)
        browser.close()
