"""How each group of ops runs on the device: kernel configs, output dtypes, memory, program configs.

One `ExecutionPlan` per model turns the TtRuntimeConfig knobs into ttnn arguments: a compute-kernel
config per group (vision, prefill, denoise, sdpa: fidelity + fp32 Dest accumulation), the matmul
activation and K/V-cache dtypes, where activations live (DRAM, or L1 with `l1_activations`) and,
with `matmul_program_configs`, an explicit program config per matmul shape: 2-D multicast for the
prefix shapes (SigLIP, prefill: M = prefix length) and 1-D multicast (in0 multicast, N split over
the cores) for the denoise shapes (M = suffix length), plus SDPA chunk sizes. Every linear of the
model goes through `ExecutionPlan.linear` so the knobs apply everywhere. Counterpart: none (the
torch backend has no device placement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import ttnn

from pi0_ttnn_node.ttnn_backend.runtime import compute_kernel_config
from pi0_ttnn_node.ttnn_backend.ttnn_common import TILE, get_ttnn_dtype
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig

GROUPS = ("vision", "prefill", "denoise", "sdpa")
SMALL_M_TILES = 4  # M up to 128 rows (the denoise shapes): 1-D multicast config


def _largest_divisor(value: int, limit: int) -> int:
    for d in range(max(1, min(value, limit)), 0, -1):
        if value % d == 0:
            return d
    return 1


def _subblocks(per_core_m: int, per_core_n: int, fp32_acc: bool) -> Tuple[int, int]:
    """(out_subblock_h, out_subblock_w): h * w <= Dest tiles (4 with fp32, else 8); h > 1 only
    when w covers the whole per-core width (the matmul kernels' rule)."""
    budget = 4 if fp32_acc else 8
    w = _largest_divisor(per_core_n, budget)
    h = _largest_divisor(per_core_m, budget // w) if w == per_core_n else 1
    return h, w


@dataclass(frozen=True)
class MatmulShape:
    m: int  # rows (batch folded in)
    k: int
    n: int

    @property
    def tiles(self) -> Tuple[int, int, int]:
        return tuple(-(-v // TILE) for v in (self.m, self.k, self.n))  # type: ignore[return-value]


class ExecutionPlan:
    """The resolved ttnn arguments for every op group of PI0ModelTTNN."""

    def __init__(self, rc: TtRuntimeConfig, device: Any) -> None:
        self.rc = rc
        grid = device.compute_with_storage_grid_size()
        self.grid = (int(grid.x), int(grid.y))
        self.fp32 = {"vision": rc.fp32_acc_vision, "prefill": rc.fp32_acc_prefill,
                     "denoise": rc.fp32_acc_denoise, "sdpa": rc.fp32_acc_sdpa}
        fidelity = {"vision": rc.fidelity_vision, "prefill": rc.fidelity_prefill,
                    "denoise": rc.fidelity_denoise, "sdpa": rc.fidelity_sdpa}
        self.kernels: Dict[str, Any] = {g: compute_kernel_config(ttnn, fidelity[g], self.fp32[g])
                                        for g in GROUPS}
        self.activation_dtype = get_ttnn_dtype(rc.activation_dtype)
        self.kv_dtype = get_ttnn_dtype(rc.kv_cache_dtype)

    # -- memory ---------------------------------------------------------------------------------
    def memory(self, group: str) -> Any:
        """Where activations of `group` live: L1 (interleaved) with l1_activations for the vision
        tower, the per-call RoPE rows and the denoise step; DRAM otherwise."""
        if self.rc.l1_activations and group in ("vision", "rope", "denoise"):
            return ttnn.L1_MEMORY_CONFIG
        return ttnn.DRAM_MEMORY_CONFIG

    def in_l1(self, group: str) -> bool:
        return self.memory(group) is ttnn.L1_MEMORY_CONFIG

    def release(self, group: str, *tensors: Any) -> None:
        """Free L1 intermediates of `group` once consumed (DRAM ones are left to the allocator)."""
        if self.in_l1(group):
            seen = set()
            for t in tensors:
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    ttnn.deallocate(t)

    def block_sharded(self, rows: int, cols: int) -> Optional[Any]:
        """L1 block-sharded memory config for a [rows, cols] activation, or None when the tile
        grid does not divide evenly onto the cores (then the caller stays interleaved)."""
        mt, nt = -(-rows // TILE), -(-cols // TILE)
        gy, gx = _largest_divisor(mt, self.grid[1]), _largest_divisor(nt, self.grid[0])
        if gx * gy < 2:
            return None
        grid = ttnn.CoreRangeSet({ttnn.CoreRange(ttnn.CoreCoord(0, 0),
                                                 ttnn.CoreCoord(gx - 1, gy - 1))})
        spec = ttnn.ShardSpec(grid, [mt // gy * TILE, nt // gx * TILE],
                              ttnn.ShardOrientation.ROW_MAJOR)
        return ttnn.MemoryConfig(ttnn.TensorMemoryLayout.BLOCK_SHARDED, ttnn.BufferType.L1, spec)

    # -- program configs -------------------------------------------------------------------------
    def matmul_config(self, group: str, shape: MatmulShape, out_memory: Optional[Any] = None,
                      in_memory: Optional[Any] = None) -> Optional[Any]:
        """A program config for this matmul shape, or None (knob off: ttnn chooses)."""
        if not self.rc.matmul_program_configs:
            return None
        mt, kt, nt = shape.tiles
        fp32 = self.fp32.get(group, False)
        in0_block_w = _largest_divisor(kt, 4 if fp32 else 8)
        gx, gy = self.grid
        if mt <= SMALL_M_TILES:  # denoise shapes: in0 multicast, N split over the cores
            per_core_n = -(-nt // (gx * gy))
            h, w = _subblocks(mt, per_core_n, fp32)
            return ttnn.MatmulMultiCoreReuseMultiCast1DProgramConfig(
                compute_with_storage_grid_size=ttnn.CoreCoord(gx, gy), in0_block_w=in0_block_w,
                out_subblock_h=h, out_subblock_w=w, per_core_M=mt, per_core_N=per_core_n,
                fuse_batch=True, fused_activation=None, mcast_in0=True)
        if in_memory is not None and in_memory.is_sharded():  # block-sharded in0: its grid
            shard = in_memory.shard_spec.shape
            per_core_m, in0_block_w = shard[0] // TILE, shard[1] // TILE
            use_x, use_y = kt // in0_block_w, -(-mt // per_core_m)
            per_core_n = -(-nt // use_x)
        elif out_memory is not None and out_memory.is_sharded():  # block-sharded output
            shard = out_memory.shard_spec.shape
            per_core_m, per_core_n = shard[0] // TILE, shard[1] // TILE
            use_x, use_y = -(-nt // per_core_n), -(-mt // per_core_m)
        else:  # prefix shapes: 2-D multicast over the grid
            use_y, use_x = min(gy, mt), min(gx, nt)
            per_core_m, per_core_n = -(-mt // use_y), -(-nt // use_x)
        h, w = _subblocks(per_core_m, per_core_n, fp32)
        return ttnn.MatmulMultiCoreReuseMultiCastProgramConfig(
            compute_with_storage_grid_size=ttnn.CoreCoord(use_x, use_y), in0_block_w=in0_block_w,
            out_subblock_h=h, out_subblock_w=w, per_core_M=per_core_m, per_core_N=per_core_n,
            transpose_mcast=False, fused_activation=None)

    def sdpa_config(self, q_len: int, k_len: int) -> Optional[Any]:
        """SDPA chunk sizes as tt_transformers' prefill config (256 for >= 2048 keys, else 64),
        shrunk until they divide the padded lengths."""
        if not self.rc.matmul_program_configs:
            return None
        base = 256 if max(q_len, k_len) >= 2048 else 64

        def chunk(length: int) -> int:
            size = base
            while size > TILE and length % size:
                size //= 2
            return size

        return ttnn.SDPAProgramConfig(compute_with_storage_grid_size=ttnn.CoreCoord(*self.grid),
                                      q_chunk_size=chunk(q_len), k_chunk_size=chunk(k_len),
                                      exp_approx_mode=False)

    # -- the one linear ------------------------------------------------------------------------
    def linear(self, x: Any, weight: Any, group: str, *, bias: Any = None,
               activation: Optional[str] = None, dtype: Any = None,
               memory_config: Any = None) -> Any:
        """ttnn.linear with this group's kernel, program config, output memory and dtype."""
        memory = memory_config or self.memory(group)
        shape = MatmulShape(math.prod(list(x.shape)[:-1]), int(x.shape[-1]),
                            int(weight.shape[-1]))
        kwargs: Dict[str, Any] = {}
        config = self.matmul_config(group, shape, memory, x.memory_config())
        if config is not None:
            kwargs["program_config"] = config
        if activation is not None:
            kwargs["activation"] = activation
        if dtype is not None:
            kwargs["dtype"] = dtype
        return ttnn.linear(x, weight, bias=bias, compute_kernel_config=self.kernels[group],
                           memory_config=memory, **kwargs)

    def sdpa(self, q: Any, k: Any, v: Any, *, mask: Any, scale: float, group: str) -> Any:
        """SDPA (is_causal=False, additive mask or none) with the sdpa kernel and chunk config."""
        kwargs: Dict[str, Any] = {}
        config = self.sdpa_config(int(q.shape[-2]), int(k.shape[-2]))
        if config is not None:
            kwargs["program_config"] = config
        if mask is not None:
            kwargs["attn_mask"] = mask
        return ttnn.transformer.scaled_dot_product_attention(
            q, k, v, is_causal=False, scale=scale, compute_kernel_config=self.kernels["sdpa"],
            memory_config=self.memory(group), **kwargs)
