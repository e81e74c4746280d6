"""PI0 / PI0.5 on a Tenstorrent device (or its CPU emulation): prefill plus on-device Euler loop.

Weights are converted once and stay resident. `sample_actions` takes the same host tensors as the
torch PI0Model, uploads the observation (ttnn_inputs: UPLOAD_FIELDS, plus RTC_FIELDS when guided)
once, runs SigLIP, prefix, prefill and every denoise step with ttnn ops, and downloads the action
chunk once. Every knob of ttnn_config.TtRuntimeConfig applies (ttnn_execution.ExecutionPlan).
Trace scopes: "denoise" captures the conditioning precompute and the Euler loop, "whole" captures
vision + prefill + loop; both read persistent input buffers refreshed by
ttnn.copy_host_to_device_tensor (addresses never change), so a replay needs no ttnn.copy of
activations. With 2 command queues the upload goes to staging buffers on CQ1 and CQ0 copies them
into the trace inputs after ttnn.wait_for_event: `stage()` of the next observation can run while
CQ0 still computes the current one (tt-metal's trace + 2CQ pattern).
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
from pi0_ttnn_node.rtc import RtcGuidance
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig
from pi0_ttnn_node.ttnn_backend.ttnn_denoise import RtcDeviceInputs, euler_integrate
from pi0_ttnn_node.ttnn_backend.ttnn_execution import ExecutionPlan
from pi0_ttnn_node.ttnn_backend.ttnn_gemma import GemmaModelTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_inputs import (ObservationTensors, input_key,
                                                    prepare_observation, present_fields,
                                                    refresh_observation, upload_observation)
from pi0_ttnn_node.ttnn_backend.ttnn_paligemma import (AttentionInputsTTNN,
                                                       PaliGemmaWithExpertTTNN, PrefixKVCacheTTNN)
from pi0_ttnn_node.ttnn_backend.ttnn_prefix import PrefixEmbeddingTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_siglip import SiglipVisionTowerTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_suffix import StepConditioning, SuffixEmbeddingTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_weights import (WeightDtypes, WeightLayout,
                                                     convert_pi0_weights)

LOG = logging.getLogger(__name__)
UPLOAD_CQ, COMPUTE_CQ = 1, 0


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
class _Persistent:
    """Device buffers that outlive a call: trace inputs (and, with 2 CQs, the staging copies
    CQ1 writes into). `key` = fields present and their shapes."""

    key: Tuple[Any, ...]
    inputs: ObservationTensors
    staging: Optional[ObservationTensors] = None


@dataclass
class _Trace:
    key: Tuple[Any, ...]
    trace_id: Any
    output: "ttnn.Tensor"
    prefix_kv: Optional[Tuple[List["ttnn.Tensor"], List["ttnn.Tensor"]]] = None  # concat mode


@dataclass
class Staged:
    """An observation written to the device, not yet computed (see PI0ModelTTNN.stage)."""

    obs: ObservationTensors
    key: Tuple[Any, ...]
    num_steps: int
    batch: int
    persistent: bool
    written: Any = None  # CQ1 event: the staging write finished


class PI0ModelTTNN:
    """SigLIP + PaliGemma VLM + Gemma action expert + flow-matching heads, on the device."""

    # mirrors torch_pi0_model.PI0Model
    def __init__(self, config: PI0Config, state_dict: Dict[str, Tensor], device: Any,
                 runtime_config: Optional[TtRuntimeConfig] = None):
        check_state_dict(config, state_dict)
        self.config = config
        self.device = device
        self.runtime_config = rc = runtime_config or TtRuntimeConfig()
        self.plan = ExecutionPlan(rc, device)
        self.weights = convert_pi0_weights(state_dict, config, device,
                                           WeightDtypes.from_runtime(rc),
                                           WeightLayout.from_runtime(rc))
        w, plan = self.weights, self.plan
        self.vision_tower = SiglipVisionTowerTTNN(config.vision, w, plan)
        self.language_model = GemmaModelTTNN(config.vlm, w, "language_model", plan, "prefill")
        self.gemma_expert = GemmaModelTTNN(config.expert, w, "gemma_expert", plan, "denoise")
        self.prefix = PrefixEmbeddingTTNN(config, self.vision_tower, w, self.language_model, plan)
        self.suffix = SuffixEmbeddingTTNN(config, w, plan)
        self.backbone = PaliGemmaWithExpertTTNN(config, self.language_model, self.gemma_expert, w,
                                                plan, device)
        self._persistent: Optional[_Persistent] = None
        self._trace: Optional[_Trace] = None
        self._inputs_free: Any = None  # CQ0 event: the staging buffers were consumed
        LOG.info("PI0ModelTTNN ready: %s, %d resident tensors, trace %s, %d CQ",
                 config.model_type, len(self.weights), rc.trace, rc.num_command_queues)

    # -- stages (public: tests and the latency predictor measure them one by one) ---------------
    def upload(self, images: Sequence[Tensor], img_masks: Sequence[Tensor], lang_tokens: Tensor,
               lang_masks: Tensor, state: Optional[Tensor], noise: Tensor,
               num_steps: int, guidance: Optional[RtcGuidance] = None) -> ObservationTensors:
        """Prepare every per-call tensor on the host and upload them together (RTC included)."""
        host = prepare_observation(self.config, images, img_masks, lang_tokens, lang_masks,
                                   state, noise, num_steps, guidance)
        return upload_observation(host, self.device)

    def embed_prefix(self, images: "ttnn.Tensor", img_masks: "ttnn.Tensor",
                     lang_tokens: "ttnn.Tensor", lang_masks: "ttnn.Tensor"
                     ) -> Tuple["ttnn.Tensor", "ttnn.Tensor", "ttnn.Tensor"]:
        """Return (prefix embs [B, P, D], pad masks [B, P], ar masks [B, P]) on the device."""
        return self.prefix.embed_prefix(images, img_masks, lang_tokens, lang_masks)

    def prefill(self, prefix_embs: "ttnn.Tensor", attention: AttentionInputsTTNN
                ) -> PrefixKVCacheTTNN:
        """Run the VLM once over the prefix and return the resident per-layer K/V cache."""
        return self.backbone.prefill(prefix_embs, attention)

    def conditioning(self, time_embs: "ttnn.Tensor", state: Optional["ttnn.Tensor"],
                     num_steps: int) -> Any:
        """Per-step inputs of the loop: the precomputed StepConditioning list, or (technique
        off) the timestep embeddings [num_steps, D] that each step slices and conditions on."""
        if not self.runtime_config.precompute_conditioning:
            return time_embs
        return self.suffix.precompute(time_embs, state, num_steps,
                                      self.gemma_expert.adarms_norms())

    def expert_hidden(self, cache: PrefixKVCacheTTNN, state: Optional["ttnn.Tensor"],
                      x_t: "ttnn.Tensor", timestep: Any = None, *,
                      time_emb: Optional["ttnn.Tensor"] = None,
                      step: Optional[StepConditioning] = None) -> "ttnn.Tensor":
        """Final-normed expert output for every suffix token [B, 1, S, D_expert]."""
        if step is None and self.runtime_config.precompute_conditioning:
            if time_emb is None:
                time_emb = self.suffix.embed_timestep(timestep)
            step = self.conditioning(time_emb, state, 1)[0]
        embs, cond = self.suffix.embed_suffix_tokens(state, x_t, timestep, time_emb=time_emb,
                                                     step=step)
        out = self.backbone.forward_expert(cache, embs, cond)
        self.plan.release("denoise", embs)
        return out

    def denoise_step(self, cache: PrefixKVCacheTTNN, state: Optional["ttnn.Tensor"],
                     x_t: "ttnn.Tensor", timestep: Any = None, *,
                     time_emb: Optional["ttnn.Tensor"] = None,
                     step: Optional[StepConditioning] = None) -> "ttnn.Tensor":
        """Velocity v_t (float32, device, same rank as x_t) at x_t and t."""
        hidden = self.expert_hidden(cache, state, x_t, timestep, time_emb=time_emb, step=step)
        v_t = self.suffix.project_output(hidden)
        self.plan.release("denoise", hidden)
        if len(x_t.shape) == 3:
            v_t = ttnn.reshape(v_t, tuple(x_t.shape))
        return v_t

    def denoise(self, cache: PrefixKVCacheTTNN, obs: ObservationTensors, num_steps: int
                ) -> "ttnn.Tensor":
        """The whole denoise stage: suffix RoPE rows, timestep embeddings and (technique on)
        every step's conditioning before the loop, then the Euler loop; x_0 [B, 1, Tp, A]."""
        if cache.suffix_rope is None:
            cache.suffix_rope = self.backbone.suffix_rope(obs.suffix_position_ids)
        time_embs = self.suffix.embed_timestep(obs.timesteps)  # [num_steps, D]
        conds = self.conditioning(time_embs, obs.state, num_steps)
        b, tp, a = obs.noise.shape[0], obs.noise.shape[-2], obs.noise.shape[-1]
        noise = ttnn.reshape(obs.noise, (b, 1, tp, a))
        rtc = obs.rtc()
        if rtc is not None:  # the loop runs on [B, 1, Tp, A]
            rtc = RtcDeviceInputs(ttnn.reshape(rtc.target, (b, 1, tp, a)),
                                  ttnn.reshape(rtc.weights, (b, 1, tp, a)), rtc.scalars)
        key = "step" if isinstance(conds, list) else "time_emb"
        return euler_integrate(
            lambda x_t, c: self.denoise_step(cache, obs.state, x_t, **{key: c}), noise, conds,
            num_steps, rtc=rtc)

    def run_device(self, obs: ObservationTensors, num_steps: int) -> "ttnn.Tensor":
        """Vision, prefix, prefill and all Euler steps on the device; returns x_0 [B, 1, Tp, A]."""
        embs, _, _ = self.embed_prefix(obs.images, obs.img_masks, obs.lang_tokens, obs.lang_masks)
        cache = self.backbone.prefill_kv(embs, obs.attention())
        return self.denoise(cache, obs, num_steps)

    # -- one call: stage (upload), launch (compute), collect (download) --------------------------
    def stage(self, images: Sequence[Tensor], img_masks: Sequence[Tensor], lang_tokens: Tensor,
              lang_masks: Tensor, state: Optional[Tensor], *, noise: Tensor,
              num_steps: Optional[int] = None, guidance: Optional[RtcGuidance] = None) -> Staged:
        """Write one observation to the device (the call's only upload). With 2 CQs this goes
        to staging buffers on CQ1 and may overlap CQ0's compute of the previous observation."""
        steps = self.config.num_inference_steps if num_steps is None else num_steps
        host = prepare_observation(self.config, images, img_masks, lang_tokens, lang_masks,
                                   state, noise, steps, guidance)
        batch = lang_tokens.shape[0]
        rc = self.runtime_config
        if rc.trace == "off" and rc.num_command_queues == 1:
            return Staged(upload_observation(host, self.device), (), steps, batch, False)
        key = input_key(host)
        two_cq = rc.num_command_queues == 2
        p = self._persistent
        if p is None or p.key != key:  # first call of this shape: allocate by uploading
            self.release_trace()
            staging = upload_observation(host, self.device)
            inputs = staging
            if two_cq:
                present = present_fields(host)
                inputs = ObservationTensors(**{
                    n: ttnn.clone(getattr(staging, n)) if n in present else None
                    for n in _field_names()})
            self._persistent = p = _Persistent(key, inputs, staging if two_cq else None)
            written = ttnn.record_event(self.device, UPLOAD_CQ) if two_cq else None
            return Staged(p.inputs, key, steps, batch, True, written)
        if not two_cq:
            refresh_observation(host, p.inputs, COMPUTE_CQ)
            return Staged(p.inputs, key, steps, batch, True)
        if self._inputs_free is not None:  # CQ1 must not overwrite staging CQ0 still reads
            ttnn.wait_for_event(UPLOAD_CQ, self._inputs_free)
        refresh_observation(host, p.staging, UPLOAD_CQ)
        return Staged(p.inputs, key, steps, batch, True, ttnn.record_event(self.device, UPLOAD_CQ))

    def launch(self, staged: Staged) -> "ttnn.Tensor":
        """Compute a staged observation on CQ0; returns the device x_0 (valid until the next
        launch when traced: read it with collect() first)."""
        rc, p = self.runtime_config, self._persistent
        if staged.written is not None:
            ttnn.wait_for_event(COMPUTE_CQ, staged.written)
            if p.staging is not p.inputs:
                for name in present_fields(p.staging):
                    src, dst = getattr(p.staging, name), getattr(p.inputs, name)
                    if src is not dst:
                        ttnn.copy(src, dst)
            self._inputs_free = ttnn.record_event(self.device, COMPUTE_CQ)
        if not staged.persistent or rc.trace == "off":
            return self.run_device(staged.obs, staged.num_steps)
        if rc.trace == "whole":
            return self._run_whole(staged)
        return self._run_denoise_traced(staged)

    def collect(self, x_0: "ttnn.Tensor", batch: int) -> Tensor:
        """The one download: [B, chunk_size, max_action_dim] float32."""
        actions = ttnn.to_torch(x_0).to(torch.float32)
        actions = actions.reshape(batch, actions.shape[-2], actions.shape[-1])
        return actions[:, :self.config.chunk_size]

    def sample_actions(self, images: Sequence[Tensor], img_masks: Sequence[Tensor],
                       lang_tokens: Tensor, lang_masks: Tensor, state: Optional[Tensor], *,
                       noise: Tensor, num_steps: Optional[int] = None,
                       guidance: Optional[RtcGuidance] = None) -> Tensor:
        """Return the normalised, padded action chunk [B, chunk_size, max_action_dim] (fp32).

        Same inputs as torch PI0Model.sample_actions; `noise` is required (the caller draws it
        fresh per call, so both backends can be fed identical noise). `guidance`: RTC `forward`
        (rtc.py); `vjp` raises ConfigError; an inactive one runs the plain loop.
        """
        staged = self.stage(images, img_masks, lang_tokens, lang_masks, state, noise=noise,
                            num_steps=num_steps, guidance=guidance)
        return self.collect(self.launch(staged), staged.batch)

    # -- traces ----------------------------------------------------------------------------------
    def _run_whole(self, staged: Staged) -> "ttnn.Tensor":
        """Whole inference as one trace: the first call per shape runs eagerly (compiles), then
        captures; later calls only replay (inputs already refreshed in place)."""
        key = ("whole", staged.key, staged.num_steps)
        if self._trace is not None and self._trace.key == key:
            ttnn.execute_trace(self.device, self._trace.trace_id, cq_id=COMPUTE_CQ, blocking=False)
            return self._trace.output
        self.release_trace()
        out = self.run_device(staged.obs, staged.num_steps)  # warm-up run
        trace_id = ttnn.begin_trace_capture(self.device, cq_id=COMPUTE_CQ)
        output = self.run_device(staged.obs, staged.num_steps)
        ttnn.end_trace_capture(self.device, trace_id, cq_id=COMPUTE_CQ)
        self._trace = _Trace(key, trace_id, output)
        LOG.info("captured the whole %d-step inference as trace %s", staged.num_steps, trace_id)
        return out

    def _run_denoise_traced(self, staged: Staged) -> "ttnn.Tensor":
        """Vision and prefill eager, the denoise stage replayed. In-place K/V buffers are
        already resident; in concat mode the prefix K/V are copied into the trace's buffers."""
        obs = staged.obs
        embs, _, _ = self.embed_prefix(obs.images, obs.img_masks, obs.lang_tokens, obs.lang_masks)
        cache = self.backbone.prefill_kv(embs, obs.attention())
        key = ("denoise", staged.key, staged.num_steps, tuple(cache.k[0].shape))
        t = self._trace
        if t is not None and t.key == key:
            if t.prefix_kv is not None:
                for src, dst in zip(cache.k + cache.v, t.prefix_kv[0] + t.prefix_kv[1]):
                    ttnn.copy(src, dst)
            ttnn.execute_trace(self.device, t.trace_id, cq_id=COMPUTE_CQ, blocking=False)
            return t.output
        self.release_trace()
        out = self.denoise(cache, obs, staged.num_steps)  # warm-up run
        prefix_kv = None
        if not cache.in_place:
            prefix_kv = ([ttnn.clone(k) for k in cache.k], [ttnn.clone(v) for v in cache.v])
            cache = PrefixKVCacheTTNN(prefix_kv[0], prefix_kv[1], cache.suffix_mask, None)
        else:
            cache = PrefixKVCacheTTNN(cache.k, cache.v, cache.suffix_mask, None, True,
                                      cache.prefix_len)
        trace_id = ttnn.begin_trace_capture(self.device, cq_id=COMPUTE_CQ)
        output = self.denoise(cache, obs, staged.num_steps)
        ttnn.end_trace_capture(self.device, trace_id, cq_id=COMPUTE_CQ)
        self._trace = _Trace(key, trace_id, output, prefix_kv)
        LOG.info("captured the %d-step denoise stage%s as trace %s", staged.num_steps,
                 "" if obs.rtc_target is None else " (RTC-guided)", trace_id)
        return out

    def release_trace(self) -> None:
        """Release the captured trace, if any (before closing the device)."""
        if self._trace is not None:
            ttnn.release_trace(self.device, self._trace.trace_id)
            self._trace = None


def _field_names() -> List[str]:
    from dataclasses import fields

    return [f.name for f in fields(ObservationTensors)]
