"""The dataset health report: what stands between this dataset and a good model, in plain words."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pigeonhole.datasets.repository import ClassStats
from pigeonhole.extractors import NO_EXTRACTOR_MESSAGE

MIN_TO_TRAIN = 5
RECOMMENDED = 20
IMBALANCE_WARNING_RATIO = 10.0
SMALL_IMAGE_SIDE = 32


@dataclass
class HealthReport:
    ready_to_train: bool
    images: int
    classes: int
    below_minimum: list[str] = field(default_factory=list)
    below_recommended: list[str] = field(default_factory=list)
    imbalance_ratio: float | None = None
    label_conflicts: int = 0
    small_images: int = 0
    unreadable_urls: int = 0
    pretrained_extractors: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def health_report(stats: list[ClassStats], *, label_conflicts: int, small_images: int,
                  unreadable_urls: int = 0, pretrained_extractors: list[str] | None = None) -> HealthReport:
    """``pretrained_extractors``: titles of the server's pretrained extractors (None: not known here)."""
    counts = {s.name: s.count for s in stats}
    total = sum(counts.values())
    below_min = sorted(n for n, c in counts.items() if c < MIN_TO_TRAIN)
    below_rec = sorted(n for n, c in counts.items() if MIN_TO_TRAIN <= c < RECOMMENDED)
    ratio = round(max(counts.values()) / min(counts.values()), 2) if counts and min(counts.values()) > 0 else None
    report = HealthReport(
        ready_to_train=len(counts) >= 2 and not below_min,
        images=total, classes=len(counts), below_minimum=below_min, below_recommended=below_rec,
        imbalance_ratio=ratio, label_conflicts=label_conflicts, small_images=small_images,
        unreadable_urls=unreadable_urls, pretrained_extractors=list(pretrained_extractors or []),
    )
    messages = report.messages
    if pretrained_extractors is not None and not pretrained_extractors:
        messages.append(NO_EXTRACTOR_MESSAGE)
    if total == 0:
        messages.append("The dataset is empty: upload images, or a zip file with one folder per class.")
    elif len(counts) < 2:
        messages.append("A model needs at least two classes: add images of another class.")
    for name in below_min:
        missing = MIN_TO_TRAIN - counts[name]
        messages.append(f"Class '{name}' has only {counts[name]} image(s); add at least {missing} more to train.")
    if below_rec:
        messages.append(f"{_names(below_rec)}: fewer than {RECOMMENDED} images. More examples usually mean "
                        "a more accurate model.")
    if ratio is not None and ratio > IMBALANCE_WARNING_RATIO:
        biggest = max(counts, key=lambda n: counts[n])
        smallest = min(counts, key=lambda n: counts[n])
        messages.append(f"The classes are unbalanced ({ratio:.0f}:1 between '{biggest}' and '{smallest}'): "
                        "the model may favour the bigger classes. Add images to the small ones.")
    if label_conflicts:
        messages.append(f"{label_conflicts} image(s) appear in more than one class. Keep each image in one class "
                        "so the model learns a clear answer.")
    if small_images:
        messages.append(f"{small_images} image(s) are smaller than {SMALL_IMAGE_SIDE} pixels on a side; "
                        "tiny images carry little detail.")
    if unreadable_urls:
        messages.append(f"{unreadable_urls} remote image(s) could not be fetched.")
    return report
