"""PaliGemma VLM plus action expert with per-layer shared attention, split into prefill and steps.

Prefill runs the VLM over the prefix once and keeps each layer's K/V after RoPE
([B, Hkv, P, hd]); the last layer's attention output and MLP feed nothing, so only its K/V are
computed. Each denoise step runs the expert over the suffix (51 tokens PI0, 50 PI0.5) attending to
[cached prefix K/V ; suffix K/V]; the cache is never appended to.
Counterpart: ttnn_backend/ttnn_paligemma.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from torch import Tensor

from pi0_ttnn_node import masks
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.torch_backend.torch_gemma import GemmaModel, rope_cos_sin


@dataclass(frozen=True)
class PrefixKVCache:
    """Everything a denoise step needs from the prefix, computed once per observation.

    `k`/`v` hold one [B, Hkv, P, hd] tensor per layer (K after RoPE). The suffix mask, positions
    and RoPE tables depend only on the prefix pad mask, so they are built here, not per step.
    """

    k: List[Tensor]
    v: List[Tensor]
    prefix_pad_masks: Tensor  # [B, P] bool
    suffix_mask: Tensor  # [B, 1, S, P + S] additive
    suffix_position_ids: Tensor  # [B, S]
    suffix_cos: Tensor  # [B, 1, S, hd]
    suffix_sin: Tensor  # [B, 1, S, hd]


class PaliGemmaWithExpert:
    """Runs the two Gemma stacks; holds references only, the parameters belong to PI0Model."""

    def __init__(self, config: PI0Config, language_model: GemmaModel, gemma_expert: GemmaModel):
        self.config = config
        self.language_model = language_model
        self.gemma_expert = gemma_expert

    def prefill(self, prefix_embs: Tensor, prefix_pad_masks: Tensor, prefix_att_masks: Tensor,
                eager: bool = False) -> PrefixKVCache:
        """Run the VLM over the prefix and return the per-layer K/V cache."""
        vlm = self.language_model
        dtype = vlm.dtype
        mask = masks.to_additive_mask(masks.make_att_2d_masks(prefix_pad_masks, prefix_att_masks),
                                      dtype)
        positions = masks.prefix_position_ids(prefix_pad_masks)
        cos, sin = rope_cos_sin(positions, vlm.config.head_dim, vlm.config.rope_theta, dtype)
        x = prefix_embs.to(dtype)
        ks: List[Tensor] = []
        vs: List[Tensor] = []
        last = len(vlm.layers) - 1
        for i, layer in enumerate(vlm.layers):
            if i == last:
                k, v = layer.project_kv(x, cos, sin)
            else:
                x, (k, v) = layer(x, cos, sin, mask, eager=eager)
            ks.append(k)
            vs.append(v)
        return self._with_suffix_context(ks, vs, prefix_pad_masks)

    def _with_suffix_context(self, ks: List[Tensor], vs: List[Tensor],
                             prefix_pad_masks: Tensor) -> PrefixKVCache:
        expert = self.gemma_expert
        batch = prefix_pad_masks.shape[0]
        suffix_pad, suffix_att = masks.suffix_pattern(self.config, batch, prefix_pad_masks.device)
        bool_mask = masks.suffix_attention_mask(prefix_pad_masks, suffix_pad, suffix_att)
        positions = masks.suffix_position_ids(prefix_pad_masks, suffix_pad)
        cos, sin = rope_cos_sin(positions, expert.config.head_dim, expert.config.rope_theta,
                                expert.dtype)
        return PrefixKVCache(k=ks, v=vs, prefix_pad_masks=prefix_pad_masks,
                             suffix_mask=masks.to_additive_mask(bool_mask, expert.dtype),
                             suffix_position_ids=positions, suffix_cos=cos, suffix_sin=sin)

    def forward_expert(self, cache: PrefixKVCache, suffix_embs: Tensor,
                       adarms_cond: Optional[Tensor], eager: bool = False) -> Tensor:
        """Run the expert over the suffix against the cached prefix; return hidden [B, S, D]."""
        past: List[Tuple[Tensor, Tensor]] = list(zip(cache.k, cache.v))
        out, _ = self.gemma_expert(suffix_embs, cache.suffix_cos, cache.suffix_sin,
                                   cache.suffix_mask, past, adarms_cond, eager)
        return out
