"""Process settings that keep the 50 Hz control tick steady while inference runs next to it.

The node runs the executor (control tick, subscriptions) and the inference worker as two threads
of one process. Measured causes of long ticks there (tools/bench_node.py --live), and the fix for
each:
- torch intra-op threads: by default one per core, so on a small machine inference takes every
  core and the executor thread waits for a CPU; on 2 busy cores a tiny-model inference also ran
  ~4x slower with 2 threads than with 1. `policy.torch_threads: 0` now means cores - 1 (min 1).
- the GIL: the worker's Python code (model glue between torch ops) holds it for up to the switch
  interval (5 ms default) whenever the tick wants it; SWITCH_INTERVAL_S = 1 ms bounds that wait.
- garbage collection: a full collection walks every object of the loaded model and the ROS
  stack; gc.freeze() after configure moves them out of the collector's reach, and a higher gen0
  threshold makes collections rarer (they stay cheap: only young objects are scanned).
All settings are process-wide, applied by the node in configure and logged once.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from typing import Dict, Optional

LOG = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.001
GC_THRESHOLDS = (10_000, 20, 20)  # gen0 allocations, gen1 and gen2 multipliers


@dataclass(frozen=True)
class Tuning:
    """What apply_before_load / apply_after_configure set (also reported on /diagnostics)."""

    torch_threads: int
    switch_interval_s: float
    gc_thresholds: tuple
    gc_frozen: int = 0  # objects moved to the permanent generation


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_torch_threads(cpus: Optional[int] = None) -> int:
    """Intra-op threads for inference: every CPU but one, which stays for the executor."""
    n = available_cpus() if cpus is None else cpus
    return max(1, n - 1)


def apply_before_load(torch_threads: int = 0) -> Tuning:
    """Thread and GIL settings; call before the backend is built. 0 = default_torch_threads()."""
    threads = torch_threads if torch_threads > 0 else default_torch_threads()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # a TTNN-only install: nothing to size
        pass
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(*GC_THRESHOLDS)
    return Tuning(torch_threads=threads, switch_interval_s=sys.getswitchinterval(),
                  gc_thresholds=gc.get_threshold())


def apply_after_configure(tuning: Tuning) -> Tuning:
    """Collect once, then freeze everything loaded so far out of later collections."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    LOG.info("process tuning: torch threads %d of %d CPUs, GIL switch interval %.1f ms, gc "
             "thresholds %s, %d objects frozen", tuning.torch_threads, available_cpus(),
             tuning.switch_interval_s * 1e3, tuning.gc_thresholds, frozen)
    return Tuning(tuning.torch_threads, tuning.switch_interval_s, tuning.gc_thresholds, frozen)


def describe(tuning: Optional[Tuning]) -> Dict[str, object]:
    if tuning is None:
        return {}
    return {"process.torch_threads": tuning.torch_threads,
            "process.switch_interval_ms": tuning.switch_interval_s * 1e3,
            "process.gc_frozen_objects": tuning.gc_frozen}
