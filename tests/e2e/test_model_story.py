"""The issue's whole story in a real browser against a real server that really trains:

sign up → a new model from a small set of real photos uploaded as folders → watch training → try an image →
add a class, rename it and see the new versions → versions, the API panel → check the labels and fix a planted
mistake → label images waiting for a class and get a new version → create and revoke a token → the admin page
lists the local compute node and the jobs. A screenshot of each step lands in the test-output folder
(``model-*.png``).

It needs the shared real photos and pretrained weights (``../shared``); without them it is skipped.
"""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import SHARED_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FLOWERS = SHARED_DIR / "datasets" / "flowers5"
WEIGHTS = SHARED_DIR / "weights"
PASSWORD = "a long enough password"
TRAIN_TIMEOUT_MS = 150_000


def _photos(folder: Path, archive: Path, per_class: dict[str, int], skip: int = 0) -> Path:
    """Real flower photos (128 px JPEGs), one sub-folder per class, as a person would sort them."""
    folder.mkdir(parents=True)
    with zipfile.ZipFile(archive) as z:
        for label, count in per_class.items():
            (folder / label).mkdir()
            names = sorted(n for n in z.namelist() if n.startswith(f"{label}/") and n.endswith(".jpg"))
            for name in names[skip:skip + count]:
                (folder / name).write_bytes(z.read(name))
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (FLOWERS / "train.zip").is_file() or not any(WEIGHTS.glob("*.safetensors")):
        pytest.skip("the shared flower photos or pretrained weights are missing (../shared)")
    root = tmp_path_factory.mktemp("story")
    first = _photos(root / "first", FLOWERS / "train.zip", {"daisy": 10, "dandelion": 10})
    extra = _photos(root / "extra", FLOWERS / "train.zip", {"sunflower": 8})
    probe = _photos(root / "probe", FLOWERS / "test.zip", {"daisy": 1})
    # The planted photo is one that every extractor the search may choose here (MobileNetV2, EfficientNet-Lite0 and
    # SqueezeNet, at each of their sizes and the ridge strengths a small set leads to) flags as a sunflower among
    # the daisies: which candidate wins a training is decided by a wall-clock budget, and SqueezeNet's features do
    # not tell every sunflower photo from a daisy with eight examples (the first one after the eight, tried before,
    # was missed whenever SqueezeNet won; this is a test of the review flow, the benchmarks measure the detection).
    planted = _photos(root / "planted", FLOWERS / "train.zip", {"sunflower": 1}, skip=13)
    unlabelled = _photos(root / "unlabelled", FLOWERS / "test.zip", {"daisy": 2, "dandelion": 1}, skip=1)
    return {"first": first, "extra": extra / "sunflower", "probe": next((probe / "daisy").iterdir()),
            "planted": next((planted / "sunflower").iterdir()),
            "unlabelled": sorted(p for folder in unlabelled.iterdir() for p in folder.iterdir())}


def test_from_sign_up_to_a_grown_model(server: str, browser, shots: Path, photos: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def shot(name: str) -> None:
        page.evaluate("document.querySelectorAll('.toast .close').forEach((b) => b.click())")  # toasts hide content
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / f"model-{name}.png"), full_page=True)

    main_nav = page.get_by_role("navigation", name="Main")

    # 1. Sign up: the first account is the administrator, and lands on an empty models page.
    page.goto("/signup")
    page.get_by_label("Email").fill("maker@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/models$"))
    expect(page.get_by_role("heading", name="No models yet")).to_be_visible()
    shot("01-no-models")

    # 2. The wizard: a name, then new images uploaded as folders (one per class), with progress per file.
    page.get_by_role("link", name="Create your first model").click()
    page.get_by_label("Name").fill("Garden flowers")
    page.get_by_role("button", name="Next: add images").click()
    expect(page.get_by_label("New images")).to_be_checked()
    page.get_by_role("button", name="Start adding images").click()
    expect(page.get_by_role("heading", name="Add example images of each class")).to_be_visible()
    page.locator("input[webkitdirectory]").set_input_files(photos["first"])
    expect(page.get_by_text(re.compile(r"Finished: 20 images added"))).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("wizard-classes")).to_contain_text("daisy 10")
    expect(page.get_by_test_id("wizard-classes")).to_contain_text("dandelion 10")
    shot("02-wizard-images")

    # 3. The health check in plain words; Train is reachable because the images are ready.
    page.get_by_role("button", name="Next: check the images").click()
    expect(page.get_by_role("heading", name="Your images are ready for training")).to_be_visible()
    shot("03-wizard-check")
    page.get_by_role("button", name="Next: how to train").click()

    # 4. How accurate, how long, what matters: fast, half a minute at most.
    expect(page.get_by_label("How long can it train?")).to_have_value("600")  # the balanced default
    page.get_by_label("Fast").check()
    expect(page.get_by_label("How long can it train?")).to_have_value("120")
    page.get_by_label("How accurate does it need to be?").select_option("0.9")
    page.get_by_label("How long can it train?").select_option("30")
    shot("04-wizard-train")
    page.get_by_role("button", name="Train", exact=True).click()

    # 5. The training view: live progress and stage (a first version serves before the end; on this tiny set
    # the whole search takes seconds, so the end may come before the next poll).
    expect(page).to_have_url(re.compile(r"/models/(?!new$)\w+$"))
    model_id = page.url.rsplit("/", 1)[1]
    training = page.get_by_test_id("training")
    expect(training).to_be_visible(timeout=30_000)
    expect(training.get_by_role("progressbar")).to_be_visible()
    expect(training.get_by_role("button", name="Cancel training")).to_be_visible()
    stages = re.compile("Looking at your images|Trying a quick model|Preparing|is ready")
    expect(training.get_by_text(stages)).not_to_have_count(0, timeout=TRAIN_TIMEOUT_MS)
    shot("05-training")

    # ...then training finishes: accuracy in words, per class, the confusion heatmap, mistakes, size and speed,
    # and how the training went (the accuracy curve and the models tried).
    expect(page.locator("h1 [data-status=ready]")).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    summary = page.get_by_text(re.compile(r"How the last training went \(finished"))
    expect(summary).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    expect(page.get_by_test_id("accuracy")).to_have_text(re.compile(r"^\d+ %$"))
    in_words = re.compile(r"Right (about \d+ times out of \d+|on every test image|on \d+ of \d+ test images?)")
    expect(page.get_by_text(in_words)).to_be_visible()
    expect(page.get_by_role("heading", name="Class by class")).to_be_visible()
    expect(page.get_by_role("table", name=re.compile("Confusion matrix"))).to_be_visible()
    expect(page.get_by_role("heading", name="Its most confident mistakes")).to_be_visible()
    # what "unknown" costs, in words, and a preview of another caution before saving it
    expect(page.get_by_test_id("answers")).to_contain_text("says “unknown” for the rest")
    # the page's figures are the API's: what the served version delivers on its test images
    shown = context.request.get(f"/api/v1/models/{model_id}").json()
    metrics = context.request.get(f"/api/v1/models/{model_id}/versions/{shown['active_version']}").json()["metrics"]
    right_shown = float(re.search(r"\d+", page.get_by_test_id("accuracy").inner_text()).group())
    answers_shown = float(re.search(r"It answers (\d+) %", page.get_by_test_id("answers").inner_text()).group(1))
    assert abs(right_shown - 100 * metrics["selective_accuracy"]) <= 0.5 + 1e-9  # rounded to whole percents
    assert abs(answers_shown - 100 * metrics["coverage"]) <= 0.5 + 1e-9
    caution = page.get_by_test_id("caution")
    # In words, and the same as the API: a first model of 20 images has a handful of test images, and has once
    # answered none of them at the default caution.
    in_words_now = "Out of 100 ordinary images" if metrics["coverage"] > 0 else "Answers “unknown” for every image."
    expect(caution.get_by_test_id("caution-now")).to_contain_text(in_words_now)
    caution.get_by_role("slider", name="Caution in percent").fill("20")
    expect(caution.get_by_test_id("caution-value")).to_have_text("20 %")
    expect(caution.get_by_test_id("caution-preview")).to_contain_text("At 20 %: answers")
    summary.click()
    past = page.locator("details").get_by_test_id("training")
    expect(past.get_by_role("img", name=re.compile(r"Accuracy so far: best \d+ %"))).to_be_visible()
    expect(past.get_by_role("cell", name=re.compile("MobileNet|SqueezeNet|network")).first).to_be_visible()
    page.wait_for_load_state("networkidle")
    shot("06-model-results")

    # 6. Try it with a photo it never saw: the top classes as bars.
    tabs = page.get_by_role("navigation", name="Model sections")
    tabs.get_by_role("link", name="Try it").click()
    expect(page).to_have_url(re.compile(rf"/models/{model_id}/try$"))
    page.locator("input[type=file][accept='image/*']").first.set_input_files(photos["probe"])
    expect(page.get_by_test_id("verdict")).to_have_text(re.compile(r"It is (daisy|dandelion|unknown)"), timeout=30_000)
    expect(page.get_by_role("list", name="Top classes").get_by_role("listitem")).to_have_count(2)
    expect(page.get_by_test_id("neighbours").get_by_role("img")).to_have_count(4)  # "it looks like these"
    shot("07-try-it")

    # 7. Grow: upload a new class's photos from the Grow tab, add it with one click, see the new version.
    # Wait for the training job to end first: this story tests growing a trained model. (Growing while
    # training still runs is covered by tests/api/test_expansion.py; the panel's display in that case is
    # a known issue: it may show a training candidate recorded without the new class.)
    job_id = context.request.get(f"/api/v1/models/{model_id}").json()["job_id"]
    deadline = time.monotonic() + TRAIN_TIMEOUT_MS / 1000
    while context.request.get(f"/api/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the training job did not finish"
        time.sleep(1)
    tabs.get_by_role("link", name="Grow").click()
    expect(page.get_by_role("button", name="Remove class daisy")).to_be_disabled()  # two classes is the minimum
    page.get_by_role("button", name="Upload images of a new class first").click()
    page.get_by_label("Class for single images").fill("sunflower")
    page.locator("input[type=file][accept]").first.set_input_files(sorted(photos["extra"].iterdir()))
    expect(page.get_by_text(re.compile(r"Finished: 8 images added"))).to_be_visible(timeout=60_000)
    page.get_by_role("checkbox", name=re.compile(r"sunflower")).check()
    page.get_by_role("button", name="Add this class").click()
    new_version = page.get_by_test_id("new-version")
    expect(new_version).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    heading = new_version.get_by_role("heading", name=re.compile(r"New version \d+ is serving"))
    expect(heading).to_be_visible()
    grown = int(re.search(r"\d+", heading.inner_text()).group())  # type: ignore[union-attr]
    previous = grown - 1  # training may have made more than one version (a better one replaced the first)
    expect(new_version.get_by_role("cell", name="sunflower")).to_be_visible()
    expect(page.get_by_role("button", name="Remove class sunflower")).to_be_enabled()
    shot("08-grown")

    # Rename the new class: a label change only, so another version serves within seconds.
    page.get_by_role("button", name="Rename class sunflower").click()
    dialog = page.get_by_role("dialog", name="Rename “sunflower”")
    dialog.get_by_label("New name").fill("sunflowers")
    dialog.get_by_role("button", name="Rename class").click()
    expect(dialog).to_be_hidden()
    heading = new_version.get_by_role("heading", name=re.compile(rf"New version (?!{grown} )\d+ is serving"))
    expect(heading).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    renamed = int(re.search(r"\d+", heading.inner_text()).group())  # type: ignore[union-attr]
    assert renamed > grown
    expect(new_version.get_by_role("cell", name="sunflowers", exact=True)).to_be_visible()
    classes = page.get_by_role("region", name="Its classes now")
    expect(classes.get_by_text("sunflowers", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Remove class sunflowers")).to_be_enabled()

    # 8. Versions: all of them, the grown one serving; roll back and forward; ONNX downloads.
    tabs.get_by_role("link", name="Versions").click()
    rows = page.get_by_role("row")
    expect(rows.filter(has_text=f"v{renamed}").get_by_text("serving")).to_be_visible()
    expect(rows.filter(has_text="Added 'sunflower'")).to_have_count(1)
    expect(rows.filter(has_text="Renamed 'sunflower' to 'sunflowers'")).to_have_count(1)
    page.get_by_role("button", name=f"Use version {previous}", exact=True).click()
    expect(page.get_by_text(f"Version {previous} serves from now on.")).to_be_visible()
    expect(rows.filter(has_text=f"v{previous}").get_by_text("serving")).to_be_visible()
    page.get_by_role("button", name=f"Use version {renamed}", exact=True).click()
    expect(rows.filter(has_text=f"v{renamed}").get_by_text("serving")).to_be_visible()
    export = page.get_by_role("link", name=f"Download version {renamed} as ONNX")
    href = export.get_attribute("href") or ""
    assert href.endswith(f"/api/v1/models/{model_id}/versions/{renamed}/export?format=onnx")
    shot("09-versions")

    # 9. The "Use the API" panel, with the real model id in ready-to-paste snippets.
    tabs.get_by_role("link", name="Use the API").click()
    expect(page.get_by_test_id("model-id")).to_have_text(model_id)
    expect(page.locator("pre").first).to_contain_text(f"/api/v1/models/{model_id}/predict")
    expect(page.locator("pre").nth(1)).to_contain_text(f'pgh.predict("{model_id}"')
    shot("10-use-the-api")

    # 10. The models list shows it, ready, with its accuracy.
    main_nav.get_by_role("link", name="Models").click()
    card = page.get_by_role("link", name=re.compile("Garden flowers"))
    expect(card.locator("[data-status=ready]")).to_be_visible()
    expect(card).to_contain_text("3 classes")
    shot("11-models-list")

    # 11. Check the labels: a sunflower photo put among the daisies is found, the reviewer takes the suggestion with a
    # key, and one click updates the model with the fix.
    dataset_id = context.request.get(f"/api/v1/models/{model_id}").json()["dataset_id"]
    csrf = next(c["value"] for c in context.cookies() if c["name"] == "pgh_csrf")
    upload = {"name": "planted.jpg", "mimeType": "image/jpeg", "buffer": photos["planted"].read_bytes()}
    planted = context.request.post(f"/api/v1/datasets/{dataset_id}/uploads", headers={"X-CSRF-Token": csrf},
                                   multipart={"label": "daisy", "files": upload})
    assert planted.json()["accepted"] == 1, planted.text()
    page.goto(f"/datasets/{dataset_id}")
    page.get_by_role("link", name="Check labels").click()
    expect(page).to_have_url(re.compile(rf"/datasets/{dataset_id}/review"))
    page.get_by_role("button", name="Check the labels").click()
    suspect = page.get_by_test_id("suspect")
    expect(suspect).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    found = context.request.get(f"/api/v1/datasets/{dataset_id}/suspects", params={"model_id": model_id}).json()
    planted_id = next(i["id"] for i in context.request.get(f"/api/v1/datasets/{dataset_id}/images",
                                                           params={"label": "daisy", "limit": 100}).json()["items"]
                      if i["original_name"] == "planted.jpg")
    assert any(i["image_id"] == planted_id and i["suggested_label"] == "sunflowers" for i in found["items"]), found
    expect(suspect.get_by_role("heading", name=re.compile(r"Image 1 of \d+"))).to_be_attached()
    shot("12-check-labels")
    first = found["items"][0]
    page.keyboard.press("u")
    expect(page.get_by_test_id("review-summary")).to_contain_text("1 decision made")
    images = context.request.get(f"/api/v1/datasets/{dataset_id}/images", params={"limit": 100}).json()["items"]
    assert next(i for i in images if i["id"] == first["image_id"])["label"] == first["suggested_label"]
    page.get_by_role("button", name="Update the model with these fixes").click()
    expect(page.get_by_text("Updating the model with your fixes")).to_be_visible()

    # Label images: three photos without a class, ordered by the model; S skips to the next, a number key labels,
    # and "Update the model now" makes a new version with the labels.
    page.goto(f"/datasets/{dataset_id}")
    page.get_by_role("link", name="Label images").click()
    expect(page).to_have_url(re.compile(rf"/datasets/{dataset_id}/label"))
    page.locator("input[type=file][accept='image/*']").set_input_files(photos["unlabelled"])
    to_label = page.get_by_test_id("to-label")
    # first in upload order, then in the model's order with its guesses, once the ordering job has run
    expect(to_label.get_by_text(re.compile(r"The model guesses"))).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    expect(to_label.get_by_role("heading", name="Image 1 of 3")).to_be_attached()
    shot("13-label-images")
    page.keyboard.press("s")
    expect(to_label.get_by_role("heading", name="Image 2 of 3")).to_be_attached()
    before = context.request.get(f"/api/v1/models/{model_id}").json()["active_version"]
    page.keyboard.press("1")
    expect(page.get_by_test_id("label-summary")).to_contain_text("2 images waiting; 1 label given")
    page.get_by_role("button", name="Update the model now").click()
    deadline = time.monotonic() + TRAIN_TIMEOUT_MS / 1000
    while context.request.get(f"/api/v1/models/{model_id}").json()["active_version"] == before:
        assert time.monotonic() < deadline, "no new version with the new label"
        time.sleep(1)

    # 12. A token, created (shown once) and revoked.
    main_nav.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("Flower sorter")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_test_id("token-secret")).to_have_text(re.compile(r"^pgh_\w+$"))
    page.get_by_role("button", name="I have saved it").click()
    page.get_by_role("button", name="Revoke Flower sorter").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke token").click()
    expect(page.get_by_text("Revoked “Flower sorter”. It no longer works.")).to_be_visible()
    shot("14-token-revoked")

    # 13. Admin: the local compute node with its resources, and every job.
    main_nav.get_by_role("link", name="Admin").click()
    nodes = page.get_by_role("region", name="Compute nodes")
    expect(nodes.get_by_text("alive")).to_be_visible()
    expect(nodes.get_by_role("button", name=re.compile("^Drain"))).to_be_visible()
    jobs = page.get_by_role("region", name="All jobs")
    expect(jobs.get_by_role("cell", name="Training")).to_be_visible()
    expect(jobs.get_by_role("cell", name="Changing classes").first).to_be_visible()  # adding, then renaming
    nodes.get_by_role("button", name=re.compile("^Drain")).click()
    expect(nodes.get_by_text("draining")).to_be_visible()
    shot("15-admin")
    nodes.get_by_role("button", name=re.compile("^Undrain")).click()
    expect(nodes.get_by_role("button", name=re.compile("^Drain"))).to_be_visible()

    # 14. At phone width, the model page still reads well.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, base_url=server,
                                storage_state=context.storage_state())
    small = phone.new_page()
    small.goto(f"/models/{model_id}")
    expect(small.get_by_test_id("accuracy")).to_be_visible()
    small.wait_for_load_state("networkidle")
    small.screenshot(path=str(shots / "model-16-phone.png"), full_page=True)
    phone.close()

    assert not [e for e in errors if "401" not in e and "404" not in e], errors
    context.close()
