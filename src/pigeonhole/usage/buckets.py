"""Log-scale latency buckets: percentiles from GROUP BY counts, on SQLite and PostgreSQL alike.

Bucket b covers (0.1 ms · 1.1^(b-1), 0.1 ms · 1.1^b], so a reported percentile is the upper edge
of its bucket: at most 10 % above the true value.
"""

from __future__ import annotations

import math

BASE_MS = 0.1
RATIO = 1.1
MAX_BUCKET = 250  # 0.1 ms · 1.1^250 ≈ 2.2e9 ms: far beyond any request


def latency_bucket(latency_ms: float) -> int:
    if latency_ms <= BASE_MS:
        return 0
    return min(MAX_BUCKET, math.ceil(math.log(latency_ms / BASE_MS) / math.log(RATIO)))


def bucket_upper_ms(bucket: int) -> float:
    return BASE_MS * RATIO**bucket


def percentile_from_buckets(counts: dict[int, int], q: float) -> float | None:
    """The q-quantile (0–1) from bucket counts, as the upper edge of the bucket holding it."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return round(bucket_upper_ms(bucket), 3)
    return round(bucket_upper_ms(max(counts)), 3)
