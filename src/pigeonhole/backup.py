"""Back up the database and the blob store into one archive (``pigeonhole backup``); restore.py reads it back.

The archive is a plain tar file:

- ``db/<table>.jsonl``: every row of every table, one JSON object per line. One portable format for
  both databases, so a SQLite backup restores into PostgreSQL and the other way round, and no
  ``pg_dump`` has to be installed;
- ``blobs/<key>``: the files the rows refer to, under their blob-store key (image originals by
  sha256, model artifacts, batch-prediction results);
- ``secret_key``: the generated secret key of a development install (absent when
  ``PIGEONHOLE_SECRET_KEY`` is configured), without which API tokens and sessions stop working;
- ``manifest.json`` (last, because it holds the sha256 of every other member): format version,
  Pigeonhole version, Alembic revision, creation time, database dialect and row/file counts.

Consistency: the rows come from one snapshot (SQLite: the online backup API copies the file while
the service keeps writing; PostgreSQL: one ``REPEATABLE READ`` read-only transaction), and the
files are copied afterwards. That order is safe because a file is always stored before the row
that refers to it is committed, and files are never rewritten (content addressing, immutable
version keys); files added after the snapshot are simply not needed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData, Table, create_engine, inspect, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

import pigeonhole.db.tables  # noqa: F401  (registers every table on Base.metadata)
from pigeonhole import __version__
from pigeonhole.db.base import Base
from pigeonhole.db.engine import create_db_engine, is_sqlite, normalise_url
from pigeonhole.db.migrate import alembic_config
from pigeonhole.settings import SECRET_FILE_NAME, Settings
from pigeonhole.storage.blob_types import BlobCorrupt, BlobError, BlobMissing, blob_key
from pigeonhole.storage.blobs import BlobStore

FORMAT = "pigeonhole-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DB_PREFIX = "db/"
BLOB_PREFIX = "blobs/"
SECRET_MEMBER = "secret_key"
# State of the running compute cluster, not user data: Ray node ids change on every start, so these
# rows mean nothing elsewhere; the dispatcher rebuilds them within seconds of starting.
RUNTIME_TABLES = frozenset({"compute_nodes", "node_cache_entries", "dispatcher_leases"})
COPY_BUFFER = 1024 * 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class BackupError(Exception):
    """Why a backup or a restore cannot go on, in a sentence an operator can act on."""


@dataclass
class BackupSummary:
    path: Path
    revision: str
    rows: dict[str, int]
    files: int
    file_bytes: int


def create_backup(settings: Settings, output: Path) -> BackupSummary:
    """Write one archive of the configured database and blob store to ``output``.

    ``output`` may be an existing directory (a dated file name is chosen in it). The archive is
    written next to its final name and renamed at the end, so a file with that name is always
    complete; an existing file is never overwritten.
    """
    path = _archive_path(output)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".pigeonhole-backup-") as tmp:
        work = Path(tmp)
        with database_errors(settings.resolved_database_url), _snapshot(settings.resolved_database_url, work) as conn:
            revision = _current_revision(conn)
            dialect = conn.dialect.name
            tables = _dump_tables(conn, work)
            refs = _collect_references(conn, work)
        blobs = BlobStore(settings.resolved_blob_url)
        partial = path.with_name(path.name + ".part")
        try:
            with _private_file(partial) as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT,
                                                              copybufsize=COPY_BUFFER) as tar:
                writer = _ArchiveWriter(tar)
                for dump in tables:
                    writer.add_file(dump.member, dump.path)
                files, file_bytes = _copy_blobs(blobs, refs, writer)
                secret = _secret_to_back_up(settings)
                if secret is not None:
                    writer.add_bytes(SECRET_MEMBER, secret)
                manifest = _manifest(revision, dialect, tables, files, file_bytes, writer.members, settings)
                writer.add_bytes(MANIFEST, json.dumps(manifest, indent=1).encode(), record=False)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return BackupSummary(path, revision, {t.name: t.rows for t in tables}, files, file_bytes)


def _archive_path(output: Path) -> Path:
    output = output.expanduser().resolve()
    if output.is_dir():
        return output / f"pigeonhole-backup-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar"
    if output.exists():
        raise BackupError(f"{output} already exists; choose another file name (a backup never overwrites a file).")
    if not output.parent.is_dir():
        raise BackupError(f"The folder {output.parent} does not exist; create it first.")
    return output


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[IO[bytes]]:
    """A new file only its owner can read: the archive holds password hashes and maybe the secret key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw:
        yield raw
        raw.flush()
        os.fsync(raw.fileno())


@contextlib.contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn a database that cannot be reached into a sentence (the URL without its password)."""
    try:
        yield
    except sa_exc.OperationalError as exc:
        shown = make_url(normalise_url(url)).render_as_string(hide_password=True)
        raise BackupError(f"Cannot use the database at {shown}: {exc.orig or exc}") from exc


@contextlib.contextmanager
def _snapshot(url: str, work: Path) -> Iterator[Connection]:
    """A connection that sees the whole database as it was at one instant."""
    url = normalise_url(url)
    if is_sqlite(url):
        copy = work / "snapshot.db"
        _sqlite_copy(url, copy)
        engine = create_engine(f"sqlite:///{copy}")
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()
            copy.unlink(missing_ok=True)
        return
    if make_url(url).get_backend_name() != "postgresql":
        raise BackupError("Backups support SQLite and PostgreSQL databases only.")
    engine = create_db_engine(url, pool_size=1)
    try:
        # Every statement of a REPEATABLE READ transaction sees the snapshot taken at its first one.
        options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        with engine.connect().execution_options(**options) as conn, conn.begin():
            yield conn
    finally:
        engine.dispose()


def _sqlite_copy(url: str, target: Path) -> None:
    """Copy a live SQLite database with the online backup API: consistent even while others write."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("An in-memory database cannot be backed up.")
    if not Path(database).is_file():
        raise BackupError(f"There is no database at {database}: nothing to back up.")
    try:
        source = sqlite3.connect(database, timeout=30)
        try:
            with contextlib.closing(sqlite3.connect(target)) as copy:
                source.backup(copy)
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise BackupError(f"Cannot read the SQLite database at {database}: {exc}") from exc


def _current_revision(conn: Connection) -> str:
    heads = MigrationContext.configure(conn).get_current_heads()
    if not heads:
        raise BackupError("The database has no Pigeonhole tables yet: there is nothing to back up.")
    if len(heads) > 1:
        raise BackupError(f"The database has several migration heads ({', '.join(heads)}); run `pigeonhole migrate`.")
    if not revision_known(heads[0]):
        raise BackupError(f"The database was migrated by a newer Pigeonhole (revision {heads[0]}) than this one "
                          f"({__version__}); back it up with that version.")
    return heads[0]


def revision_known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except (CommandError, ResolutionError):
        return False


@dataclass
class _TableDump:
    name: str
    member: str
    path: Path
    rows: int
    columns: list[str]


def _dump_tables(conn: Connection, work: Path) -> list[_TableDump]:
    """Every Pigeonhole table (foreign-key order) as JSON lines, read from the snapshot connection.

    The tables are reflected from the database rather than taken from the code, so a database that
    was not yet migrated to the newest revision is dumped exactly as it is.
    """
    metadata = reflect_tables(conn, exclude=RUNTIME_TABLES)
    return [_dump_table(conn, table, work / f"{table.name}.jsonl") for table in metadata.sorted_tables]


def reflect_tables(conn: Connection, *, exclude: Iterable[str] = ()) -> MetaData:
    present = set(inspect(conn).get_table_names())
    names = sorted(n for n in Base.metadata.tables if n in present and n not in set(exclude))
    metadata = MetaData()
    metadata.reflect(conn, only=names)
    return metadata


def _dump_table(conn: Connection, table: Table, path: Path) -> _TableDump:
    names = [c.name for c in table.columns]
    query = select(table).order_by(*table.primary_key.columns).execution_options(yield_per=1000)
    rows = 0
    with path.open("w", encoding="utf-8") as out:
        for row in conn.execute(query):
            record = {name: _encode(value) for name, value in zip(names, row, strict=True)}
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            rows += 1
    return _TableDump(table.name, f"{DB_PREFIX}{table.name}.jsonl", path, rows, names)


def _encode(value: Any) -> Any:
    """A column value as JSON; the restoring side turns it back by the column's type."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    return value


@dataclass
class _References:
    """The files the snapshot refers to. Image hashes go to a file: there may be millions."""

    content: Path  # "<sha256> <size>" per line, sorted, each hash once
    required_keys: list[str]  # model files a version row names
    optional_prefixes: list[str]  # other files of those versions and of batch jobs
    optional_content: list[str]  # uploaded zips of batch jobs (swept once the job is done)


def _collect_references(conn: Connection, work: Path) -> _References:
    metadata = MetaData()
    present = set(inspect(conn).get_table_names())
    refs = _References(work / "content-refs.txt", [], [], [])
    refs.content.write_text("")
    with refs.content.open("w") as out:
        for name in ("images", "pool_images"):  # labelled images, and those waiting for a label
            if name in present:
                table = Table(name, metadata, autoload_with=conn)
                query = (select(table.c.sha256, table.c.size_bytes).distinct().order_by(table.c.sha256)
                         .execution_options(yield_per=5000))
                for sha256, size in conn.execute(query):
                    out.write(f"{sha256} {size}\n")
    if "model_versions" in present:
        versions = Table("model_versions", metadata, autoload_with=conn)
        query = select(versions.c.model_id, versions.c.id, versions.c.onnx_key, versions.c.head_key,
                       versions.c.card_key).order_by(versions.c.id)
        for model_id, version_id, *keys in conn.execute(query):
            refs.required_keys += [k for k in keys if k]
            refs.optional_prefixes.append(f"models/{model_id}/{version_id}")
    if "jobs" in present:
        jobs = Table("jobs", metadata, autoload_with=conn)
        for job_id, kind in conn.execute(select(jobs.c.id, jobs.c.kind).where(jobs.c.kind.in_(("suspects", "queue")))):
            refs.optional_prefixes.append(f"{kind}/{job_id}")  # ranked lists (models/suspects.py, models/queue.py)
        for job_id, params in conn.execute(select(jobs.c.id, jobs.c.params).where(jobs.c.kind == "batch-predict")):
            refs.optional_prefixes.append(f"batch/{job_id}")
            if isinstance(params, dict) and params.get("zip_sha256") and SHA256_RE.match(str(params["zip_sha256"])):
                refs.optional_content.append(params["zip_sha256"])
    return refs


class _HashingReader:
    """Hashes what passes through it, so each member is read once while it is archived."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.digest.update(chunk)
        return chunk


class _ArchiveWriter:
    """Adds members to the tar and records each member's sha256 and size for the manifest."""

    def __init__(self, tar: tarfile.TarFile):
        self.tar = tar
        self.members: dict[str, dict[str, Any]] = {}
        self.mtime = int(datetime.now(UTC).timestamp())

    def add_stream(self, name: str, stream: IO[bytes], size: int, *, record: bool = True) -> str:
        if name in self.members:
            raise BackupError(f"internal error: {name} was added to the archive twice")
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, self.mtime
        reader = _HashingReader(stream)
        self.tar.addfile(info, reader)  # type: ignore[arg-type]  # tarfile only calls read()
        digest = reader.digest.hexdigest()
        if record:
            self.members[name] = {"sha256": digest, "size": size}
        return digest

    def add_file(self, name: str, path: Path) -> str:
        with path.open("rb") as f:
            return self.add_stream(name, f, path.stat().st_size)

    def add_bytes(self, name: str, data: bytes, *, record: bool = True) -> str:
        return self.add_stream(name, io.BytesIO(data), len(data), record=record)


def _copy_blobs(blobs: BlobStore, refs: _References, writer: _ArchiveWriter) -> tuple[int, int]:
    """Stream every referenced file into the archive; a missing or damaged one fails the backup.

    All problems are collected first, so one run tells the operator everything to repair.
    """
    problems: list[str] = []
    count = total = 0
    for sha256, size in _content_refs(refs.content):
        if BLOB_PREFIX + blob_key(sha256) in writer.members:  # in a dataset and in another's to-label pool
            continue
        problem = _copy_content(blobs, sha256, size, writer)
        if problem:
            problems.append(problem)
        else:
            count, total = count + 1, total + size
    for sha256 in refs.optional_content:
        if BLOB_PREFIX + blob_key(sha256) not in writer.members and blobs.exists(sha256):
            size = blobs.size(sha256)
            if _copy_content(blobs, sha256, size, writer) is None:
                count, total = count + 1, total + size
    optional = [key for prefix in refs.optional_prefixes for key in _list_keys(blobs, prefix)]
    for key, required in [(k, True) for k in refs.required_keys] + [(k, False) for k in optional]:
        if BLOB_PREFIX + key in writer.members:
            continue
        try:
            total += _copy_key(blobs, key, writer)
            count += 1
        except BlobError as exc:
            if required:
                problems.append(f"model file {key} cannot be read ({exc})")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BackupError(f"{len(problems)} file(s) the database refers to are missing or damaged in the blob store "
                          f"({shown}), so no backup was written. Run `pigeonhole doctor` to see and repair them, "
                          "then back up again.")
    return count, total


def _content_refs(path: Path) -> Iterator[tuple[str, int]]:
    previous = None
    with path.open() as f:
        for line in f:
            sha256, size = line.split()
            if sha256 != previous:  # the same bytes recorded with two sizes: the first decides
                yield sha256, int(size)
            previous = sha256


def _copy_content(blobs: BlobStore, sha256: str, size: int, writer: _ArchiveWriter) -> str | None:
    """Archive one image original; returns what is wrong with it, or None."""
    try:
        with blobs.open_blob(sha256, size) as f:
            digest = writer.add_stream(BLOB_PREFIX + blob_key(sha256), f, size)
    except BlobMissing:
        return f"image file {sha256} is missing"
    except BlobCorrupt:
        return f"image file {sha256} has the wrong size"
    if digest != sha256:
        return f"image file {sha256} is damaged (its bytes do not match its hash)"
    return None


def _copy_key(blobs: BlobStore, key: str, writer: _ArchiveWriter) -> int:
    with blobs.open(key) as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        writer.add_stream(BLOB_PREFIX + key, f, size)
    return size


def _list_keys(blobs: BlobStore, prefix: str) -> list[str]:
    """Keys under a prefix of the store (the blob store lists only content blobs itself)."""
    base = f"{blobs.root.rstrip('/')}/{prefix}" if blobs.root else prefix
    try:
        found = blobs.fs.find(base)
    except FileNotFoundError:
        return []
    return sorted(prefix + path[len(base):] for path in found if path.startswith(base + "/"))


def _secret_to_back_up(settings: Settings) -> bytes | None:
    """The generated development key, if that is what signs tokens; a configured key is the operator's."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return None
    path = settings.data_dir / SECRET_FILE_NAME
    return path.read_bytes() if path.is_file() else None


def key_fingerprint(settings: Settings) -> str | None:
    """Tells whether two installs share the secret key, without revealing it; None if none exists yet."""
    configured = settings.secret_key is not None and settings.secret_key.get_secret_value()
    if not configured and not (settings.data_dir / SECRET_FILE_NAME).is_file():
        return None
    return hmac.new(settings.secret, b"pigeonhole backup fingerprint", hashlib.sha256).hexdigest()[:16]


def _manifest(revision: str, dialect: str, tables: list[_TableDump], files: int, file_bytes: int,
              members: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pigeonhole_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "alembic_revision": revision,
        "database": {"dialect": dialect, "tables": [
            {"name": t.name, "member": t.member, "rows": t.rows, "columns": t.columns} for t in tables]},
        "files": {"count": files, "bytes": file_bytes},
        "secret": {"included": SECRET_MEMBER in members, "fingerprint": key_fingerprint(settings)},
        "members": members,
    }
