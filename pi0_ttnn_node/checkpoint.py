"""Load PI0 / PI0.5 checkpoints (lerobot 0.6.x layout and openpi-converted PyTorch layout).

Safetensors only, read tensor by tensor (full PI0 fp32 is ~13 GB: never two copies in memory).
Key rules mirror lerobot `PI0Policy.from_pretrained` / `PI05Policy._fix_pytorch_state_dict_keys`:
optional `model.` prefix; embed_tokens copied from the PaliGemma lm_head when absent (openpi files);
both lm_heads skipped; `time_mlp_*` and `action_time_mlp_*` read as the model type's name; for
PI0.5, `state_proj.*` and plain expert norm `.weight` keys are dropped (unused by an adaRMS expert).
lerobot applies these rules to un-prefixed keys only; here they apply to both spellings.
Writing lives in checkpoint_writer.py.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from pi0_ttnn_node import checkpoint_keys as ck
from pi0_ttnn_node.checkpoint_writer import save_checkpoint  # noqa: F401  (public API)
from pi0_ttnn_node.config import DIMS_KEY, PI0Config
from pi0_ttnn_node.bounded_files import read_small_text
from pi0_ttnn_node.errors import CheckpointError
from pi0_ttnn_node.normalization import (NormStats, find_openpi_stats, load_norm_stats,
                                         read_openpi_stats)
from pi0_ttnn_node.safetensors_io import PICKLE_SUFFIXES, TensorInfo, read_header, read_tensor

LOG = logging.getLogger(__name__)

MODEL_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
PROGRESS_MIN_BYTES = 200 * 2**20
MAX_LISTED = 10
# Present in some PI0.5 files, unused by the adaRMS expert; lerobot drops them the same way.
PI05_DROPPED = re.compile(r"^(state_proj\.|gemma_expert\.(layers\.\d+\.(input|post_attention)"
                          r"_layernorm|norm)\.weight$)")


@dataclass
class LoadedCheckpoint:
    """Everything a backend and the pre/post-processing need, read from one directory."""

    path: Path
    config: PI0Config
    state_dict: Dict[str, torch.Tensor]  # internal names (checkpoint_keys), dtype as requested
    norm_stats: NormStats
    ignored_keys: List[str]  # checkpoint keys skipped on purpose (lm_heads, PI0.5 leftovers)
    source_format: str  # "lerobot" | "openpi"


@dataclass(frozen=True)
class _Source:
    file: Path
    key: str
    info: TensorInfo


def _listing(names: List[str]) -> str:
    more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return f"{len(names)}: {names[:MAX_LISTED]}{more}"


def resolve_weight_files(path: "str | Path") -> List[Path]:
    """Return the safetensors file(s) of a checkpoint file or directory (sharded via index)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise CheckpointError(f"checkpoint path {p} does not exist; expected a directory with "
                              f"{MODEL_FILE} or a .safetensors file")
    if (p / INDEX_FILE).is_file():
        index = p / INDEX_FILE
        try:
            text = read_small_text(index, "index file", CheckpointError)
            weight_map = json.loads(text)["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"cannot parse {index}: {err}; expected a weight_map") from err
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n]
        if bad or not names:
            msg = f"{index}: shard names must be plain file names, got {bad or names}"
            raise CheckpointError(msg)
        return [p / n for n in names]
    if (p / MODEL_FILE).exists():
        return [p / MODEL_FILE]
    pickles = sorted(f.name for f in p.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        read_header(p / pickles[0])  # raises the pickle refusal with the conversion hint
    raise CheckpointError(f"{p} has no {MODEL_FILE} or {INDEX_FILE}; expected a lerobot or "
                          "openpi PyTorch checkpoint directory")


def _read_sources(files: List[Path]) -> List[_Source]:
    sources: List[_Source] = []
    seen: Dict[str, Path] = {}
    for f in files:
        for key, info in read_header(f).items():
            if key in seen:
                raise CheckpointError(f"tensor {key!r} appears in both {seen[key]} and {f}")
            seen[key] = f
            sources.append(_Source(f, key, info))
    return sources


def _hints(cfg: PI0Config, keys: List[str], missing: List[str], misshaped: List[str]) -> str:
    """Say what a mismatch most likely means."""
    joined = " ".join(keys)
    hints = []
    if not cfg.is_pi05 and ("time_mlp_in." in joined.replace("action_time_mlp_in.", "")
                            or "layernorm.dense." in joined):
        hints.append("time_mlp_in / adaRMS dense tensors present: is this a PI0.5 checkpoint? "
                     "config.json says type pi0")
    plain_norms = "gemma_expert.model.norm.weight" in joined
    if cfg.is_pi05 and ("time_mlp_in.weight" in misshaped
                        or (plain_norms and any(".dense." in k for k in missing))):
        hints.append("the time MLP / expert norms have PI0 shapes: is this a PI0 checkpoint? "
                     "config.json says type pi05")
    if "paligemma.language_model.model." in joined:
        hints.append("keys use the lerobot <= 0.3 layout, which is not supported; re-save the "
                     "policy with lerobot >= 0.4")
    if len(misshaped) > 3:
        hints.append("many shapes differ: the sizes in config.json (paligemma_variant, "
                     f"action_expert_variant or {DIMS_KEY}) do not describe this checkpoint")
    return ("; hint: " + "; ".join(hints)) if hints else ""


def _shown(key: str, internal: str) -> str:
    """A checkpoint key, plus the name it was read as when a rename rule applied."""
    return key if ck.to_internal_key(key) == internal else f"{key} (read as {internal})"


def _plan(cfg: PI0Config, sources: List[_Source], where: str,
          strict: bool) -> Tuple[Dict[str, _Source], List[str]]:
    """Map checkpoint keys to internal names and validate them against the configuration."""
    plan: Dict[str, _Source] = {}
    ignored: List[str] = []
    unexpected: List[str] = []
    lm_head: Optional[_Source] = None
    for src in sources:
        stripped = ck.strip_model_prefix(src.key)
        if stripped in ck.UNUSED_KEYS:
            ignored.append(src.key)
            lm_head = src if stripped == ck.LM_HEAD_KEY else lm_head
            continue
        internal = ck.to_internal_key(src.key)
        if internal is None:
            unexpected.append(src.key)
            continue
        if cfg.is_pi05 and PI05_DROPPED.match(internal):
            ignored.append(src.key)
            continue
        if cfg.is_pi05 and internal.startswith("action_time_mlp_"):
            internal = internal[len("action_"):]
        elif not cfg.is_pi05 and internal.startswith("time_mlp_"):
            internal = "action_" + internal  # a PI0.5 file then fails on shape, with a hint
        if internal in plan:
            raise CheckpointError(f"{where}: {plan[internal].key!r} and {src.key!r} both map to "
                                  f"{internal!r}; the file mixes prefixed and plain keys")
        plan[internal] = src
    if ck.EMBED_TOKENS_KEY not in plan and lm_head is not None:
        LOG.info("%s has no embed_tokens; using the tied %s (openpi-converted file)", where,
                 lm_head.key)
        plan[ck.EMBED_TOKENS_KEY] = lm_head
        ignored.remove(lm_head.key)
    expected = ck.expected_shapes(cfg)
    missing = sorted(set(expected) - set(plan))
    unexpected += sorted(plan[k].key for k in plan if k not in expected)
    misshaped = sorted(k for k in plan if k in expected and plan[k].info.shape != expected[k])
    if missing or unexpected or misshaped:
        prefix = all(s.key.startswith("model.") for s in sources)
        parts = []
        if missing:
            parts.append("missing tensors " + _listing(
                [ck.to_checkpoint_key(k, with_model_prefix=prefix) for k in missing]))
        if unexpected:
            parts.append("unexpected tensors " + _listing(unexpected))
        if misshaped:
            parts.append("mis-shaped tensors " + _listing(
                [f"{_shown(plan[k].key, k)} expected {expected[k]} got {plan[k].info.shape}"
                 for k in misshaped]))
        msg = (f"checkpoint {where} does not match the {cfg.model_type} configuration: "
               + "; ".join(parts) + _hints(cfg, [s.key for s in sources], missing, misshaped))
        if strict:
            raise CheckpointError(msg)
        LOG.warning("%s (strict=False: loading the rest)", msg)
        plan = {k: v for k, v in plan.items() if k in expected and k not in misshaped}
    if ignored:
        LOG.info("ignoring %d checkpoint tensors on purpose (unused by the policy): %s",
                 len(ignored), ignored)
    return plan, ignored


def _materialise(plan: Dict[str, _Source], dtype: torch.dtype,
                 progress: bool) -> Dict[str, torch.Tensor]:
    """Read the planned tensors one at a time into owned memory, cast to dtype."""
    total = sum(s.info.nbytes for s in plan.values())
    bar = None
    if progress and total > PROGRESS_MIN_BYTES:
        from tqdm import tqdm  # only big checkpoints show a bar

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", file=sys.stderr)
    start = time.monotonic()
    state: Dict[str, torch.Tensor] = {}
    by_file: Dict[Path, List[str]] = {}
    for internal, src in plan.items():
        by_file.setdefault(src.file, []).append(internal)
    try:
        for file, names in by_file.items():
            try:
                with file.open("rb", buffering=0) as fh:
                    for internal in sorted(names, key=lambda n: plan[n].info.offset):
                        tensor = read_tensor(fh, plan[internal].info, file,
                                             bar.update if bar is not None else None)
                        # A cast makes a second copy of one tensor at most, never of the model.
                        state[internal] = tensor if tensor.dtype == dtype else tensor.to(dtype)
            except OSError as err:
                raise CheckpointError(f"cannot read tensors from {file}: {err}") from err
    finally:
        if bar is not None:
            bar.close()
    LOG.info("loaded %d tensors (%.2f GB on disk) in %.1f s", len(state), total / 1e9,
             time.monotonic() - start)
    return state


def load_model_state_dict(checkpoint_dir_or_file: "str | Path", config: PI0Config, *,
                          strict: bool = True, dtype: torch.dtype = torch.float32,
                          progress: bool = True) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Read the model tensors by internal name; return them and the keys skipped on purpose."""
    files = resolve_weight_files(checkpoint_dir_or_file)
    where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} shards)"
    plan, ignored = _plan(config, _read_sources(files), where, strict)
    return _materialise(plan, dtype, progress), ignored


def detect_format(checkpoint_dir: Path) -> str:
    """lerobot configs carry `type`; openpi-converted ones carry action_dim/action_horizon."""
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_dir} has no config.json; expected lerobot's layout "
                              "(config.json, model.safetensors, policy_*processor files) or "
                              "openpi's (config.json, model.safetensors, assets/)")
    try:
        raw = json.loads(read_small_text(path, "config file", CheckpointError))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot parse {path}: {err}") from err
    return "lerobot" if isinstance(raw, dict) and "type" in raw else "openpi"


def _with_openpi_robot_dims(root: Path, cfg: PI0Config) -> PI0Config:
    """openpi configs only give the padded size; the statistics give the robot's own sizes."""
    raw = read_openpi_stats(find_openpi_stats(root))
    dims = {}
    for feat, name, limit in (("state", "state_dim", cfg.max_state_dim),
                              ("actions", "action_dim", cfg.max_action_dim)):
        vec = next((v for v in raw[feat].values() if v.ndim == 1), None)
        if vec is not None and 0 < vec.shape[0] <= limit:
            dims[name] = int(vec.shape[0])
    return cfg.replace(features=replace(cfg.features, **dims)) if dims else cfg


def load_checkpoint(checkpoint_dir: "str | Path", *, config: Optional[PI0Config] = None,
                    strict: bool = True, dtype: torch.dtype = torch.float32,
                    progress: bool = True) -> LoadedCheckpoint:
    """Load config, normalisation statistics and weights; fail on any mismatch when strict."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist or is not a directory")
    resolve_weight_files(root)  # refuse pickles and empty directories before anything else
    source_format = detect_format(root)
    cfg = config if config is not None else PI0Config.from_checkpoint(root)
    if source_format == "openpi" and config is None:
        cfg = _with_openpi_robot_dims(root, cfg)
    stats = load_norm_stats(root, cfg.features)  # cheap: fail here before reading gigabytes
    state_dict, ignored = load_model_state_dict(root, cfg, strict=strict, dtype=dtype,
                                                progress=progress)
    return LoadedCheckpoint(root, cfg, state_dict, stats, ignored, source_format)
