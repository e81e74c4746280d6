"""Hard limits of the emulated board: configurations a card would refuse are refused here too.

Figures (per chip; ttnn opens one chip of a board as one device):
- Worker grid: Wormhole has 10 Tensix rows x 8 columns, Blackhole 10 rows x 14 columns; harvested
  rows (Wormhole) / columns (Blackhole) in the cluster descriptor's `harvest_mask` are missing, and
  one more row / column runs dispatch. n150 (mask 64, one row): 8x8; n300 chip 0 (mask 65, two
  rows): 8x7; p150 (mask 0): 13x10 (the grid tt-metal's Blackhole PI0 code sizes against).
- L1 per core: MEM_L1_SIZE in tt-metal tt_metal/hw/inc/.../{wormhole,blackhole}/dev_mem_map.h:
  1464 KiB (Wormhole), 1536 KiB (Blackhole); the vendor pages say "1.5 MB per core".
  `l1_small_size` is carved out of it. Not modelled: the firmware / kernel-config region at the
  bottom of L1 and each op's circular buffers, so the emulation is lenient by that much.
- DRAM per chip: MEM_DRAM_SIZE x banks (same headers): Wormhole 12 x 1 GiB, Blackhole 8 x
  4177920 KiB (vendor: 12 GB, 32 GB).
- Dest register: 8 tiles of bf16 or 4 of fp32 in half-sync mode (tt-metal
  tech_reports/matrix_engine/matrix_engine.md), which bounds a matmul's output subblock.
- Trace region: a trace stores the dispatch commands of every captured op. TRACE_BYTES_PER_OP is an
  estimate from tt-metal's PI0 runner ("~24MB used" for the traced 10-step denoise loop of roughly
  5,000 ops): about 4.8 KB per op, rounded down so only clear overflows are refused.
Counterpart: emulation.py (calls `DeviceBudget` on every device tensor and captured op).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

TILE = 32
TRACE_BYTES_PER_OP = 4096
TILE_BYTES = {"BFLOAT16": 2048, "FLOAT32": 4096, "UINT32": 4096, "INT32": 4096, "UINT16": 2048,
              "BFLOAT8_B": 1088, "BFLOAT4_B": 576}
ELEMENT_BYTES = {"BFLOAT16": 2, "FLOAT32": 4, "UINT32": 4, "INT32": 4, "UINT16": 2, "BFLOAT8_B": 1,
                 "BFLOAT4_B": 1}
DEST_TILES = {False: 8, True: 4}  # fp32_dest_acc_en -> tiles in Dest (half sync)
_ARCH = {  # rows, columns of Tensix cores, L1 bytes per core, DRAM bytes per chip
    "wormhole_b0": (10, 8, 1464 * 1024, 12 * 1024 ** 3),
    "blackhole": (10, 14, 1536 * 1024, 8 * 4177920 * 1024),
}


class DeviceLimitError(RuntimeError):
    """A configuration a real card cannot run (message: what, seen, what to do)."""


@dataclass(frozen=True)
class BoardLimits:
    """What one chip of the emulated board offers."""

    board: str
    arch: str
    chips: int
    grid: Tuple[int, int]  # compute_with_storage_grid_size (x, y)
    l1_bytes_per_core: int
    dram_bytes: int

    @property
    def cores(self) -> int:
        return self.grid[0] * self.grid[1]


def board_limits(descriptor: Path) -> BoardLimits:
    """Limits of chip 0 of the board a UMD cluster descriptor describes."""
    import yaml

    data = yaml.safe_load(Path(descriptor).read_text())
    arch = str(next(iter((data.get("arch") or {0: "wormhole_b0"}).values()))).lower()
    arch = "blackhole" if "blackhole" in arch else "wormhole_b0"
    harvest = int(((data.get("harvesting") or {}).get(0) or {}).get("harvest_mask", 0))
    rows, cols, l1, dram = _ARCH[arch]
    if arch == "wormhole_b0":
        grid = (cols, rows - bin(harvest & 0x3FF).count("1") - 1)
    else:
        grid = (cols - bin(harvest & 0x3FFF).count("1") - 1, rows)
    boards = data.get("chip_to_boardtype") or {}
    board = str(next(iter(boards.values()))) if boards else ("p150" if arch == "blackhole" else "n150")
    return BoardLimits(board, arch, len(data.get("arch") or {0: arch}), grid, l1, dram)


def _dtype(tensor: Any) -> str:
    return str(tensor.dtype).split(".")[-1].upper()


def _name(value: Any) -> str:
    return str(value).split(".")[-1].split("::")[-1].upper()


def _grid_extent(grid: Any) -> Tuple[int, int, int]:
    """(max x + 1, max y + 1, number of cores) of a CoreRangeSet / CoreRange / CoreGrid / CoreCoord."""
    if hasattr(grid, "ranges"):
        ranges = list(grid.ranges())
        cells = sum((r.end.x - r.start.x + 1) * (r.end.y - r.start.y + 1) for r in ranges)
        return max(r.end.x for r in ranges) + 1, max(r.end.y for r in ranges) + 1, cells
    if hasattr(grid, "start") and hasattr(grid, "end"):
        w, h = grid.end.x - grid.start.x + 1, grid.end.y - grid.start.y + 1
        return grid.end.x + 1, grid.end.y + 1, w * h
    return int(grid.x), int(grid.y), int(grid.x) * int(grid.y)


class DeviceBudget:
    """Live L1 / DRAM bytes of an emulated device and the static checks of configs against the board."""

    def __init__(self, limits: BoardLimits, l1_small_size: int, trace_region_size: int) -> None:
        self.limits = limits
        self.l1_small_size = l1_small_size
        self.trace_region_size = trace_region_size
        self.l1_budget = limits.l1_bytes_per_core - l1_small_size
        if self.l1_budget <= 0:
            raise DeviceLimitError(
                f"l1_small_size={l1_small_size} bytes leaves no L1 on {limits.board} "
                f"({limits.l1_bytes_per_core} bytes per core); use a value well below that (tt-metal PI0: 24576)")
        self.l1_per_core = [0] * limits.cores
        self.dram_bytes = 0
        self.peak_l1_per_core = 0
        self.peak_dram_bytes = 0
        self._live: Dict[int, Tuple[str, Optional[Tuple[int, ...]], int]] = {}

    # -- allocation tracking ---------------------------------------------------------------------
    def allocate(self, tensor: Any, memory_config: Any, what: str) -> None:
        """Account for a new device tensor; raise DeviceLimitError if it cannot be placed."""
        kind = _name(memory_config.buffer_type)
        size = _padded_bytes(tensor)
        if kind == "DRAM":
            if self.dram_bytes + size > self.limits.dram_bytes:
                raise DeviceLimitError(
                    f"{what}: DRAM full on {self.limits.board}: {self.dram_bytes + size:,} bytes would be resident, the "
                    f"chip has {self.limits.dram_bytes:,}; use bfloat8_b weights, fewer resident tensors, or a board "
                    "with more DRAM")
            self.dram_bytes += size
            self.peak_dram_bytes = max(self.peak_dram_bytes, self.dram_bytes)
            entry: Tuple[str, Optional[Tuple[int, ...]], int] = ("DRAM", None, size)
        else:
            cores, per_core = self._l1_placement(tensor, memory_config, what)
            for core in cores:
                if self.l1_per_core[core] + per_core > self.l1_budget:
                    raise DeviceLimitError(
                        f"{what}: L1 full on {self.limits.board} core {core}: {self.l1_per_core[core]:,} bytes already "
                        f"in L1 + {per_core:,} for this {list(tensor.shape)} {_dtype(tensor)} tensor > "
                        f"{self.l1_budget:,} bytes per core ({self.limits.l1_bytes_per_core:,} minus l1_small_size "
                        f"{self.l1_small_size:,}); deallocate L1 tensors sooner, shard over more cores or keep it "
                        "in DRAM")
            for core in cores:
                self.l1_per_core[core] += per_core
            self.peak_l1_per_core = max(self.peak_l1_per_core, max(self.l1_per_core))
            entry = ("L1", tuple(cores), per_core)
        key = id(tensor)
        self._live[key] = entry
        weakref.finalize(tensor, self._release, key)

    def free(self, tensor: Any) -> None:
        """ttnn.deallocate (or garbage collection) of a device tensor."""
        self._release(id(tensor))

    def _release(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is None:
            return
        kind, cores, size = entry
        if kind == "DRAM":
            self.dram_bytes -= size
            return
        for core in cores or ():
            self.l1_per_core[core] -= size

    def _l1_placement(self, tensor: Any, memory_config: Any, what: str) -> Tuple[Tuple[int, ...], int]:
        """(cores, bytes per core) of an L1 tensor: interleaved round-robin or its shard spec."""
        layout = _name(memory_config.memory_layout)
        spec = getattr(memory_config, "shard_spec", None)
        all_cores = tuple(range(self.limits.cores))
        if layout == "INTERLEAVED" or spec is None:
            pages, page = _pages(tensor)
            return all_cores, math.ceil(pages / self.limits.cores) * page
        gx, gy = self.limits.grid
        ex, ey, count = _grid_extent(spec.grid)
        if ex > gx or ey > gy:
            raise DeviceLimitError(
                f"{what}: shard grid reaches core ({ex - 1}, {ey - 1}) but {self.limits.board} has a {gx}x{gy} "
                "worker grid; build the shard spec from device.compute_with_storage_grid_size()")
        shard_h, shard_w = (int(v) for v in spec.shape)
        tiled = _name(tensor.layout) == "TILE"
        if tiled and (shard_h % TILE or shard_w % TILE):
            raise DeviceLimitError(
                f"{what}: shard shape [{shard_h}, {shard_w}] of a TILE tensor is not a multiple of 32x32 tiles; "
                "round the shard height and width up to multiples of 32")
        padded = list(tensor.padded_shape)
        height, width = math.prod(padded[:-1]), padded[-1]
        shards_h, shards_w = math.ceil(height / shard_h), math.ceil(width / shard_w)
        needed = {"HEIGHT_SHARDED": shards_h, "WIDTH_SHARDED": shards_w}.get(layout, shards_h * shards_w)
        if (layout == "HEIGHT_SHARDED" and shard_w != width) or (layout == "WIDTH_SHARDED" and shard_h != height):
            raise DeviceLimitError(
                f"{what}: {layout} shard [{shard_h}, {shard_w}] must span the whole "
                f"{'width' if layout == 'HEIGHT_SHARDED' else 'height'} of the [{height}, {width}] tensor")
        if needed > count:
            raise DeviceLimitError(
                f"{what}: [{height}, {width}] in [{shard_h}, {shard_w}] shards needs {needed} cores but the shard "
                f"grid has {count}; use bigger shards or a bigger grid (at most {gx}x{gy} on {self.limits.board})")
        per_core = shard_h * shard_w * ELEMENT_BYTES.get(_dtype(tensor), 4)
        if tiled:
            per_core = (shard_h // TILE) * (shard_w // TILE) * TILE_BYTES.get(_dtype(tensor), 4096)
        return tuple(range(count)), per_core

    # -- static checks ---------------------------------------------------------------------------
    def check_core_grid(self, grid: Any, what: str) -> None:
        gx, gy = self.limits.grid
        ex, ey, _ = _grid_extent(grid)
        if ex > gx or ey > gy:
            raise DeviceLimitError(
                f"{what}: core grid {ex}x{ey} does not fit the {gx}x{gy} worker grid of {self.limits.board}; "
                "size it from device.compute_with_storage_grid_size()")

    def check_matmul_program_config(self, config: Any, m: int, k: int, n: int, fp32_dest: bool, what: str) -> None:
        """The validations tt-metal's 1D/2D multicast matmul applies to a program config."""
        if config is None:
            return
        grid = getattr(config, "compute_with_storage_grid_size", None)
        if grid is not None:
            self.check_core_grid(grid, what)
        mt, kt, nt = (math.ceil(v / TILE) for v in (m, k, n))
        block_w = getattr(config, "in0_block_w", None)
        if block_w and kt % int(block_w):
            raise DeviceLimitError(f"{what}: in0_block_w={block_w} does not divide K = {kt} tiles; pick a divisor of {kt}")
        sub_h, sub_w = getattr(config, "out_subblock_h", None), getattr(config, "out_subblock_w", None)
        if sub_h and sub_w and int(sub_h) * int(sub_w) > DEST_TILES[fp32_dest]:
            raise DeviceLimitError(
                f"{what}: output subblock {sub_h}x{sub_w} = {int(sub_h) * int(sub_w)} tiles > {DEST_TILES[fp32_dest]} "
                f"tiles of Dest (fp32_dest_acc_en={fp32_dest}); use out_subblock_h * out_subblock_w <= "
                f"{DEST_TILES[fp32_dest]}")
        per_m, per_n = getattr(config, "per_core_M", None), getattr(config, "per_core_N", None)
        if per_m and sub_h and int(per_m) % int(sub_h) or per_n and sub_w and int(per_n) % int(sub_w):
            raise DeviceLimitError(f"{what}: per_core_M/N ({per_m}, {per_n}) must be multiples of the out_subblock "
                                   f"({sub_h}, {sub_w})")
        if per_m and per_n and grid is not None:
            gx, gy = int(grid.x), int(grid.y)
            mcast_1d = not hasattr(config, "transpose_mcast")
            cells = gx * gy
            covered = (int(per_m) * int(per_n) * cells >= mt * nt) if mcast_1d else \
                (int(per_m) * gy >= mt and int(per_n) * gx >= nt)
            if not covered:
                raise DeviceLimitError(
                    f"{what}: per_core_M={per_m} x per_core_N={per_n} tiles on a {gx}x{gy} grid do not cover the "
                    f"{mt}x{nt}-tile output; raise per_core_M/N or the grid")

    def check_sdpa_program_config(self, config: Any, what: str) -> None:
        if config is None:
            return
        self.check_core_grid(config.compute_with_storage_grid_size, what)
        for name in ("q_chunk_size", "k_chunk_size"):
            value = int(getattr(config, name, 0) or 0)
            if value % TILE:
                raise DeviceLimitError(f"{what}: {name}={value} is not a multiple of {TILE}; use 32, 64, 128 or 256")

    def check_trace(self, captured_ops: int) -> None:
        needed = captured_ops * TRACE_BYTES_PER_OP
        if needed > self.trace_region_size:
            raise DeviceLimitError(
                f"trace capture: {captured_ops} ops need about {needed:,} bytes of trace region "
                f"({TRACE_BYTES_PER_OP} per op) but the device was opened with trace_region_size="
                f"{self.trace_region_size:,}; open it with a larger trace_region_size (tt-metal PI0.5: 80 MB)")


def _pages(tensor: Any) -> Tuple[int, int]:
    """(pages, bytes per page): tiles for TILE layout, rows for ROW_MAJOR."""
    shape = list(tensor.padded_shape)
    dtype = _dtype(tensor)
    if _name(tensor.layout) == "TILE":
        tiles = math.prod(shape[:-2]) * math.ceil(shape[-2] / TILE) * math.ceil(shape[-1] / TILE)
        return tiles, TILE_BYTES.get(dtype, 4096)
    return max(1, math.prod(shape[:-1])), shape[-1] * ELEMENT_BYTES.get(dtype, 4)


def _padded_bytes(tensor: Any) -> int:
    pages, page = _pages(tensor)
    return pages * page
