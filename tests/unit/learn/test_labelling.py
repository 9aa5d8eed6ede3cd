"""The labelling queue's order: the uncertain first, near-copies spread out."""

from __future__ import annotations

import numpy as np

from pigeonhole.learn.labelling import labelling_order, uncertainty


def test_uncertainty_is_one_minus_the_margin() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(uncertainty(probs), [0.2, 1.0, 0.8])


def test_twenty_near_copies_do_not_fill_the_top() -> None:
    rng = np.random.default_rng(0)
    dim = 64
    copy = rng.normal(size=dim)
    features = np.vstack([copy + rng.normal(0, 0.01, (20, dim)),  # one photo taken 20 times: most uncertain
                          rng.normal(size=(10, dim)),  # ten different images, nearly as uncertain
                          rng.normal(size=(30, dim))])  # and thirty the model is sure about
    p_first = np.concatenate([np.full(20, 0.5), np.full(10, 0.6), np.full(30, 0.99)])
    probs = np.stack([p_first, 1 - p_first], axis=1)
    order, doubt = labelling_order(probs, features)
    assert sorted(order.tolist()) == list(range(60))
    top = order[:11].tolist()
    assert sum(i < 20 for i in top) <= 2, top  # a copy, then the ten different ones
    assert set(range(20, 30)) <= set(top)
    assert set(order[-30:].tolist()) == set(range(30, 60)), "what the model is sure about comes last"
    plain, _ = labelling_order(probs, features, diversity=0.0)
    assert set(plain[:20].tolist()) == set(range(20)), "without the penalty, the copies would come first"
