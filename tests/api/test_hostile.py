"""Every file of the hostile corpus (tests/data/hostile, made by tests/data/make_hostile.py) is refused
with its reason, memory stays bounded, and the dataset's earlier content is intact afterwards."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from tests.api.conftest import Account
from tests.api.datasets_helpers import snapshot, upload
from tests.factories import jpeg_bytes, make_zip, png_bytes

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
# Decoding any bomb would take hundreds of MB; refusing them all must not.
MAX_GROWTH_MIB = 200


def test_corpus_is_current() -> None:
    names = {p.name for p in CORPUS.iterdir()} - {"manifest.json"}
    assert names == set(MANIFEST), "run tests/data/make_hostile.py to regenerate the corpus"
    for name, entry in MANIFEST.items():
        assert (CORPUS / name).stat().st_size == entry["bytes"], name


def test_every_hostile_file_is_refused_and_nothing_changes(alice: Account) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "guarded"}).json()["id"]
    upload(alice, dataset_id, [("good.png", png_bytes(seed=1)), ("good.jpg", jpeg_bytes(seed=2))], label="cats")
    before = snapshot(alice, dataset_id)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    problems = []
    for name, entry in sorted(MANIFEST.items()):
        response = upload(alice, dataset_id, [(name, (CORPUS / name).read_bytes())], label=entry["label"])
        body = response.json()
        if response.status_code != 201 or body["accepted"] != 0 or not body["rejected"]:
            problems.append(f"{name}: {response.status_code} {body}")
            continue
        codes = {r["code"] for r in body["rejected"]}
        if not codes & set(entry["codes"]):
            problems.append(f"{name}: refused for {codes}, expected one of {entry['codes']}")
        if not all(r["reason"].endswith(".") and len(r["reason"]) > 15 for r in body["rejected"]):
            problems.append(f"{name}: the reason is not a sentence: {body['rejected']}")
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak_before
    assert not problems, "\n".join(problems)
    assert growth < MAX_GROWTH_MIB, f"memory grew by {growth:.0f} MiB while refusing the corpus"
    assert snapshot(alice, dataset_id) == before


@pytest.mark.parametrize("name", ["bomb.png", "zip-ratio-bomb.zip"])
def test_bombs_inside_a_good_archive_do_not_stop_the_good_files(alice: Account, name: str) -> None:
    archive = make_zip({"cats/good.png": png_bytes(seed=3), f"cats/{name}": (CORPUS / name).read_bytes()})
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "mixed"}).json()["id"]
    body = upload(alice, dataset_id, [("mixed.zip", archive)]).json()
    assert body["accepted"] == 1 and len(body["rejected"]) == 1
