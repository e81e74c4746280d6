"""Build lerobot 0.6.1's own PI0 / PI0.5 policy at any size, offline, for fixtures and benchmarks.

lerobot hard-codes the published sizes (Gemma 2B + 300M, SigLIP So400m, vocabulary 257152). To get
a tiny model through lerobot's unchanged constructor we swap three module-level names in its
modeling module before construction: `get_gemma_config`,
`PaliGemmaForConditionalGenerationWithPiGemma` and `PiGemmaForCausalLM` (see
shared/reference/pi0_model.md section 15). Runs only inside .venv-lerobot; counterpart:
pi0_ttnn_node/config.py (`pi0_ttnn_node_dims`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
from typing import Any, Dict, Iterator, Mapping, Optional

# Never touch the network: no hub look-ups, no tokenizer downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
DIMS_KEY = "pi0_ttnn_node_dims"

# Tiny sizes: every dimension differs so that a transposed or swapped weight fails loudly. The VLM
# and the expert must share depth, heads, kv heads and head_dim (joint attention per layer).
TINY_DIMS: Dict[str, Dict[str, Any]] = {
    "vision": {"hidden_size": 48, "intermediate_size": 80, "num_layers": 3, "num_heads": 4,
               "patch_size": 14, "image_size": 224, "layer_norm_eps": 1e-6},
    "vlm": {"width": 64, "depth": 2, "mlp_dim": 96, "num_heads": 8, "num_kv_heads": 1,
            "head_dim": 16, "vocab_size": 300, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "use_adarms": False},
    "expert": {"width": 40, "depth": 2, "mlp_dim": 72, "num_heads": 8, "num_kv_heads": 1,
               "head_dim": 16, "vocab_size": 0, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
               "use_adarms": False},
}


def modeling_module(model_type: str):
    """lerobot's modeling module for the model type (`pi0` or `pi05`)."""
    if model_type == "pi0":
        return importlib.import_module("lerobot.policies.pi0.modeling_pi0")
    if model_type == "pi05":
        return importlib.import_module("lerobot.policies.pi05.modeling_pi05")
    raise ValueError(f"model type must be 'pi0' or 'pi05', got {model_type!r}")


@contextlib.contextmanager
def tiny_sizes(model_type: str, dims: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, lerobot's constructor builds a model of the given dims.

    The swaps are undone on exit so later constructions in the same process see stock lerobot.
    """
    mod = modeling_module(model_type)
    vision, vlm, expert = dims["vision"], dims["vlm"], dims["expert"]
    for name in ("depth", "num_heads", "num_kv_heads", "head_dim"):
        if vlm[name] != expert[name]:
            raise ValueError(f"vlm.{name}={vlm[name]} != expert.{name}={expert[name]}; "
                             "the two stacks share attention and must agree")
    if vision["image_size"] != 224 or vision["patch_size"] != 14:
        raise ValueError("keep image 224 / patch 14: lerobot derives the image size from "
                         "config.image_resolution and the patch from PaliGemma's default")
    orig_get = mod.get_gemma_config
    orig_pali = mod.PaliGemmaForConditionalGenerationWithPiGemma
    orig_causal = mod.PiGemmaForCausalLM

    def get_gemma_config(variant: str):
        src = {"gemma_2b": vlm, "gemma_300m": expert}.get(variant)
        if src is None:
            raise ValueError(f"unknown variant {variant!r}")
        return mod.GemmaConfig(width=src["width"], depth=src["depth"], mlp_dim=src["mlp_dim"],
                               num_heads=src["num_heads"], num_kv_heads=src["num_kv_heads"],
                               head_dim=src["head_dim"])

    def pali(config):
        vc = config.vision_config
        vc.hidden_size = vision["hidden_size"]
        vc.intermediate_size = vision["intermediate_size"]
        vc.num_hidden_layers = vision["num_layers"]
        vc.num_attention_heads = vision["num_heads"]
        vc.layer_norm_eps = vision["layer_norm_eps"]
        vc.projection_dim = vlm["width"]
        config.text_config.vocab_size = vlm["vocab_size"]
        config.text_config.rms_norm_eps = vlm["rms_norm_eps"]
        config._vocab_size = vlm["vocab_size"]  # noqa: SLF001  (PaliGemma keeps its own copy)
        config.image_token_index = vlm["vocab_size"]
        return orig_pali(config)

    def causal(config):
        # The expert has no token embedding in use; keep a small vocabulary so lm_head stays tiny.
        config.vocab_size = vlm["vocab_size"]
        config.rms_norm_eps = expert["rms_norm_eps"]
        return orig_causal(config)

    mod.get_gemma_config = get_gemma_config
    mod.PaliGemmaForConditionalGenerationWithPiGemma = pali
    mod.PiGemmaForCausalLM = causal
    try:
        yield
    finally:
        mod.get_gemma_config = orig_get
        mod.PaliGemmaForConditionalGenerationWithPiGemma = orig_pali
        mod.PiGemmaForCausalLM = orig_causal


def make_lerobot_config(model_type: str, state_dim: int, action_dim: int,
                        tokenizer_max_length: Optional[int] = None):
    """lerobot's own PI0Config / PI05Config for three cameras, on CPU, in fp32."""
    from lerobot.configs import FeatureType, PolicyFeature

    inputs = {f"observation.images.{cam}": PolicyFeature(type=FeatureType.VISUAL,
                                                         shape=(3, 224, 224))
              for cam in CAMERAS}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    kwargs: Dict[str, Any] = dict(input_features=inputs, output_features=outputs, device="cpu",
                                  dtype="float32", push_to_hub=False)
    if tokenizer_max_length is not None:
        kwargs["tokenizer_max_length"] = tokenizer_max_length
    if model_type == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config
        return PI0Config(**kwargs)
    from lerobot.policies.pi05.configuration_pi05 import PI05Config
    return PI05Config(**kwargs)


def build_policy(model_type: str, config, dims: Optional[Mapping[str, Any]] = None):
    """Construct lerobot's PI0Policy / PI05Policy; `dims=None` builds the published size."""
    mod = modeling_module(model_type)
    cls = mod.PI0Policy if model_type == "pi0" else mod.PI05Policy
    if dims is None:
        policy = cls(config)
    else:
        with tiny_sizes(model_type, dims):
            policy = cls(config)
    policy.eval()
    return policy


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter so no weight keeps HF's zero / one initialisation.

    Matrices ~ N(0, 1/fan_in); LayerNorm gains ~ 1 + N(0, 0.1); every other 1-D tensor (biases,
    Gemma RMSNorm offsets w in x*(1+w)) ~ N(0, 0.1), so the (1+w) offset and adaRMS are exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                val = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
            elif name.endswith(".weight") and ("layer_norm" in name or "post_layernorm" in name):
                val = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                val = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(val.to(p.dtype))


def hf_sub_configs(policy) -> Dict[str, Any]:
    """The three Hugging Face configs lerobot built (vision, VLM text, expert), as JSON objects."""
    pwe = policy.model.paligemma_with_expert

    def as_json(cfg) -> Dict[str, Any]:
        return json.loads(cfg.to_json_string(use_diff=False))

    return {
        "vision_config": as_json(pwe.paligemma.config.vision_config),
        "text_config": as_json(pwe.paligemma.config.text_config),
        "expert_config": as_json(pwe.gemma_expert.config),
    }


def dims_from_policy(policy, model_type: str) -> Dict[str, Any]:
    """`pi0_ttnn_node_dims` read back from the built HF configs (not from what we asked for)."""
    sub = hf_sub_configs(policy)
    vc, tc, ec = sub["vision_config"], sub["text_config"], sub["expert_config"]

    def rope(c):
        params = c.get("rope_parameters") or {}
        return float(params.get("rope_theta", c.get("rope_theta", 10000.0)))

    return {
        "vision": {"hidden_size": vc["hidden_size"], "intermediate_size": vc["intermediate_size"],
                   "num_layers": vc["num_hidden_layers"], "num_heads": vc["num_attention_heads"],
                   "patch_size": vc["patch_size"], "image_size": vc["image_size"],
                   "layer_norm_eps": vc["layer_norm_eps"]},
        "vlm": {"width": tc["hidden_size"], "depth": tc["num_hidden_layers"],
                "mlp_dim": tc["intermediate_size"], "num_heads": tc["num_attention_heads"],
                "num_kv_heads": tc["num_key_value_heads"], "head_dim": tc["head_dim"],
                "vocab_size": tc["vocab_size"], "rms_norm_eps": tc["rms_norm_eps"],
                "rope_theta": rope(tc), "use_adarms": False},
        "expert": {"width": ec["hidden_size"], "depth": ec["num_hidden_layers"],
                   "mlp_dim": ec["intermediate_size"], "num_heads": ec["num_attention_heads"],
                   "num_kv_heads": ec["num_key_value_heads"], "head_dim": ec["head_dim"],
                   "vocab_size": 0, "rms_norm_eps": ec["rms_norm_eps"], "rope_theta": rope(ec),
                   "use_adarms": model_type == "pi05"},
    }


def run_sample_actions(policy, model_type: str, images, img_masks, lang_tokens, lang_masks,
                       state, noise) -> torch.Tensor:
    """lerobot's inner inference call; PI0.5 takes no state tensor."""
    m = policy.model
    if model_type == "pi0":
        return m.sample_actions(images, img_masks, lang_tokens, lang_masks, state, noise=noise)
    return m.sample_actions(images, img_masks, lang_tokens, lang_masks, noise=noise)


def images_from_uint8(images_uint8: torch.Tensor):
    """[cams, B, 3, H, W] uint8 -> list of float [B, 3, H, W] in [-1, 1] (the saved convention)."""
    return [(images_uint8[i].to(torch.float32) / 255.0) * 2.0 - 1.0
            for i in range(images_uint8.shape[0])]
