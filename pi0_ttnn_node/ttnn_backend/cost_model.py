"""A roofline per op over the emulation's op stream: PREDICTED latency, a planning tool, not a measurement.

time(op) = max(compute, memory) + overhead, where
- compute: matrix-engine work at tile granularity on the cores that have work: output tiles are
  spread over the worker grid, each 32x32x32 tile product takes 16 cycles per fidelity phase
  (an 8x16 x 16x16 multiply per cycle = 4096 FLOP/cycle/core at LoFi, divided by the phases:
  tt-metal tech_reports/matrix_engine/matrix_engine.md); eltwise work runs at 128 elements per
  cycle per core (same report; multiply divided by the phases, add/sub not).
- memory: bytes of every operand at the bandwidth of where it lives: DRAM at the board's DRAM
  bandwidth, L1 at NoC width x 2 NoCs x cores x clock.
- overhead: traced, the device-side dispatch of one program (~4000 cycles: tt-metal issue #12074,
  "roughly 4k cycles constant dispatch time regardless the kernel" in a traced Llama decode); not
  traced, the host dispatch of one ttnn op (HOST_DISPATCH_US, an assumption, see docs).
Uploads / downloads cost bytes over PCIe. Peak FLOPs are DERIVED (cores x clock x per-core rate),
shown next to the vendor figure; no per-case correction factor exists anywhere.
Counterpart: op_stream.py (records the op stream this prices).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from pi0_ttnn_node.ttnn_backend.emulated_numerics import FIDELITY_PHASES

TILE = 32
FLOP_PER_CYCLE_LOFI = 2 * 8 * 16 * 16  # per matrix engine (one per Tensix core)
TILE_MATMUL_CYCLES = 2 * TILE ** 3 // FLOP_PER_CYCLE_LOFI  # 16 cycles per tile product per phase
ELTWISE_PER_CYCLE = 8 * 16  # elements per cycle per core
TRACED_DISPATCH_CYCLES = 4000
HOST_DISPATCH_US = 25.0
MATMUL_OPS = {"linear", "matmul"}
SDPA_OPS = {"transformer.scaled_dot_product_attention"}
FIDELITY_ELTWISE = {"multiply", "mul", "mac", "sum", "mean"}
ELTWISE_PASSES = {"rms_norm": 4, "layer_norm": 5, "softmax": 4, "experimental.rotary_embedding": 3,
                  "mac": 2, "gelu": 2, "silu": 2, "exp": 2, "geglu": 3}
DATA_MOVEMENT = {"reshape", "permute", "slice", "concat", "pad", "repeat", "embedding", "to_layout",
                 "to_memory_config", "typecast", "clone", "copy", "experimental.nlp_create_qkv_heads",
                 "experimental.nlp_concat_heads", "fill_cache"}
TRANSFERS = {"upload", "download"}


@dataclass(frozen=True)
class BoardPerf:
    """One chip of a board, as the cost model sees it."""

    name: str
    grid: Tuple[int, int]  # worker cores used by ttnn (compute_with_storage_grid_size)
    clock_ghz: float
    dram_gbps: float  # per chip
    noc_bytes_per_cycle: int  # per NoC per core
    pcie_gbps: float  # host link, per direction (theoretical)
    vendor_tflops: str  # what the vendor page says, for the side-by-side

    @property
    def cores(self) -> int:
        return self.grid[0] * self.grid[1]

    def matmul_tflops(self, fidelity: str = "LoFi") -> float:
        """Derived peak: cores x clock x 4096 FLOP/cycle / fidelity phases."""
        return self.cores * self.clock_ghz * FLOP_PER_CYCLE_LOFI / FIDELITY_PHASES[fidelity] / 1e3

    @property
    def l1_gbps(self) -> float:
        return 2 * self.noc_bytes_per_cycle * self.cores * self.clock_ghz


# Sources: docs.tenstorrent.com specification pages (clock, DRAM bandwidth, PCIe, TFLOPS);
# grids from the mock cluster descriptors (emulated_limits.board_limits); NoC widths 32 B (Wormhole)
# and 64 B (Blackhole) per cycle. n300: ttnn opens one of its two chips, so per-chip figures.
BOARDS: Dict[str, BoardPerf] = {
    "n150": BoardPerf("n150", (8, 8), 1.0, 288.0, 32, 31.5, "262 FP8 / 148 BLOCKFP8 / 74 FP16 (72 cores)"),
    "n300": BoardPerf("n300", (8, 7), 1.0, 288.0, 32, 31.5,
                      "466 FP8 / 262 BLOCKFP8 / 131 FP16 for both chips (one chip used here)"),
    "p150": BoardPerf("p150", (13, 10), 1.35, 512.0, 64, 63.0,
                      "none on the spec page; third party 664 BLOCKFP8 / 332 BF16; Hot Chips 745 FP8"),
}


@dataclass(frozen=True)
class OpCost:
    compute_s: float
    memory_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.overhead_s

    @property
    def bound(self) -> str:
        if self.overhead_s >= max(self.compute_s, self.memory_s):
            return "dispatch"
        return "compute" if self.compute_s >= self.memory_s else "memory"


def _tiles(n: int) -> int:
    return max(1, math.ceil(n / TILE))


def _batch(shape: Sequence[int]) -> int:
    return max(1, math.prod(shape[:-2])) if len(shape) > 2 else 1


def matmul_cycles(m: int, k: int, n: int, batch: int, fidelity: str, cores: int) -> float:
    """Cycles of the busiest core: output tiles spread over the cores, K tiles each."""
    out_tiles = batch * _tiles(m) * _tiles(n)
    per_core = math.ceil(out_tiles / cores)
    return per_core * _tiles(k) * TILE_MATMUL_CYCLES * FIDELITY_PHASES[fidelity]


def compute_cycles(record, cores: int) -> float:
    """Matrix-engine / eltwise cycles of one op record on the busiest core."""
    name = record.name
    fidelity = record.fidelity or "HiFi4"
    if name in MATMUL_OPS:
        x, w = record.inputs[0].shape, record.inputs[1].shape
        out = record.outputs[0].shape
        k = x[-1] if x[-1] in (w[-2], w[-1]) else x[-2]
        return matmul_cycles(out[-2], k, out[-1], _batch(out), fidelity, cores)
    if name in SDPA_OPS:
        q, kk = record.inputs[0].shape, record.inputs[1].shape
        batch, s_q, s_k, depth = q[0] * q[1], q[2], kk[2], q[3]
        scores = matmul_cycles(s_q, depth, s_k, batch, fidelity, cores)
        values = matmul_cycles(s_q, s_k, depth, batch, fidelity, cores)
        softmax = ELTWISE_PASSES["softmax"] * batch * _tiles(s_q) * _tiles(s_k) * TILE * TILE
        return scores + values + softmax / (ELTWISE_PER_CYCLE * cores)
    if name in DATA_MOVEMENT or name in TRANSFERS or not record.outputs:
        return 0.0
    out = record.outputs[0].shape
    elements = _batch(out) * _tiles(out[-2] if len(out) > 1 else 1) * _tiles(out[-1]) * TILE * TILE
    passes = ELTWISE_PASSES.get(name, 1)
    phases = FIDELITY_PHASES[fidelity] if name in FIDELITY_ELTWISE and record.fidelity else 1
    return elements * passes * phases / (ELTWISE_PER_CYCLE * cores)


def op_cost(record, board: BoardPerf, traced: bool) -> OpCost:
    """Roofline time of one recorded op on `board`."""
    if record.name in TRANSFERS:
        moved = sum(o.nbytes for o in record.inputs + record.outputs)
        return OpCost(0.0, moved / (board.pcie_gbps * 1e9), 0.0)
    compute = compute_cycles(record, board.cores) / (board.clock_ghz * 1e9)
    memory = 0.0
    for operand in record.inputs + record.outputs:
        bandwidth = board.l1_gbps if operand.memory == "L1" else board.dram_gbps
        memory += operand.nbytes / (bandwidth * 1e9)
    if traced:
        overhead = TRACED_DISPATCH_CYCLES / (board.clock_ghz * 1e9)
    else:
        overhead = max(HOST_DISPATCH_US * 1e-6, TRACED_DISPATCH_CYCLES / (board.clock_ghz * 1e9))
    return OpCost(compute, memory, overhead)


@dataclass
class StageCost:
    """Summed roofline of one stage."""

    ops: int = 0
    seconds: float = 0.0
    compute_s: float = 0.0
    memory_s: float = 0.0
    overhead_s: float = 0.0
    flops: float = 0.0
    bytes_by_memory: collections.Counter = None  # type: ignore[assignment]
    bound_s: collections.Counter = None  # type: ignore[assignment]
    ops_by_name: collections.Counter = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.bytes_by_memory = self.bytes_by_memory or collections.Counter()
        self.bound_s = self.bound_s or collections.Counter()
        self.ops_by_name = self.ops_by_name or collections.Counter()

    def add(self, record, cost: OpCost) -> None:
        self.ops += 0 if record.name in TRANSFERS else 1
        self.seconds += cost.total_s
        self.compute_s += cost.compute_s
        self.memory_s += cost.memory_s
        self.overhead_s += cost.overhead_s
        self.flops += record.flops
        self.bound_s[cost.bound] += cost.total_s
        self.ops_by_name[record.name] += 1
        for operand in record.inputs + record.outputs:
            self.bytes_by_memory[operand.memory] += operand.nbytes

    def scaled_sum(self, other: "StageCost", weight: float) -> "StageCost":
        """self + weight * other (for extrapolation by layer count)."""
        out = StageCost(self.ops + weight * other.ops, self.seconds + weight * other.seconds,
                        self.compute_s + weight * other.compute_s, self.memory_s + weight * other.memory_s,
                        self.overhead_s + weight * other.overhead_s, self.flops + weight * other.flops)
        for field in ("bytes_by_memory", "bound_s", "ops_by_name"):
            mine, theirs = getattr(self, field), getattr(other, field)
            getattr(out, field).update({k: mine.get(k, 0) + weight * theirs.get(k, 0) for k in set(mine) | set(theirs)})
        return out

    def minus(self, other: "StageCost") -> "StageCost":
        return self.scaled_sum(other, -1.0)


def stage_cost(records: Iterable, board: BoardPerf, traced: bool) -> StageCost:
    out = StageCost()
    for record in records:
        out.add(record, op_cost(record, board, traced))
    return out


def extrapolate(shallow: StageCost, deeper: StageCost, shallow_depth: int, deeper_depth: int,
                target_depth: int) -> StageCost:
    """Linear in depth: cost(L) = cost(d1) + (L - d1) * (cost(d2) - cost(d1)) / (d2 - d1)."""
    per_layer = deeper.minus(shallow)
    return shallow.scaled_sum(per_layer, (target_depth - shallow_depth) / (deeper_depth - shallow_depth))


def by_stage(records: Iterable) -> Dict[str, List]:
    out: Dict[str, List] = collections.defaultdict(list)
    for record in records:
        out[record.stage].append(record)
    return dict(out)


def total_latency(stages: Dict[str, StageCost], two_cqs: bool, hide_upload: Optional[bool] = None) -> float:
    """Steady-state latency of one inference: with 2 CQs the upload overlaps the previous compute."""
    hide = two_cqs if hide_upload is None else hide_upload
    return sum(cost.seconds for name, cost in stages.items() if not (hide and name == "upload"))
