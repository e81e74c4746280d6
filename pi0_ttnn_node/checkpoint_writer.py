"""Write a checkpoint directory in lerobot 0.6.x's published layout (read back by checkpoint.py).

Files: config.json (lerobot fields, plus `pi0_ttnn_node_dims` for non-published sizes),
model.safetensors, policy_preprocessor.json + `_step_<k>_normalizer_processor.safetensors`,
policy_postprocessor.json + `_step_0_unnormalizer_processor.safetensors`. The pipeline JSONs follow
lerobot `DataProcessorPipeline._save_pretrained`: {name, steps: [{registry_name, config,
state_file}]}; only the (un)normalizer entries are read back, the other steps are descriptive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
from safetensors.torch import save_file

from pi0_ttnn_node import checkpoint_keys as ck
from pi0_ttnn_node.config import DIMS_KEY, GemmaConfig, PI0Config, SiglipConfig
from pi0_ttnn_node.errors import CheckpointError
from pi0_ttnn_node.normalization import (ACTION_KEY, STATE_KEY, FeatureStats, NormStats,
                                         POSTPROCESSOR_JSON, PREPROCESSOR_JSON)

PALIGEMMA_TOKENIZER = "google/paligemma-3b-pt-224"


def is_published_size(cfg: PI0Config) -> bool:
    """True when lerobot's variant names alone describe every dimension."""
    return (cfg.vision == SiglipConfig.so400m() and cfg.vlm == GemmaConfig.gemma_2b()
            and cfg.expert == GemmaConfig.gemma_300m(use_adarms=cfg.is_pi05))


def _features(cfg: PI0Config) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    size = cfg.vision.image_size
    inputs: Dict[str, Any] = {k: {"type": "VISUAL", "shape": [3, size, size]}
                              for k in cfg.features.image_keys}
    inputs[STATE_KEY] = {"type": "STATE", "shape": [cfg.features.state_dim]}
    outputs = {ACTION_KEY: {"type": "ACTION", "shape": [cfg.features.action_dim]}}
    return inputs, outputs


def _norm_map(cfg: PI0Config) -> Dict[str, str]:
    return {"VISUAL": "IDENTITY", "STATE": cfg.features.state_norm,
            "ACTION": cfg.features.action_norm}


def lerobot_config_dict(cfg: PI0Config) -> Dict[str, Any]:
    """config.json as lerobot 0.6.x writes it (inference-relevant fields and their defaults)."""
    inputs, outputs = _features(cfg)
    size = cfg.vision.image_size
    raw: Dict[str, Any] = {
        "type": cfg.model_type, "n_obs_steps": 1,
        "input_features": inputs, "output_features": outputs,
        "device": "cpu", "use_amp": False,
        "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m",
        "dtype": "float32",
        "chunk_size": cfg.chunk_size, "n_action_steps": cfg.chunk_size,
        "max_state_dim": cfg.max_state_dim, "max_action_dim": cfg.max_action_dim,
        "num_inference_steps": cfg.num_inference_steps,
        "min_period": cfg.min_period, "max_period": cfg.max_period,
        "image_resolution": [size, size], "empty_cameras": 0,
        "tokenizer_max_length": cfg.tokenizer_max_length,
        "normalization_mapping": _norm_map(cfg),
    }
    if not is_published_size(cfg):
        raw[DIMS_KEY] = cfg.to_dims_dict()
    return raw


def _flat_stats(prefix: str, stats: FeatureStats) -> Dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": torch.as_tensor(vec, dtype=torch.float32).reshape(-1).contiguous()
            for name, vec in stats.available().items()}


def _step(name: str, config: Mapping[str, Any], state_file: str = "") -> Dict[str, Any]:
    entry: Dict[str, Any] = {"registry_name": name, "config": dict(config)}
    if state_file:
        entry["state_file"] = state_file
    return entry


def _write_pipelines(out: Path, cfg: PI0Config, stats: NormStats) -> None:
    inputs, outputs = _features(cfg)
    norm = {"eps": stats.eps, "features": {**inputs, **outputs}, "norm_map": _norm_map(cfg)}
    unnorm = {"eps": stats.eps, "features": outputs, "norm_map": _norm_map(cfg)}
    tokenizer = {"max_length": cfg.tokenizer_max_length, "task_key": "task",
                 "padding_side": "right", "padding": "max_length", "truncation": True,
                 "tokenizer_name": PALIGEMMA_TOKENIZER}
    device = {"device": "cpu", "float_dtype": None}
    relative = {"enabled": False, "exclude_joints": ["gripper"], "action_names": None}
    # lerobot 0.6.1 step order (normalizer at index 6 for PI0, 3 for PI0.5).
    pre: List[Tuple[str, Mapping[str, Any]]] = [
        ("rename_observations_processor", {"rename_map": {}}), ("to_batch_processor", {})]
    if cfg.is_pi05:
        pre += [("relative_actions_processor", relative), ("normalizer_processor", norm),
                ("pi05_prepare_state_tokenizer_processor_step", {}),
                ("tokenizer_processor", tokenizer), ("device_processor", device)]
    else:
        pre += [("pi0_new_line_processor", {}), ("tokenizer_processor", tokenizer),
                ("device_processor", device), ("relative_actions_processor", relative),
                ("normalizer_processor", norm)]
    post = [("unnormalizer_processor", unnorm), ("device_processor", device)]
    action = _flat_stats(ACTION_KEY, stats.action)
    tensors = {"normalizer_processor": {**_flat_stats(STATE_KEY, stats.state), **action},
               "unnormalizer_processor": action}
    for json_name, steps in ((PREPROCESSOR_JSON, pre), (POSTPROCESSOR_JSON, post)):
        pipeline_name = json_name[:-len(".json")]
        entries = []
        for index, (name, config) in enumerate(steps):
            state_file = ""
            if name in tensors:
                state_file = f"{pipeline_name}_step_{index}_{name}.safetensors"
                save_file(tensors[name], str(out / state_file))
            entries.append(_step(name, config, state_file))
        text = json.dumps({"name": pipeline_name, "steps": entries}, indent=2)
        (out / json_name).write_text(text + "\n")


def _checkpoint_tensors(cfg: PI0Config, state_dict: Mapping[str, torch.Tensor],
                        with_model_prefix: bool, include_lm_head: bool) -> Dict[str, torch.Tensor]:
    expected = ck.expected_shapes(cfg)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(f"{k} expected {expected[k]} got {tuple(v.shape)}"
                       for k, v in state_dict.items()
                       if k in expected and tuple(v.shape) != expected[k])
    if missing or unexpected or misshaped:
        msg = (f"refusing to save a state dict that does not match the {cfg.model_type} "
               f"configuration: missing {missing[:10]}, unexpected {unexpected[:10]}, "
               f"mis-shaped {misshaped[:10]}")
        raise CheckpointError(msg)
    out = {ck.to_checkpoint_key(k, with_model_prefix): v.detach().to("cpu").contiguous()
           for k, v in state_dict.items()}
    if include_lm_head:
        prefix = "model." if with_model_prefix else ""
        # Unused by lerobot and by us; written so the file carries lerobot's full key set.
        out[prefix + ck.LM_HEAD_KEY] = state_dict[ck.EMBED_TOKENS_KEY].detach().to("cpu").clone()
        out[prefix + ck.UNUSED_KEYS[1]] = torch.zeros(cfg.vlm.vocab_size, cfg.expert.width,
                                                      dtype=state_dict[ck.EMBED_TOKENS_KEY].dtype)
    return out


def save_checkpoint(out_dir: "str | Path", config: PI0Config,
                    state_dict_internal: Mapping[str, torch.Tensor], norm_stats: NormStats, *,
                    with_model_prefix: bool = True, include_lm_head: bool = False) -> Path:
    """Write config, weights and normalisation files; return the directory."""
    if norm_stats.convention != "lerobot":
        msg = (f"save_checkpoint writes lerobot's layout, whose eps and inverse differ from "
               f"{norm_stats.convention!r} statistics; convert them to lerobot NormStats first")
        raise CheckpointError(msg)
    modes = (norm_stats.state_mode, norm_stats.action_mode)
    if modes != (config.features.state_norm, config.features.action_norm):
        msg = (f"norm_stats modes {modes} differ from the configuration's "
               f"{(config.features.state_norm, config.features.action_norm)}; they must agree")
        raise CheckpointError(msg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _checkpoint_tensors(config, state_dict_internal, with_model_prefix, include_lm_head)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(lerobot_config_dict(config), indent=2) + "\n")
    _write_pipelines(out, config, norm_stats)
    return out
