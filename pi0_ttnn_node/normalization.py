"""Normalisation statistics (lerobot processor files or openpi norm_stats.json) and the Normalizer.

The conventions differ in eps and in the inverse (lerobot `processor/normalize_processor.py`,
openpi `transforms.py`):
  lerobot MEAN_STD (x-mean)/(std+eps), inverse y*std+mean; QUANTILES 2(x-q01)/d-1 and MIN_MAX
  2(x-min)/d-1, d = q99-q01 (max-min) replaced by eps only where d == 0; eps from the file (1e-8).
  openpi  mean/std (x-mean)/(std+1e-6), inverse y*(std+1e-6)+mean; quantile (x-q01)/(d+1e-6)*2-1.
Stats are at the robot's (unpadded) size; counterpart of lerobot's (Un)NormalizerProcessorStep.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from pi0_ttnn_node.config import FeaturesConfig
from pi0_ttnn_node.bounded_files import read_small_text
from pi0_ttnn_node.errors import CheckpointError, InferenceError, ObservationError
from pi0_ttnn_node.safetensors_io import load_small_file

LOG = logging.getLogger(__name__)

CONVENTIONS = ("lerobot", "openpi")
LEROBOT_EPS = 1e-8
OPENPI_EPS = 1e-6
STAT_NAMES = ("mean", "std", "q01", "q99", "min", "max")
# mode -> (low/centre statistic, high/spread statistic)
REQUIRED = {"MEAN_STD": ("mean", "std"), "QUANTILES": ("q01", "q99"), "MIN_MAX": ("min", "max"),
            "IDENTITY": ()}
STATE_KEY, ACTION_KEY = "observation.state", "action"
PREPROCESSOR_JSON, POSTPROCESSOR_JSON = "policy_preprocessor.json", "policy_postprocessor.json"


@dataclass
class FeatureStats:
    """Statistics of one feature (state or action); vectors at the robot's dimension."""

    mean: Optional[np.ndarray] = None
    std: Optional[np.ndarray] = None
    q01: Optional[np.ndarray] = None
    q99: Optional[np.ndarray] = None
    min: Optional[np.ndarray] = None
    max: Optional[np.ndarray] = None

    def available(self) -> Dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in STAT_NAMES if getattr(self, n) is not None}


@dataclass
class NormStats:
    """State and action statistics plus the mode and convention that say how to apply them."""

    state: FeatureStats
    action: FeatureStats
    state_mode: str
    action_mode: str
    convention: str
    eps: float = LEROBOT_EPS  # lerobot's eps as saved in the processor JSON; openpi uses 1e-6


def _affine(stats: FeatureStats, mode: str, convention: str, eps: float, dim: int,
            where: str) -> Tuple[np.ndarray, ...]:
    """Return (a, b, c, b_inv) so that y = (x-a)/b + c and x = (y-c)*b_inv + a.

    Computed in the convention's own precision (lerobot: float32 tensors; openpi: float64 numpy
    from JSON), so results match the reference to the last bit where the algebra allows.
    """
    dtype = np.float32 if convention == "lerobot" else np.float64
    a, b, c, b_inv = (np.full(dim, v, dtype) for v in (0.0, 1.0, 0.0, 1.0))
    if mode == "IDENTITY":
        return a, b, c, b_inv
    missing = [n for n in REQUIRED[mode] if getattr(stats, n) is None]
    if missing:
        raise CheckpointError(f"{where}: {mode} normalisation needs {missing}, which are missing")
    # Dims beyond the statistics (openpi stats shorter than the feature) pass through unchanged.
    n = min(dim, len(getattr(stats, REQUIRED[mode][0])))
    lo_name, hi_name = REQUIRED[mode]
    lo = np.asarray(getattr(stats, lo_name), dtype)[:n]
    hi = np.asarray(getattr(stats, hi_name), dtype)[:n]
    e = dtype(OPENPI_EPS if convention == "openpi" else eps)
    if mode == "MEAN_STD":
        a[:n], b[:n] = lo, hi + e
        b_inv[:n] = b[:n] if convention == "openpi" else hi  # lerobot inverts with std, no eps
        return a, b, c, b_inv
    span = hi - lo
    span = span + e if convention == "openpi" else np.where(span == 0, e, span)
    # (x-lo)/(span/2) - 1 equals 2(x-lo)/span - 1 bit for bit: halving is exact.
    a[:n], b[:n], c[:n] = lo, span / dtype(2.0), -1.0
    b_inv[:n] = b[:n]
    return a, b, c, b_inv


class _Affine:
    """Precomputed per-dimension affine map for one feature; the hot path is three numpy ops."""

    def __init__(self, stats: FeatureStats, mode: str, convention: str, eps: float,
                 dim: int, where: str) -> None:
        self.a, self.b, self.c, self.b_inv = _affine(stats, mode, convention, eps, dim, where)
        self.dtype = self.a.dtype
        self.identity = mode == "IDENTITY"

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.identity:
            return np.asarray(x, np.float32)
        return ((np.asarray(x, self.dtype) - self.a) / self.b + self.c).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        if self.identity:
            return np.asarray(y, np.float32)
        return ((np.asarray(y, self.dtype) - self.c) * self.b_inv + self.a).astype(np.float32)


def _stats_dim(stats: FeatureStats, mode: str) -> int:
    names = REQUIRED.get(mode, ())
    return len(getattr(stats, names[0])) if names and getattr(stats, names[0]) is not None else 0


class Normalizer:
    """Normalise robot state into model units and unnormalise model actions into robot units."""

    def __init__(self, stats: NormStats, state_dim: int = 0, action_dim: int = 0) -> None:
        if stats.convention not in CONVENTIONS:
            raise CheckpointError(f"normalisation convention must be one of {CONVENTIONS}, got "
                                  f"{stats.convention!r}")
        self.stats = stats
        self.state_dim = state_dim or _stats_dim(stats.state, stats.state_mode)
        self.action_dim = action_dim or _stats_dim(stats.action, stats.action_mode)
        self._state = _Affine(stats.state, stats.state_mode, stats.convention, stats.eps,
                              self.state_dim, "state statistics")
        self._action = _Affine(stats.action, stats.action_mode, stats.convention, stats.eps,
                               self.action_dim, "action statistics")

    @staticmethod
    def _check(x: np.ndarray, dim: int, what: str, err: type) -> np.ndarray:
        arr = np.asarray(x)
        if dim and (arr.ndim == 0 or arr.shape[-1] != dim):
            raise err(f"{what} has shape {arr.shape}; expected last dimension {dim}")
        return arr

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        """[..., state_dim] robot units -> float32 model units."""
        return self._state.forward(self._check(state, self.state_dim, "state", ObservationError))

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """[..., action_dim] robot units -> float32 model units (training direction, for tests)."""
        return self._action.forward(self._check(actions, self.action_dim, "actions",
                                                InferenceError))

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """[..., action_dim] model units -> float32 robot units."""
        return self._action.inverse(self._check(actions, self.action_dim, "actions",
                                                InferenceError))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _fit(vec: np.ndarray, dim: int, name: str, where: str, exact: bool) -> np.ndarray:
    arr = np.asarray(vec).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{where}: statistic {name} has non-finite values {arr.tolist()}")
    if exact and arr.shape[0] != dim:
        msg = (f"{where}: statistic {name} has length {arr.shape[0]} but the checkpoint's "
               f"config.json gives dimension {dim}; the statistics belong to another robot")
        raise CheckpointError(msg)
    return arr[:dim]  # openpi: longer stats are truncated to the feature, as openpi slices them


def _feature_stats(flat: Mapping[str, np.ndarray], prefix: str, mode: str, dim: int,
                   where: str, exact: bool) -> FeatureStats:
    fs = FeatureStats()
    for name in STAT_NAMES:
        if f"{prefix}.{name}" in flat:
            setattr(fs, name, _fit(flat[f"{prefix}.{name}"], dim, f"{prefix}.{name}", where, exact))
    if mode not in REQUIRED:
        raise CheckpointError(f"{where}: normalisation mode {mode!r} is not supported; expected "
                              f"one of {sorted(REQUIRED)}")
    for name in REQUIRED[mode]:
        if getattr(fs, name) is None:
            msg = (f"{where} has no key '{prefix}.{name}', which {mode} normalisation of "
                   f"{prefix} needs; the checkpoint's statistics are incomplete")
            raise CheckpointError(msg)
    return fs


_STEP_CLASSES = {"normalizer_processor": "NormalizerProcessorStep",
                 "unnormalizer_processor": "UnnormalizerProcessorStep"}


def _normalizer_step(root: Path, json_name: str,
                     registry_name: str) -> Tuple[Optional[Path], dict]:
    """Find the (un)normalizer step in a lerobot pipeline JSON; return its state file and config.

    The state file is None when lerobot saved no statistics (it skips empty state dicts).
    """
    path = root / json_name
    if not path.is_file():
        raise CheckpointError(f"{root} has no {json_name}; lerobot checkpoints keep their "
                              "normalisation statistics in the processor pipeline files")
    try:
        text = read_small_text(path, "processor file", CheckpointError)
        steps = [s for s in json.loads(text)["steps"] if isinstance(s, dict)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot parse {path}: {err}; expected {{'steps': [...]}}") from err
    for step in steps:
        class_name = str(step.get("class", "")).rsplit(".", 1)[-1]
        if (step.get("registry_name") != registry_name
                and class_name != _STEP_CLASSES[registry_name]):
            continue
        state_file = step.get("state_file")
        if state_file is not None and (not isinstance(state_file, str)
                                       or Path(state_file).name != state_file):
            raise CheckpointError(f"{path}: the {registry_name} step names an invalid "
                                  f"state_file {state_file!r}; expected a file name")
        return (root / state_file if state_file else None), dict(step.get("config") or {})
    raise CheckpointError(f"{path} has no {registry_name} step; cannot find the statistics")


def _lerobot_stats(root: Path, features: FeaturesConfig) -> NormStats:
    pre_file, pre_cfg = _normalizer_step(root, PREPROCESSOR_JSON, "normalizer_processor")
    post_file, post_cfg = _normalizer_step(root, POSTPROCESSOR_JSON, "unnormalizer_processor")
    # lerobot's processor applies its own saved norm_map, so it wins over config.json.
    state_mode = str((pre_cfg.get("norm_map") or {}).get("STATE", features.state_norm))
    action_mode = str((post_cfg.get("norm_map") or {}).get("ACTION", features.action_norm))
    for what, mode, cfg_mode in (("STATE", state_mode, features.state_norm),
                                 ("ACTION", action_mode, features.action_norm)):
        if mode != cfg_mode:
            LOG.warning("processor norm_map says %s=%s but config.json says %s; using the "
                        "processor's, as lerobot does", what, mode, cfg_mode)
    pre = load_small_file(pre_file) if pre_file else {}
    post = load_small_file(post_file) if post_file else {}
    state = _feature_stats(pre, STATE_KEY, state_mode, features.state_dim,
                           str(pre_file or root / PREPROCESSOR_JSON), exact=True)
    action = _feature_stats(post, ACTION_KEY, action_mode, features.action_dim,
                            str(post_file or root / POSTPROCESSOR_JSON), exact=True)
    eps = float(pre_cfg.get("eps", LEROBOT_EPS))
    return NormStats(state, action, state_mode, action_mode, "lerobot", eps)


def find_openpi_stats(root: Path, asset_id: Optional[str] = None) -> Path:
    """Return assets/<asset_id>/norm_stats.json, requiring exactly one when asset_id is None."""
    if asset_id is not None:
        path = root / "assets" / asset_id / "norm_stats.json"
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; check the asset id {asset_id!r}")
        return path
    found = sorted((root / "assets").glob("*/norm_stats.json"))
    if len(found) != 1:
        msg = (f"{root}/assets holds {len(found)} norm_stats.json files "
               f"({[p.parent.name for p in found]}); expected exactly one, pass asset_id")
        raise CheckpointError(msg)
    return found[0]


def read_openpi_stats(path: Path) -> Dict[str, Dict[str, np.ndarray]]:
    """Parse openpi's {"norm_stats": {"state": {...}, "actions": {...}}} into flat arrays."""
    try:
        raw = json.loads(read_small_text(path, "statistics file", CheckpointError))["norm_stats"]
        return {feat: {k: np.asarray(v, np.float64) for k, v in raw[feat].items() if v is not None}
                for feat in ("state", "actions")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        msg = (f"cannot parse {path}: {err}; expected {{'norm_stats': {{'state': {{...}}, "
               "'actions': {...}}}")
        raise CheckpointError(msg) from err


def _openpi_stats(root: Path, features: FeaturesConfig, asset_id: Optional[str]) -> NormStats:
    path = find_openpi_stats(root, asset_id)
    raw = read_openpi_stats(path)
    flat = {f"{STATE_KEY}.{k}": v for k, v in raw["state"].items()}
    flat.update({f"{ACTION_KEY}.{k}": v for k, v in raw["actions"].items()})
    for mode in (features.state_norm, features.action_norm):
        if mode == "MIN_MAX":
            raise CheckpointError(f"{path}: openpi has no MIN_MAX normalisation")
    state = _feature_stats(flat, STATE_KEY, features.state_norm, features.state_dim, str(path),
                           exact=False)
    action = _feature_stats(flat, ACTION_KEY, features.action_norm, features.action_dim,
                            str(path), exact=False)
    return NormStats(state, action, features.state_norm, features.action_norm, "openpi",
                     OPENPI_EPS)


def load_norm_stats(checkpoint_dir: "str | Path", features: FeaturesConfig,
                    asset_id: Optional[str] = None) -> NormStats:
    """Read the statistics of a lerobot or openpi checkpoint directory.

    lerobot stats must match the config's state/action sizes exactly. openpi stats longer than the
    feature are truncated (openpi slices them the same way); shorter ones leave the extra
    dimensions un-normalised (openpi's quantile inverse passes them through too).
    """
    root = Path(checkpoint_dir)
    if (root / PREPROCESSOR_JSON).is_file() or (root / POSTPROCESSOR_JSON).is_file():
        return _lerobot_stats(root, features)
    if (root / "assets").is_dir():
        return _openpi_stats(root, features, asset_id)
    msg = (f"{root} has neither {PREPROCESSOR_JSON} (lerobot) nor assets/<id>/norm_stats.json "
           "(openpi); a policy cannot map robot units without its normalisation statistics")
    raise CheckpointError(msg)
