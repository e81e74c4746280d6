"""Gemma decoder stack on the device, shared by the VLM (2B) and the action expert (300M).

Activations stay 4-D [B, 1, N, D] through the stack (no reshape around the head split / merge).
RMSNorm with the +1 already in the weight. PI0.5 adaRMS: either three small linears per norm per
step (scale with its +1 in the bias, shift, gate), or, with precomputed conditioning, one
`rms_norm(weight=1 + scale, bias=shift)` and a gated residual `ttnn.mac` on per-step rows computed
before the loop. Split-half RoPE: cos/sin rows gathered per token with `ttnn.embedding`, applied by
`ttnn.experimental.rotary_embedding` (fused_rope, head_dim a multiple of 64) or as the exact
rotate-half matmul. MQA (8 q heads, 1 K/V head), SDPA with the additive prefix-LM mask and
is_causal=False. K/V of a denoise step either join the prefix cache by concat, or are written in
place into the resident [prefix ; suffix] buffer with ttnn.fill_cache (kv_in_place).
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
    """Per-token RoPE rows for one sequence. Fused form: cos/sin [B, 1, N, hdp] broadcast over
    heads, rotate_half None. Matmul form: q tables [B, Hq, N, hdp], k tables [B, Hkv, N, hdp]."""

    cos_q: "ttnn.Tensor"
    sin_q: "ttnn.Tensor"
    cos_k: "ttnn.Tensor"
    sin_k: "ttnn.Tensor"
    rotate_half: Optional["ttnn.Tensor"]  # [hdp, hdp]; None: rotary_embedding

    def tensors(self) -> List["ttnn.Tensor"]:
        return [self.cos_q, self.sin_q, self.cos_k, self.sin_k]


@dataclass
class Modulation:
    """One adaRMS norm's rows for one step, [1, D] each: scale (its +1 included), shift, gate."""

    scale: "ttnn.Tensor"
    shift: "ttnn.Tensor"
    gate: "ttnn.Tensor"


@dataclass
class KVSlot:
    """How one layer's suffix K/V meets the prefix cache in a denoise step.

    concat: `k`/`v` are the prefix K/V [B, Hkv, P, hdp]; in place: `k`/`v` are the resident
    [B, Hkv, P + S, hdp] buffers and the step writes rows [offset, offset + S) with fill_cache.
    """

    k: "ttnn.Tensor"
    v: "ttnn.Tensor"
    in_place: bool = False
    offset: int = 0


def fused_rope_ok(config: GemmaConfig, enabled: bool) -> bool:
    """rotary_embedding needs the rotated width (head_dim, unpadded) to be a multiple of 64."""
    hd = config.head_dim
    return enabled and hd % 64 == 0 and padded_head_dim(hd) == hd


def rope_cos_sin(position_ids: "ttnn.Tensor", weights: Weights, config: GemmaConfig,
                 fused: bool = False, memory_config: Any = None) -> RotaryTTNN:
    """Gather cos/sin rows for positions [B, N] (uint32, ROW_MAJOR).

    Matmul form: heads are expanded once per sequence here so that every layer's RoPE multiply
    has equal shapes (no head broadcast inside the layers).
    """
    b, n = position_ids.shape[0], position_ids.shape[1]
    hdp = padded_head_dim(config.head_dim)
    memory = memory_config or ttnn.DRAM_MEMORY_CONFIG
    tables = []
    for name in ("rope.cos", "rope.sin"):
        t = ttnn.embedding(position_ids, weights[name], layout=ttnn.TILE_LAYOUT,
                           memory_config=memory)  # [B, N, hdp]
        tables.append(ttnn.reshape(t, (b, 1, n, hdp), memory_config=memory))
    cos, sin = tables
    if fused_rope_ok(config, fused):
        return RotaryTTNN(cos, sin, cos, sin, None)
    q = [ttnn.repeat(t, (1, config.num_heads, 1, 1), memory_config=memory) for t in (cos, sin)]
    k = [ttnn.repeat(t, (1, config.num_kv_heads, 1, 1), memory_config=memory)
         if config.num_kv_heads > 1 else t for t in (cos, sin)]
    return RotaryTTNN(q[0], q[1], k[0], k[1], weights["rope.rotate_half"])


def apply_rope(x: "ttnn.Tensor", cos: "ttnn.Tensor", sin: "ttnn.Tensor",
               rotate_half: Optional["ttnn.Tensor"], memory_config: Any = None) -> "ttnn.Tensor":
    """x * cos + rotate_half(x) * sin, pairs (i, i + head_dim / 2)."""
    if rotate_half is None:
        return ttnn.experimental.rotary_embedding(x, cos, sin, memory_config=memory_config)
    rotated = ttnn.matmul(x, rotate_half, memory_config=memory_config)
    return ttnn.add(ttnn.multiply(x, cos, memory_config=memory_config),
                    ttnn.multiply(rotated, sin, memory_config=memory_config),
                    memory_config=memory_config)


class GemmaRMSNormTTNN(LightweightModule):
    """rms_norm with weight (1 + w) pre-added at conversion."""

    # mirrors torch_gemma.GemmaRMSNorm
    def __init__(self, weights: Weights, name: str, eps: float, plan: Any = None,
                 group: str = "prefill"):
        self.weight = weights[f"{name}.weight"]
        self.eps = eps
        self.plan, self.group = plan, group

    def forward(self, x: "ttnn.Tensor", cond: Any = None
                ) -> Tuple["ttnn.Tensor", Optional["ttnn.Tensor"]]:
        return ttnn.rms_norm(x, weight=self.weight, epsilon=self.eps,
                             memory_config=self.plan.memory(self.group)), None


class AdaRMSNormTTNN(LightweightModule):
    """x_hat * (1 + scale) + shift and a gate, from the time condition [B, D] (computed here per
    step) or from a precomputed `Modulation` (one fused rms_norm)."""

    # mirrors torch_gemma.AdaRMSNorm
    def __init__(self, weights: Weights, name: str, eps: float, plan: Any = None,
                 group: str = "denoise"):
        self.name = name
        self.fused = weights.get(f"{name}.modulation.weight")
        self.fused_bias = weights.get(f"{name}.modulation.bias")
        self.parts = {} if self.fused is not None else {
            label: (weights[f"{name}.{label}.weight"], weights[f"{name}.{label}.bias"])
            for label in ("scale", "shift", "gate")}
        self.eps = eps
        self.plan, self.group = plan, group

    def modulation(self, cond: "ttnn.Tensor", label: str) -> "ttnn.Tensor":
        w, b = self.parts[label]
        out = self.plan.linear(cond, w, self.group, bias=b)  # [B, D]
        return ttnn.reshape(out, (out.shape[0], 1, 1, out.shape[1]))  # broadcast over tokens

    def precompute(self, cond_all: "ttnn.Tensor", steps: int) -> List[Modulation]:
        """Rows for every step from the time conditions of all steps [steps, D]: one matmul."""
        mods = self.plan.linear(cond_all, self.fused, self.group, bias=self.fused_bias,
                                memory_config=ttnn.DRAM_MEMORY_CONFIG)  # [steps, 3 D]
        width = mods.shape[-1] // 3
        return [Modulation(*(ttnn.slice(mods, [k, p * width], [k + 1, (p + 1) * width])
                             for p in range(3))) for k in range(steps)]

    def forward(self, x: "ttnn.Tensor", cond: Any = None
                ) -> Tuple["ttnn.Tensor", Optional["ttnn.Tensor"]]:
        if cond is None:
            raise ValueError(f"{self.name}: adaRMS needs the time condition (adarms_cond), "
                             "got None")
        memory = self.plan.memory(self.group)
        if isinstance(cond, Modulation):
            return ttnn.rms_norm(x, weight=cond.scale, bias=cond.shift, epsilon=self.eps,
                                 memory_config=memory), cond.gate
        if not self.parts:
            raise ValueError(f"{self.name} was converted for precomputed modulations; pass a "
                             "Modulation (precompute_conditioning) instead of the condition")
        normed = ttnn.rms_norm(x, epsilon=self.eps, memory_config=memory)
        normed = ttnn.multiply(normed, self.modulation(cond, "scale"), memory_config=memory)
        return (ttnn.add(normed, self.modulation(cond, "shift"), memory_config=memory),
                self.modulation(cond, "gate"))


def make_norm(config: GemmaConfig, weights: Weights, name: str, plan: Any, group: str
              ) -> LightweightModule:
    """Plain RMSNorm, or adaRMS for the PI0.5 expert."""
    if config.use_adarms:
        return AdaRMSNormTTNN(weights, name, config.rms_norm_eps, plan, group)
    return GemmaRMSNormTTNN(weights, name, config.rms_norm_eps, plan, group)


def gated_residual(x: "ttnn.Tensor", y: "ttnn.Tensor", gate: Optional["ttnn.Tensor"],
                   precomputed: bool = False, memory_config: Any = None) -> "ttnn.Tensor":
    """x + y; after an adaRMS norm x + y * gate (one ttnn.mac on precomputed gate rows)."""
    if gate is None:
        return ttnn.add(x, y, memory_config=memory_config)
    if precomputed:
        return ttnn.mac(y, gate, x, memory_config=memory_config)
    return ttnn.add(x, ttnn.multiply(y, gate, memory_config=memory_config),
                    memory_config=memory_config)


def _to_heads(x: "ttnn.Tensor", heads: int, head_dim: int) -> "ttnn.Tensor":
    """[B, 1, N, H * hd] -> [B, H, N, hd] (a view for the single K/V head of Gemma)."""
    if heads == 1:
        return x
    b, n = x.shape[0], x.shape[2]
    return ttnn.permute(ttnn.reshape(x, (b, n, heads, head_dim)), (0, 2, 1, 3))


class GemmaAttentionTTNN(LightweightModule):
    """MQA self-attention on [B, 1, N, D]; a KVSlot joins the step's K/V to the prefix cache."""

    # mirrors torch_gemma.GemmaAttention
    def __init__(self, config: GemmaConfig, weights: Weights, prefix: str, plan: Any,
                 group: str):
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.hdp = padded_head_dim(config.head_dim)
        self.scale = config.head_dim ** -0.5
        self.wqkv = weights.get(f"{prefix}wqkv")  # absent for the last VLM layer (K/V only)
        self.wkv = weights.get(f"{prefix}wkv")
        self.wo = weights.get(f"{prefix}o_proj.weight")
        self.plan, self.group = plan, group

    def _rope(self, x: "ttnn.Tensor", cos: "ttnn.Tensor", sin: "ttnn.Tensor",
              rope: RotaryTTNN) -> "ttnn.Tensor":
        return apply_rope(x, cos, sin, rope.rotate_half, self.plan.memory(self.group))

    def project_kv(self, x: "ttnn.Tensor", rope: RotaryTTNN) -> KV:
        """Return this layer's K (after RoPE) and V, each [B, Hkv, N, hdp]."""
        if self.wkv is None:
            raise ValueError("this attention layer has a fused QKV weight; use forward()")
        kv = self.plan.linear(x, self.wkv, self.group, dtype=self.plan.activation_dtype)
        b, n, width = kv.shape[0], kv.shape[2], self.num_kv_heads * self.hdp
        memory = self.plan.memory(self.group)
        k, v = (_to_heads(ttnn.slice(kv, [0, 0, 0, lo], [b, 1, n, lo + width],
                                     memory_config=memory), self.num_kv_heads, self.hdp)
                for lo in (0, width))
        return self._rope(k, rope.cos_k, rope.sin_k, rope), v

    def forward(self, x: "ttnn.Tensor", rope: RotaryTTNN, mask: "ttnn.Tensor",
                slot: Optional[KVSlot] = None) -> Tuple["ttnn.Tensor", KV]:
        plan, memory = self.plan, self.plan.memory(self.group)
        qkv = plan.linear(x, self.wqkv, self.group, dtype=plan.activation_dtype)
        q, k, v = ttnn.experimental.nlp_create_qkv_heads(
            qkv, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            transpose_k_heads=False, memory_config=memory)
        plan.release(self.group, qkv)
        q = self._rope(q, rope.cos_q, rope.sin_q, rope)
        k = self._rope(k, rope.cos_k, rope.sin_k, rope)
        keys, values = k, v
        if slot is not None:
            k_c, v_c = cast_kv(k, plan.kv_dtype, memory), cast_kv(v, plan.kv_dtype, memory)
            if slot.in_place:
                write_rows(slot.k, k_c, slot.offset)
                write_rows(slot.v, v_c, slot.offset)
                keys, values = slot.k, slot.v
            else:
                keys = ttnn.concat([slot.k, k_c], dim=2, memory_config=memory)
                values = ttnn.concat([slot.v, v_c], dim=2, memory_config=memory)
        attn = plan.sdpa(q, keys, values, mask=mask, scale=self.scale, group=self.group)
        plan.release(self.group, q)
        if slot is not None:  # a denoise step: its K/V now live in the cache (or were concatenated)
            plan.release(self.group, k, v, k_c, v_c,
                         *(() if slot.in_place else (keys, values)))
        merged = ttnn.experimental.nlp_concat_heads(attn, memory_config=memory)  # [B,1,N,Hq hdp]
        plan.release(self.group, attn)
        # the residual stream (o-proj and MLP-down outputs) stays bf16, as tt-metal keeps it
        out = plan.linear(merged, self.wo, self.group, dtype=ttnn.bfloat16)
        plan.release(self.group, merged)
        return out, (k, v)


def cast_kv(t: "ttnn.Tensor", dtype: Any, memory_config: Any = None) -> "ttnn.Tensor":
    """K/V in the cache dtype (kv_cache_dtype); no op when it already is."""
    return t if t.dtype == dtype else ttnn.typecast(t, dtype, memory_config=memory_config)


def write_rows(buffer: "ttnn.Tensor", rows: "ttnn.Tensor", offset: int) -> None:
    """Write rows [offset, offset + N) of every batch row of a [B, H, L, D] buffer in place."""
    batch = rows.shape[0]
    for b in range(batch):
        part = rows if batch == 1 else ttnn.slice(
            rows, [b, 0, 0, 0], [b + 1, rows.shape[1], rows.shape[2], rows.shape[3]])
        ttnn.fill_cache(buffer, part, b, update_idx=offset)


class GemmaMLPTTNN(LightweightModule):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)); fused: down(geglu(x @ [up | gate]))."""

    # mirrors torch_gemma.GemmaMLP
    def __init__(self, weights: Weights, prefix: str, plan: Any, group: str):
        self.gate_up = weights.get(f"{prefix}gate_up.weight")
        self.gate = weights.get(f"{prefix}gate_proj.weight")
        self.up = weights.get(f"{prefix}up_proj.weight")
        self.down = weights.get(f"{prefix}down_proj.weight")
        self.plan, self.group = plan, group

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        plan, group, memory = self.plan, self.group, self.plan.memory(self.group)
        act = plan.activation_dtype
        if self.gate_up is not None:
            both = plan.linear(x, self.gate_up, group, dtype=act)
            hidden = ttnn.geglu(both, variant=ttnn.GeluVariant.Tanh, memory_config=memory)
            plan.release(group, both)
        else:
            gate = plan.linear(x, self.gate, group, dtype=act)
            gate = ttnn.gelu(gate, variant=ttnn.GeluVariant.Tanh, memory_config=memory)
            up = plan.linear(x, self.up, group, dtype=act)
            hidden = ttnn.multiply(gate, up, memory_config=memory)
        out = plan.linear(hidden, self.down, group, dtype=ttnn.bfloat16)  # residual stream
        plan.release(group, hidden)
        return out


class GemmaDecoderLayerTTNN(LightweightModule):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)); residuals gated under adaRMS."""

    # mirrors torch_gemma.GemmaDecoderLayer
    def __init__(self, config: GemmaConfig, weights: Weights, prefix: str, plan: Any,
                 group: str):
        self.plan, self.group = plan, group
        self.input_layernorm = make_norm(config, weights, f"{prefix}input_layernorm", plan, group)
        self.self_attn = GemmaAttentionTTNN(config, weights, f"{prefix}self_attn.", plan, group)
        post = f"{prefix}post_attention_layernorm"
        self.kv_only = not any(f"{post}.{k}" in weights
                               for k in ("weight", "scale.weight", "modulation.weight"))
        if not self.kv_only:
            self.post_attention_layernorm = make_norm(config, weights, post, plan, group)
            self.mlp = GemmaMLPTTNN(weights, f"{prefix}mlp.", plan, group)

    def norms(self) -> List[LightweightModule]:
        return [self.input_layernorm] + ([] if self.kv_only else [self.post_attention_layernorm])

    def forward(self, x: "ttnn.Tensor", rope: RotaryTTNN, mask: "ttnn.Tensor",
                slot: Optional[KVSlot] = None, cond: Any = None) -> Tuple["ttnn.Tensor", KV]:
        if self.kv_only:
            raise ValueError("this layer was converted K/V-only (last VLM layer); use project_kv()")
        cond_in, cond_post = cond if isinstance(cond, tuple) else (cond, cond)
        pre = isinstance(cond_in, Modulation)
        memory = self.plan.memory(self.group)
        h, gate = self.input_layernorm(x, cond_in)
        h2, kv = self.self_attn(h, rope, mask, slot)
        self.plan.release(self.group, h)
        x = gated_residual(x, h2, gate, pre, memory)
        self.plan.release(self.group, h2)
        h, gate = self.post_attention_layernorm(x, cond_post)
        h2 = self.mlp(h)
        self.plan.release(self.group, h)
        out = gated_residual(x, h2, gate, pre, memory)
        self.plan.release(self.group, h2, x)
        return out, kv

    def project_kv(self, x: "ttnn.Tensor", rope: RotaryTTNN, cond: Any = None) -> KV:
        """K/V of this layer only: enough for the last prefix layer, whose output is unused."""
        h, _ = self.input_layernorm(x, cond)
        return self.self_attn.project_kv(h, rope)


class GemmaModelTTNN(LightweightModule):
    """Layers plus final norm; `embed_tokens` only for the VLM (the expert has no vocabulary)."""

    # mirrors torch_gemma.GemmaModel
    def __init__(self, config: GemmaConfig, weights: Weights, stack: str, plan: Any,
                 group: str):
        self.config = config
        self.plan, self.group = plan, group
        self.embed_tokens = weights.get(f"{stack}.embed_tokens.weight")
        self.layers = [GemmaDecoderLayerTTNN(config, weights, f"{stack}.layers.{i}.", plan, group)
                       for i in range(config.depth)]
        has_norm = any(f"{stack}.norm.{k}" in weights
                       for k in ("weight", "scale.weight", "modulation.weight"))
        self.norm = make_norm(config, weights, f"{stack}.norm", plan, group) if has_norm else None

    def adarms_norms(self) -> List[AdaRMSNormTTNN]:
        """Every adaRMS norm in forward order (input, post per layer, then the final norm)."""
        norms = [n for layer in self.layers for n in layer.norms()] + [self.norm]
        return [n for n in norms if isinstance(n, AdaRMSNormTTNN)]

    def embed(self, tokens: "ttnn.Tensor") -> "ttnn.Tensor":
        """Token embeddings [B, L, D] times sqrt(width); tokens uint32 ROW_MAJOR [B, L]."""
        if self.embed_tokens is None:
            raise ValueError("this Gemma stack has no token embedding (action expert)")
        x = ttnn.embedding(tokens, self.embed_tokens, layout=ttnn.TILE_LAYOUT)
        return ttnn.multiply(x, float(self.config.width) ** 0.5)

    def forward(self, x: "ttnn.Tensor", rope: RotaryTTNN, mask: "ttnn.Tensor",
                slots: Optional[List[KVSlot]] = None, cond: Any = None
                ) -> Tuple["ttnn.Tensor", List[KV]]:
        """Run every layer and the final norm on x [B, 1, N, D]; return the normed output and
        each layer's new K/V. `cond`: the time condition [B, D] (every adaRMS norm computes its
        own rows), or one Modulation per adaRMS norm in forward order (precomputed)."""
        if self.norm is None:
            raise ValueError("this Gemma stack was converted without its final norm (VLM prefill "
                             "needs only K/V); forward() is for the action expert")
        mods = list(cond) if isinstance(cond, (list, tuple)) else None
        new_kvs: List[KV] = []
        for i, layer in enumerate(self.layers):
            slot = slots[i] if slots is not None else None
            layer_cond = (mods[2 * i], mods[2 * i + 1]) if mods is not None else cond
            out, kv = layer(x, rope, mask, slot, layer_cond)
            if i > 0:  # the previous layer's output, now consumed (never the caller's input)
                self.plan.release(self.group, x)
            x = out
            new_kvs.append(kv)
        return self.norm(x, mods[-1] if mods is not None else cond)[0], new_kvs
