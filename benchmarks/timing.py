"""Timing shared by the benchmark scripts (imported as ``timing``: scripts run from
``benchmarks/``)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after one warm-up call (which also
    fills caches: page cache, allocator, lazy initialisation)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
