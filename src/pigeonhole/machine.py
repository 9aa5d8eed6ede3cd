"""What this machine offers a process: its cores and memory.

No dependencies, so that the ML core (``pigeonhole.learn``) and the settings can both use it.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def memory_bytes(unknown: int = 16 << 30) -> int:
    """Physical memory of the machine, or ``unknown`` when it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return unknown
