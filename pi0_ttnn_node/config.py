"""Model configuration for PI0 and PI0.5: every dimension is defined here, once.

Published sizes (openpi `gemma.get_config`, lerobot 0.6.1): SigLIP So400m/14 (1152 wide, 27 layers,
16 heads of 72, MLP 4304), Gemma 2B VLM (2048 wide, 18 layers, 8 q heads / 1 kv head of 256,
MLP 16384, vocabulary 257152) and the Gemma 300M action expert (1024 wide, MLP 4096, same depth and
heads). Smaller models are given explicitly, every dimension, in the `pi0_ttnn_node_dims` object of
the checkpoint's `config.json` (or a JSON/YAML file) and validated the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from pi0_ttnn_node.bounded_files import read_small_text
from pi0_ttnn_node.errors import ConfigError

MODEL_TYPES = ("pi0", "pi05")
NORM_MODES = ("MEAN_STD", "QUANTILES", "IDENTITY", "MIN_MAX")
DIMS_KEY = "pi0_ttnn_node_dims"


@dataclass(frozen=True)
class SiglipConfig:
    """SigLIP vision tower: patch conv, learned positions, pre-LayerNorm blocks, final LayerNorm."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def so400m(cls) -> "SiglipConfig":
        return cls()


@dataclass(frozen=True)
class GemmaConfig:
    """One Gemma stack (VLM or action expert). `vocab_size` is 0 for the expert (no embedding)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    vocab_size: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    use_adarms: bool = False

    @classmethod
    def gemma_2b(cls) -> "GemmaConfig":
        return cls(width=2048, depth=18, mlp_dim=16384, vocab_size=257152)

    @classmethod
    def gemma_300m(cls, use_adarms: bool = False) -> "GemmaConfig":
        return cls(width=1024, depth=18, mlp_dim=4096, use_adarms=use_adarms)


@dataclass(frozen=True)
class FeaturesConfig:
    """What the checkpoint was trained on: camera slots, robot state/action sizes, normalisation.

    `image_keys` are lerobot feature names (`observation.images.<cam>`) in slot order.
    """

    image_keys: Tuple[str, ...] = (
        "observation.images.base_0_rgb",
        "observation.images.left_wrist_0_rgb",
        "observation.images.right_wrist_0_rgb",
    )
    state_dim: int = 32
    action_dim: int = 32
    state_norm: str = "MEAN_STD"
    action_norm: str = "MEAN_STD"

    @property
    def camera_names(self) -> Tuple[str, ...]:
        return tuple(k.rsplit(".", 1)[-1] for k in self.image_keys)


@dataclass(frozen=True)
class PI0Config:
    """A whole PI0 / PI0.5 model plus the sampling settings stored with its checkpoint."""

    model_type: str = "pi0"
    vision: SiglipConfig = field(default_factory=SiglipConfig.so400m)
    vlm: GemmaConfig = field(default_factory=GemmaConfig.gemma_2b)
    expert: GemmaConfig = field(default_factory=GemmaConfig.gemma_300m)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    chunk_size: int = 50
    max_state_dim: int = 32
    max_action_dim: int = 32
    num_inference_steps: int = 10
    tokenizer_max_length: int = 48
    min_period: float = 4e-3
    max_period: float = 4.0

    def __post_init__(self) -> None:
        validate(self)

    @property
    def is_pi05(self) -> bool:
        return self.model_type == "pi05"

    @property
    def num_image_slots(self) -> int:
        return len(self.features.image_keys)

    @property
    def prefix_len(self) -> int:
        """Static prefix length: 256 tokens per image slot plus the padded language length."""
        return self.num_image_slots * self.vision.num_patches + self.tokenizer_max_length

    @property
    def suffix_len(self) -> int:
        """PI0 puts one state token before the actions; PI0.5 carries the state in the prompt."""
        return self.chunk_size + (0 if self.is_pi05 else 1)

    @classmethod
    def pi0(cls, **overrides: Any) -> "PI0Config":
        return cls(model_type="pi0", **overrides)

    @classmethod
    def pi05(cls, **overrides: Any) -> "PI0Config":
        base = dict(
            expert=GemmaConfig.gemma_300m(use_adarms=True),
            tokenizer_max_length=200,
            features=FeaturesConfig(state_norm="QUANTILES", action_norm="QUANTILES"),
        )
        base.update(overrides)
        return cls(model_type="pi05", **base)

    def replace(self, **changes: Any) -> "PI0Config":
        return dataclasses.replace(self, **changes)

    def to_dims_dict(self) -> Dict[str, Any]:
        """Every architecture dimension, as stored under `pi0_ttnn_node_dims` in config.json."""
        return {
            "vision": dataclasses.asdict(self.vision),
            "vlm": dataclasses.asdict(self.vlm),
            "expert": dataclasses.asdict(self.expert),
        }

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: "str | Path") -> "PI0Config":
        path = Path(checkpoint_dir) / "config.json"
        if not path.is_file():
            msg = (f"checkpoint directory {checkpoint_dir} has no config.json; expected lerobot's "
                   "layout (config.json, model.safetensors, normalisation files)")
            raise ConfigError(msg)
        try:
            raw = json.loads(read_small_text(path, "config file", ConfigError))
        except (OSError, ValueError) as err:
            msg = f"cannot parse {path}: {err}; expected a JSON object"
            raise ConfigError(msg) from err
        return from_config_dict(raw, source=str(path))


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def validate(cfg: PI0Config) -> None:
    """Raise ConfigError naming the first inconsistent dimension."""
    if cfg.model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type must be one of {MODEL_TYPES}, got {cfg.model_type!r}")
    v = cfg.vision
    for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "patch_size",
                 "image_size"):
        _positive(f"vision.{name}", getattr(v, name))
    _positive_float("vision.layer_norm_eps", v.layer_norm_eps)
    if v.hidden_size % v.num_heads:
        raise ConfigError(f"vision.hidden_size {v.hidden_size} is not divisible by "
                          f"vision.num_heads {v.num_heads}")
    if v.image_size % v.patch_size:
        raise ConfigError(f"vision.image_size {v.image_size} is not a multiple of "
                          f"vision.patch_size {v.patch_size}")
    for stack_name, g in (("vlm", cfg.vlm), ("expert", cfg.expert)):
        for name in ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim"):
            _positive(f"{stack_name}.{name}", getattr(g, name))
        _positive_float(f"{stack_name}.rms_norm_eps", g.rms_norm_eps)
        _positive_float(f"{stack_name}.rope_theta", g.rope_theta)
        if g.num_heads % g.num_kv_heads:
            raise ConfigError(f"{stack_name}.num_heads {g.num_heads} is not a multiple of "
                              f"{stack_name}.num_kv_heads {g.num_kv_heads}")
        if g.head_dim % 2:
            raise ConfigError(f"{stack_name}.head_dim must be even for RoPE, got {g.head_dim}")
    _positive("vlm.vocab_size", cfg.vlm.vocab_size)
    for name in ("depth", "num_heads", "num_kv_heads", "head_dim"):
        a, b = getattr(cfg.vlm, name), getattr(cfg.expert, name)
        if a != b:
            raise ConfigError(
                f"the action expert and the VLM share attention layer by layer, so they must have "
                f"the same {name}; got vlm.{name}={a}, expert.{name}={b}")
    if cfg.vlm.use_adarms:
        raise ConfigError("vlm.use_adarms must be false: only the PI0.5 action expert uses adaRMS")
    if cfg.expert.use_adarms != cfg.is_pi05:
        raise ConfigError(f"expert.use_adarms must be {cfg.is_pi05} for model_type "
                          f"{cfg.model_type!r} (PI0.5 conditions the expert with adaRMS, PI0 not)")
    for name in ("chunk_size", "max_state_dim", "max_action_dim", "num_inference_steps",
                 "tokenizer_max_length"):
        _positive(name, getattr(cfg, name))
    _positive_float("min_period", cfg.min_period)
    _positive_float("max_period", cfg.max_period)
    if cfg.expert.width % 2:
        raise ConfigError(f"expert.width must be even (sin/cos time embedding), got "
                          f"{cfg.expert.width}")
    f = cfg.features
    if not f.image_keys:
        raise ConfigError("features.image_keys is empty; PI0 needs at least one camera slot")
    if len(set(f.image_keys)) != len(f.image_keys):
        raise ConfigError(f"features.image_keys has duplicates: {list(f.image_keys)}")
    _positive("features.state_dim", f.state_dim)
    _positive("features.action_dim", f.action_dim)
    if f.state_dim > cfg.max_state_dim:
        raise ConfigError(f"features.state_dim {f.state_dim} exceeds max_state_dim "
                          f"{cfg.max_state_dim}")
    if f.action_dim > cfg.max_action_dim:
        raise ConfigError(f"features.action_dim {f.action_dim} exceeds max_action_dim "
                          f"{cfg.max_action_dim}")
    for name in ("state_norm", "action_norm"):
        if getattr(f, name) not in NORM_MODES:
            raise ConfigError(f"features.{name} must be one of {NORM_MODES}, got "
                              f"{getattr(f, name)!r}")


# --------------------------------------------------------------------------------------------
# Parsing lerobot / openpi config.json
# --------------------------------------------------------------------------------------------

_PUBLISHED_GEMMA = {"gemma_2b": GemmaConfig.gemma_2b, "gemma_300m": GemmaConfig.gemma_300m}


def _dataclass_from(cls: type, raw: Mapping[str, Any], where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be an object, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; expected a subset of {sorted(names)}")
    try:
        return cls(**raw)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def _features_from(raw: Mapping[str, Any], is_pi05: bool) -> FeaturesConfig:
    default_norm = "QUANTILES" if is_pi05 else "MEAN_STD"
    inputs = raw.get("input_features") or {}
    outputs = raw.get("output_features") or {}
    image_keys: List[str] = [k for k, v in inputs.items()
                             if isinstance(v, Mapping) and v.get("type") == "VISUAL"]
    image_keys += [f"observation.images.empty_camera_{i}"
                   for i in range(int(raw.get("empty_cameras", 0) or 0))]
    state = inputs.get("observation.state") or {}
    action = outputs.get("action") or {}
    mapping = raw.get("normalization_mapping") or {}
    kwargs: Dict[str, Any] = {
        "state_norm": str(mapping.get("STATE", default_norm)),
        "action_norm": str(mapping.get("ACTION", default_norm)),
    }
    if image_keys:
        kwargs["image_keys"] = tuple(image_keys)
    if state.get("shape"):
        kwargs["state_dim"] = int(state["shape"][-1])
    if action.get("shape"):
        kwargs["action_dim"] = int(action["shape"][-1])
    elif "action_dim" in raw and "input_features" not in raw:  # openpi converted config
        kwargs["action_dim"] = int(raw["action_dim"])
    return FeaturesConfig(**kwargs)


def from_config_dict(raw: Mapping[str, Any], source: str = "config") -> PI0Config:
    """Build a PI0Config from a lerobot (`type: pi0|pi05`) or openpi-converted config.json.

    Unknown top-level keys are ignored (configs grow fields between releases); unknown keys inside
    the explicit `pi0_ttnn_node_dims` object are errors, since a typo there changes the model.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source} must hold a JSON object, got {type(raw).__name__}")
    model_type = raw.get("type")
    if model_type is None:  # openpi converted checkpoints: {action_dim, action_horizon, ...}
        model_type = "pi05" if raw.get("pi05") or "pi05" in str(raw.get("model_type", "")) else "pi0"
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{source}: type {model_type!r} is not supported; expected one of "
                          f"{MODEL_TYPES} (PI0-FAST and older lerobot PI0 ports are not)")
    is_pi05 = model_type == "pi05"
    dims = raw.get(DIMS_KEY)
    if dims is not None:
        if not isinstance(dims, Mapping) or set(dims) != {"vision", "vlm", "expert"}:
            raise ConfigError(f"{source}: {DIMS_KEY} must be an object with exactly the keys "
                              "vision, vlm and expert")
        vision = _dataclass_from(SiglipConfig, dims["vision"], f"{source}: {DIMS_KEY}.vision")
        vlm = _dataclass_from(GemmaConfig, dims["vlm"], f"{source}: {DIMS_KEY}.vlm")
        expert = _dataclass_from(GemmaConfig, dims["expert"], f"{source}: {DIMS_KEY}.expert")
    else:
        variants = []
        for key, default in (("paligemma_variant", "gemma_2b"),
                             ("action_expert_variant", "gemma_300m")):
            name = raw.get(key, default)
            if name not in _PUBLISHED_GEMMA:
                raise ConfigError(f"{source}: {key} {name!r} is not a published size "
                                  f"({sorted(_PUBLISHED_GEMMA)}); give every dimension in "
                                  f"{DIMS_KEY} for other sizes")
            variants.append(_PUBLISHED_GEMMA[name]())
        vision, vlm, expert = SiglipConfig.so400m(), variants[0], variants[1]
        expert = dataclasses.replace(expert, vocab_size=0)
    expert = dataclasses.replace(expert, use_adarms=is_pi05)
    kwargs: Dict[str, Any] = dict(
        model_type=model_type, vision=vision, vlm=vlm, expert=expert,
        features=_features_from(raw, is_pi05),
        tokenizer_max_length=int(raw.get("tokenizer_max_length", 200 if is_pi05 else 48)),
    )
    for key, name in (("chunk_size", "chunk_size"), ("action_horizon", "chunk_size"),
                      ("max_state_dim", "max_state_dim"), ("max_action_dim", "max_action_dim"),
                      ("num_inference_steps", "num_inference_steps"),
                      ("min_period", "min_period"), ("max_period", "max_period")):
        if key in raw and raw[key] is not None:
            kwargs[name] = raw[key]
    if "action_dim" in raw and "type" not in raw:  # openpi: model action_dim is the padded size
        kwargs["max_action_dim"] = kwargs["max_state_dim"] = int(raw["action_dim"])
    return PI0Config(**kwargs)


def load_dims_file(path: "str | Path") -> Dict[str, Any]:
    """Read an explicit dims file (JSON, or YAML when PyYAML is installed) for custom sizes."""
    p = Path(path)
    text = read_small_text(p, "dims file", ConfigError)
    if p.suffix in (".yaml", ".yml"):
        import yaml  # local import: only custom-size configs need PyYAML

        return yaml.safe_load(text)
    return json.loads(text)


def resolve_dims(cfg: PI0Config, dims: Optional[Mapping[str, Any]]) -> PI0Config:
    """Return cfg with the dims from an explicit file applied (same rules as config.json)."""
    if dims is None:
        return cfg
    raw = {"type": cfg.model_type, DIMS_KEY: dims}
    parsed = from_config_dict(raw, source="dims file")
    return cfg.replace(vision=parsed.vision, vlm=parsed.vlm, expert=parsed.expert)
