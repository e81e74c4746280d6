"""The embedded default checkpoint: a tiny random PI0 / PI0.5 generated locally, never downloaded.

Every dimension differs (vision 48 wide / 2 layers / 4 heads / MLP 80; VLM 64 / MLP 96 / 8 heads of
16, 1 kv head, vocab 384; expert 40 / MLP 72; state 8, action 7, padded to 32) so a transposed or
swapped weight fails loudly. Weights follow pi0_model.md section 15: matrices ~N(0, 1/fan_in),
LayerNorm gains ~1, RMSNorm and adaRMS weights small but non-zero. Written by checkpoint_writer.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from pi0_ttnn_node import checkpoint_keys as ck
from pi0_ttnn_node.checkpoint_writer import save_checkpoint
from pi0_ttnn_node.config import MODEL_TYPES, FeaturesConfig, GemmaConfig, PI0Config, SiglipConfig
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.normalization import LEROBOT_EPS, FeatureStats, NormStats

LOG = logging.getLogger(__name__)

CACHE_ENV = "PI0_TTNN_NODE_CACHE"
CACHE_VERSION = "v1"  # bump when the generator's output changes
TOKENIZER_FILE = "tokenizer.model"
VOCAB_SIZE = 384
STATE_DIM, ACTION_DIM = 8, 7
COMPLETE_FILES = ("config.json", "model.safetensors", "policy_preprocessor.json",
                  "policy_postprocessor.json", TOKENIZER_FILE)


def tiny_config(model_type: str = "pi0") -> PI0Config:
    """The embedded model's configuration (production chunk, padding, steps and image size)."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    is_pi05 = model_type == "pi05"
    norm = "QUANTILES" if is_pi05 else "MEAN_STD"
    return PI0Config(
        model_type=model_type,
        vision=SiglipConfig(hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4),
        vlm=GemmaConfig(width=64, depth=2, mlp_dim=96, num_heads=8, num_kv_heads=1, head_dim=16,
                        vocab_size=VOCAB_SIZE),
        expert=GemmaConfig(width=40, depth=2, mlp_dim=72, num_heads=8, num_kv_heads=1,
                           head_dim=16, use_adarms=is_pi05),
        features=FeaturesConfig(state_dim=STATE_DIM, action_dim=ACTION_DIM, state_norm=norm,
                                action_norm=norm),
        tokenizer_max_length=200 if is_pi05 else 48,
    )


def mid_config(model_type: str = "pi0") -> PI0Config:
    """A mid-size test model: every width >= 256, 3 SigLIP and 4 Gemma layers, SigLIP heads of 72
    (padded to 96 like So400m), Gemma heads of 64 (rotary_embedding-sized). Big enough for tile
    effects, small enough for the TTNN emulation; used by the PCC tests and the TTNN tools."""
    cfg = tiny_config(model_type)
    return dataclasses.replace(
        cfg,
        vision=SiglipConfig(hidden_size=288, intermediate_size=576, num_layers=3, num_heads=4),
        vlm=GemmaConfig(width=256, depth=4, mlp_dim=512, num_heads=8, num_kv_heads=1, head_dim=64,
                        vocab_size=cfg.vlm.vocab_size),
        expert=GemmaConfig(width=256, depth=4, mlp_dim=512, num_heads=8, num_kv_heads=1,
                           head_dim=64, use_adarms=cfg.is_pi05))


def sized_config(model_type: str, size: str) -> PI0Config:
    """`tiny` (the embedded model) or `mid` (mid_config)."""
    if size not in ("tiny", "mid"):
        raise ConfigError(f"size must be 'tiny' or 'mid', got {size!r}")
    return tiny_config(model_type) if size == "tiny" else mid_config(model_type)


def adversarial_inputs(cfg: PI0Config, seed: int = 1, batch: int = 2) -> Dict[str, object]:
    """Model inputs for backend comparisons: row 0 has its second camera masked and a 5-token
    prompt, row 1 a 17-token one, so padding masks and positions matter. Includes `noise`."""
    gen = torch.Generator().manual_seed(seed)
    size, lang = cfg.vision.image_size, cfg.tokenizer_max_length
    images = [torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
              for _ in range(cfg.num_image_slots)]
    img_masks = [torch.ones(batch, dtype=torch.bool) for _ in range(cfg.num_image_slots)]
    if cfg.num_image_slots > 1 and batch > 1:
        img_masks[1] = torch.tensor([False] + [True] * (batch - 1))
    lang_masks = torch.zeros(batch, lang, dtype=torch.bool)
    for row in range(batch):
        lang_masks[row, :min(lang, 5 + 12 * row)] = True
    tokens = torch.randint(1, cfg.vlm.vocab_size, (batch, lang), generator=gen) * lang_masks
    state = None if cfg.is_pi05 else torch.randn(batch, cfg.max_state_dim, generator=gen)
    noise = torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=gen)
    return dict(images=images, img_masks=img_masks, lang_tokens=tokens, lang_masks=lang_masks,
                state=state, noise=noise)


def _init_scale(name: str, shape: tuple) -> tuple:
    """Return (mean, std) of the initial distribution for one tensor, chosen by its role."""
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        # adaRMS dense output feeds (1 + scale): keep it small so activations stay sane.
        return 0.0, (0.1 if ".dense." in name else 1.0) / math.sqrt(fan_in)
    if name.startswith("vision_tower.") and "norm" in name and name.endswith(".weight"):
        return 1.0, 0.1  # LayerNorm gain
    if name.endswith(".weight"):
        return 0.0, 0.1  # Gemma RMSNorm weight, applied as (1 + w)
    return 0.0, 0.05  # biases


def random_state_dict(config: PI0Config, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Deterministic random weights for every tensor of `config`, by internal name."""
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for name, shape in sorted(ck.expected_shapes(config).items()):
        mean, std = _init_scale(name, shape)
        out[name] = torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean
    return out


def tiny_norm_stats(config: PI0Config, seed: int = 0) -> NormStats:
    """Deterministic statistics with per-dimension offsets and spreads (all six kinds)."""
    rng = np.random.default_rng(seed + 1)

    def feature(dim: int) -> FeatureStats:
        mean = rng.uniform(-1.0, 1.0, dim).astype(np.float32)
        std = rng.uniform(0.2, 1.5, dim).astype(np.float32)
        return FeatureStats(mean=mean, std=std, q01=mean - 2.3 * std, q99=mean + 2.3 * std,
                            min=mean - 3.0 * std, max=mean + 3.0 * std)

    f = config.features
    return NormStats(feature(f.state_dim), feature(f.action_dim), f.state_norm, f.action_norm,
                     "lerobot", LEROBOT_EPS)


def generate_embedded_checkpoint(out_dir: "str | Path", model_type: str = "pi0",
                                 seed: int = 0) -> Path:
    """Write the full lerobot layout plus tokenizer.model into out_dir; return it."""
    from pi0_ttnn_node.tokenizer import train_tiny_tokenizer  # sentencepiece training, only here

    cfg = tiny_config(model_type)
    out = save_checkpoint(out_dir, cfg, random_state_dict(cfg, seed), tiny_norm_stats(cfg, seed),
                          with_model_prefix=True, include_lm_head=True)
    train_tiny_tokenizer(out / TOKENIZER_FILE, vocab_size=cfg.vlm.vocab_size)
    return out


def is_complete(path: Path) -> bool:
    """A usable embedded checkpoint has every file, each non-empty."""
    return path.is_dir() and all((path / n).is_file() and (path / n).stat().st_size > 0
                                 for n in COMPLETE_FILES)


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "pi0_ttnn_node"


def ensure_embedded_checkpoint(model_type: str = "pi0",
                               cache_dir: "Optional[str | Path]" = None) -> Path:
    """Return the cached embedded checkpoint, generating it atomically when absent or incomplete.

    Generation happens in a private temporary directory that is renamed into place, so a reader
    never sees a half-written checkpoint and two racing processes both end with a complete one.
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = base / f"embedded-{model_type}-{CACHE_VERSION}"
    if is_complete(final):
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=base))
    try:
        generate_embedded_checkpoint(tmp, model_type)
        if final.exists() and not is_complete(final):
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=base))
            try:
                os.replace(final, stale / "old")
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
            LOG.info("generated the embedded %s checkpoint in %s", model_type, final)
        except OSError:
            if not is_complete(final):  # lost a race to a process that left a broken directory
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def directory_digest(path: "str | Path") -> str:
    """SHA-256 over every file's name and bytes (sorted): equal digests mean identical output."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
