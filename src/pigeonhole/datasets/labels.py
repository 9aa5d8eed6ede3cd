"""Class names: what users may call a class (they become folder names in exports)."""

from __future__ import annotations

import unicodedata

from pigeonhole.errors import Unprocessable

MAX_LABEL_LENGTH = 100


def label_problem(label: str) -> str | None:
    """A sentence saying why ``label`` cannot name a class, or None when it can."""
    if not label:
        return "The class name is empty."
    if len(label) > MAX_LABEL_LENGTH:
        return f"The class name is too long: use at most {MAX_LABEL_LENGTH} characters."
    if label in (".", "..") or label.startswith("."):
        return "A class name cannot start with a dot."
    if any(c in label for c in "/\\") or any(unicodedata.category(c).startswith("C") for c in label):
        return "A class name cannot contain slashes or control characters."
    return None


def clean_label(label: str | None) -> str:
    """The normalised class name (NFC, trimmed), or a 422 with the reason."""
    label = unicodedata.normalize("NFC", (label or "").strip())
    problem = label_problem(label)
    if problem:
        raise Unprocessable(problem, code="invalid_label")
    return label
