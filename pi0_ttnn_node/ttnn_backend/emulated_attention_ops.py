"""Torch semantics of the emulated transformer ops (head split/merge, RoPE, SDPA) for emulation.py.

Shapes follow the real device ops of ttnn 0.81.1: nlp_create_qkv_heads keeps the logical sequence
length, rotary_embedding (prefill) returns rows padded to a 32-row tile, SDPA returns q's shape.
Counterpart: emulated_ops.py (conversions, the op table, the other ops).
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from pi0_ttnn_node.ttnn_backend import emulated_numerics as numerics
from pi0_ttnn_node.ttnn_backend.emulated_ops import (SDPA_DEFAULT_FIDELITY, TILE, _finish, _golden, _is_fp32,
                                                     _signature, torch_of, wrap)


def op_nlp_create_qkv_heads(dev: Any, a: Dict[str, Any]) -> Any:
    """[B, 1, S, (Hq + 2 Hkv) D] -> q [B, Hq, S, D], k [B, Hkv, S, D] (or [B, Hkv, D, S]), v [B, Hkv, S, D]."""
    name, t = "experimental.nlp_create_qkv_heads", a["input"]
    n_q = int(a["num_heads"])
    n_kv = int(a["num_kv_heads"] or n_q)
    x = torch_of(dev, t, name)
    if x.dim() != 4 or x.shape[1] != 1 or t.layout != dev.ttnn.TILE_LAYOUT:
        raise RuntimeError(f"ttnn.{name}: input must be TILE [B, 1, S, W]; got {list(t.shape)} {t.layout}")
    if a.get("input_kv") is not None:
        kv = torch_of(dev, a["input_kv"], name)
        head_dim = x.shape[-1] // n_q
        q, (k, v) = x, kv.split(n_kv * head_dim, dim=-1)
    else:
        if x.shape[-1] % (n_q + 2 * n_kv):
            raise RuntimeError(f"ttnn.{name}: width {x.shape[-1]} is not (num_heads + 2 num_kv_heads) x head_dim")
        head_dim = x.shape[-1] // (n_q + 2 * n_kv)
        q, k, v = x.split([n_q * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
    if head_dim % TILE:
        raise RuntimeError(f"ttnn.{name}: head_dim {head_dim} is not a multiple of {TILE}")
    batch, seq = x.shape[0], x.shape[2]
    parts = ((q, n_q), (k, n_kv), (v, n_kv))
    heads = [part.reshape(batch, seq, count, head_dim).transpose(1, 2) for part, count in parts]
    if a["transpose_k_heads"]:
        heads[1] = heads[1].transpose(-1, -2)
    dev.count(name, 0, _signature([t], dev))
    layout = dev.ttnn.TILE_LAYOUT
    out = tuple(wrap(dev, h.contiguous(), t.dtype, layout, a.get("memory_config")) for h in heads)
    dev.record_op(name, [t], list(out), 0)
    return out


def op_nlp_concat_heads(dev: Any, a: Dict[str, Any]) -> Any:
    """[B, H, S, D] -> [B, 1, S, H D]."""
    name, t = "experimental.nlp_concat_heads", a["input_tensor"]
    x = torch_of(dev, t, name)
    out = x.transpose(1, 2).reshape(x.shape[0], 1, x.shape[2], x.shape[1] * x.shape[3])
    return _finish(dev, name, out, t, a, 0, layout=dev.ttnn.TILE_LAYOUT)


def op_rotary_embedding(dev: Any, a: Dict[str, Any]) -> Any:
    """Split-half RoPE x cos + rotate_half(x) sin; like the card, prefill output rows are tile-padded."""
    name, t = "experimental.rotary_embedding", a["input_tensor"]
    x, cos, sin = (torch_of(dev, a[k], name) for k in ("input_tensor", "cos_cache", "sin_cache"))
    if t.layout != dev.ttnn.TILE_LAYOUT or x.shape[-1] % (2 * TILE) or cos.shape[-1] != x.shape[-1]:
        raise RuntimeError(f"ttnn.{name}: needs TILE input with width a multiple of 64 equal to the cos width; "
                           f"got x {list(x.shape)} {t.layout}, cos {list(cos.shape)}")
    if a.get("token_index") is not None:
        out = _golden(dev, name)(x, cos, sin, int(a["token_index"]))
        return _finish(dev, name, out, t, a, 3 * out.numel())
    rows = -(-x.shape[-2] // TILE) * TILE
    if cos.shape[-2] < x.shape[-2]:
        raise RuntimeError(f"ttnn.{name}: cos has {cos.shape[-2]} rows, input needs {x.shape[-2]}")
    x = torch.nn.functional.pad(x, (0, 0, 0, rows - x.shape[-2]))
    cos, sin = (torch.nn.functional.pad(c, (0, 0, 0, max(0, rows - c.shape[-2])))[..., :rows, :] for c in (cos, sin))
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    out = x * cos + rotated * sin
    return _finish(dev, name, out, t, a, 3 * out.numel())


def op_sdpa(dev: Any, a: Dict[str, Any]) -> Any:
    name = "transformer.scaled_dot_product_attention"
    q, k, v = a["input_tensor_q"], a["input_tensor_k"], a["input_tensor_v"]
    if dev.skip_matmul_math:  # shape-only recording: no operand reads either
        qt, kt, vt = (torch.zeros(()).expand(*(int(d) for d in t.shape)) for t in (q, k, v))
        mask = None
    else:
        qt, kt, vt = torch_of(dev, [q, k, v], name)
        mask = torch_of(dev, a.get("attn_mask"), name)
    if qt.dim() != 4 or kt.shape != vt.shape or qt.shape[1] % kt.shape[1]:
        raise RuntimeError(f"ttnn.{name}: want q [B,Hq,Sq,D], k=v [B,Hkv,Sk,D] with Hq % Hkv == 0; "
                           f"got {list(qt.shape)}, {list(kt.shape)}, {list(vt.shape)}")
    if mask is not None and tuple(mask.shape[-2:]) != (qt.shape[2], kt.shape[2]):
        raise RuntimeError(f"ttnn.{name}: attn_mask {list(mask.shape)} must end in [Sq, Sk] = "
                           f"[{qt.shape[2]}, {kt.shape[2]}]")
    config = a.get("compute_kernel_config")
    kernel = (numerics.fidelity_name(config, SDPA_DEFAULT_FIDELITY), numerics.fp32_acc(config))
    override = getattr(a.get("program_config"), "matmul_math_fidelity", None)
    if override is not None:  # SDPAProgramConfig can pin the matmuls' fidelity
        kernel = (numerics.fidelity_name(type("Cfg", (), {"math_fidelity": override}), kernel[0]), kernel[1])
    scale = a.get("scale")
    scale = float(scale) if scale is not None else qt.shape[-1] ** -0.5
    batch, heads, s_q, depth = qt.shape
    if dev.skip_matmul_math:  # shape-only recording for the cost model
        out = torch.zeros(batch, heads, s_q, vt.shape[-1])
    else:
        out = numerics.card_sdpa(qt, kt, vt, mask, scale=scale, is_causal=bool(a["is_causal"]),
                                 fidelity=kernel[0], fp32_dest=kernel[1],
                                 fp32_inputs=tuple(_is_fp32(dev, t) for t in (q, k, v)))
    return _finish(dev, name, out, q, a, 4 * batch * heads * s_q * kt.shape[2] * depth, inputs=[q, k, v],
                   kernel=kernel)
