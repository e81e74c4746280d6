"""PI0 / PI0.5 on a Tenstorrent device (or its CPU emulation): prefill plus on-device Euler loop.

Weights are converted once and stay resident. `sample_actions` takes the same host tensors as the
torch PI0Model, uploads the observation (ttnn_inputs.UPLOAD_FIELDS) once, runs SigLIP, prefix,
prefill and every denoise step with ttnn ops, and downloads the action chunk once. The denoise loop
can be traced (capture once per input shape, then replay after refreshing buffers with ttnn.copy).
Counterpart: torch_backend/torch_pi0_model.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import ttnn
from torch import Tensor

from pi0_ttnn_node.checkpoint_keys import expected_shapes
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import CheckpointError
from pi0_ttnn_node.ttnn_backend.runtime import TtRuntimeConfig, compute_kernel_config
from pi0_ttnn_node.ttnn_backend.ttnn_denoise import euler_integrate
from pi0_ttnn_node.ttnn_backend.ttnn_gemma import GemmaModelTTNN, RotaryTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_inputs import (ObservationTensors, prepare_observation,
                                                    upload_observation)
from pi0_ttnn_node.ttnn_backend.ttnn_paligemma import (AttentionInputsTTNN,
                                                       PaliGemmaWithExpertTTNN, PrefixKVCacheTTNN)
from pi0_ttnn_node.ttnn_backend.ttnn_prefix import PrefixEmbeddingTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_siglip import SiglipVisionTowerTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_suffix import SuffixEmbeddingTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_weights import WeightDtypes, convert_pi0_weights

LOG = logging.getLogger(__name__)


def check_state_dict(config: PI0Config, state_dict: Dict[str, Tensor]) -> None:
    """Fail on missing, unexpected or misshapen tensors (names from checkpoint_keys)."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        msg = (f"state dict does not match the {config.model_type} config: missing "
               f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
               f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; load it with "
               "checkpoint.load_checkpoint, which maps checkpoint names to internal names")
        raise CheckpointError(msg)
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            got = tuple(state_dict[key].shape)
            raise CheckpointError(f"{key} has shape {got}, expected {shape}")


@dataclass
class _DenoiseTrace:
    """A captured denoise loop: the input buffers it reads and the output it writes."""

    key: Tuple[Any, ...]
    trace_id: Any
    cache: PrefixKVCacheTTNN
    state: Optional["ttnn.Tensor"]
    noise: "ttnn.Tensor"
    time_embs: "ttnn.Tensor"
    output: "ttnn.Tensor"


class PI0ModelTTNN:
    """SigLIP + PaliGemma VLM + Gemma action expert + flow-matching heads, on the device."""

    # mirrors torch_pi0_model.PI0Model
    def __init__(self, config: PI0Config, state_dict: Dict[str, Tensor], device: Any,
                 runtime_config: Optional[TtRuntimeConfig] = None):
        check_state_dict(config, state_dict)
        self.config = config
        self.device = device
        self.runtime_config = runtime_config or TtRuntimeConfig()
        rc = self.runtime_config
        self.kernel = compute_kernel_config(ttnn, rc.matmul_fidelity, rc.fp32_dest_acc)
        self.weights = convert_pi0_weights(state_dict, config, device,
                                           WeightDtypes.uniform(rc.weight_dtype))
        w, k = self.weights, self.kernel
        self.vision_tower = SiglipVisionTowerTTNN(config.vision, w, k)
        self.language_model = GemmaModelTTNN(config.vlm, w, "language_model", k)
        self.gemma_expert = GemmaModelTTNN(config.expert, w, "gemma_expert", k)
        self.prefix = PrefixEmbeddingTTNN(config, self.vision_tower, w, self.language_model, k)
        self.suffix = SuffixEmbeddingTTNN(config, w, k)
        self.backbone = PaliGemmaWithExpertTTNN(config, self.language_model, self.gemma_expert, w)
        self._trace: Optional[_DenoiseTrace] = None
        LOG.info("PI0ModelTTNN ready: %s, %d resident tensors, weights %s", config.model_type,
                 len(self.weights), rc.weight_dtype)

    def embed_prefix(self, images: "ttnn.Tensor", img_masks: "ttnn.Tensor",
                     lang_tokens: "ttnn.Tensor", lang_masks: "ttnn.Tensor"
                     ) -> Tuple["ttnn.Tensor", "ttnn.Tensor", "ttnn.Tensor"]:
        """Return (prefix embs [B, P, D], pad masks [B, P], ar masks [B, P]) on the device."""
        return self.prefix.embed_prefix(images, img_masks, lang_tokens, lang_masks)

    def prefill(self, prefix_embs: "ttnn.Tensor", attention: AttentionInputsTTNN
                ) -> PrefixKVCacheTTNN:
        """Run the VLM once over the prefix and return the resident per-layer K/V cache."""
        return self.backbone.prefill(prefix_embs, attention)

    def expert_hidden(self, cache: PrefixKVCacheTTNN, state: Optional["ttnn.Tensor"],
                      x_t: "ttnn.Tensor", timestep: Any = None, *,
                      time_emb: Optional["ttnn.Tensor"] = None) -> "ttnn.Tensor":
        """Final-normed expert output for every suffix token [B, S, D_expert]."""
        embs, cond = self.suffix.embed_suffix_tokens(state, x_t, timestep, time_emb=time_emb)
        return self.backbone.forward_expert(cache, embs, cond)

    def denoise_step(self, cache: PrefixKVCacheTTNN, state: Optional["ttnn.Tensor"],
                     x_t: "ttnn.Tensor", timestep: Any = None, *,
                     time_emb: Optional["ttnn.Tensor"] = None) -> "ttnn.Tensor":
        """Velocity v_t [B, T, max_action_dim] (float32, device) at x_t and t."""
        return self.suffix.project_output(self.expert_hidden(cache, state, x_t, timestep,
                                                             time_emb=time_emb))

    def upload(self, images: Sequence[Tensor], img_masks: Sequence[Tensor], lang_tokens: Tensor,
               lang_masks: Tensor, state: Optional[Tensor], noise: Tensor,
               num_steps: int) -> ObservationTensors:
        """Prepare every per-call tensor on the host and upload them together."""
        host = prepare_observation(self.config, images, img_masks, lang_tokens, lang_masks,
                                   state, noise, num_steps)
        return upload_observation(host, self.device)

    def run_device(self, obs: ObservationTensors, num_steps: int) -> "ttnn.Tensor":
        """Vision, prefix, prefill and all Euler steps on the device; returns x_0 [B, Tp, A]."""
        embs, _, _ = self.embed_prefix(obs.images, obs.img_masks, obs.lang_tokens, obs.lang_masks)
        cache = self.prefill(embs, obs.attention())
        time_embs = self.suffix.embed_timestep(obs.timesteps)  # [num_steps, D], before the loop
        if self.runtime_config.use_trace:
            return self._traced_denoise(cache, obs.state, obs.noise, time_embs, num_steps)
        return self._denoise(cache, obs.state, obs.noise, time_embs, num_steps)

    def _denoise(self, cache: PrefixKVCacheTTNN, state: Optional["ttnn.Tensor"],
                 noise: "ttnn.Tensor", time_embs: "ttnn.Tensor", num_steps: int) -> "ttnn.Tensor":
        return euler_integrate(
            lambda x_t, emb: self.denoise_step(cache, state, x_t, time_emb=emb), noise, time_embs,
            num_steps)

    def sample_actions(self, images: Sequence[Tensor], img_masks: Sequence[Tensor],
                       lang_tokens: Tensor, lang_masks: Tensor, state: Optional[Tensor], *,
                       noise: Tensor, num_steps: Optional[int] = None) -> Tensor:
        """Return the normalised, padded action chunk [B, chunk_size, max_action_dim] (fp32).

        Same inputs as torch PI0Model.sample_actions; `noise` is required (the caller draws it
        fresh per call, so both backends can be fed identical noise).
        """
        steps = self.config.num_inference_steps if num_steps is None else num_steps
        obs = self.upload(images, img_masks, lang_tokens, lang_masks, state, noise, steps)
        x_0 = self.run_device(obs, steps)
        actions = ttnn.to_torch(x_0).to(torch.float32)  # the one download
        return actions[:, :self.config.chunk_size]

    # -- trace of the denoise loop ---------------------------------------------------------------
    def _traced_denoise(self, cache: PrefixKVCacheTTNN, state: Optional["ttnn.Tensor"],
                        noise: "ttnn.Tensor", time_embs: "ttnn.Tensor", num_steps: int
                        ) -> "ttnn.Tensor":
        """Replay the captured loop; the first call per shape runs eagerly (compiles kernels),
        then captures. Inputs reach the trace only through ttnn.copy into its buffers."""
        key = (tuple(noise.shape), tuple(cache.k[0].shape), num_steps)
        if self._trace is None or self._trace.key != key:
            out = self._denoise(cache, state, noise, time_embs, num_steps)  # warm-up run
            self.release_trace()
            self._trace = self._capture(key, cache, state, noise, time_embs, num_steps)
            return out
        t = self._trace
        for src, dst in zip(_trace_inputs(cache, state, noise, time_embs),
                            _trace_inputs(t.cache, t.state, t.noise, t.time_embs)):
            ttnn.copy(src, dst)
        ttnn.execute_trace(self.device, t.trace_id, blocking=False)
        return t.output

    def _capture(self, key: Tuple[Any, ...], cache: PrefixKVCacheTTNN,
                 state: Optional["ttnn.Tensor"], noise: "ttnn.Tensor", time_embs: "ttnn.Tensor",
                 num_steps: int) -> _DenoiseTrace:
        rope = cache.suffix_rope
        buffers = PrefixKVCacheTTNN(
            k=[ttnn.clone(k) for k in cache.k], v=[ttnn.clone(v) for v in cache.v],
            suffix_mask=ttnn.clone(cache.suffix_mask),
            suffix_rope=RotaryTTNN(ttnn.clone(rope.cos_q), ttnn.clone(rope.sin_q),
                                   ttnn.clone(rope.cos_k), ttnn.clone(rope.sin_k),
                                   rope.rotate_half))
        state_buf = None if state is None else ttnn.clone(state)
        noise_buf, time_buf = ttnn.clone(noise), ttnn.clone(time_embs)
        trace_id = ttnn.begin_trace_capture(self.device)
        output = self._denoise(buffers, state_buf, noise_buf, time_buf, num_steps)
        ttnn.end_trace_capture(self.device, trace_id)
        LOG.info("captured the %d-step denoise loop as trace %s", num_steps, trace_id)
        return _DenoiseTrace(key, trace_id, buffers, state_buf, noise_buf, time_buf, output)

    def release_trace(self) -> None:
        """Release the captured trace, if any (before closing the device)."""
        if self._trace is not None:
            ttnn.release_trace(self.device, self._trace.trace_id)
            self._trace = None


def _trace_inputs(cache: PrefixKVCacheTTNN, state: Optional["ttnn.Tensor"],
                  noise: "ttnn.Tensor", time_embs: "ttnn.Tensor") -> List["ttnn.Tensor"]:
    """Every per-call tensor the traced loop reads, in a fixed order."""
    rope = cache.suffix_rope
    tensors = list(cache.k) + list(cache.v) + [cache.suffix_mask, rope.cos_q, rope.sin_q,
                                               rope.cos_k, rope.sin_k, noise, time_embs]
    return tensors + ([] if state is None else [state])
