"""Scale: 1,000 classes and 100,000 images (issue 29).

The set is rendered here (``_glyphs.py``: 1,000 CJK characters, 100 images each, 64-96 px JPEGs; needs
``apt-get install fonts-wqy-zenhei``) and kept in ``--work`` as a zip with one folder per class.

Stages (``--stage``, several allowed, comma-separated; ``ingest`` and ``postgres`` are in ``scale_db.py``):

- ``data``: render the set (seeded; made once).
- ``head``: the ridge head alone at 1,000 classes, on the features of the extractor a fresh install has
  (EfficientNet-Lite0 from the package, frozen, its smallest size; computed once and cached). The images are split
  by content hash as the product splits them. It times what an expand job does to the head when a class of 100
  images is added to 999 and when one is removed (the same calls, in the same order: read the last version's head
  file, change it, keep the settings or choose them on validation, solve, answer the test images, save, build the
  graph), the size of each saved head file, and the process's peak memory.

- ``ingest``: upload the set through the HTTP API of a real server (SQLite, the embedded default).
- ``postgres``: the same upload to a server on PostgreSQL, then a 1,000,000-row dataset there.
- ``train``: after the upload, a model of 999 classes with a 15-minute budget, then remove a class (its first
  change), add the last class, remove that and add the first back, then predict (``scale_train.py``). With
  ``--reuse``, a model an earlier run trained is grown again instead.
- ``web``: the pages in Chromium, timed until usable (``scale_web.py``; with ``--reuse`` after ``train``).

    .venv/bin/python benchmarks/scale.py --stage data,head [--classes 1000] [--per-class 100]
    .venv/bin/python benchmarks/scale.py --stage postgres [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _glyphs  # noqa: E402
import scale_db  # noqa: E402
import scale_train  # noqa: E402
import scale_web  # noqa: E402
from _server import start_server  # noqa: E402

from pigeonhole.client import Client  # noqa: E402
from pigeonhole.datasets.splits import hash_split  # noqa: E402
from pigeonhole.learn import head_file  # noqa: E402
from pigeonhole.learn.backbones import available_specs  # noqa: E402
from pigeonhole.learn.data import sha256_bytes  # noqa: E402
from pigeonhole.learn.features import ImageItem, compute_features, pretrained_onnx_extractor  # noqa: E402
from pigeonhole.learn.head import RidgeHead  # noqa: E402
from pigeonhole.learn.unknown import choose_unknown  # noqa: E402
from pigeonhole.learn.weights import WeightsCatalog  # noqa: E402
from pigeonhole.models.expand_settings import keeps_settings  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Laps:
    """Seconds per step, printed as they happen."""

    def __init__(self, title: str) -> None:
        self.title, self.laps, self.started = title, {}, time.perf_counter()

    def __call__(self, name: str, step: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = step()
        self.laps[name] = time.perf_counter() - t
        return out

    def report(self) -> float:
        total = time.perf_counter() - self.started
        print(f"  {self.title}: {total:.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in self.laps.items()) + ")",
              flush=True)
        return total


def glyph_features(archive: Path, cache: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    """split -> (features, labels) of every image, with the fresh install's extractor at its smallest size."""
    if cache.exists():
        saved = np.load(cache)
        return {s: (saved[f"{s}_x"], saved[f"{s}_y"].tolist()) for s in ("train", "val", "test")}
    spec = next(s for s in available_specs(WeightsCatalog(cache.parent / "no-weights"))
                if s.id == "efficientnet_lite0")
    extractor = pretrained_onnx_extractor(spec.at_size(spec.sizes[0]), WeightsCatalog(cache.parent / "no-weights"))
    items: dict[str, list[tuple[bytes, str]]] = {"train": [], "val": [], "test": []}
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            items[hash_split(sha256_bytes(data))].append((data, name.split("/")[0]))
    t = time.perf_counter()
    out = {}
    for split, rows in items.items():
        x = compute_features([ImageItem.from_bytes(d) for d, _ in rows], extractor)
        out[split] = (x, [label for _, label in rows])
    print(f"scale: features of {sum(len(v) for v in items.values())} images in {time.perf_counter() - t:.0f} s "
          f"({spec.id} {spec.sizes[0]} px)", flush=True)
    np.savez(cache, **{f"{s}_x": x for s, (x, _) in out.items()},
             **{f"{s}_y": np.array(y) for s, (_, y) in out.items()})
    return out


def _rows(data: tuple[np.ndarray, list[str]], keep: Callable[[str], bool]) -> tuple[np.ndarray, list[str]]:
    x, labels = data
    index = [i for i, label in enumerate(labels) if keep(label)]
    return x[index], [labels[i] for i in index]


def change(store: dict[str, bytes], val: tuple[np.ndarray, list[str]], test: tuple[np.ndarray, list[str]],
           new: tuple[np.ndarray, list[str]] | None, remove: str | None, title: str, *, choose: bool = False) -> float:
    """What an expand job does to the head (``models/expansion.py``): read the last version's head file, change it,
    keep the settings when one class in a hundred or more changes (else choose them again on validation images),
    solve, answer the test images, save (only new rows are written), build the graph. The new file goes into
    ``store``. ``choose``: choose the settings whatever the change (a new head's first settings)."""
    laps = Laps(title)
    key = f"v{len(store) - 1}"
    grown = laps("load", lambda: head_file.read(key, store.__getitem__))
    changed = int(new is not None) + int(remove is not None)
    kept = not choose and keeps_settings(len(grown.classes), changed, True)
    if remove is not None:
        laps("remove", lambda: grown.remove_class(remove))
    fresh = _rows(val, lambda label: label in set(new[1])) if new is not None else None
    if kept:
        if new is not None and fresh is not None:
            laps("add", lambda: grown.add(np.vstack([new[0], fresh[0]]), new[1] + fresh[1]))
    else:
        chooser = laps("copy", grown.copy)
        if new is not None:
            laps("add", lambda: (chooser.add(*new), grown.add(*new)))
        known = set(chooser.classes)
        vx, vy = _rows(val, lambda label: label in known)
        laps("fit", lambda: chooser.fit(vx, vy))
        laps("unknown", lambda: choose_unknown(chooser, vx, vy, left_out=False))
        for attribute in ("alpha", "temperature", "threshold", "threshold_precision", "threshold_coverage",
                          "detector"):
            setattr(grown, attribute, getattr(chooser, attribute))
        if fresh is not None:
            laps("add val", lambda: grown.add(*fresh))
    laps("solve", grown.solve)
    tx, ty = _rows(test, lambda label: label in set(grown.classes))
    probs = laps("answer test", lambda: grown.answers(tx))[0]
    saved = laps("save", grown.to_bytes)
    store[f"v{len(store)}"] = saved
    laps("graph", grown.to_module)
    total = laps.report()
    accuracy = float((np.array(grown.classes)[probs.argmax(axis=1)] == np.array(ty)).mean())
    print(f"    test top-1 {100 * accuracy:.2f} % on {len(ty)} images, settings {'kept' if kept else 'chosen'}, "
          f"alpha {grown.alpha:g}, detector {grown.detector.kind if grown.detector else None}, "
          f"head file {len(saved) / 2**20:.1f} MiB", flush=True)
    return total


def head_stage(archive: Path, work: Path) -> None:
    data = glyph_features(archive, work / f"{archive.stem}-lite0.npz")
    train, val, test = data["train"], data["val"], data["test"]
    classes = sorted(set(train[1]))
    last = classes[-1]
    print(f"scale head: {len(classes)} classes, {len(train[1])} train / {len(val[1])} val / {len(test[1])} test "
          f"images, {train[0].shape[1]} features", flush=True)
    laps = Laps(f"a head of {len(classes) - 1} classes from scratch (training's last step)")
    head = RidgeHead(train[0].shape[1])
    laps("add", lambda: head.add(*_rows(train, lambda label: label != last)))
    store = {"v0": laps("save", head.to_bytes)}
    change(store, val, test, None, None, f"settings of the {len(classes) - 1}-class head", choose=True)
    laps.report()
    new = _rows(train, lambda label: label == last)
    added = change(store, val, test, new, None, f"add a class of {len(new[1])} training images")
    removed = change(store, val, test, None, classes[0], "remove a class")
    print(f"scale head: add {added:.2f} s, remove {removed:.2f} s; peak memory {peak_rss_mib():.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", default="data,head")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pigeonhole-scale"))
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server's URL (the stage creates its own database there)")
    parser.add_argument("--reuse", action="store_true", help="keep the database and data of an earlier run")
    parser.add_argument("--budget", type=int, default=900, help="the training stage's time budget, seconds")
    args = parser.parse_args()
    stages = set(args.stage.split(","))
    archive = args.work / f"glyphs-{args.classes}x{args.per_class}-s{args.seed}.zip"
    t = time.perf_counter()
    _glyphs.write_zip(archive, args.classes, args.per_class, args.seed)
    print(f"scale data: {archive} ({archive.stat().st_size / 2**20:.0f} MiB) ready in {time.perf_counter() - t:.0f} s",
          flush=True)
    if "head" in stages:
        head_stage(archive, args.work)
    if stages & {"ingest", "postgres", "train", "web"}:
        service_stages(archive, args.work, args.postgres if "postgres" in stages else None, args.reuse,
                       args.budget if "train" in stages else 0, "web" in stages)


def service_stages(archive: Path, work: Path, postgres: str | None, reuse: bool, train_budget: int,
                   web: bool = False) -> None:
    """Ingest the set through the API (on PostgreSQL when given), then the 1,000,000-row dataset there. With
    ``reuse``, the database and data directory of an earlier run are kept."""
    url = None
    if postgres:
        url = postgres.rsplit("/", 1)[0] + "/pgh_scale" if reuse else scale_db.fresh_database(postgres, "pgh_scale")
    # the million rows and the 100,000 uploaded are more than the default quota of images per user
    data_dir = work / ("server-postgres" if url else "server-sqlite")
    if not reuse and data_dir.exists():
        shutil.rmtree(data_dir)
    server = start_server({"PIGEONHOLE_QUOTA_IMAGES_PER_USER": "5000000",
                           **({"PIGEONHOLE_DATABASE_URL": url} if url else {})}, data_dir)
    try:
        client = Client(server.base, server.token, timeout_s=600)
        folder = scale_db.unpack(archive, work / archive.stem)
        kept = {d["name"]: d["id"] for d in client.list_datasets()} if reuse else {}
        dataset = {"id": kept["glyphs"]} if "glyphs" in kept else scale_db.ingest(client, folder, server)
        if url is not None:
            million = kept.get("a million rows") or scale_db.make_rows(url, dataset["id"])
            with server.client() as http:
                scale_db.pages(http, million, folder, dataset["id"])
            scale_db.explain(url, million)
        if train_budget:
            test_zip = _glyphs.write_zip(work / "glyphs-held-out-s1.zip", len(kept_classes(client, dataset["id"])), 3,
                                         seed=1)
            renders = scale_train.test_images(test_zip)
            classes = kept_classes(client, dataset["id"])
            trained = {m["name"]: m["id"] for m in client.list_models()} if reuse else {}
            with server.client() as http:
                if "glyphs" in trained:
                    print("scale train: growing the model an earlier run trained", flush=True)
                    model_id = trained["glyphs"]
                else:
                    model_id = scale_train.train(client, http, dataset["id"], classes, renders, train_budget)
                scale_train.grow(client, http, model_id, classes, renders)
        if web:
            models = client.list_models()
            scale_web.pages(server.base, dataset["id"], models[0]["id"] if models else None, work)
    finally:
        server.stop()


def kept_classes(client: Client, dataset_id: str) -> list[str]:
    return [c["name"] for c in client.get_dataset(dataset_id)["classes"]]


if __name__ == "__main__":
    main()
