"""Analytic matmul/attention FLOPs and resident device memory of PI0ModelTTNN, from shapes only.

FLOPs are counted at the device shapes the model runs (prefix and suffix padded to 32 tokens,
heads padded to a tile multiple, patch K 588 -> 608): the emulation's measured matmul FLOPs must
equal them exactly, which shows every projection and attention ran as a ttnn op. Memory uses
bf16 = 2 B and bfloat8_b = 1088 B per 32 x 32 tile, nothing allocated. Counterpart: none (tools).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from pi0_ttnn_node.config import GemmaConfig, PI0Config
from pi0_ttnn_node.ttnn_backend.ttnn_common import round_up
from pi0_ttnn_node.ttnn_backend.ttnn_gemma import fused_rope_ok
from pi0_ttnn_node.ttnn_backend.ttnn_weights import (WeightDtypes, device_bytes, padded_head_dim,
                                                     patch_k, weight_plan)

DRAM_BYTES = {"n150": 12 * 2**30, "p150": 32 * 2**30}


@dataclass(frozen=True)
class DeviceShapes:
    """Token counts the device sees for one call."""

    batch: int
    prefix: int  # padded prefix length P
    suffix: int  # padded suffix length S
    horizon: int  # action rows per step (S minus the PI0 state token)


def device_shapes(cfg: PI0Config, batch: int, lang_len: int) -> DeviceShapes:
    prefix = round_up(cfg.num_image_slots * cfg.vision.num_patches + lang_len)
    suffix = round_up(cfg.suffix_len)
    return DeviceShapes(batch, prefix, suffix, suffix - (0 if cfg.is_pi05 else 1))


def _gemma_layer_flops(g: GemmaConfig, b: int, q_len: int, kv_len: int, rc: Any = None
                       ) -> Dict[str, int]:
    hdp = padded_head_dim(g.head_dim)
    rows = b * q_len
    fused_mlp = rc is not None and rc.fused_mlp
    mlp = round_up(g.mlp_dim) if fused_mlp else g.mlp_dim
    out = {
        "qkv_proj": 2 * rows * g.width * (g.num_heads + 2 * g.num_kv_heads) * hdp,
        "attention": 4 * b * g.num_heads * q_len * kv_len * hdp,
        "o_proj": 2 * rows * g.num_heads * hdp * g.width,
        "mlp": 3 * 2 * rows * g.width * mlp,
    }
    if not fused_rope_ok(g, rc is not None and rc.fused_rope):  # rotate-half as a matmul
        out["rope_rotate_half"] = 2 * b * (g.num_heads + g.num_kv_heads) * q_len * hdp * hdp
    return out


def matmul_flops(cfg: PI0Config, batch: int, lang_len: int, num_steps: int, rc: Any = None
                 ) -> Dict[str, Dict[str, int]]:
    """FLOPs of every linear / matmul / SDPA of one sample_actions call, by stage and kind.

    `rc` (a TtRuntimeConfig) selects the techniques that change the work: fused MLP (tile-padded
    hidden), fused RoPE (no rotate-half matmul), precomputed conditioning (time MLP and adaRMS
    matmuls once over all steps' rows, PI0 state token once). None = all of them off.
    """
    sh = device_shapes(cfg, batch, lang_len)
    v, vlm, ex = cfg.vision, cfg.vlm, cfg.expert
    images, n = batch * cfg.num_image_slots, v.num_patches
    hdp_v = padded_head_dim(v.head_dim)
    stages: Dict[str, Dict[str, int]] = collections.defaultdict(lambda: collections.Counter())
    vis = stages["vision"]
    vis["patch_embed"] += 2 * images * n * patch_k(v) * v.hidden_size
    for _ in range(v.num_layers):
        vis["qkv_proj"] += 2 * images * n * v.hidden_size * 3 * v.num_heads * hdp_v
        vis["attention"] += 4 * images * v.num_heads * n * n * hdp_v
        vis["o_proj"] += 2 * images * n * v.num_heads * hdp_v * v.hidden_size
        vis["mlp"] += 2 * 2 * images * n * v.hidden_size * v.intermediate_size
    vis["projector"] += 2 * images * n * v.hidden_size * vlm.width
    pre = stages["prefill"]
    for _ in range(vlm.depth - 1):
        pre.update(_gemma_layer_flops(vlm, batch, sh.prefix, sh.prefix, rc))
    hdp = padded_head_dim(vlm.head_dim)
    pre["kv_proj"] += 2 * batch * sh.prefix * vlm.width * 2 * vlm.num_kv_heads * hdp
    if not fused_rope_ok(vlm, rc is not None and rc.fused_rope):
        pre["rope_rotate_half"] += 2 * batch * vlm.num_kv_heads * sh.prefix * hdp * hdp
    step: Dict[str, int] = collections.Counter()
    once: Dict[str, int] = collections.Counter()  # before the loop (precomputed conditioning)
    w, rows = ex.width, batch * sh.horizon
    pre_cond = rc is not None and rc.precompute_conditioning
    step["action_in_proj"] += 2 * rows * cfg.max_action_dim * w
    step["action_out_proj"] += 2 * rows * w * cfg.max_action_dim
    if cfg.is_pi05:
        norms = 2 * ex.depth + 1
        if pre_cond:
            once["time_mlp"] += 2 * 2 * num_steps * w * w
            once["adarms_modulation"] += norms * 2 * num_steps * w * 3 * w
        else:
            step["time_mlp"] += 2 * 2 * batch * w * w
            step["adarms_modulation"] += norms * 3 * 2 * batch * w * w
    elif pre_cond:
        once["state_proj"] += 2 * batch * cfg.max_state_dim * w
        once["action_time_mlp"] += 2 * num_steps * w * w  # the time half, all steps at once
        step["action_time_mlp"] += 2 * rows * w * w + 2 * rows * w * w
    else:
        step["state_proj"] += 2 * batch * cfg.max_state_dim * w
        step["action_time_mlp"] += 2 * rows * 2 * w * w + 2 * rows * w * w
    for _ in range(ex.depth):
        step.update(_gemma_layer_flops(ex, batch, sh.suffix, sh.prefix + sh.suffix, rc))
    denoise = collections.Counter({k: val * num_steps for k, val in step.items()})
    denoise.update(once)
    stages["denoise"] = denoise
    return {k: dict(val) for k, val in stages.items()}


def total_flops(breakdown: Dict[str, Dict[str, int]]) -> int:
    return sum(sum(kinds.values()) for kinds in breakdown.values())


# ------------------------------------------------------------------------------------------------
# Resident memory
# ------------------------------------------------------------------------------------------------


def memory_rows(cfg: PI0Config, weight_dtype: str, batch: int = 1
                ) -> List[Tuple[str, str, int, int]]:
    """(group, dtype, tensors, bytes) of every resident tensor plus one call's K/V cache."""
    table: Dict[Tuple[str, str], List[int]] = collections.defaultdict(lambda: [0, 0])
    for spec in weight_plan(cfg, WeightDtypes.uniform(weight_dtype)):
        row = table[(spec.group, spec.dtype)]
        row[0] += 1
        row[1] += device_bytes(spec.shape, spec.dtype, spec.layout)
    sh = device_shapes(cfg, batch, cfg.tokenizer_max_length)
    kv_shape = (batch, cfg.vlm.num_kv_heads, sh.prefix, padded_head_dim(cfg.vlm.head_dim))
    kv = table[("kv_cache (per call)", "bfloat16")]
    kv[0] += 2 * cfg.vlm.depth
    kv[1] += 2 * cfg.vlm.depth * device_bytes(kv_shape, "bfloat16")
    return [(g, d, n, b) for (g, d), (n, b) in sorted(table.items())]


def format_memory_report(cfg: PI0Config, weight_dtype: str, batch: int = 1) -> str:
    """A text table of memory_rows, with totals against N150 (12 GB) and P150 (32 GB) DRAM."""
    rows = memory_rows(cfg, weight_dtype, batch)
    lines = [f"{cfg.model_type} (vlm {cfg.vlm.width}x{cfg.vlm.depth}, expert {cfg.expert.width}, "
             f"prefix {device_shapes(cfg, batch, cfg.tokenizer_max_length).prefix} tokens, "
             f"batch {batch}), matmul weights {weight_dtype}",
             f"{'group':<22}{'dtype':<11}{'tensors':>8}{'MiB':>11}"]
    for group, dtype, count, size in rows:
        lines.append(f"{group:<22}{dtype:<11}{count:>8}{size / 2**20:>11.1f}")
    total = sum(r[3] for r in rows)
    lines.append(f"{'total':<41}{total / 2**20:>11.1f}")
    for board, cap in DRAM_BYTES.items():
        lines.append(f"  {board}: {100.0 * total / cap:.1f} % of {cap / 2**30:.0f} GiB DRAM")
    return "\n".join(lines)
