"""Inference latency as the scheduler sees it: a rolling window with p50 / p95.

Warm-up timings seed it provisionally; live latencies (request to merge, whole ticks) replace them.
Counterpart: control/action_queue.py (derives the delay in steps and the sync fallback from it).
"""

from __future__ import annotations

import collections
import math
from typing import Deque, Iterable, List, Optional

import numpy as np

from pi0_ttnn_node.errors import ConfigError


class LatencyTracker:
    """Rolling window of inference latencies (seconds) with cached p50 / p95.

    Warm-up timings (`seed`) are provisional: they stand in until the first live latency and are
    then dropped, because first calls (allocation, a disk still flushing an install) are often
    much slower than the loop will be and would otherwise hold the p95 up for a whole window.
    """

    def __init__(self, window: int = 50) -> None:
        if window < 1:
            raise ConfigError(f"latency window must be >= 1; got {window}")
        self._samples: Deque[float] = collections.deque(maxlen=window)
        self._provisional = False
        self.last: Optional[float] = None
        self.p50: Optional[float] = None
        self.p95: Optional[float] = None

    def add(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            return  # a clock jump or a failed measurement carries no information
        if self._provisional:
            self._samples.clear()
            self._provisional = False
        self._append(seconds)

    def _append(self, seconds: float) -> None:
        self._samples.append(float(seconds))
        self.last = float(seconds)
        self.p50, self.p95 = (float(v) for v in np.percentile(self._samples, [50, 95]))

    def seed(self, samples: Iterable[float]) -> None:
        """Seed with warm-up timings so the first trigger already knows the delay; the first
        live latency replaces them."""
        for s in samples:
            if math.isfinite(s) and s >= 0:
                self._append(s)
                self._provisional = True

    def recent(self, n: int) -> List[float]:
        """The newest `n` samples (fewer when there are fewer)."""
        return list(self._samples)[-n:]

    def keep_recent(self, n: int) -> None:
        """Forget all but the newest `n` samples (the latency has changed for good)."""
        kept = self.recent(n)
        self._samples.clear()
        for s in kept:
            self._append(s)

    @property
    def provisional(self) -> bool:
        return self._provisional

    @property
    def count(self) -> int:
        return len(self._samples)
