"""Typed contract of the ``import`` job: what the API stores, what the worker returns, what the dispatcher records.

The API writes the **params** (``imports.import_params``); they carry everything the worker needs, so
``prepare`` passes them through as the **payload**. The worker's **result** lists one outcome per address;
``on_success`` adds the **summary** of what the dataset recorded, and the whole result is stored on the job
row, where the web app reads ``summary`` and ``datasets.repository.unreadable_urls`` its refusal codes: the keys
are today's, unchanged.
"""

from __future__ import annotations

from pydantic import Field

from pigeonhole.datasets.ingest import Rejection, StoredImage
from pigeonhole.jobs.contract import JobContract
from pigeonhole.storage.fetch import FetchPolicy
from pigeonhole.storage.images import ImageLimits


class ImportItem(JobContract):
    """One address to fetch and the class its image goes to (both checked and cleaned by the API)."""

    url: str
    label: str


class ImportJobParams(JobContract):
    """What an import job row stores: the addresses, and the fetch policy and image limits of the server's settings
    when the import was asked for (the worker reads no settings)."""

    items: list[ImportItem]
    policy: FetchPolicy
    limits: ImageLimits


# ``prepare`` passes the params through: the worker gets exactly what the row stores.
ImportPayload = ImportJobParams


class StoredOutcome(JobContract):
    """An address whose image was fetched, proven decodable and written to the blob store."""

    url: str
    label: str
    stored: StoredImage


class RefusedOutcome(JobContract):
    """An address that gave no image, with the sentence the user is shown and its machine-readable code."""

    url: str
    label: str
    reason: str
    code: str


# Told apart by their keys: a stored outcome has ``stored``, a refused one ``reason`` and ``code``.
ImportOutcome = StoredOutcome | RefusedOutcome


class ImportSummary(JobContract):
    """What the dataset recorded: duplicates and quota are judged by the dispatcher, as for uploads. ``note`` only
    when there was nothing to record into."""

    omitted_when_none = frozenset({"note"})

    accepted: int
    duplicates: int
    rejected: list[Rejection] = Field(default_factory=list)
    note: str | None = None


class ImportJobResult(JobContract):
    """The worker returns the outcomes; ``on_success`` adds the summary before the row stores the result."""

    omitted_when_none = frozenset({"summary"})

    outcomes: list[ImportOutcome] = Field(default_factory=list)
    summary: ImportSummary | None = None
