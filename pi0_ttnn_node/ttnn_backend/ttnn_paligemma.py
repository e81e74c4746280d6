"""PaliGemma VLM plus action expert on the device: prefill once, then expert passes per step.

Prefill runs the VLM over the (tile-padded) prefix with the host-built additive mask and per-token
RoPE rows, keeping each layer's K/V after RoPE ([B, 1, P, hdp], kv_cache_dtype) resident; the last
layer only projects K/V. With kv_in_place the K/V go into resident [B, 1, P + S, hdp] buffers that
each denoise step completes in place (fill_cache at row P), so the prefix K/V is never concatenated
or copied per step. A denoise step runs the expert over the suffix attending to [cache ; suffix K/V]
with the suffix mask [B, 1, S, P + S]. Counterpart: torch_backend/torch_paligemma.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import ttnn

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.ttnn_backend.ttnn_gemma import (GemmaModelTTNN, KVSlot, RotaryTTNN, cast_kv,
                                                   rope_cos_sin, write_rows)
from pi0_ttnn_node.ttnn_backend.ttnn_weights import padded_head_dim

Weights = Dict[str, "ttnn.Tensor"]


@dataclass
class AttentionInputsTTNN:
    """Masks and positions of one observation, built on the host (masks.py) and uploaded once."""

    prefix_mask: "ttnn.Tensor"  # [B, 1, P, P] bf16 additive
    prefix_position_ids: "ttnn.Tensor"  # [B, P] uint32
    suffix_mask: "ttnn.Tensor"  # [B, 1, S, P + S] bf16 additive
    suffix_position_ids: "ttnn.Tensor"  # [B, S] uint32


@dataclass
class PrefixKVCacheTTNN:
    """Everything a denoise step needs from the prefix, resident on the device.

    `k`/`v` hold one tensor per layer (K after RoPE, in the K/V-cache dtype): [B, Hkv, P, hdp]
    (concat mode), or the resident [B, Hkv, P + S, hdp] buffers whose first P rows prefill wrote
    (`in_place`; each step writes rows P.. with fill_cache). The suffix mask and RoPE rows depend
    only on the prefix pad mask, so they are prepared once per call, not per step.
    """

    k: List["ttnn.Tensor"]
    v: List["ttnn.Tensor"]
    suffix_mask: "ttnn.Tensor"
    suffix_rope: Optional[RotaryTTNN]
    in_place: bool = False
    prefix_len: int = 0

    def slots(self) -> List[KVSlot]:
        return [KVSlot(k, v, self.in_place, self.prefix_len) for k, v in zip(self.k, self.v)]


def _zeros(shape: Tuple[int, ...], dtype: Any, device: Any) -> "ttnn.Tensor":
    return ttnn.zeros(list(shape), dtype=dtype, layout=ttnn.TILE_LAYOUT, device=device,
                      memory_config=ttnn.DRAM_MEMORY_CONFIG)


class KVBuffers:
    """Resident [B, Hkv, P + S, hdp] K and V buffers per VLM layer, kept across calls (their
    addresses stay fixed, so traces may read them); reallocated only when the shape changes."""

    def __init__(self) -> None:
        self.key: Optional[Tuple[int, ...]] = None
        self.k: List["ttnn.Tensor"] = []
        self.v: List["ttnn.Tensor"] = []

    def get(self, shape: Tuple[int, ...], layers: int, dtype: Any, device: Any
            ) -> Tuple[List["ttnn.Tensor"], List["ttnn.Tensor"]]:
        key = tuple(shape) + (layers, str(dtype))
        if self.key != key:
            self.release()
            self.k = [_zeros(shape, dtype, device) for _ in range(layers)]
            self.v = [_zeros(shape, dtype, device) for _ in range(layers)]
            self.key = key
        return self.k, self.v

    def release(self) -> None:
        for t in self.k + self.v:
            ttnn.deallocate(t)
        self.k, self.v, self.key = [], [], None


class PaliGemmaWithExpertTTNN:
    """Runs the two Gemma stacks; holds references only, the weights belong to PI0ModelTTNN."""

    # mirrors torch_paligemma.PaliGemmaWithExpert
    def __init__(self, config: PI0Config, language_model: GemmaModelTTNN,
                 gemma_expert: GemmaModelTTNN, weights: Weights, plan: Any, device: Any = None):
        self.config = config
        self.language_model = language_model
        self.gemma_expert = gemma_expert
        self.weights = weights
        self.plan = plan
        self.device = device
        self.buffers = KVBuffers()

    def suffix_rope(self, suffix_position_ids: "ttnn.Tensor") -> RotaryTTNN:
        return rope_cos_sin(suffix_position_ids, self.weights, self.gemma_expert.config,
                            self.plan.rc.fused_rope, self.plan.memory("rope"))

    def prefill_kv(self, prefix_embs: "ttnn.Tensor", attention: AttentionInputsTTNN
                   ) -> PrefixKVCacheTTNN:
        """Run the VLM over the prefix [B, P, D]; K/V per layer (no suffix RoPE rows yet)."""
        vlm, plan = self.language_model, self.plan
        b, p, d = prefix_embs.shape[0], prefix_embs.shape[1], prefix_embs.shape[2]
        rope = rope_cos_sin(attention.prefix_position_ids, self.weights, vlm.config,
                            plan.rc.fused_rope, plan.memory("rope"))
        x = ttnn.reshape(prefix_embs, (b, 1, p, d))
        in_place = plan.rc.kv_in_place
        if in_place:
            s = attention.suffix_mask.shape[-2]
            hkv, hdp = vlm.config.num_kv_heads, padded_head_dim(vlm.config.head_dim)
            ks, vs = self.buffers.get((b, hkv, p + s, hdp), len(vlm.layers), plan.kv_dtype,
                                      self.device)
        else:
            ks, vs = [], []
        last = len(vlm.layers) - 1
        for i, layer in enumerate(vlm.layers):
            if i == last:
                k, v = layer.project_kv(x, rope)
            else:
                out, (k, v) = layer(x, rope, attention.prefix_mask)
                if i > 0:
                    plan.release("prefill", x)
                x = out
            k_c, v_c = cast_kv(k, plan.kv_dtype), cast_kv(v, plan.kv_dtype)
            if in_place:
                write_rows(ks[i], k_c, 0)
                write_rows(vs[i], v_c, 0)
            else:
                ks.append(k_c)
                vs.append(v_c)
        plan.release("rope", *rope.tensors())
        return PrefixKVCacheTTNN(k=ks, v=vs, suffix_mask=attention.suffix_mask,
                                 suffix_rope=None, in_place=in_place, prefix_len=p)

    def prefill(self, prefix_embs: "ttnn.Tensor", attention: AttentionInputsTTNN
                ) -> PrefixKVCacheTTNN:
        """Run the VLM over the prefix [B, P, D] and return the per-layer K/V cache, with the
        suffix RoPE rows."""
        cache = self.prefill_kv(prefix_embs, attention)
        cache.suffix_rope = self.suffix_rope(attention.suffix_position_ids)
        return cache

    def forward_expert(self, cache: PrefixKVCacheTTNN, suffix_embs: "ttnn.Tensor",
                       adarms_cond: Any) -> "ttnn.Tensor":
        """Run the expert over the suffix [B, 1, S, D] against the cached prefix; return the
        final-normed hidden [B, 1, S, D]."""
        if len(suffix_embs.shape) == 3:
            b, s, d = suffix_embs.shape
            suffix_embs = ttnn.reshape(suffix_embs, (b, 1, s, d))
        out, _ = self.gemma_expert(suffix_embs, cache.suffix_rope, cache.suffix_mask,
                                   cache.slots(), adarms_cond)
        return out
