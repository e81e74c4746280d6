"""Gemma decoder stack on the device, shared by the VLM (2B) and the action expert (300M).

RMSNorm with the +1 already in the weight; PI0.5 adaRMS as three small linears (scale with its +1
in the bias, shift, gate). Split-half RoPE: cos/sin rows gathered per token with `ttnn.embedding`
from resident tables, rotate_half as an exact matmul with a 0/+-1 matrix (per-row positions, any
batch). MQA (8 q heads, 1 K/V head), SDPA with the additive prefix-LM mask and is_causal=False.
Counterpart: torch_backend/torch_gemma.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import ttnn

from pi0_ttnn_node.config import GemmaConfig
from pi0_ttnn_node.ttnn_backend.ttnn_common import LightweightModule
from pi0_ttnn_node.ttnn_backend.ttnn_weights import padded_head_dim

Weights = Dict[str, "ttnn.Tensor"]
KV = Tuple["ttnn.Tensor", "ttnn.Tensor"]


@dataclass
class RotaryTTNN:
    """Per-token RoPE rows for one sequence: q tables [B, Hq, N, hdp], k tables [B, Hkv, N, hdp]."""

    cos_q: "ttnn.Tensor"
    sin_q: "ttnn.Tensor"
    cos_k: "ttnn.Tensor"
    sin_k: "ttnn.Tensor"
    rotate_half: "ttnn.Tensor"  # [hdp, hdp]


def rope_cos_sin(position_ids: "ttnn.Tensor", weights: Weights, config: GemmaConfig) -> RotaryTTNN:
    """Gather cos/sin rows for positions [B, N] (uint32, ROW_MAJOR) and expand them per head.

    Heads are expanded once per sequence here so that every layer's RoPE multiply has equal
    shapes (no head broadcast inside the 18 layers).
    """
    b, n = position_ids.shape[0], position_ids.shape[1]
    hdp = padded_head_dim(config.head_dim)
    tables = []
    for name in ("rope.cos", "rope.sin"):
        t = ttnn.embedding(position_ids, weights[name], layout=ttnn.TILE_LAYOUT)  # [B, N, hdp]
        tables.append(ttnn.reshape(t, (b, 1, n, hdp)))
    cos, sin = tables
    q = [ttnn.repeat(t, (1, config.num_heads, 1, 1)) for t in (cos, sin)]
    k = [ttnn.repeat(t, (1, config.num_kv_heads, 1, 1)) if config.num_kv_heads > 1 else t
         for t in (cos, sin)]
    return RotaryTTNN(q[0], q[1], k[0], k[1], weights["rope.rotate_half"])


def apply_rope(x: "ttnn.Tensor", cos: "ttnn.Tensor", sin: "ttnn.Tensor",
               rotate_half: "ttnn.Tensor") -> "ttnn.Tensor":
    """x * cos + rotate_half(x) * sin, pairs (i, i + head_dim / 2)."""
    rotated = ttnn.matmul(x, rotate_half)
    return ttnn.add(ttnn.multiply(x, cos), ttnn.multiply(rotated, sin))


class GemmaRMSNormTTNN(LightweightModule):
    """rms_norm with weight (1 + w) pre-added at conversion."""

    # mirrors torch_gemma.GemmaRMSNorm
    def __init__(self, weights: Weights, name: str, eps: float):
        self.weight = weights[f"{name}.weight"]
        self.eps = eps

    def forward(self, x: "ttnn.Tensor", cond: Optional["ttnn.Tensor"] = None
                ) -> Tuple["ttnn.Tensor", Optional["ttnn.Tensor"]]:
        return ttnn.rms_norm(x, weight=self.weight, epsilon=self.eps), None


class AdaRMSNormTTNN(LightweightModule):
    """x_hat * (1 + scale) + shift and a gate, from the time condition [B, D]."""

    # mirrors torch_gemma.AdaRMSNorm
    def __init__(self, weights: Weights, name: str, eps: float, kernel: Any = None):
        self.parts = {label: (weights[f"{name}.{label}.weight"], weights[f"{name}.{label}.bias"])
                      for label in ("scale", "shift", "gate")}
        self.eps = eps
        self.kernel = kernel

    def modulation(self, cond: "ttnn.Tensor", label: str) -> "ttnn.Tensor":
        w, b = self.parts[label]
        out = ttnn.linear(cond, w, bias=b, compute_kernel_config=self.kernel)  # [B, D]
        return ttnn.reshape(out, (out.shape[0], 1, out.shape[1]))  # broadcast over tokens

    def forward(self, x: "ttnn.Tensor", cond: Optional["ttnn.Tensor"] = None
                ) -> Tuple["ttnn.Tensor", Optional["ttnn.Tensor"]]:
        if cond is None:
            raise ValueError("AdaRMSNormTTNN needs the time condition (adarms_cond), got None")
        normed = ttnn.rms_norm(x, epsilon=self.eps)
        normed = ttnn.multiply(normed, self.modulation(cond, "scale"))  # scale bias holds the +1
        return ttnn.add(normed, self.modulation(cond, "shift")), self.modulation(cond, "gate")


def make_norm(config: GemmaConfig, weights: Weights, name: str, kernel: Any = None
              ) -> LightweightModule:
    """Plain RMSNorm, or adaRMS for the PI0.5 expert."""
    if config.use_adarms:
        return AdaRMSNormTTNN(weights, name, config.rms_norm_eps, kernel)
    return GemmaRMSNormTTNN(weights, name, config.rms_norm_eps)


def gated_residual(x: "ttnn.Tensor", y: "ttnn.Tensor", gate: Optional["ttnn.Tensor"]
                   ) -> "ttnn.Tensor":
    """x + y, or x + y * gate after an adaRMS norm."""
    return ttnn.add(x, y if gate is None else ttnn.multiply(y, gate))


def _to_heads(x: "ttnn.Tensor", heads: int, head_dim: int) -> "ttnn.Tensor":
    """[B, N, H * hd] -> [B, H, N, hd]."""
    b, n = x.shape[0], x.shape[1]
    if heads == 1:
        return ttnn.reshape(x, (b, 1, n, head_dim))
    return ttnn.permute(ttnn.reshape(x, (b, n, heads, head_dim)), (0, 2, 1, 3))


class GemmaAttentionTTNN(LightweightModule):
    """MQA self-attention; `past_kv` (already rotated) is prepended to the keys when given."""

    # mirrors torch_gemma.GemmaAttention
    def __init__(self, config: GemmaConfig, weights: Weights, prefix: str, kernel: Any = None):
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.hdp = padded_head_dim(config.head_dim)
        self.scale = config.head_dim ** -0.5
        self.wqkv = weights.get(f"{prefix}wqkv")  # absent for the last VLM layer (K/V only)
        self.wkv = weights.get(f"{prefix}wkv")
        self.wo = weights.get(f"{prefix}o_proj.weight")
        self.kernel = kernel

    def project_kv(self, x: "ttnn.Tensor", rope: RotaryTTNN) -> KV:
        """Return this layer's K (after RoPE) and V, each [B, Hkv, N, hdp]."""
        if self.wkv is None:
            raise ValueError("this attention layer has a fused QKV weight; use forward()")
        kv = ttnn.linear(x, self.wkv, compute_kernel_config=self.kernel)  # [B, N, 2 Hkv hdp]
        b, n, width = kv.shape[0], kv.shape[1], self.num_kv_heads * self.hdp
        k = _to_heads(ttnn.slice(kv, [0, 0, 0], [b, n, width]), self.num_kv_heads, self.hdp)
        v = _to_heads(ttnn.slice(kv, [0, 0, width], [b, n, 2 * width]), self.num_kv_heads, self.hdp)
        return apply_rope(k, rope.cos_k, rope.sin_k, rope.rotate_half), v

    def forward(self, x: "ttnn.Tensor", rope: RotaryTTNN, mask: "ttnn.Tensor",
                past_kv: Optional[KV] = None) -> Tuple["ttnn.Tensor", KV]:
        b, n = x.shape[0], x.shape[1]
        qkv = ttnn.linear(x, self.wqkv, compute_kernel_config=self.kernel)
        qkv = ttnn.reshape(qkv, (b, 1, n, qkv.shape[-1]))
        q, k, v = ttnn.experimental.nlp_create_qkv_heads(
            qkv, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, transpose_k_heads=False)
        q = apply_rope(q, rope.cos_q, rope.sin_q, rope.rotate_half)
        k = apply_rope(k, rope.cos_k, rope.sin_k, rope.rotate_half)
        keys, values = k, v
        if past_kv is not None:
            keys = ttnn.concat([past_kv[0], k], dim=2)
            values = ttnn.concat([past_kv[1], v], dim=2)
        out = ttnn.transformer.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=False, scale=self.scale,
            compute_kernel_config=self.kernel)  # [B, Hq, N, hdp]
        out = ttnn.experimental.nlp_concat_heads(out)  # [B, 1, N, Hq * hdp]
        out = ttnn.reshape(out, (b, n, self.num_heads * self.hdp))
        return ttnn.linear(out, self.wo, compute_kernel_config=self.kernel), (k, v)


class GemmaMLPTTNN(LightweightModule):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    # mirrors torch_gemma.GemmaMLP
    def __init__(self, weights: Weights, prefix: str, kernel: Any = None):
        self.gate = weights.get(f"{prefix}gate_proj.weight")
        self.up = weights.get(f"{prefix}up_proj.weight")
        self.down = weights.get(f"{prefix}down_proj.weight")
        self.kernel = kernel

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        gate = ttnn.linear(x, self.gate, compute_kernel_config=self.kernel)
        gate = ttnn.gelu(gate, variant=ttnn.GeluVariant.Tanh)
        up = ttnn.linear(x, self.up, compute_kernel_config=self.kernel)
        return ttnn.linear(ttnn.multiply(gate, up), self.down, compute_kernel_config=self.kernel)


class GemmaDecoderLayerTTNN(LightweightModule):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)); residuals gated under adaRMS."""

    # mirrors torch_gemma.GemmaDecoderLayer
    def __init__(self, config: GemmaConfig, weights: Weights, prefix: str, kernel: Any = None):
        self.input_layernorm = make_norm(config, weights, f"{prefix}input_layernorm", kernel)
        self.self_attn = GemmaAttentionTTNN(config, weights, f"{prefix}self_attn.", kernel)
        self.kv_only = f"{prefix}post_attention_layernorm.weight" not in weights and \
            f"{prefix}post_attention_layernorm.scale.weight" not in weights
        if not self.kv_only:
            self.post_attention_layernorm = make_norm(config, weights,
                                                      f"{prefix}post_attention_layernorm", kernel)
            self.mlp = GemmaMLPTTNN(weights, f"{prefix}mlp.", kernel)

    def forward(self, x: "ttnn.Tensor", rope: RotaryTTNN, mask: "ttnn.Tensor",
                past_kv: Optional[KV] = None, cond: Optional["ttnn.Tensor"] = None
                ) -> Tuple["ttnn.Tensor", KV]:
        if self.kv_only:
            raise ValueError("this layer was converted K/V-only (last VLM layer); use project_kv()")
        h, gate = self.input_layernorm(x, cond)
        h, kv = self.self_attn(h, rope, mask, past_kv)
        x = gated_residual(x, h, gate)
        h, gate = self.post_attention_layernorm(x, cond)
        return gated_residual(x, self.mlp(h), gate), kv

    def project_kv(self, x: "ttnn.Tensor", rope: RotaryTTNN,
                   cond: Optional["ttnn.Tensor"] = None) -> KV:
        """K/V of this layer only: enough for the last prefix layer, whose output is unused."""
        h, _ = self.input_layernorm(x, cond)
        return self.self_attn.project_kv(h, rope)


class GemmaModelTTNN(LightweightModule):
    """Layers plus final norm; `embed_tokens` only for the VLM (the expert has no vocabulary)."""

    # mirrors torch_gemma.GemmaModel
    def __init__(self, config: GemmaConfig, weights: Weights, stack: str, kernel: Any = None):
        self.config = config
        self.embed_tokens = weights.get(f"{stack}.embed_tokens.weight")
        self.layers = [GemmaDecoderLayerTTNN(config, weights, f"{stack}.layers.{i}.", kernel)
                       for i in range(config.depth)]
        has_norm = f"{stack}.norm.weight" in weights or f"{stack}.norm.scale.weight" in weights
        self.norm = make_norm(config, weights, f"{stack}.norm", kernel) if has_norm else None

    def embed(self, tokens: "ttnn.Tensor") -> "ttnn.Tensor":
        """Token embeddings [B, L, D] times sqrt(width); tokens uint32 ROW_MAJOR [B, L]."""
        if self.embed_tokens is None:
            raise ValueError("this Gemma stack has no token embedding (action expert)")
        x = ttnn.embedding(tokens, self.embed_tokens, layout=ttnn.TILE_LAYOUT)
        return ttnn.multiply(x, float(self.config.width) ** 0.5)

    def forward(self, x: "ttnn.Tensor", rope: RotaryTTNN, mask: "ttnn.Tensor",
                past_kvs: Optional[List[KV]] = None, cond: Optional["ttnn.Tensor"] = None
                ) -> Tuple["ttnn.Tensor", List[KV]]:
        """Run every layer and the final norm; return the normed output and each layer's new K/V."""
        if self.norm is None:
            raise ValueError("this Gemma stack was converted without its final norm (VLM prefill "
                             "needs only K/V); forward() is for the action expert")
        new_kvs: List[KV] = []
        for i, layer in enumerate(self.layers):
            past = past_kvs[i] if past_kvs is not None else None
            x, kv = layer(x, rope, mask, past, cond)
            new_kvs.append(kv)
        return self.norm(x, cond)[0], new_kvs
