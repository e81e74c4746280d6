"""The one table between checkpoint tensor names and the model's own parameter names.

Checkpoints use lerobot 0.6.1 / openpi-PyTorch names (`paligemma_with_expert.paligemma.model.
language_model.layers.0.self_attn.q_proj.weight`, optionally with a leading `model.`). Both backends
use the shorter internal names below (`language_model.layers.0.self_attn.q_proj.weight`); the torch
modules' `state_dict()` keys are exactly these, and the TTNN weight conversion reads the same dict.
All Linear weights keep torch's [out, in] layout here.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from pi0_ttnn_node.config import GemmaConfig, PI0Config

Shape = Tuple[int, ...]

# checkpoint prefix (after stripping an optional leading "model.") -> internal prefix
PREFIX_MAP: Tuple[Tuple[str, str], ...] = (
    ("paligemma_with_expert.paligemma.model.vision_tower.vision_model.", "vision_tower."),
    ("paligemma_with_expert.paligemma.model.multi_modal_projector.linear.",
     "multi_modal_projector."),
    ("paligemma_with_expert.paligemma.model.language_model.", "language_model."),
    ("paligemma_with_expert.gemma_expert.model.", "gemma_expert."),
)
HEAD_PREFIXES = ("action_in_proj.", "action_out_proj.", "state_proj.", "action_time_mlp_in.",
                 "action_time_mlp_out.", "time_mlp_in.", "time_mlp_out.")
# Present in every lerobot/openpi state dict, never used to produce actions (tied output heads).
UNUSED_KEYS = ("paligemma_with_expert.paligemma.lm_head.weight",
               "paligemma_with_expert.gemma_expert.lm_head.weight")
LM_HEAD_KEY = "paligemma_with_expert.paligemma.lm_head.weight"
EMBED_TOKENS_KEY = "language_model.embed_tokens.weight"


def strip_model_prefix(key: str) -> str:
    """lerobot fine-tunes prefix every key with `model.`; hub bases and openpi files do not."""
    return key[len("model."):] if key.startswith("model.") else key


def to_internal_key(checkpoint_key: str) -> Optional[str]:
    """Map a checkpoint key to the internal name, or None when the key is not a model tensor."""
    key = strip_model_prefix(checkpoint_key)
    for src, dst in PREFIX_MAP:
        if key.startswith(src):
            return dst + key[len(src):]
    if key.startswith(HEAD_PREFIXES):
        return key
    return None


def to_checkpoint_key(internal_key: str, with_model_prefix: bool = True) -> str:
    """Inverse of to_internal_key, in lerobot's saved form (with `model.` by default)."""
    for src, dst in PREFIX_MAP:
        if internal_key.startswith(dst):
            key = src + internal_key[len(dst):]
            break
    else:
        key = internal_key
    return ("model." + key) if with_model_prefix else key


def _gemma_layer_shapes(prefix: str, g: GemmaConfig) -> Dict[str, Shape]:
    q_out = g.num_heads * g.head_dim
    kv_out = g.num_kv_heads * g.head_dim
    shapes: Dict[str, Shape] = {
        f"{prefix}self_attn.q_proj.weight": (q_out, g.width),
        f"{prefix}self_attn.k_proj.weight": (kv_out, g.width),
        f"{prefix}self_attn.v_proj.weight": (kv_out, g.width),
        f"{prefix}self_attn.o_proj.weight": (g.width, q_out),
        f"{prefix}mlp.gate_proj.weight": (g.mlp_dim, g.width),
        f"{prefix}mlp.up_proj.weight": (g.mlp_dim, g.width),
        f"{prefix}mlp.down_proj.weight": (g.width, g.mlp_dim),
    }
    for norm in ("input_layernorm", "post_attention_layernorm"):
        shapes.update(_norm_shapes(f"{prefix}{norm}", g))
    return shapes


def _norm_shapes(name: str, g: GemmaConfig) -> Dict[str, Shape]:
    if g.use_adarms:  # adaRMS: dense(cond) -> (scale, shift, gate); no learned weight
        return {f"{name}.dense.weight": (3 * g.width, g.width), f"{name}.dense.bias": (3 * g.width,)}
    return {f"{name}.weight": (g.width,)}


def expected_shapes(cfg: PI0Config) -> Dict[str, Shape]:
    """Every tensor the model needs, by internal name, with its exact shape."""
    v, vlm, ex = cfg.vision, cfg.vlm, cfg.expert
    shapes: Dict[str, Shape] = {
        "vision_tower.embeddings.patch_embedding.weight": (v.hidden_size, 3, v.patch_size,
                                                           v.patch_size),
        "vision_tower.embeddings.patch_embedding.bias": (v.hidden_size,),
        "vision_tower.embeddings.position_embedding.weight": (v.num_patches, v.hidden_size),
        "vision_tower.post_layernorm.weight": (v.hidden_size,),
        "vision_tower.post_layernorm.bias": (v.hidden_size,),
        "multi_modal_projector.weight": (vlm.width, v.hidden_size),
        "multi_modal_projector.bias": (vlm.width,),
        EMBED_TOKENS_KEY: (vlm.vocab_size, vlm.width),
        "language_model.norm.weight": (vlm.width,),
    }
    for i in range(v.num_layers):
        p = f"vision_tower.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (v.hidden_size, v.hidden_size)
            shapes[f"{p}self_attn.{proj}.bias"] = (v.hidden_size,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{norm}.weight"] = (v.hidden_size,)
            shapes[f"{p}{norm}.bias"] = (v.hidden_size,)
        shapes[f"{p}mlp.fc1.weight"] = (v.intermediate_size, v.hidden_size)
        shapes[f"{p}mlp.fc1.bias"] = (v.intermediate_size,)
        shapes[f"{p}mlp.fc2.weight"] = (v.hidden_size, v.intermediate_size)
        shapes[f"{p}mlp.fc2.bias"] = (v.hidden_size,)
    for i in range(vlm.depth):
        shapes.update(_gemma_layer_shapes(f"language_model.layers.{i}.", vlm))
    for i in range(ex.depth):
        shapes.update(_gemma_layer_shapes(f"gemma_expert.layers.{i}.", ex))
    shapes.update(_norm_shapes("gemma_expert.norm", ex))
    w, a, s = ex.width, cfg.max_action_dim, cfg.max_state_dim
    shapes.update({
        "action_in_proj.weight": (w, a), "action_in_proj.bias": (w,),
        "action_out_proj.weight": (a, w), "action_out_proj.bias": (a,),
    })
    if cfg.is_pi05:
        shapes.update({
            "time_mlp_in.weight": (w, w), "time_mlp_in.bias": (w,),
            "time_mlp_out.weight": (w, w), "time_mlp_out.bias": (w,),
        })
    else:
        shapes.update({
            "state_proj.weight": (w, s), "state_proj.bias": (w,),
            "action_time_mlp_in.weight": (w, 2 * w), "action_time_mlp_in.bias": (w,),
            "action_time_mlp_out.weight": (w, w), "action_time_mlp_out.bias": (w,),
        })
    return shapes
