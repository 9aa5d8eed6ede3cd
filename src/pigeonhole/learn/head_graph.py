"""The solved head as a torch module, for ONNX export: features -> (probabilities, familiarity).

Kept apart from ``head`` so the statistics and the solve need no torch. The familiarity is computed in the
graph with the same arithmetic as :func:`pigeonhole.learn.novelty.familiarity` (in float32), so an exported
file answers "unknown" for the same images the service does: the service runs this very graph.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pigeonhole.learn.novelty import Detector, Moments

_EPS = 1e-12


class HeadGraph(nn.Module):
    """map -> linear -> softmax(./T), and the detector's familiarity beside it."""

    def __init__(self, l2_normalize: bool, projection: tuple[np.ndarray, np.ndarray] | None, w: np.ndarray,
                 b: np.ndarray, temperature: float, detector: Detector | None, moments: Moments | None) -> None:
        super().__init__()
        self.l2 = l2_normalize
        self.linear = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(w.T / temperature))
            self.linear.bias.copy_(torch.from_numpy(b / temperature))
        self.has_rff = projection is not None
        if projection is not None:
            pw, pb = projection
            self.register_buffer("proj_w", torch.from_numpy(pw).float())
            self.register_buffer("proj_b", torch.from_numpy(pb).float())
            self.rff_scale = float(np.sqrt(2.0 / pw.shape[1]))
        self.temperature = float(temperature)
        self.kind = detector.kind if detector is not None else "confidence"
        knots = detector.knots if detector is not None else np.zeros(2)
        if len(knots) < 2:  # one held-out image: a step at it
            knots = np.array([knots[0] - 1e-6, knots[0]]) if len(knots) else np.array([-1e30, -1e30])
        lo, hi = knots[:-1], knots[1:]
        self.register_buffer("knot_lo", torch.from_numpy(lo).float())
        self.register_buffer("knot_width", torch.from_numpy(np.maximum(hi - lo, _EPS)).float())
        if moments is not None:
            # Offsets from the overall mean before any product: CNN features share a large common part, and
            # expanding |a - b|^2 on the raw vectors would cancel most of float32's digits.
            within, total = moments.within, moments.total
            means = moments.means - moments.centre
            self.register_buffer("centre", torch.from_numpy(moments.centre).float())
            self.register_buffer("means", torch.from_numpy(means).float())
            self.register_buffer("means_sq", torch.from_numpy(within.norms(means)).float())
            self.within_floor, self.total_floor = float(within.floor), float(total.floor)
            self.register_buffer("within_basis", torch.from_numpy(within.basis * np.sqrt(within.weight)).float())
            self.register_buffer("total_basis", torch.from_numpy(total.basis * np.sqrt(total.weight)).float())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        unit = x / torch.clamp(torch.linalg.vector_norm(x, dim=1, keepdim=True), min=_EPS)
        base = unit if self.l2 else x
        phi = base
        if self.has_rff:
            phi = torch.cat([phi, self.rff_scale * torch.cos(unit @ self.proj_w + self.proj_b)], dim=1)
        logits = self.linear(phi)
        probs = torch.softmax(logits, dim=1)
        if self.kind in ("softmax", "confidence"):
            raw = probs.max(dim=1).values
        elif self.kind == "energy":
            raw = self.temperature * torch.logsumexp(logits, dim=1)
        else:
            offset = base - self.centre
            px, pm = offset @ self.within_basis, self.means @ self.within_basis
            xx = (offset * offset).sum(1) / self.within_floor - (px * px).sum(1)
            xm = offset @ self.means.T / self.within_floor - px @ pm.T
            d = torch.clamp(xx[:, None] - 2.0 * xm + self.means_sq, min=0.0)
            pt = offset @ self.total_basis
            background = (offset * offset).sum(1) / self.total_floor - (pt * pt).sum(1)
            raw = -(d.min(dim=1).values - background)
        if self.kind == "confidence":  # a head from before detectors: the confidence is the familiarity
            return probs, raw
        ramps = torch.clamp((raw[:, None] - self.knot_lo[None, :]) / self.knot_width[None, :], 0.0, 1.0)
        return probs, ramps.mean(dim=1)
