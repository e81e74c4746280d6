"""Torch state dict (internal names) -> resident device tensors, once, from one conversion plan.

Every Linear weight is transposed to [in, out]; q/k/v are fused into `wqkv` with each head
zero-padded to a tile multiple (SigLIP 72 -> 96, Gemma 256 stays); Gemma RMSNorm weights get their
+1; the PI0.5 adaRMS dense layer is split into scale (bias +1), shift and gate; the patch conv
becomes a [K, D] matmul weight with K = 3 * 14 * 14 = 588 padded to 608. The same plan feeds the
memory report (shapes x dtype sizes, nothing allocated). Counterpart: checkpoint_keys.py (names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Tuple

import torch
import ttnn
from torch import Tensor

from pi0_ttnn_node.config import GemmaConfig, PI0Config, SiglipConfig
from pi0_ttnn_node.errors import CheckpointError, ConfigError
from pi0_ttnn_node.ttnn_backend.ttnn_common import (DTYPE_NAMES, TILE, get_ttnn_dtype, round_up,
                                                    sinusoid_frequencies)

StateDict = Mapping[str, Tensor]
TTNN_WEIGHT_DTYPES = ("bfloat16", "bfloat8_b")


@dataclass(frozen=True)
class WeightDtypes:
    """Storage dtype of the matmul weights per group; biases, norms, tables are always bfloat16."""

    vision: str = "bfloat16"
    projector: str = "bfloat16"
    vlm: str = "bfloat16"
    expert: str = "bfloat16"
    heads: str = "bfloat16"

    @classmethod
    def from_runtime(cls, rc: Any) -> "WeightDtypes":
        """Per-group dtypes from a TtRuntimeConfig (the projector follows the vision tower)."""
        return cls(rc.weight_dtype_vision, rc.weight_dtype_vision, rc.weight_dtype_vlm,
                   rc.weight_dtype_expert, rc.weight_dtype_heads)

    @classmethod
    def uniform(cls, name: str) -> "WeightDtypes":
        if name not in TTNN_WEIGHT_DTYPES:
            raise ConfigError(f"ttnn_weight_dtype {name!r} is not supported; expected one of "
                              f"{TTNN_WEIGHT_DTYPES}")
        return cls(name, name, name, name, name)


@dataclass(frozen=True)
class TensorSpec:
    """One device tensor: converted name, report group, device shape, dtype, layout, builder."""

    name: str
    group: str
    shape: Tuple[int, ...]
    dtype: str
    layout: str  # "TILE" | "ROW_MAJOR"
    build: Callable[[StateDict], Tensor]


def padded_head_dim(head_dim: int) -> int:
    """Head width on the device: nlp_create_qkv_heads needs a tile multiple."""
    return round_up(head_dim, TILE)


def patch_k(vision: SiglipConfig) -> int:
    """Contraction width of the patch matmul: 3 * patch^2, padded to a tile multiple."""
    return round_up(3 * vision.patch_size ** 2, TILE)


# ------------------------------------------------------------------------------------------------
# Host-side transforms
# ------------------------------------------------------------------------------------------------


def _get(sd: StateDict, key: str) -> Tensor:
    if key not in sd:
        raise CheckpointError(f"state dict has no key {key!r}; the TTNN conversion needs every "
                              "tensor of checkpoint_keys.expected_shapes(config)")
    return sd[key].detach().to(torch.float32)


def _pad_heads_out(w: Tensor, heads: int, head_dim: int) -> Tensor:
    """[heads * hd, ...] -> [heads * hdp, ...]: zero rows after each head."""
    hdp = padded_head_dim(head_dim)
    w = w.reshape(heads, head_dim, *w.shape[1:])
    pad = w.new_zeros(heads, hdp - head_dim, *w.shape[2:])
    return torch.cat([w, pad], dim=1).reshape(heads * hdp, *w.shape[2:])


def _linear_t(key: str) -> Callable[[StateDict], Tensor]:
    return lambda sd: _get(sd, key).t().contiguous()


def _row(key: str, offset: float = 0.0) -> Callable[[StateDict], Tensor]:
    return lambda sd: (_get(sd, key) + offset)[None, :]


def _fused_qkv(prefix: str, heads: int, kv_heads: int, head_dim: int, suffix: str
               ) -> Callable[[StateDict], Tensor]:
    """Concatenate q, k, v (out dim, heads padded) and transpose to [in, out] (or a bias row)."""

    def build(sd: StateDict) -> Tensor:
        parts = [_pad_heads_out(_get(sd, f"{prefix}{p}_proj.{suffix}"), n, head_dim)
                 for p, n in (("q", heads), ("k", kv_heads), ("v", kv_heads))]
        fused = torch.cat(parts, dim=0)
        return fused[None, :] if suffix == "bias" else fused.t().contiguous()

    return build


def _out_proj(key: str, heads: int, head_dim: int) -> Callable[[StateDict], Tensor]:
    """o_proj [D, heads * hd] -> [heads * hdp, D] with zero rows for the padded head lanes."""
    return lambda sd: _pad_heads_out(_get(sd, key).t().contiguous(), heads, head_dim)


def _patch_weight(key: str, vision: SiglipConfig) -> Callable[[StateDict], Tensor]:
    """Conv [D, 3, p, p] -> [K_pad, D] with rows ordered (row, col, channel) like the patches."""

    def build(sd: StateDict) -> Tensor:
        w = _get(sd, key).permute(0, 2, 3, 1).reshape(vision.hidden_size, -1).t()
        return torch.cat([w, w.new_zeros(patch_k(vision) - w.shape[0], w.shape[1])]).contiguous()

    return build


def _adarms_part(key: str, width: int, part: int, kind: str) -> Callable[[StateDict], Tensor]:
    """Slice scale (0), shift (1) or gate (2) out of the adaRMS dense layer; scale bias gets +1."""

    def build(sd: StateDict) -> Tensor:
        t = _get(sd, f"{key}.{kind}")[part * width:(part + 1) * width]
        if kind == "bias":
            return (t + (1.0 if part == 0 else 0.0))[None, :]
        return t.t().contiguous()

    return build


def _modulation(key: str, width: int, kind: str) -> Callable[[StateDict], Tensor]:
    """The whole adaRMS dense layer [scale | shift | gate] as [in, 3 out]; scale bias gets +1."""

    def build(sd: StateDict) -> Tensor:
        t = _get(sd, f"{key}.{kind}")
        if kind == "bias":
            return (t + torch.cat([torch.ones(width), torch.zeros(2 * width)]))[None, :]
        return t.t().contiguous()

    return build


def _gate_up(prefix: str, mlp_dim: int) -> Callable[[StateDict], Tensor]:
    """[in, up | gate], each half zero-padded to a tile multiple: ttnn.geglu(x) = a * gelu(b)."""
    pad = round_up(mlp_dim) - mlp_dim

    def build(sd: StateDict) -> Tensor:
        halves = [torch.nn.functional.pad(_get(sd, f"{prefix}{p}_proj.weight").t(), (0, pad))
                  for p in ("up", "gate")]
        return torch.cat(halves, dim=1).contiguous()

    return build


def _down_padded(key: str, mlp_dim: int) -> Callable[[StateDict], Tensor]:
    pad = round_up(mlp_dim) - mlp_dim
    return lambda sd: torch.nn.functional.pad(_get(sd, key).t(), (0, 0, 0, pad)).contiguous()


def _rows(key: str, start: int, stop: int) -> Callable[[StateDict], Tensor]:
    """Rows [start, stop) of a Linear weight transposed to [in, out]."""
    return lambda sd: _get(sd, key).t()[start:stop].contiguous()


def rope_tables(head_dim: int, theta: float, max_positions: int) -> Tuple[Tensor, Tensor]:
    """cos/sin [max_positions, hdp] in fp32, split-half layout as torch_gemma.rope_cos_sin."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float()
    inv_freq = 1.0 / (theta ** (exponent / head_dim))
    freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    pad = padded_head_dim(head_dim) - head_dim
    cos = torch.nn.functional.pad(emb.cos(), (0, pad))
    sin = torch.nn.functional.pad(emb.sin(), (0, pad))
    return cos, sin


def rotate_half_matrix(head_dim: int) -> Tensor:
    """R with x @ R = cat(-x[half:], x[:half]) on the logical lanes (exact: entries are 0, +-1)."""
    hdp, half = padded_head_dim(head_dim), head_dim // 2
    r = torch.zeros(hdp, hdp)
    idx = torch.arange(half)
    r[idx + half, idx] = -1.0
    r[idx, idx + half] = 1.0
    return r


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------


def _siglip_specs(v: SiglipConfig, dt: str) -> Iterator[TensorSpec]:
    d, hdp, heads = v.hidden_size, padded_head_dim(v.head_dim), v.num_heads
    e = "vision_tower.embeddings."
    yield TensorSpec(f"{e}patch_embedding.weight", "vision", (patch_k(v), d), dt, "TILE",
                     _patch_weight(f"{e}patch_embedding.weight", v))
    yield TensorSpec(f"{e}patch_embedding.bias", "vision", (1, d), "bfloat16", "TILE",
                     _row(f"{e}patch_embedding.bias"))
    yield TensorSpec(f"{e}position_embedding.weight", "vision", (1, 1, v.num_patches, d),
                     "bfloat16", "TILE",
                     lambda sd: _get(sd, f"{e}position_embedding.weight")[None, None])
    for i in range(v.num_layers):
        p = f"vision_tower.encoder.layers.{i}."
        a = f"{p}self_attn."
        yield TensorSpec(f"{a}wqkv", "vision", (d, 3 * heads * hdp), dt, "TILE",
                         _fused_qkv(a, heads, heads, v.head_dim, "weight"))
        yield TensorSpec(f"{a}bqkv", "vision", (1, 3 * heads * hdp), "bfloat16", "TILE",
                         _fused_qkv(a, heads, heads, v.head_dim, "bias"))
        yield TensorSpec(f"{a}out_proj.weight", "vision", (heads * hdp, d), dt, "TILE",
                         _out_proj(f"{a}out_proj.weight", heads, v.head_dim))
        yield TensorSpec(f"{a}out_proj.bias", "vision", (1, d), "bfloat16", "TILE",
                         _row(f"{a}out_proj.bias"))
        for norm in ("layer_norm1", "layer_norm2"):
            for kind in ("weight", "bias"):
                yield TensorSpec(f"{p}{norm}.{kind}", "vision", (1, d), "bfloat16", "TILE",
                                 _row(f"{p}{norm}.{kind}"))
        for fc, shape in (("fc1", (d, v.intermediate_size)), ("fc2", (v.intermediate_size, d))):
            yield TensorSpec(f"{p}mlp.{fc}.weight", "vision", shape, dt, "TILE",
                             _linear_t(f"{p}mlp.{fc}.weight"))
            yield TensorSpec(f"{p}mlp.{fc}.bias", "vision", (1, shape[1]), "bfloat16", "TILE",
                             _row(f"{p}mlp.{fc}.bias"))
    for kind in ("weight", "bias"):
        yield TensorSpec(f"vision_tower.post_layernorm.{kind}", "vision", (1, d), "bfloat16",
                         "TILE", _row(f"vision_tower.post_layernorm.{kind}"))


def _norm_specs(name: str, g: GemmaConfig, group: str, dt: str,
                fused_modulation: bool = False) -> Iterator[TensorSpec]:
    w = g.width
    if not g.use_adarms:
        yield TensorSpec(f"{name}.weight", group, (1, w), "bfloat16", "TILE",
                         _row(f"{name}.weight", offset=1.0))
        return
    if fused_modulation:  # [scale | shift | gate] in one matmul (precomputed for all steps)
        yield TensorSpec(f"{name}.modulation.weight", group, (w, 3 * w), dt, "TILE",
                         _modulation(f"{name}.dense", w, "weight"))
        yield TensorSpec(f"{name}.modulation.bias", group, (1, 3 * w), "bfloat16", "TILE",
                         _modulation(f"{name}.dense", w, "bias"))
        return
    for part, label in enumerate(("scale", "shift", "gate")):
        yield TensorSpec(f"{name}.{label}.weight", group, (w, w), dt, "TILE",
                         _adarms_part(f"{name}.dense", w, part, "weight"))
        yield TensorSpec(f"{name}.{label}.bias", group, (1, w), "bfloat16", "TILE",
                         _adarms_part(f"{name}.dense", w, part, "bias"))


def _fused_kv(prefix: str, kv_heads: int, head_dim: int) -> Callable[[StateDict], Tensor]:
    """k and v only (no q), fused on the out dim and transposed: [in, 2 Hkv hdp]."""

    def build(sd: StateDict) -> Tensor:
        parts = [_pad_heads_out(_get(sd, f"{prefix}{p}_proj.weight"), kv_heads, head_dim)
                 for p in ("k", "v")]
        return torch.cat(parts, dim=0).t().contiguous()

    return build


def _gemma_specs(stack: str, g: GemmaConfig, group: str, dt: str, prefill_only: bool = False,
                 layout: "WeightLayout" = None) -> Iterator[TensorSpec]:
    """One Gemma stack. `prefill_only` (the VLM): the last layer keeps only its input norm and
    K/V projection and there is no final norm, since prefill uses nothing else of them."""
    layout = layout or WeightLayout()
    fused_mod = layout.precompute_conditioning
    w, hdp = g.width, padded_head_dim(g.head_dim)
    qkv_out = (g.num_heads + 2 * g.num_kv_heads) * hdp
    for i in range(g.depth):
        p = f"{stack}.layers.{i}."
        a = f"{p}self_attn."
        if prefill_only and i == g.depth - 1:
            yield TensorSpec(f"{a}wkv", group, (w, 2 * g.num_kv_heads * hdp), dt, "TILE",
                             _fused_kv(a, g.num_kv_heads, g.head_dim))
            yield from _norm_specs(f"{p}input_layernorm", g, group, dt, fused_mod)
            continue
        yield TensorSpec(f"{a}wqkv", group, (w, qkv_out), dt, "TILE",
                         _fused_qkv(a, g.num_heads, g.num_kv_heads, g.head_dim, "weight"))
        yield TensorSpec(f"{a}o_proj.weight", group, (g.num_heads * hdp, w), dt, "TILE",
                         _out_proj(f"{a}o_proj.weight", g.num_heads, g.head_dim))
        if layout.fused_mlp:
            f = round_up(g.mlp_dim)
            yield TensorSpec(f"{p}mlp.gate_up.weight", group, (w, 2 * f), dt, "TILE",
                             _gate_up(f"{p}mlp.", g.mlp_dim))
            yield TensorSpec(f"{p}mlp.down_proj.weight", group, (f, w), dt, "TILE",
                             _down_padded(f"{p}mlp.down_proj.weight", g.mlp_dim))
        else:
            for proj, shape in (("gate_proj", (w, g.mlp_dim)), ("up_proj", (w, g.mlp_dim)),
                                ("down_proj", (g.mlp_dim, w))):
                yield TensorSpec(f"{p}mlp.{proj}.weight", group, shape, dt, "TILE",
                                 _linear_t(f"{p}mlp.{proj}.weight"))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            yield from _norm_specs(f"{p}{norm}", g, group, dt, fused_mod)
    if not prefill_only:
        yield from _norm_specs(f"{stack}.norm", g, group, dt, fused_mod)


def _head_specs(cfg: PI0Config, dt: str, split_time_mlp: bool = False) -> Iterator[TensorSpec]:
    """Projection heads; `split_time_mlp` (PI0, precomputed conditioning) splits
    action_time_mlp_in into its action and its time rows (the time half runs before the loop)."""
    w, a, s = cfg.expert.width, cfg.max_action_dim, cfg.max_state_dim
    heads = [("action_in_proj", a, w), ("action_out_proj", w, a)]
    if cfg.is_pi05:
        heads += [("time_mlp_in", w, w), ("time_mlp_out", w, w)]
    elif split_time_mlp:
        key = "action_time_mlp_in.weight"
        for part, (lo, hi) in (("action", (0, w)), ("time", (w, 2 * w))):
            yield TensorSpec(f"action_time_mlp_in.{part}.weight", "heads", (w, w), dt, "TILE",
                             _rows(key, lo, hi))
        yield TensorSpec("action_time_mlp_in.bias", "heads", (1, w), "bfloat16", "TILE",
                         _row("action_time_mlp_in.bias"))
        heads += [("state_proj", s, w), ("action_time_mlp_out", w, w)]
    else:
        heads += [("state_proj", s, w), ("action_time_mlp_in", 2 * w, w),
                  ("action_time_mlp_out", w, w)]
    for name, fan_in, fan_out in heads:
        yield TensorSpec(f"{name}.weight", "heads", (fan_in, fan_out), dt, "TILE",
                         _linear_t(f"{name}.weight"))
        yield TensorSpec(f"{name}.bias", "heads", (1, fan_out), "bfloat16", "TILE",
                         _row(f"{name}.bias"))
    # float32: the phase t / period needs more than bf16's 8 bits (see create_sinusoidal_...).
    yield TensorSpec("time.inv_period", "heads", (1, w // 2), "float32", "TILE",
                     lambda sd: sinusoid_frequencies(w, cfg.min_period, cfg.max_period))


def max_rope_positions(cfg: PI0Config) -> int:
    """Rows of the RoPE tables: every position a padded prefix plus padded suffix can reach."""
    return round_up(cfg.prefix_len) + round_up(cfg.suffix_len) + TILE


def _table_specs(cfg: PI0Config) -> Iterator[TensorSpec]:
    g = cfg.vlm
    hdp = padded_head_dim(g.head_dim)
    rows = max_rope_positions(cfg)
    yield TensorSpec("rope.cos", "rope", (rows, hdp), "bfloat16", "ROW_MAJOR",
                     lambda sd: rope_tables(g.head_dim, g.rope_theta, rows)[0])
    yield TensorSpec("rope.sin", "rope", (rows, hdp), "bfloat16", "ROW_MAJOR",
                     lambda sd: rope_tables(g.head_dim, g.rope_theta, rows)[1])
    yield TensorSpec("rope.rotate_half", "rope", (hdp, hdp), "bfloat16", "TILE",
                     lambda sd: rotate_half_matrix(g.head_dim))


@dataclass(frozen=True)
class WeightLayout:
    """How weights are arranged for the techniques that change them (ttnn_config knobs)."""

    fused_mlp: bool = False  # gate+up as one [in, up | gate] weight (ttnn.geglu)
    precompute_conditioning: bool = False  # adaRMS dense whole; PI0 time-MLP split
    l1_rope: bool = False  # RoPE tables resident in L1 instead of DRAM

    @classmethod
    def from_runtime(cls, rc: Any) -> "WeightLayout":
        return cls(rc.fused_mlp, rc.precompute_conditioning, rc.l1_activations)


def weight_plan(cfg: PI0Config, dtypes: WeightDtypes,
                layout: WeightLayout = WeightLayout()) -> List[TensorSpec]:
    """Every resident tensor of PI0ModelTTNN, in conversion order."""
    for field_name in ("vision", "projector", "vlm", "expert", "heads"):
        if getattr(dtypes, field_name) not in TTNN_WEIGHT_DTYPES:
            raise ConfigError(f"weight dtype for {field_name} is {getattr(dtypes, field_name)!r}; "
                              f"expected one of {TTNN_WEIGHT_DTYPES}")
    if cfg.vlm.rope_theta != cfg.expert.rope_theta or cfg.vlm.head_dim != cfg.expert.head_dim:
        raise ConfigError("the VLM and the expert must share head_dim and rope_theta: one RoPE "
                          "table serves both stacks")
    specs: List[TensorSpec] = list(_siglip_specs(cfg.vision, dtypes.vision))
    specs += [
        TensorSpec("multi_modal_projector.weight", "projector",
                   (cfg.vision.hidden_size, cfg.vlm.width), dtypes.projector, "TILE",
                   _linear_t("multi_modal_projector.weight")),
        TensorSpec("multi_modal_projector.bias", "projector", (1, cfg.vlm.width), "bfloat16",
                   "TILE", _row("multi_modal_projector.bias")),
        TensorSpec("language_model.embed_tokens.weight", "embed_tokens",
                   (cfg.vlm.vocab_size, cfg.vlm.width), "bfloat16", "ROW_MAJOR",
                   lambda sd: _get(sd, "language_model.embed_tokens.weight")),
    ]
    specs += list(_gemma_specs("language_model", cfg.vlm, "vlm", dtypes.vlm, prefill_only=True,
                               layout=layout))
    specs += list(_gemma_specs("gemma_expert", cfg.expert, "expert", dtypes.expert,
                               layout=layout))
    specs += list(_head_specs(cfg, dtypes.heads, layout.precompute_conditioning))
    specs += list(_table_specs(cfg))
    return specs


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------


def to_device(host: Tensor, spec_dtype: str, layout: str, device, l1: bool = False
              ) -> "ttnn.Tensor":
    """One host tensor -> device (DRAM, or L1), in the given dtype and layout."""
    return ttnn.from_torch(host, dtype=get_ttnn_dtype(spec_dtype),
                           layout=ttnn.TILE_LAYOUT if layout == "TILE" else ttnn.ROW_MAJOR_LAYOUT,
                           device=device,
                           memory_config=ttnn.L1_MEMORY_CONFIG if l1 else ttnn.DRAM_MEMORY_CONFIG)


def convert_specs(specs: List[TensorSpec], state_dict: StateDict, device,
                  l1_groups: Tuple[str, ...] = ()) -> Dict[str, "ttnn.Tensor"]:
    """Build, check and upload every spec (groups in `l1_groups` to L1); name -> device tensor."""
    out: Dict[str, "ttnn.Tensor"] = {}
    for spec in specs:
        host = spec.build(state_dict)
        if tuple(host.shape) != spec.shape:
            msg = (f"converted tensor {spec.name} has shape {tuple(host.shape)}, expected "
                   f"{spec.shape}; the state dict does not match the config")
            raise CheckpointError(msg)
        out[spec.name] = to_device(host, spec.dtype, spec.layout, device,
                                   spec.group in l1_groups)
    return out


def convert_pi0_weights(state_dict: StateDict, cfg: PI0Config, device, dtypes: WeightDtypes,
                        layout: WeightLayout = WeightLayout()) -> Dict[str, "ttnn.Tensor"]:
    """Convert the whole model once (all of weight_plan); RoPE tables in L1 when asked."""
    return convert_specs(weight_plan(cfg, dtypes, layout), state_dict, device,
                         ("rope",) if layout.l1_rope else ())


def convert_suffix_weights_to_ttnn(torch_weights: StateDict, device, config: PI0Config,
                                   dtype: str = "bfloat16") -> Dict[str, "ttnn.Tensor"]:
    """Convert only the suffix heads (action_in/out, state, time MLPs) for SuffixEmbeddingTTNN."""
    if dtype not in TTNN_WEIGHT_DTYPES:
        raise ConfigError(f"suffix weight dtype {dtype!r} is not one of {TTNN_WEIGHT_DTYPES}")
    return convert_specs(list(_head_specs(config, dtype)), torch_weights, device)


# ------------------------------------------------------------------------------------------------
# Resident memory, computed from shapes only
# ------------------------------------------------------------------------------------------------

BF8_TILE_BYTES = 1088  # 1024 mantissas + 64 shared exponents per 32 x 32 tile
BYTES_PER_ELEMENT = {"bfloat16": 2, "float32": 4, "uint32": 4}


def device_bytes(shape: Tuple[int, ...], dtype: str, layout: str = "TILE") -> int:
    """Bytes a tensor occupies on the device (TILE: last two dims padded to 32)."""
    if dtype not in DTYPE_NAMES + ("uint32",):
        raise ConfigError(f"unknown dtype {dtype!r}")
    if layout == "ROW_MAJOR":
        if dtype == "bfloat8_b":
            raise ConfigError("bfloat8_b exists only in TILE layout")
        return int(torch.tensor(shape).prod()) * BYTES_PER_ELEMENT[dtype]
    dims = (1,) * max(0, 2 - len(shape)) + tuple(shape)
    outer = int(torch.tensor(dims[:-2]).prod()) if len(dims) > 2 else 1
    tiles = outer * (round_up(dims[-2]) // TILE) * (round_up(dims[-1]) // TILE)
    if dtype == "bfloat8_b":
        return tiles * BF8_TILE_BYTES
    return tiles * TILE * TILE * BYTES_PER_ELEMENT[dtype]
