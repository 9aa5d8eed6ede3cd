"""Scale on the service side: ingesting 100,000 images through the HTTP API, and a 1,000,000-row dataset on
PostgreSQL (issue 29). Stages of ``benchmarks/scale.py`` (``ingest``, ``postgres``); this module holds them.

- ingest: a real ``pigeonhole serve`` (SQLite by default; ``--database-url`` for PostgreSQL); the glyph set is
  unpacked to a folder and uploaded as a user would (``Client.upload_folder``: small batches per class). Prints
  images/s per tenth of the upload (it must not slow down as the dataset grows), the slowest request, and the
  server's memory at each tenth and at its peak (it must stay flat: streaming).
- postgres: a second dataset of 1,000,000 rows (1,000 classes of 1,000) made from the ingested images' rows
  (the same blobs repeat under several classes, as the issue allows), inserted in bulk with the columns the
  ingestor writes and its split rule; then the API's pages on it are timed (first page, a deep page, one class,
  the dataset with its classes and health report, the dataset list), the training job's snapshot query, the
  export's rate, and EXPLAIN ANALYZE of each query the service runs.
"""

from __future__ import annotations

import statistics
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import create_engine, func, insert, select, text

from pigeonhole.client import Client
from pigeonhole.datasets import repository as repo
from pigeonhole.datasets.splits import assign_split
from pigeonhole.db.engine import create_db_engine
from pigeonhole.db.tables import Dataset, DatasetImage
from pigeonhole.ids import new_id

if TYPE_CHECKING:
    from _server import Server

ROWS_CLASSES, ROWS_PER_CLASS = 1000, 1000


def unpack(archive: Path, folder: Path) -> Path:
    if not folder.exists():
        partial = folder.with_name(folder.name + ".part")
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(partial)
        partial.rename(folder)
    return folder


def fresh_database(admin_url: str, name: str) -> str:
    """An empty PostgreSQL database ``name`` on the server of ``admin_url``; its URL."""
    engine = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def ingest(client: Client, folder: Path, server: Server) -> dict[str, Any]:
    """Upload the folder as the client does (in chunks); images/s overall and per tenth of the upload, the slowest
    request, and the server's resident memory at each tenth (streaming keeps it flat) and at its peak."""
    dataset = client.create_dataset("glyphs")
    marks: list[tuple[float, int]] = [(time.perf_counter(), 0)]
    longest = [0.0]
    memory = [server.rss_mib()]
    total_files = sum(1 for p in folder.rglob("*") if p.is_file())

    def progress(state: Any) -> None:
        now = time.perf_counter()
        longest[0] = max(longest[0], now - marks[-1][0])
        marks.append((now, state.files_done))
        if state.files_done >= total_files * len(memory) / 10:
            memory.append(server.rss_mib())

    started = time.perf_counter()
    result = client.upload_folder(dataset["id"], folder, progress=progress)
    seconds = time.perf_counter() - started
    total = result.files_total
    tenths = []
    for k in range(10):
        lo = next(m for m in marks if m[1] >= total * k / 10)
        hi = next(m for m in marks if m[1] >= total * (k + 1) / 10)
        tenths.append((hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-9))
    print(f"scale ingest: {result.accepted} accepted, {result.duplicates} duplicates, {len(result.rejected)} "
          f"rejected in {seconds:.0f} s = {result.accepted / seconds:.0f} images/s; per tenth: "
          + " ".join(f"{r:.0f}" for r in tenths) + f"; slowest request {longest[0]:.2f} s; server peak RSS "
          f"{server.peak_rss_mib():.0f} MiB; RSS at each tenth " + " ".join(f"{m:.0f}" for m in memory) + " MiB",
          flush=True)
    for rejection in result.rejected[:3]:
        print(f"  rejected: {rejection}", flush=True)
    return dataset


def make_rows(database_url: str, source_dataset: str) -> str:
    """The 1,000,000-row dataset, beside the ingested one, owned by the same user."""
    engine = create_db_engine(database_url)
    with engine.begin() as connection:
        source = connection.execute(
            select(DatasetImage.owner_id, DatasetImage.sha256, DatasetImage.size_bytes, DatasetImage.width,
                   DatasetImage.height, DatasetImage.format, DatasetImage.mode)
            .where(DatasetImage.dataset_id == source_dataset).order_by(DatasetImage.id)).all()
        owner = source[0].owner_id
        dataset_id = new_id()
        connection.execute(insert(Dataset).values(id=dataset_id, owner_id=owner, name="a million rows"))
    started = time.perf_counter()
    for k in range(ROWS_CLASSES):
        label = f"class {k:04d}"
        has_val = has_test = False
        rows = []
        for j in range(ROWS_PER_CLASS):
            s = source[(k * ROWS_PER_CLASS + j) % len(source)]
            split = assign_split(s.sha256, class_count_before=j, class_has_val=has_val, class_has_test=has_test)
            has_val, has_test = has_val or split == "val", has_test or split == "test"
            rows.append({"id": new_id(), "dataset_id": dataset_id, "owner_id": owner, "label": label,
                         "sha256": s.sha256, "size_bytes": s.size_bytes, "width": s.width, "height": s.height,
                         "format": s.format, "mode": s.mode, "split": split, "original_name": f"{k}-{j}.jpg",
                         "origin": "upload", "label_kept": False})
        with engine.begin() as connection:
            connection.execute(insert(DatasetImage), rows)
    with engine.begin() as connection:
        connection.execute(text("ANALYZE images"))
        count = connection.scalar(select(func.count()).select_from(DatasetImage)
                                  .where(DatasetImage.dataset_id == dataset_id))
    print(f"scale postgres: {count} rows inserted in {time.perf_counter() - started:.0f} s", flush=True)
    engine.dispose()
    return dataset_id


def _timed(http: httpx.Client, path: str, repeats: int = 3, **params: Any) -> tuple[float, Any]:
    times, body = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        response = http.get(path, params=params)
        times.append(time.perf_counter() - t)
        response.raise_for_status()
        body = response.json()
    return statistics.median(times), body


def pages(http: httpx.Client, dataset_id: str, folder: Path, older: str) -> None:
    base = f"/api/v1/datasets/{dataset_id}"
    figures = {}
    figures["dataset with classes and health"], detail = _timed(http, base)
    figures["first page of images (50)"], first = _timed(http, f"{base}/images", limit=50)
    cursor = first["next_cursor"]
    for _ in range(200):  # 10,000 images in
        cursor = http.get(f"{base}/images", params={"limit": 50, "cursor": cursor}).json()["next_cursor"]
    figures["page 201 of images"], _ = _timed(http, f"{base}/images", limit=50, cursor=cursor)
    figures["first page of one class"], _ = _timed(http, f"{base}/images", limit=50, label="class 0500")
    figures["dataset list with counts"], _ = _timed(http, "/api/v1/datasets")
    figures["first page of the older dataset (100,000 images)"], _ = _timed(http, f"/api/v1/datasets/{older}/images",
                                                                           limit=50)
    # one batch as the client sends it, into a class that already holds these bytes under another label's
    # name: every file is checked for duplicates and quota against the million rows
    images = sorted(folder.glob("*/*.jpg"))[:64]
    files = [("files", (f"extra-{p.parent.name}-{p.name}", p.read_bytes(), "image/jpeg")) for p in images]
    t = time.perf_counter()
    answer = http.post(f"{base}/uploads", files=files, data={"label": "new class"})
    answer.raise_for_status()
    figures[f"upload of {len(images)} images into it ({answer.json()['accepted']} accepted)"] = time.perf_counter() - t
    print(f"scale postgres: {len(detail['classes'])} classes; health report: {str(detail.get('health'))[:300]}")
    for name, seconds in figures.items():
        print(f"  {name}: {1000 * seconds:.0f} ms", flush=True)
    t = time.perf_counter()
    received = 0
    with http.stream("GET", f"{base}/export") as response:
        first_byte = time.perf_counter() - t
        for chunk in response.iter_bytes():
            received += len(chunk)
            if time.perf_counter() - t > first_byte + 20:
                break
    spent = time.perf_counter() - t - first_byte
    print(f"  export: first byte after {first_byte:.1f} s, then {received / 2**20 / max(spent, 1e-9):.1f} MiB/s",
          flush=True)


def explain(database_url: str, dataset_id: str) -> None:
    """EXPLAIN ANALYZE of the queries behind those pages (and of the training job's snapshot)."""
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        owner = connection.scalar(select(Dataset.owner_id).where(Dataset.id == dataset_id))
        queries = {
            "class counts": select(DatasetImage.label, func.count()).where(DatasetImage.dataset_id == dataset_id)
            .group_by(DatasetImage.label),
            "images page": repo.images_of(owner, dataset_id).order_by(DatasetImage.id.desc()).limit(51),
            "one class page": repo.images_of(owner, dataset_id).where(DatasetImage.label == "class 0500")
            .order_by(DatasetImage.id.desc()).limit(51),
            "label conflicts": select(func.count()).select_from(
                select(DatasetImage.sha256).where(DatasetImage.dataset_id == dataset_id)
                .group_by(DatasetImage.sha256).having(func.min(DatasetImage.label) != func.max(DatasetImage.label))
                .subquery()),
            "owner usage": select(func.sum(DatasetImage.size_bytes), func.count())
            .where(DatasetImage.owner_id == owner),
            "training snapshot": select(DatasetImage.sha256, DatasetImage.label, DatasetImage.split,
                                        DatasetImage.size_bytes).where(DatasetImage.dataset_id == dataset_id)
            .order_by(DatasetImage.id),
        }
        for name, statement in queries.items():
            compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
            plan = connection.execute(text(f"EXPLAIN ANALYZE {compiled}")).scalars().all()
            print(f"  EXPLAIN {name}:\n    " + "\n    ".join(plan[:8]), flush=True)
    engine.dispose()
