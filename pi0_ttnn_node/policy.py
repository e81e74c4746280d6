"""Pi0Policy: checkpoint + tokenizer + normalisation + one backend, no ROS types.

`Pi0Policy.load(PolicyConfig)` reads everything from local files once; `sample(observations)` runs
pre-processing, the backend's denoise loop on fresh (or seeded) noise, and post-processing, and
returns actions in robot units with per-stage timings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from pi0_ttnn_node.backends import BackendSpec, PolicyBackend, create_backend
from pi0_ttnn_node.checkpoint import LoadedCheckpoint, load_checkpoint
from pi0_ttnn_node.errors import ConfigError, InferenceError, TokenizerError
from pi0_ttnn_node.normalization import Normalizer
from pi0_ttnn_node.preprocessing import ModelInputs, Observation, Postprocessor, Preprocessor
from pi0_ttnn_node.tokenizer import PromptTokenizer

LOG = logging.getLogger(__name__)
TOKENIZER_FILENAMES = ("tokenizer.model", "paligemma_tokenizer.model")


@dataclass
class PolicyConfig:
    """Where the model comes from and how it runs."""

    checkpoint_dir: str
    spec: BackendSpec = field(default_factory=BackendSpec)
    tokenizer_path: str = ""  # default: <checkpoint_dir>/tokenizer.model
    num_steps: int = 0  # 0 = the checkpoint's num_inference_steps
    noise_seed: int = -1  # -1 = fresh random noise every call


@dataclass
class ActionChunk:
    """One inference result: robot-unit actions plus what the node and benchmarks report."""

    actions: np.ndarray  # [B, H, action_dim] float32, robot units
    normalized: np.ndarray  # [B, H, max_action_dim] float32, as the model produced it
    timings_ms: Dict[str, float]
    truncated_prompt: List[bool]
    # sample_rows only: per row "" (usable) or why the row is refused; refused rows are zeros
    row_errors: List[str] = field(default_factory=list)


def find_tokenizer(checkpoint_dir: Path, explicit: str = "") -> Path:
    """Resolve the SentencePiece file: explicit path, else a known name in the checkpoint dir."""
    if explicit:
        return Path(explicit)
    for name in TOKENIZER_FILENAMES:
        candidate = checkpoint_dir / name
        if candidate.is_file():
            return candidate
    msg = (f"no tokenizer given and none of {TOKENIZER_FILENAMES} in {checkpoint_dir}; set "
           "tokenizer_path to PaliGemma's SentencePiece model (paligemma_tokenizer.model)")
    raise TokenizerError(msg)


class NoiseSource:
    """Fresh N(0, 1) noise per call; reproducible when seeded (for A/B and tests).

    `for_key(key)` derives the noise of one inference from (seed, key) alone, where the control
    core passes the observation stamp: the node and offline replay then draw the same noise for
    the same observation, whatever ran before (warm-up, skipped or failed inferences).
    """

    def __init__(self, seed: int = -1) -> None:
        self.seed = seed
        self.generator = torch.Generator()
        if seed >= 0:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def draw(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)

    def for_key(self, shape: Sequence[int], key: int) -> torch.Tensor:
        """Seeded: noise that depends only on (seed, key); unseeded: a fresh draw."""
        if self.seed < 0:
            return self.draw(shape)
        return derived_noise(self.seed, key, shape)


def derived_noise(seed: int, key: int, shape: Sequence[int]) -> torch.Tensor:
    """N(0, 1) noise from a generator seeded with a mix of `seed` and `key` (e.g. stamp in ns)."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + int(key) * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    generator = torch.Generator()
    generator.manual_seed(mixed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


class Pi0Policy:
    """A loaded policy bound to one backend."""

    def __init__(self, cfg: PolicyConfig, checkpoint: LoadedCheckpoint,
                 backend: PolicyBackend) -> None:
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.backend = backend
        tokenizer_path = find_tokenizer(checkpoint.path, cfg.tokenizer_path)
        self.tokenizer = PromptTokenizer(tokenizer_path, self.config.tokenizer_max_length,
                                         self.config.model_type)
        self.normalizer = Normalizer(checkpoint.norm_stats)
        self.preprocess = Preprocessor(self.config, self.normalizer, self.tokenizer)
        self.postprocess = Postprocessor(self.config, self.normalizer)
        self.noise = NoiseSource(cfg.noise_seed)

    @classmethod
    def load(cls, cfg: PolicyConfig, checkpoint: Optional[LoadedCheckpoint] = None) -> "Pi0Policy":
        if cfg.num_steps < 0:
            raise ConfigError(f"num_steps must be >= 0 (0 = checkpoint default), got "
                              f"{cfg.num_steps}")
        owned = checkpoint is None
        checkpoint = checkpoint or load_checkpoint(cfg.checkpoint_dir, strict=True)
        backend = create_backend(cfg.spec, checkpoint)
        if owned:  # the backend holds its own weights now; do not keep a second host copy
            checkpoint.state_dict = {}
        return cls(cfg, checkpoint, backend)

    @property
    def num_steps(self) -> int:
        return self.cfg.num_steps or self.config.num_inference_steps

    def noise_shape(self, batch: int) -> tuple:
        return (batch, self.config.chunk_size, self.config.max_action_dim)

    def prepare(self, observations: Sequence[Observation]) -> ModelInputs:
        return self.preprocess(observations)

    def sample(self, observations: Sequence[Observation], noise: Optional[torch.Tensor] = None,
               guidance: Any = None) -> ActionChunk:
        """Observations in, robot-unit action chunk out; raises InferenceError on bad output.

        `guidance` (rtc.RtcGuidance or None) makes the backend's denoise loop continue a previous
        chunk (real-time chunking); None is the plain sampler.
        """
        t0 = time.perf_counter()
        inputs = self.preprocess(observations)
        t1 = time.perf_counter()
        if noise is None:
            noise = self.noise.draw(self.noise_shape(len(observations)))
        if guidance is None:
            normalized = self.backend.sample_actions(inputs, noise, num_steps=self.num_steps)
        else:
            normalized = self.backend.sample_actions(inputs, noise, num_steps=self.num_steps,
                                                     guidance=guidance)
        t2 = time.perf_counter()
        check_chunk(normalized, self.noise_shape(len(observations)))
        actions = self.postprocess(normalized)
        t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3,
                   "postprocess": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return ActionChunk(actions=actions, normalized=normalized, timings_ms=timings,
                           truncated_prompt=list(inputs.truncated))

    def sample_rows(self, observations: Sequence[Observation], noise: torch.Tensor,
                    guidance: Any = None) -> ActionChunk:
        """Like `sample`, but rows are judged one by one (several robots in one call): a row with
        non-finite output gets a reason in `row_errors` and zeros in its place, and the other
        rows are returned. A wrong shape still raises: it says nothing about a single row."""
        t0 = time.perf_counter()
        inputs = self.preprocess(observations)
        t1 = time.perf_counter()
        kwargs = {} if guidance is None else {"guidance": guidance}
        normalized = self.backend.sample_actions(inputs, noise, num_steps=self.num_steps,
                                                 **kwargs)
        t2 = time.perf_counter()
        check_chunk_shape(normalized, self.noise_shape(len(observations)))
        finite = np.isfinite(normalized).reshape(len(observations), -1).all(axis=1)
        errors = ["" if ok else f"backend returned "
                  f"{int((~np.isfinite(normalized[i])).sum())} non-finite values in this row"
                  for i, ok in enumerate(finite)]
        normalized = np.where(finite[:, None, None], normalized, 0.0).astype(np.float32)
        actions = self.postprocess(normalized)
        t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3,
                   "postprocess": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return ActionChunk(actions=actions, normalized=normalized, timings_ms=timings,
                           truncated_prompt=list(inputs.truncated), row_errors=errors)

    def warmup(self, iterations: int, observation: Observation) -> List[float]:
        """Run a few inferences so first-call costs stay out of the control loop."""
        return [self.sample([observation]).timings_ms["total"] for _ in range(iterations)]

    def close(self) -> None:
        self.backend.close()


def check_chunk_shape(chunk: np.ndarray, expected_shape: Sequence[int]) -> None:
    if tuple(chunk.shape) != tuple(expected_shape):
        raise InferenceError(f"backend returned shape {tuple(chunk.shape)}, expected "
                             f"{tuple(expected_shape)}")


def check_chunk(chunk: np.ndarray, expected_shape: Sequence[int]) -> None:
    """Reject wrong shapes and non-finite values before anything reaches a robot."""
    check_chunk_shape(chunk, expected_shape)
    if not np.isfinite(chunk).all():
        bad = int((~np.isfinite(chunk)).sum())
        raise InferenceError(f"backend returned {bad} non-finite values in the action chunk")
