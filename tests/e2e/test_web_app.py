"""The web app in a real browser: from sign-up to datasets, uploads, tokens, usage and the admin page.

One story, step by step, with a screenshot of each step in the test-output folder.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import SHARED_DIR

pytestmark = pytest.mark.e2e

EMAIL = "owner@example.com"
PASSWORD = "a long enough password"
HYMENOPTERA = SHARED_DIR / "datasets" / "hymenoptera" / "val.zip"


def _photos(folder: Path, per_class: dict[str, int]) -> Path:
    """Real photos from the shared hymenoptera set (generated PNGs when it is absent), one folder per class."""
    root = folder / "photos"
    for label, count in per_class.items():
        (root / label).mkdir(parents=True)
        names: list[str] = []
        if HYMENOPTERA.is_file():
            with zipfile.ZipFile(HYMENOPTERA) as archive:
                names = [n for n in archive.namelist() if n.startswith(f"{label}/") and n.endswith(".jpg")][:count]
                for name in names:
                    (root / name).write_bytes(archive.read(name))
        for i in range(len(names), count):
            Image.new("RGB", (96, 96), (40 * i % 255, 120, 200)).save(root / label / f"{label}{i}.png")
    return root


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _signed_up(browser, server: str, email: str, height: int = 800):  # type: ignore[no-untyped-def]
    """A new browser context of a person who has just signed up (on their models page), and its CSRF header."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1024, "height": height}, base_url=server)
    page = context.new_page()
    page.goto("/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/models$"))
    csrf = {"X-CSRF-Token": next(c["value"] for c in context.cookies() if c["name"] == "pgh_csrf")}
    return context, page, csrf


def test_sign_up_to_admin(server: str, browser, shots: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))

    def shot(name: str) -> None:
        page.evaluate("window.scrollTo(0, 0)")  # the sticky header belongs at the top of a full-page shot
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # 1. A visitor is sent to sign-in, which explains the first account becomes the administrator.
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin$"))
    expect(page.get_by_text("The first account created on it becomes the administrator")).to_be_visible()
    shot("01-sign-in")

    # 2. Sign up: the first account is the administrator and is welcomed as such.
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/models$"))
    expect(page.get_by_text("You are the administrator of this Pigeonhole server")).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Datasets").click()
    expect(page.get_by_text("No datasets yet")).to_be_visible()
    shot("02-signed-up-no-datasets")

    # 3. Create a dataset.
    page.get_by_role("button", name="Create your first dataset").click()
    page.get_by_label("Name").fill("Garden insects")
    page.get_by_role("button", name="Create dataset").click()
    expect(page.get_by_role("heading", name="Garden insects", level=1)).to_be_visible()
    expect(page.get_by_text("The dataset is empty")).to_be_visible()
    shot("03-new-dataset")

    # 4. Upload a folder with one sub-folder per class (real photos).
    photos = _photos(tmp_path, {"ants": 6, "bees": 5})
    page.locator("input[webkitdirectory]").set_input_files(photos)
    expect(page.get_by_text(re.compile(r"Finished: 11 images added"))).to_be_visible(timeout=60_000)
    classes = page.get_by_role("navigation", name="Classes")
    expect(classes.get_by_role("button", name=re.compile(r"^ants\s*6$"))).to_be_visible()
    expect(classes.get_by_role("button", name=re.compile(r"^bees\s*5$"))).to_be_visible()
    expect(page.get_by_text("Ready to train a model")).to_be_visible()

    # ...then a zip (one folder per class) and a file that only pretends to be an image: it is refused, with why.
    page.get_by_role("button", name="Clear this list").click()
    page.get_by_label("Class for single images").fill("ants")
    page.locator("input[type=file][accept]").set_input_files([
        {"name": "wasps.zip", "mimeType": "application/zip",
         "buffer": _zip_of({f"wasps/w{i}.png": _png((200, 150 + i * 20, 0)) for i in range(3)})},
        {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"this is not a picture"},
    ])
    expect(page.get_by_text(re.compile(r"Finished: 3 images added, 1 refused"))).to_be_visible(timeout=60_000)
    expect(page.get_by_text("1 file could not be added")).to_be_visible()
    expect(page.get_by_text(re.compile(r"notes\.jpg.*not an image"))).to_be_visible()
    expect(classes.get_by_role("button", name=re.compile(r"^wasps\s*3$"))).to_be_visible()
    # The health report says, in plain words, what to do about the small class.
    expect(page.get_by_text(re.compile(r"Class 'wasps' has only 3 image"))).to_be_visible()
    shot("04-uploaded-classes-health")

    # 5. A dropped image (drag and drop) with the typed class.
    page.get_by_role("button", name="Clear this list").click()
    page.get_by_label("Class for single images").fill("wasps")
    page.evaluate(
        """async () => {
            const canvas = document.createElement('canvas'); canvas.width = 64; canvas.height = 64;
            const ctx = canvas.getContext('2d'); ctx.fillStyle = '#d08020'; ctx.fillRect(0, 0, 64, 64);
            const blob = await new Promise((ok) => canvas.toBlob(ok, 'image/png'));
            const transfer = new DataTransfer();
            transfer.items.add(new File([blob], 'dropped.png', { type: 'image/png' }));
            const zone = document.querySelector('[aria-label^="Drop zone"]');
            zone.dispatchEvent(new DragEvent('dragenter', { dataTransfer: transfer, bubbles: true, cancelable: true }));
            zone.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }"""
    )
    expect(page.get_by_text(re.compile(r"Finished: 1 image added"))).to_be_visible(timeout=30_000)
    expect(classes.get_by_role("button", name=re.compile(r"^wasps\s*4$"))).to_be_visible()

    # 6. Browse one class, select an image and move it to another class.
    classes.get_by_role("button", name=re.compile(r"^bees")).click()
    expect(page.get_by_role("heading", name=re.compile("“bees”"))).to_be_visible()
    thumbs = page.locator("button.thumb")
    expect(thumbs).to_have_count(5)
    expect(thumbs.first.locator("img")).to_have_js_property("complete", True)
    thumbs.first.click()
    expect(page.get_by_text("1 image selected")).to_be_visible()
    shot("05-class-selected-image")
    page.get_by_placeholder("Move to class…").fill("ants")
    page.get_by_role("button", name="Move", exact=True).click()
    expect(page.get_by_text("Moved 1 image to “ants”.")).to_be_visible()
    expect(thumbs).to_have_count(4)
    expect(classes.get_by_role("button", name=re.compile(r"^ants\s*7$"))).to_be_visible()

    # ...and rename a class.
    classes.get_by_role("button", name=re.compile(r"^wasps")).click()
    page.get_by_role("button", name="Rename class").click()
    page.get_by_label("New name").fill("hornets")
    page.get_by_role("dialog").get_by_role("button", name="Rename").click()
    expect(classes.get_by_role("button", name=re.compile(r"^hornets\s*4$"))).to_be_visible()
    classes.get_by_role("button", name=re.compile(r"^All images")).click()
    expect(thumbs).to_have_count(15)
    export = page.get_by_role("link", name="Download as zip")
    assert re.search(r"/api/v1/datasets/\w+/export$", export.get_attribute("href") or "")
    page.wait_for_load_state("networkidle")
    shot("06-dataset-browser")

    # 7. Create an API token: the secret is shown once, with a copy button.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API tokens").click()
    expect(page.get_by_text("No tokens yet")).to_be_visible()
    page.get_by_label("Name").fill("Sorting script")
    page.get_by_role("button", name="Create token").click()
    secret_box = page.get_by_test_id("token-secret")
    expect(secret_box).to_have_text(re.compile(r"^pgh_\w+$"))
    secret = secret_box.inner_text()
    expect(page.get_by_role("button", name="Copy token")).to_be_visible()
    shot("07-token-created")

    # A program uses it (these calls show on the usage page), including one that fails.
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {secret}"}) as program:
        for _ in range(5):
            assert program.get("/api/v1/datasets").status_code == 200
        assert program.get("/api/v1/datasets/does-not-exist").status_code == 404

    # A second token is created, then revoked.
    page.get_by_role("button", name="I have saved it").click()
    page.get_by_label("Name").fill("Old laptop")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_test_id("token-secret")).to_be_visible()
    page.get_by_role("button", name="I have saved it").click()
    page.get_by_role("button", name="Revoke Old laptop").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke token").click()
    expect(page.get_by_text("Revoked “Old laptop”. It no longer works.")).to_be_visible()
    expect(page.get_by_role("button", name="Revoke Old laptop")).to_have_count(0)
    page.reload()
    expect(page.get_by_text(re.compile(r"last used (just now|\d+ minutes? ago)"))).to_be_visible()
    shot("08-tokens")

    # 8. Usage: the calls per day chart, by token, errors and latency.
    page.wait_for_timeout(1000)  # usage records are written in batches
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    expect(page.locator("[data-stat=calls] .value")).to_have_text("6")
    expect(page.locator("[data-stat=errors] .value")).to_have_text("1")
    expect(page.get_by_role("img", name=re.compile(r"Calls per day: 6 in 30 days"))).to_be_visible()
    expect(page.get_by_role("region", name="By token").get_by_role("cell", name="Sorting script")).to_be_visible()
    shot("09-usage")

    # 9. Admin: the users list.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    expect(page.get_by_role("cell", name=re.compile(EMAIL))).to_be_visible()
    expect(page.get_by_text("Administrator", exact=True)).to_be_visible()
    # the pretrained extractors: the packaged one present, the publishers' missing with how to get them
    extractors = page.get_by_role("region", name="Pretrained extractors")
    lite = extractors.get_by_role("row").filter(has_text="efficientnet_lite0-imagenet")
    expect(lite.get_by_text("present", exact=True)).to_be_visible()
    expect(lite.get_by_text("ships with Pigeonhole")).to_be_visible()
    dino = extractors.get_by_role("row").filter(has_text="dinov2_vits14")
    expect(dino.get_by_text("pigeonhole weights fetch dinov2_vits14")).to_be_visible()
    shot("10-admin-users")

    # 10. At phone width the pages still work: a deep link straight into the dataset.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, base_url=server,
                                storage_state=context.storage_state())
    small = phone.new_page()
    small.goto("/datasets")
    small.get_by_role("link", name=re.compile("Garden insects")).click()
    small_classes = small.get_by_role("navigation", name="Classes")
    expect(small_classes.get_by_role("button", name=re.compile("^hornets"))).to_be_visible()
    expect(small.locator("button.thumb").first).to_be_visible()
    small.wait_for_load_state("networkidle")
    small.evaluate("window.scrollTo(0, 0)")
    small.screenshot(path=str(shots / "11-phone-dataset.png"), full_page=True)
    phone.close()

    # 11. Sign out, and back in.
    page.get_by_role("button", name=re.compile(EMAIL)).click()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.goto("/usage")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fusage$"))
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    shot("12-sign-in-error")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/usage$"))

    assert not [e for e in console_errors if "401" not in e and "404" not in e], console_errors
    context.close()


def test_unknown_page_and_other_users(server: str, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    """A second person signs up: no Admin link, an empty space of their own; unknown pages say so."""
    from playwright.sync_api import expect

    context, page, _ = _signed_up(browser, server, "second@example.com", height=768)
    expect(page.get_by_role("heading", name="No models yet")).to_be_visible()
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    expect(page.get_by_text("You are the administrator")).to_have_count(0)
    page.goto("/no/such/page")
    expect(page.get_by_role("heading", name="There is nothing here")).to_be_visible()
    page.goto("/datasets")
    expect(page.get_by_text("No datasets yet")).to_be_visible()
    page.goto("/models/no-such-model")
    expect(page.get_by_role("heading", name="This model does not exist")).to_be_visible()
    shot_path = shots / "13-unknown-model.png"
    page.screenshot(path=str(shot_path), full_page=True)
    context.close()


def test_labelling_images_with_keys(server: str, browser, shots: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Images added without a class wait on the labelling page; number keys give them a class, N sets one aside."""
    from playwright.sync_api import expect

    context, page, csrf = _signed_up(browser, server, "labeller@example.com")
    dataset_id = context.request.post("/api/v1/datasets", headers=csrf, data={"name": "Colours"}).json()["id"]
    for label, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        sent = context.request.post(f"/api/v1/datasets/{dataset_id}/uploads", headers=csrf, multipart={
            "label": label, "files": {"name": f"{label}.png", "mimeType": "image/png", "buffer": _png(colour)}})
        assert sent.json()["accepted"] == 1, sent.text()
    waiting = []
    for i, colour in enumerate([(200, 40, 40), (40, 40, 200), (120, 200, 60)]):
        waiting.append(tmp_path / f"w{i}.png")
        waiting[-1].write_bytes(_png(colour))

    page.goto(f"/datasets/{dataset_id}")
    page.get_by_role("link", name="Label images").click()
    expect(page.get_by_test_id("nothing-to-label")).to_be_visible()
    page.locator("input[type=file][accept='image/*']").set_input_files(waiting)
    to_label = page.get_by_test_id("to-label")
    expect(to_label).to_be_visible()
    expect(page.get_by_test_id("label-summary")).to_contain_text("3 images waiting")
    expect(to_label.get_by_role("group", name="Classes").get_by_role("button")).to_have_count(2)
    page.screenshot(path=str(shots / "14-label-images.png"), full_page=True)
    page.keyboard.press("1")  # the first class on screen
    expect(page.get_by_test_id("label-summary")).to_contain_text("2 images waiting; 1 label given")
    page.keyboard.press("n")  # none of these
    expect(page.get_by_test_id("label-summary")).to_contain_text("1 image waiting; 1 label given")
    page.keyboard.press("2")
    expect(page.get_by_test_id("nothing-to-label")).to_be_visible()
    counts = {c["name"]: c["count"] for c in context.request.get(f"/api/v1/datasets/{dataset_id}").json()["classes"]}
    assert sum(counts.values()) == 4 and set(counts) == {"red", "blue"}
    assert context.request.get(f"/api/v1/datasets/{dataset_id}/pool").json()["items"] == []
    context.close()


def test_a_dataset_of_300_classes_finds_a_class_by_name(server: str, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    """Hundreds of classes (a parts catalogue): the class list scrolls, and a search box finds one by name."""
    from playwright.sync_api import expect

    context, page, csrf = _signed_up(browser, server, "catalogue@example.com")
    dataset_id = context.request.post("/api/v1/datasets", headers=csrf, data={"name": "Parts"}).json()["id"]
    files = {f"part {k:03d}/{k}.png": _png((k % 256, (7 * k) % 256, (13 * k) % 256)) for k in range(300)}
    sent = context.request.post(f"/api/v1/datasets/{dataset_id}/uploads", headers=csrf, multipart={
        "files": {"name": "parts.zip", "mimeType": "application/zip", "buffer": _zip_of(files)}})
    assert sent.json()["accepted"] == 300, sent.text()

    page.goto(f"/datasets/{dataset_id}")
    classes = page.get_by_role("navigation", name="Classes")
    expect(classes.get_by_role("button", name=re.compile(r"^part \d{3}"))).to_have_count(300)
    classes.get_by_role("searchbox", name="Find a class").fill("PART 12")
    expect(classes.get_by_role("button", name=re.compile(r"^part \d{3}"))).to_have_count(10)  # 120 to 129
    expect(classes.get_by_role("status")).to_have_text("10 of 300")
    classes.get_by_role("button", name=re.compile(r"^part 125")).click()
    expect(page.get_by_role("heading", name=re.compile("“part 125”"))).to_be_visible()
    page.screenshot(path=str(shots / "15-300-classes.png"), full_page=False)
    context.close()
