"""Time as the search sees it: the real clock in the product, a virtual one where a plan must not depend on
how busy the machine is.

The search makes its choices from the time left and the measured cost of its work (a training step, a feature
pass). On the real clock both come from this machine at this moment, so a slow or busy machine plans fewer
rounds or skips a candidate: right for a user, but a test that asserts a plan would then pass or fail with the
load. On a :class:`VirtualClock` time moves only by the cost each piece of work is charged (with
:class:`pigeonhole.learn.budget.FixedCosts`, "a step costs 0.3 s"), so the same plan comes out anywhere.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def spent(self, seconds: float) -> None:
        """Work the cost model says just took ``seconds``: the real clock has already moved by itself."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def spent(self, seconds: float) -> None:
        pass


class VirtualClock:
    """Time that moves only by the work charged to it."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def spent(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


SYSTEM_CLOCK = SystemClock()
