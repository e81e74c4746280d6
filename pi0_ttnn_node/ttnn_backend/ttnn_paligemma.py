"""PaliGemma VLM plus action expert on the device: prefill once, then expert passes per step.

Prefill runs the VLM over the (tile-padded) prefix with the host-built additive mask and per-token
RoPE rows, keeping each layer's K/V after RoPE ([B, 1, P, hdp], bf16) resident; the last layer only
projects K/V. A denoise step runs the expert over the suffix attending to [cache ; suffix K/V] with
the suffix mask [B, 1, S, P + S]. Counterpart: torch_backend/torch_paligemma.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import ttnn

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.ttnn_backend.ttnn_gemma import GemmaModelTTNN, RotaryTTNN, rope_cos_sin

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

    `k`/`v` hold one [B, Hkv, P, hdp] tensor per layer (K after RoPE); the suffix mask and RoPE
    rows depend only on the prefix pad mask, so they are prepared here, not per step.
    """

    k: List["ttnn.Tensor"]
    v: List["ttnn.Tensor"]
    suffix_mask: "ttnn.Tensor"
    suffix_rope: RotaryTTNN


class PaliGemmaWithExpertTTNN:
    """Runs the two Gemma stacks; holds references only, the weights belong to PI0ModelTTNN."""

    # mirrors torch_paligemma.PaliGemmaWithExpert
    def __init__(self, config: PI0Config, language_model: GemmaModelTTNN,
                 gemma_expert: GemmaModelTTNN, weights: Weights):
        self.config = config
        self.language_model = language_model
        self.gemma_expert = gemma_expert
        self.weights = weights

    def prefill(self, prefix_embs: "ttnn.Tensor", attention: AttentionInputsTTNN
                ) -> PrefixKVCacheTTNN:
        """Run the VLM over the prefix [B, P, D] and return the per-layer K/V cache."""
        vlm = self.language_model
        rope = rope_cos_sin(attention.prefix_position_ids, self.weights, vlm.config)
        x = prefix_embs
        ks: List["ttnn.Tensor"] = []
        vs: List["ttnn.Tensor"] = []
        last = len(vlm.layers) - 1
        for i, layer in enumerate(vlm.layers):
            if i == last:
                k, v = layer.project_kv(x, rope)
            else:
                x, (k, v) = layer(x, rope, attention.prefix_mask)
            ks.append(k)
            vs.append(v)
        suffix_rope = rope_cos_sin(attention.suffix_position_ids, self.weights,
                                   self.gemma_expert.config)
        return PrefixKVCacheTTNN(k=ks, v=vs, suffix_mask=attention.suffix_mask,
                                 suffix_rope=suffix_rope)

    def forward_expert(self, cache: PrefixKVCacheTTNN, suffix_embs: "ttnn.Tensor",
                       adarms_cond: Optional["ttnn.Tensor"]) -> "ttnn.Tensor":
        """Run the expert over the suffix against the cached prefix; return hidden [B, S, D]."""
        past = list(zip(cache.k, cache.v))
        out, _ = self.gemma_expert(suffix_embs, cache.suffix_rope, cache.suffix_mask, past,
                                   adarms_cond)
        return out
