"""Which pretrained image extractors this server has: for ``pigeonhole weights list``, the admin page and the
dataset health report. Reads the catalog only (a JSON file, installed packages' folders, file sizes): torch is
not imported, so the API can answer it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pigeonhole.settings import Settings

if TYPE_CHECKING:
    from pigeonhole.learn.weights import WeightsCatalog

NO_EXTRACTOR_MESSAGE = ("No pretrained image extractor is installed on this server, so photo models are trained "
                        "from scratch and will be much less accurate. Ask the administrator to add one (see "
                        "`pigeonhole weights list`).")


def catalog_for(settings: Settings) -> WeightsCatalog:
    from pigeonhole.learn.weights import WeightsCatalog

    return WeightsCatalog(settings.resolved_weights_dir, builtin=settings.builtin_weights)


def weights_report(settings: Settings) -> list[dict[str, Any]]:
    """One row per known extractor, present ones first: how big, where it comes from and how to get it. A broken
    ``weights.json`` is one row that says so (``problem``)."""
    from pigeonhole.learn.weights import WeightsError

    try:
        catalog = catalog_for(settings)
    except WeightsError as exc:
        return [{"name": "weights.json", "title": "the operator's weights catalog", "origin": "operator",
                 "present": False, "problem": str(exc)}]
    rows = []
    for entry in sorted(catalog, key=lambda e: (not catalog.is_present(e.name), e.origin != "package", e.name)):
        path = catalog.file_path(entry)
        present = catalog.is_present(entry.name)
        rows.append({
            "name": entry.name, "title": entry.title or entry.name, "origin": entry.origin, "present": present,
            "size_bytes": path.stat().st_size if present and path is not None else entry.size,
            "feature_dim": entry.feature_dim, "license": entry.license or None, "url": entry.url,
            "recommended": entry.recommended, "format": entry.format,
            "how_to_get": None if present else catalog.missing_reason(entry),
        })
    return rows


def present_extractors(settings: Settings) -> list[str]:
    """Titles of the pretrained extractors whose files are here."""
    return [r["title"] for r in weights_report(settings) if r["present"]]
