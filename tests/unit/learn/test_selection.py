"""Which scored candidate the search serves (learn.selection)."""

from __future__ import annotations

from pigeonhole.learn.selection import select


def test_selection_rule() -> None:
    from types import SimpleNamespace

    def cand(acc: float, cost: float, order: int):
        return SimpleNamespace(val_accuracy=acc, mflops=cost, order=order)

    a, b, c = cand(0.90, 100, 0), cand(0.93, 300, 1), cand(0.95, 900, 2)
    assert select([a, b, c], 0.92, "balanced") is b  # cheapest meeting the target
    assert select([a, b, c], 0.92, "accurate") is c
    assert select([a, b, c], 0.99, "balanced") is c  # none meets: most accurate
    assert select([a, b, c], None, "fast") is b  # within 2 points of the best, cheaper
    assert select([], 0.9, "fast") is None

    from pigeonhole.learn.candidates import CandidateConfig

    def probe(acc: float, cost: float, order: int, per_class: int, size: int = 160):
        return SimpleNamespace(val_accuracy=acc, mflops=cost, order=order,
                               config=CandidateConfig("frozen", "mobilenet_v2", size, max_train_per_class=per_class))

    lucky, full = probe(1.0, 150, 0, 60), probe(0.96, 150, 1, 0)
    assert select([lucky], None, "balanced") is lucky  # the anytime preview, until its full version exists
    assert select([lucky, full], None, "balanced") is full  # the probe leaves once its full version is scored
    assert select([lucky, full], 0.99, "accurate") is full
    larger = probe(1.0, 300, 2, 0, size=224)
    assert select([lucky, full, larger], None, "balanced") is larger
    other = probe(0.997, 150, 1, 0, size=128)  # another candidate of equal cost, within tolerance
    assert select([lucky, other], None, "balanced") is other

    # A tolerance must span at least two of the images the leader was measured on: one image of 212 (0.47
    # points) is within balanced's 0.5, but no measurement of a difference, so the more accurate stays.
    cheap, costly = cand(205 / 212, 300, 0), cand(206 / 212, 600, 1)
    cheap.evaluated_on = costly.evaluated_on = 212
    assert select([cheap, costly], None, "balanced") is costly
    cheap.evaluated_on = costly.evaluated_on = 1000  # the same gap on 1,000 images: the tolerance holds
    assert select([cheap, costly], None, "balanced") is cheap
    assert select([cheap, costly], None, "accurate") is costly

    # A lead measured on few images over a candidate measured on many is kept only when chance would rarely give
    # it: 28 of 28 validation images is what a 97.2 % model scores 45 % of the time; 300 of 300 is not.
    frozen, tuned = cand(0.972, 400, 0), cand(1.0, 800, 1)
    frozen.evaluated_on, tuned.evaluated_on = 281, 28
    assert select([frozen, tuned], None, "balanced") is frozen
    assert select([frozen, tuned], 0.99, "balanced") is frozen  # nor does it meet a target on that evidence
    tuned.evaluated_on = 140
    assert select([frozen, tuned], None, "balanced") is tuned  # 140 of 140: P = 0.02 under 97.2 %
    frozen.evaluated_on = tuned.evaluated_on = 28
    assert select([frozen, tuned], None, "balanced") is tuned  # measured alike: the plain rule
