"""What the emulated device executed: counters, and (when recording) one OpRecord per op.

Counterpart: emulation.py (fills these in); cost_model.py (prices the OpRecords).
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

MATMUL_OPS = ("linear", "matmul", "transformer.scaled_dot_product_attention")


@dataclass(frozen=True)
class Operand:
    """One tensor of an op as the cost model needs it."""

    shape: Tuple[int, ...]
    dtype: str  # BFLOAT16, BFLOAT8_B, FLOAT32, UINT32, ...
    memory: str  # "DRAM" or "L1"
    nbytes: int  # padded size at the device dtype


@dataclass(frozen=True)
class OpRecord:
    """One executed op: what ran, on which operands, at which fidelity, in which stage."""

    name: str
    stage: str
    inputs: Tuple[Operand, ...]
    outputs: Tuple[Operand, ...]
    flops: int
    fidelity: Optional[str]  # matrix-engine ops only
    fp32_acc: Optional[bool]
    captured: bool  # issued inside a trace capture
    replayed: bool  # executed by a trace replay


@dataclass
class EmulationStats:
    """What the emulated device executed: ops by name, FLOPs by op, and host<->device transfers.

    `records` (None until `start_recording()`) holds one OpRecord per executed op, each labelled
    with `stage` (set by whoever measures, e.g. the latency predictor).
    """

    ops: collections.Counter = field(default_factory=collections.Counter)
    flops_by_op: collections.Counter = field(default_factory=collections.Counter)
    uploads: int = 0
    downloads: int = 0
    upload_bytes: int = 0
    download_bytes: int = 0
    trace_replays: int = 0
    records: Optional[List[OpRecord]] = None
    stage: str = ""

    def start_recording(self) -> None:
        """Keep one OpRecord per executed op from now on (memory grows with every op)."""
        if self.records is None:
            self.records = []

    @property
    def total_flops(self) -> int:
        return sum(self.flops_by_op.values())

    @property
    def matmul_flops(self) -> int:
        """FLOPs of linear, matmul and SDPA: the work a '100 % on device' check is about."""
        return sum(self.flops_by_op[name] for name in MATMUL_OPS)

    def reset(self) -> None:
        self.ops.clear()
        self.flops_by_op.clear()
        self.uploads = self.downloads = self.upload_bytes = self.download_bytes = self.trace_replays = 0
        if self.records is not None:
            self.records = []

    def copy(self) -> "EmulationStats":
        return EmulationStats(
            collections.Counter(self.ops), collections.Counter(self.flops_by_op), self.uploads,
            self.downloads, self.upload_bytes, self.download_bytes, self.trace_replays,
            None if self.records is None else list(self.records), self.stage,
        )

    def minus(self, before: "EmulationStats") -> "EmulationStats":
        records = None
        if self.records is not None:
            records = self.records[len(before.records or []):]
        return EmulationStats(
            self.ops - before.ops, self.flops_by_op - before.flops_by_op, self.uploads - before.uploads,
            self.downloads - before.downloads, self.upload_bytes - before.upload_bytes,
            self.download_bytes - before.download_bytes, self.trace_replays - before.trace_replays,
            records, self.stage,
        )

    @contextlib.contextmanager
    def measure(self) -> Iterator["EmulationStats"]:
        """Yield a stats object that holds, on exit, only what ran inside the `with` block."""
        before, region = self.copy(), EmulationStats()
        try:
            yield region
        finally:
            delta = self.minus(before)
            region.__dict__.update(delta.__dict__)
