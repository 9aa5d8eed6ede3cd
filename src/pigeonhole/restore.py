"""Restore an archive made by :mod:`pigeonhole.backup` (``pigeonhole restore``).

Restoring verifies the whole archive before it writes anything, writes the files first and then
the rows in one transaction (schema recreated at the archive's revision, rows loaded in
foreign-key order, then migrated to this code's revision), so an interrupted restore leaves either
the old rows or all the new ones, plus at worst unreferenced files that the blob sweep removes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from alembic import command
from sqlalchemy import Connection, Engine, MetaData, Table, event, func, inspect, literal_column, null, select, text
from sqlalchemy import table as table_clause
from sqlalchemy.engine import make_url
from sqlalchemy.types import JSON, BigInteger, Date, DateTime, Float, Integer, LargeBinary, Numeric, TypeEngine
from sqlalchemy.types import Time as TimeType

from pigeonhole import __version__
from pigeonhole.backup import (
    BLOB_PREFIX,
    COPY_BUFFER,
    DB_PREFIX,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    RUNTIME_TABLES,
    SECRET_MEMBER,
    SHA256_RE,
    BackupError,
    database_errors,
    key_fingerprint,
    reflect_tables,
    revision_known,
)
from pigeonhole.db.base import Base
from pigeonhole.db.engine import create_db_engine, is_sqlite, normalise_url
from pigeonhole.db.migrate import MIGRATION_LOCK_KEY, alembic_config
from pigeonhole.settings import SECRET_FILE_NAME, Settings
from pigeonhole.storage.blob_types import CONTENT_PREFIX, BlobError, blob_key
from pigeonhole.storage.blobs import BlobStore

INSERT_BATCH = 500
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
# Derived keys an archive may restore: the blob store's own rule (no "..", no hidden names, no
# backslashes), checked before anything is written, so an archive cannot name a path outside the store.
_KEY_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._=-]{0,199}"
_DERIVED_KEY_RE = re.compile(rf"^{_KEY_SEGMENT}(/{_KEY_SEGMENT})*$")
_RESERVED_PREFIXES = frozenset({CONTENT_PREFIX, "tmp"})
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd", b"BZh")  # gzip, xz, zstd, bzip2


@dataclass
class RestoreSummary:
    revision: str
    rows: dict[str, int]
    files: int
    warnings: list[str] = field(default_factory=list)


def restore_backup(settings: Settings, archive: Path, *, force: bool = False) -> RestoreSummary:
    """Restore an archive into the configured database and blob store.

    Nothing is written until the whole archive has been verified and the database found empty (or
    ``force`` given). Files go first, rows last in one transaction: a failure leaves the old rows.
    """
    with _open_archive(archive) as tar:
        with _damaged(archive):
            manifest = _read_manifest(tar)
            members = _verify_members(tar, manifest)
            secret = _read_member(tar, members[SECRET_MEMBER]) if SECRET_MEMBER in members else None
        engine = _restore_engine(settings.resolved_database_url)
        try:
            with database_errors(settings.resolved_database_url):
                _check_target(engine, force)
                files = _restore_blobs(tar, members, BlobStore(settings.resolved_blob_url))
                rows = _restore_database(engine, tar, members, manifest)
        finally:
            engine.dispose()
    warnings = _restore_secret(settings, secret, manifest)
    return RestoreSummary(manifest["alembic_revision"], rows, files, warnings)


def _open_archive(path: Path) -> tarfile.TarFile:
    path = path.expanduser()
    if not path.is_file():
        raise BackupError(f"There is no backup file at {path}.")
    with path.open("rb") as f:
        magic = f.read(6)
    if magic.startswith(_COMPRESSED_MAGIC):
        raise BackupError(f"{path} is compressed: decompress it first (for example with gunzip, xz -d or zstd -d), "
                          "then restore the .tar file.")
    with _damaged(path):
        return tarfile.open(path, mode="r:")


@contextlib.contextmanager
def _damaged(path: Path) -> Iterator[None]:
    """A tar that cannot be read (truncated, compressed, not a tar) is refused with a sentence."""
    try:
        yield
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BackupError(f"{path} is damaged or is not a Pigeonhole backup ({exc}); nothing was restored.") from exc


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    stream = tar.extractfile(info)
    assert stream is not None  # verified to be a regular file
    return stream.read()


def _read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        info = tar.getmember(MANIFEST)
    except KeyError:
        raise BackupError("This file is not a complete Pigeonhole backup (it has no manifest.json); "
                          "nothing was restored.") from None
    stream = tar.extractfile(info) if info.isfile() and info.size <= MAX_MANIFEST_BYTES else None
    if stream is None:
        raise BackupError("The backup's manifest.json is not readable; nothing was restored.")
    try:
        manifest = json.loads(stream.read())
    except ValueError as exc:
        raise BackupError(f"The backup's manifest.json is damaged ({exc}); nothing was restored.") from exc
    _check_manifest(manifest)
    return manifest


def _check_manifest(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("This file is not a Pigeonhole backup (its manifest is of another kind).")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BackupError(f"This backup was made by a newer Pigeonhole ({manifest.get('pigeonhole_version')}) in a "
                          "format this version cannot read; upgrade Pigeonhole, then restore.")
    revision = manifest.get("alembic_revision")
    if not isinstance(revision, str) or not revision_known(revision):
        raise BackupError(f"This backup was made by a newer Pigeonhole ({manifest.get('pigeonhole_version')}, "
                          f"database revision {revision}) than this one ({__version__}); upgrade Pigeonhole, "
                          "then restore.")
    members, database = manifest.get("members"), manifest.get("database")
    tables = database.get("tables") if isinstance(database, dict) else None
    if not isinstance(members, dict) or not isinstance(tables, list):
        raise BackupError("The backup's manifest.json is incomplete; nothing was restored.")
    for entry in tables:
        if not isinstance(entry, dict) or entry.get("member") not in members or not isinstance(entry.get("rows"), int):
            raise BackupError("The backup's manifest.json lists a table without its data; nothing was restored.")
    for name, entry in members.items():
        if not _member_allowed(name) or not isinstance(entry, dict):
            raise BackupError(f"The backup contains {name!r}, which Pigeonhole never writes; nothing was restored.")


def _member_allowed(name: str) -> bool:
    if name == SECRET_MEMBER:
        return True
    if name.startswith(DB_PREFIX):
        return re.fullmatch(r"[a-z_][a-z0-9_]{0,62}\.jsonl", name[len(DB_PREFIX):]) is not None
    if not name.startswith(BLOB_PREFIX):
        return False
    key = name[len(BLOB_PREFIX):]
    if key.startswith(CONTENT_PREFIX + "/"):
        sha256 = key.rsplit("/", 1)[-1]
        return SHA256_RE.match(sha256) is not None and key == blob_key(sha256)
    return len(key) <= 1024 and _DERIVED_KEY_RE.match(key) is not None and key.split("/")[0] not in _RESERVED_PREFIXES


def _verify_members(tar: tarfile.TarFile, manifest: dict[str, Any]) -> dict[str, tarfile.TarInfo]:
    """Re-hash every member against the manifest: a damaged or incomplete archive is refused here."""
    expected: dict[str, dict[str, Any]] = manifest["members"]
    found: dict[str, tarfile.TarInfo] = {}
    for info in tar:
        if info.name == MANIFEST:
            continue
        entry = expected.get(info.name)
        if entry is None or not info.isfile() or info.name in found:
            raise BackupError(f"The backup contains an unexpected entry {info.name!r}; nothing was restored.")
        if info.size != entry.get("size") or _member_sha256(tar, info) != entry.get("sha256"):
            raise BackupError(f"The backup is damaged: {info.name} does not match its checksum. Nothing was "
                              "restored; use another copy of the backup.")
        found[info.name] = info
    missing = sorted(set(expected) - set(found))
    if missing:
        raise BackupError(f"The backup is incomplete: {len(missing)} file(s) are missing from it (for example "
                          f"{missing[0]}). Nothing was restored; use another copy of the backup.")
    return found


def _member_sha256(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    stream = tar.extractfile(info)
    assert stream is not None  # a regular file
    while chunk := stream.read(COPY_BUFFER):
        digest.update(chunk)
    return digest.hexdigest()


def _restore_engine(url: str) -> Engine:
    """An engine whose transactions include DDL on SQLite too, so the restore commits as a whole."""
    url = normalise_url(url)
    if not is_sqlite(url) and make_url(url).get_backend_name() != "postgresql":
        raise BackupError("Restoring supports SQLite and PostgreSQL databases only.")
    engine = create_db_engine(url, pool_size=1)
    if is_sqlite(url):
        # The sqlite3 module commits before DDL on its own; take over transaction control instead.
        event.listen(engine, "connect", lambda dbapi_conn, _record: setattr(dbapi_conn, "isolation_level", None))
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _check_target(engine: Engine, force: bool) -> None:
    with engine.connect() as conn:
        present = set(inspect(conn).get_table_names())
        names = sorted(n for n in Base.metadata.tables if n in present and n not in RUNTIME_TABLES)
        filled = [n for n in names if conn.execute(select(literal_column("1")).select_from(table_clause(n)).limit(1))
                  .first()]
    if filled and not force:
        shown = make_url(engine.url).render_as_string(hide_password=True)
        tables = ", ".join(filled[:4]) + (", …" if len(filled) > 4 else "")
        raise BackupError(f"The database at {shown} already holds data (tables {tables}). Restore into an empty "
                          "database, or add --force to replace everything in it with the backup.")


def _restore_blobs(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], blobs: BlobStore) -> int:
    """Write every file of the archive into the store, each atomically (the store writes via tmp/)."""
    count = 0
    for name, info in members.items():
        if not name.startswith(BLOB_PREFIX):
            continue
        key = name[len(BLOB_PREFIX):]
        stream = tar.extractfile(info)
        assert stream is not None
        try:
            if key.startswith(CONTENT_PREFIX + "/"):
                stored = blobs.put_stream(stream)
                if blob_key(stored.sha256) != key:
                    raise BackupError(f"{name} changed while it was being restored; nothing in the database "
                                      "was changed.")
            else:
                blobs.put_object(key, stream)
        except (BlobError, OSError) as exc:
            raise BackupError(f"Could not write {key} into the blob store at {blobs.url} ({exc}). The database "
                              "was not changed; fix the cause and restore again.") from exc
        count += 1
    return count


def _restore_database(engine: Engine, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                      manifest: dict[str, Any]) -> dict[str, int]:
    """Recreate the schema at the archive's revision, load the rows, then migrate to this code's head."""
    revision = manifest["alembic_revision"]
    entries = {t["name"]: t for t in manifest["database"]["tables"]}
    rows: dict[str, int] = {}
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        reflect_tables(conn).drop_all(conn)
        _drop_alembic_version(conn)
        _migrate(conn, revision)
        metadata = reflect_tables(conn)
        unknown = sorted(set(entries) - set(metadata.tables))
        if unknown:
            raise BackupError(f"The backup has table(s) {', '.join(unknown)} that revision {revision} does not "
                              "define; the archive is inconsistent and nothing was restored.")
        loaded = [t for t in metadata.sorted_tables if t.name in entries]
        for table in loaded:
            entry = entries[table.name]
            stream = tar.extractfile(members[entry["member"]])
            assert stream is not None
            rows[table.name] = _load_table(conn, table, stream)
            if rows[table.name] != entry["rows"]:
                raise BackupError(f"The backup of table {table.name} holds {rows[table.name]} rows but its manifest "
                                  f"says {entry['rows']}; nothing was restored.")
        _reset_sequences(conn, loaded)
        _migrate(conn, "head")
    return rows


def _drop_alembic_version(conn: Connection) -> None:
    if "alembic_version" in inspect(conn).get_table_names():
        Table("alembic_version", MetaData(), autoload_with=conn).drop(conn)


def _migrate(conn: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def _load_table(conn: Connection, table: Table, stream: IO[bytes]) -> int:
    decoders = {c.name: _decoder(c.type) for c in table.columns}
    batch: list[dict[str, Any]] = []
    count = 0
    for line in io.TextIOWrapper(stream, encoding="utf-8"):
        record = json.loads(line)
        extra = set(record) - set(decoders)
        if extra:
            raise BackupError(f"The backup of table {table.name} has column(s) {', '.join(sorted(extra))} that this "
                              "schema does not have; nothing was restored.")
        batch.append({name: decoders[name](value) for name, value in record.items()})
        count += 1
        if len(batch) >= INSERT_BATCH:
            conn.execute(table.insert(), batch)
            batch = []
    if batch:
        conn.execute(table.insert(), batch)
    return count


def _decoder(column_type: TypeEngine[Any]) -> Callable[[Any], Any]:
    """Turns a JSON value back into what the column's type expects (the inverse of :func:`_encode`)."""
    if isinstance(column_type, JSON):
        return lambda v: null() if v is None else v  # SQL NULL, not the JSON literal null
    if isinstance(column_type, DateTime):
        aware = bool(column_type.timezone)
        return lambda v: _datetime(v, aware) if isinstance(v, str) else v
    if isinstance(column_type, Date):
        return lambda v: date.fromisoformat(v) if isinstance(v, str) else v
    if isinstance(column_type, TimeType):
        return lambda v: time.fromisoformat(v) if isinstance(v, str) else v
    if isinstance(column_type, LargeBinary):
        return lambda v: base64.b64decode(v) if isinstance(v, str) else v
    if isinstance(column_type, Numeric) and not isinstance(column_type, Float) and column_type.asdecimal:
        return lambda v: Decimal(v) if isinstance(v, str | int) else v
    return lambda v: v


def _datetime(value: str, aware: bool) -> datetime:
    parsed = datetime.fromisoformat(value)
    if aware:
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _reset_sequences(conn: Connection, tables: list[Table]) -> None:
    """Move PostgreSQL sequences past the restored ids, so the next insert does not collide."""
    if conn.dialect.name != "postgresql":
        return
    preparer = conn.dialect.identifier_preparer
    for table in tables:
        for column in table.primary_key.columns:
            if not isinstance(column.type, Integer | BigInteger):
                continue
            sequence = conn.scalar(select(func.pg_get_serial_sequence(preparer.format_table(table), column.name)))
            if sequence:
                top = conn.scalar(select(func.max(column)))
                conn.execute(select(func.setval(sequence, top or 1, top is not None)))


def _restore_secret(settings: Settings, secret: bytes | None, manifest: dict[str, Any]) -> list[str]:
    """Bring back the generated development key, or warn when tokens will not work with this key."""
    configured = settings.secret_key is not None and settings.secret_key.get_secret_value()
    if secret is not None and not configured:
        _write_private(settings.data_dir / SECRET_FILE_NAME, secret)
        return []
    expected = manifest.get("secret", {}).get("fingerprint")
    if expected and expected != key_fingerprint(settings):
        return ["This service's secret key differs from the backed-up one: passwords still work, but API tokens and "
                "signed-in sessions will not until PIGEONHOLE_SECRET_KEY is set to the original value."]
    return []


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
