"""Gemma decoder stack shared by the PaliGemma VLM (2B: 2048 wide) and the action expert (300M).

RMSNorm statistics in fp32 with the `(1 + w)` offset; PI0.5's expert uses adaRMS instead
(dense(cond) -> scale, shift, gate). Split-half RoPE over all head_dim dims, MQA (8 query heads,
1 K/V head of 256), GeGLU MLP with gelu-tanh, no biases. Attention uses SDPA with an additive
mask; `eager_attention` is the explicit reference it is tested against.
Counterpart: ttnn_backend/ttnn_gemma.py.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pi0_ttnn_node.config import GemmaConfig

KV = Tuple[Tensor, Tensor]


class GemmaRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * (1 + w), statistics in fp32, result in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
        normed = x * torch.rsqrt(var + self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x), None


class AdaRMSNorm(nn.Module):
    """PI0.5 adaptive RMSNorm: x_hat * (1 + scale) + shift, and a gate for the next residual."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(dim, 3 * dim)

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        if cond is None:
            raise ValueError("AdaRMSNorm needs the time condition (adarms_cond), got None")
        var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
        normed = x * torch.rsqrt(var + self.eps)
        modulation = self.dense(cond.to(self.dense.weight.dtype))
        if x.ndim == 3:
            modulation = modulation.unsqueeze(1)  # [B, 1, 3D], broadcast over tokens
        scale, shift, gate = modulation.chunk(3, dim=-1)
        normed = normed * (1 + scale.float()) + shift.float()
        return normed.to(x.dtype), gate.to(x.dtype)


def make_norm(config: GemmaConfig) -> nn.Module:
    """Plain RMSNorm, or adaRMS for the PI0.5 expert."""
    if config.use_adarms:
        return AdaRMSNorm(config.width, config.rms_norm_eps)
    return GemmaRMSNorm(config.width, config.rms_norm_eps)


def gated_residual(x: Tensor, y: Tensor, gate: Optional[Tensor]) -> Tensor:
    """x + y, or x + y * gate after an adaRMS norm."""
    return x + y if gate is None else x + y * gate


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Return RoPE cos/sin [B, 1, N, head_dim] for positions [B, N] (computed in fp32 like HF)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float()
    inv_freq = 1.0 / (theta ** (exponent / head_dim))
    freqs = position_ids.float()[:, :, None] * inv_freq[None, None, :]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Split-half rotation: pairs (i, i + head_dim / 2), not interleaved."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """q [B, H, Q, hd], k/v [B, Hkv, K, hd], additive mask [B, 1, Q, K] -> [B, H, Q, hd].

    The K/V heads are expanded as stride-0 views (no copy); SDPA takes the broadcast mask as is.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        b, hkv, n, d = k.shape
        k = k[:, :, None].expand(b, hkv, groups, n, d).reshape(b, hkv * groups, n, d)
        v = v[:, :, None].expand(b, hkv, groups, n, d).reshape(b, hkv * groups, n, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=scale)


def eager_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Reference attention as in HF `eager_attention_forward`: fp32 softmax, explicit K/V repeat."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    logits = torch.matmul(q, k.transpose(2, 3)) * scale + mask
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


class GemmaAttention(nn.Module):
    """MQA self-attention; `past_kv` (already rotated) is prepended to the keys when given."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim ** -0.5
        q_out, kv_out = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.width, q_out, bias=False)
        self.k_proj = nn.Linear(config.width, kv_out, bias=False)
        self.v_proj = nn.Linear(config.width, kv_out, bias=False)
        self.o_proj = nn.Linear(q_out, config.width, bias=False)

    def project_kv(self, x: Tensor, cos: Tensor, sin: Tensor) -> KV:
        """Return this layer's K (after RoPE) and V, each [B, Hkv, N, hd]."""
        b, n, _ = x.shape
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(k, cos, sin), v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                past_kv: Optional[KV] = None, eager: bool = False) -> Tuple[Tensor, KV]:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k, v = self.project_kv(x, cos, sin)
        keys, values = k, v
        if past_kv is not None:
            keys = torch.cat([past_kv[0], k], dim=2)
            values = torch.cat([past_kv[1], v], dim=2)
        attend = eager_attention if eager else sdpa_attention
        out = attend(q, keys, values, mask, self.scale)  # [B, H, N, hd]
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.o_proj(out.to(self.o_proj.weight.dtype)), (k, v)


class GemmaMLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.width, config.mlp_dim, bias=False)
        self.up_proj = nn.Linear(config.width, config.mlp_dim, bias=False)
        self.down_proj = nn.Linear(config.mlp_dim, config.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.up_proj.weight.dtype)
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)); residuals gated under adaRMS."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = GemmaAttention(config)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = GemmaMLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                past_kv: Optional[KV] = None, cond: Optional[Tensor] = None,
                eager: bool = False) -> Tuple[Tensor, KV]:
        h, gate = self.input_layernorm(x, cond)
        h, kv = self.self_attn(h, cos, sin, mask, past_kv, eager)
        x = gated_residual(x, h, gate)
        h, gate = self.post_attention_layernorm(x, cond)
        return gated_residual(x, self.mlp(h), gate), kv

    def project_kv(self, x: Tensor, cos: Tensor, sin: Tensor, cond: Optional[Tensor] = None) -> KV:
        """K/V of this layer only: enough for the last prefix layer, whose output is unused."""
        h, _ = self.input_layernorm(x, cond)
        return self.self_attn.project_kv(h, cos, sin)


class GemmaModel(nn.Module):
    """Layers plus final norm; `embed_tokens` only for the VLM (the expert has no vocabulary)."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = (nn.Embedding(config.vocab_size, config.width)
                             if config.vocab_size else None)
        # transformers-5 GemmaTextScaledWordEmbedding: sqrt(width), rounded to the weight dtype.
        # A plain float, not a buffer, so a model built on the meta device needs nothing rebuilt.
        self.embed_scale = config.width ** 0.5
        self.layers = nn.ModuleList(GemmaDecoderLayer(config) for _ in range(config.depth))
        self.norm = make_norm(config)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the residual stream: the dtype of the attention projections."""
        return self.layers[0].self_attn.q_proj.weight.dtype

    def embed(self, tokens: Tensor) -> Tensor:
        """Token embeddings times sqrt(width)."""
        if self.embed_tokens is None:
            raise ValueError("this Gemma stack has no token embedding (action expert)")
        weight = self.embed_tokens.weight
        scale = torch.tensor(self.embed_scale, dtype=weight.dtype, device=weight.device)
        return self.embed_tokens(tokens) * scale

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                past_kvs: Optional[List[KV]] = None, cond: Optional[Tensor] = None,
                eager: bool = False) -> Tuple[Tensor, List[KV]]:
        """Run every layer and the final norm; return the normed output and each layer's K/V."""
        x = x.to(self.dtype)
        new_kvs: List[KV] = []
        for i, layer in enumerate(self.layers):
            past = past_kvs[i] if past_kvs is not None else None
            x, kv = layer(x, cos, sin, mask, past, cond, eager)
            new_kvs.append(kv)
        return self.norm(x, cond)[0], new_kvs
