"""Host-side preparation of one observation for the device, and its single upload.

Sequence lengths are padded to tile multiples with invalid tokens (language padding, extra suffix
rows), which the masks from masks.py exclude as keys and queries; an invalid query row also sees
itself, so no softmax row is empty. Masks, positions and timesteps for the whole call are built
here once and uploaded with the images: UPLOAD_FIELDS is the complete per-call transfer set, plus
RTC_FIELDS (target Y, weights W, per-step (t_k, w_k)) on an RTC-guided call, in the same upload.
Counterpart: torch_backend/torch_paligemma.py (where torch builds the same masks per call).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

import torch
import ttnn
from torch import Tensor

from pi0_ttnn_node import masks
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import ConfigError, ObservationError
from pi0_ttnn_node.rtc import RtcGuidance, step_scalars
from pi0_ttnn_node.ttnn_backend.ttnn_common import round_up
from pi0_ttnn_node.ttnn_backend.ttnn_denoise import RtcDeviceInputs, euler_timesteps
from pi0_ttnn_node.ttnn_backend.ttnn_paligemma import AttentionInputsTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_suffix import suffix_masks
from pi0_ttnn_node.ttnn_backend.ttnn_weights import max_rope_positions

# Blocked logits: any value whose exp underflows to 0 gives the reference softmax on every valid
# row; a moderate finite value cannot overflow in a kernel that rescales the mask.
DEVICE_MASK_VALUE = -1e9


@dataclass
class ObservationTensors:
    """The per-call tensors (host torch before upload, ttnn after), in upload order."""

    images: object  # [B * C, 3, H, W] bf16 ROW_MAJOR
    img_masks: object  # [B, C] bf16
    lang_tokens: object  # [B, Lp] uint32 ROW_MAJOR
    lang_masks: object  # [B, Lp] bf16
    state: object  # [B, max_state_dim] bf16, or None (PI0.5)
    noise: object  # [B, Tp, max_action_dim] float32
    prefix_mask: object  # [B, 1, P, P] bf16
    prefix_position_ids: object  # [B, P] uint32 ROW_MAJOR
    suffix_mask: object  # [B, 1, S, P + S] bf16
    suffix_position_ids: object  # [B, S] uint32 ROW_MAJOR
    timesteps: object  # [num_steps, 1] float32
    # RTC guidance (rtc.py), None on a plain call: Y and W [B, Tp, A], (t_k, w_k) [steps, 1, 2]
    rtc_target: object = None
    rtc_weights: object = None
    rtc_scalars: object = None

    def attention(self) -> AttentionInputsTTNN:
        return AttentionInputsTTNN(self.prefix_mask, self.prefix_position_ids, self.suffix_mask,
                                   self.suffix_position_ids)

    def rtc(self) -> Optional[RtcDeviceInputs]:
        """The guidance tensors for the denoise loop, or None (plain sampler)."""
        if self.rtc_target is None:
            return None
        return RtcDeviceInputs(self.rtc_target, self.rtc_weights, self.rtc_scalars)


RTC_FIELDS = ("rtc_target", "rtc_weights", "rtc_scalars")
UPLOAD_FIELDS = tuple(f.name for f in fields(ObservationTensors) if f.name not in RTC_FIELDS)
_ROW_MAJOR = {"images", "lang_tokens", "prefix_position_ids", "suffix_position_ids"}
_UINT32 = {"lang_tokens", "prefix_position_ids", "suffix_position_ids"}
_FLOAT32 = {"noise", "timesteps"} | set(RTC_FIELDS)


def _additive(allowed: Tensor) -> Tensor:
    """[B, Q, K] bool -> [B, 1, Q, K] float: 0 where allowed, DEVICE_MASK_VALUE elsewhere."""
    return torch.where(allowed, 0.0, DEVICE_MASK_VALUE)[:, None].to(torch.float32)


def _see_self(allowed: Tensor, valid_queries: Tensor, key_offset: int) -> Tensor:
    """Let each invalid query attend to its own key so its softmax row is never empty."""
    q = allowed.shape[1]
    idx = torch.arange(q)
    allowed = allowed.clone()
    allowed[:, idx, idx + key_offset] |= ~valid_queries
    return allowed


def _check(config: PI0Config, images: Sequence[Tensor], img_masks: Sequence[Tensor],
           state: Optional[Tensor], noise: Tensor, batch: int) -> None:
    slots, size = config.num_image_slots, config.vision.image_size
    if len(images) != slots or len(img_masks) != slots:
        msg = (f"got {len(images)} images and {len(img_masks)} image masks; the model has {slots} "
               f"camera slots {list(config.features.image_keys)}; pass one per slot")
        raise ObservationError(msg)
    for i, img in enumerate(images):
        if tuple(img.shape) != (batch, 3, size, size):
            raise ObservationError(f"image {i} has shape {tuple(img.shape)}; expected "
                                   f"[{batch}, 3, {size}, {size}] in [-1, 1]")
    expected = (batch, config.chunk_size, config.max_action_dim)
    if tuple(noise.shape) != expected:
        raise ObservationError(f"noise has shape {tuple(noise.shape)}; expected {expected}")
    bad_state = state is None or tuple(state.shape) != (batch, config.max_state_dim)
    if not config.is_pi05 and bad_state:
        shape = None if state is None else tuple(state.shape)
        raise ObservationError(f"PI0 needs state [{batch}, {config.max_state_dim}]; got {shape}")


def prepare_rtc(config: PI0Config, guidance: Optional[RtcGuidance], batch: int, horizon: int,
                num_steps: int) -> dict:
    """Host RTC tensors (RTC_FIELDS) padded to the device horizon, or {} for no/inactive guidance.

    An inactive guidance (beta = 0 or W = 0) runs the plain loop: bit-identical output, no
    extra uploads. W is broadcast over action dims here so the device does no broadcast per step.
    """
    if guidance is None or not guidance.active:
        return {}
    if guidance.method != "forward":
        raise ConfigError(f"RTC method {guidance.method!r} is not available on the ttnn backend: "
                          "TTNN has no autograd for the vector-Jacobian product; use method "
                          "'forward' here, or the torch backend for 'vjp'")
    guidance.check_shape(batch, config.chunk_size, config.max_action_dim)
    rows = (0, 0, 0, horizon - config.chunk_size)
    weights = guidance.weights[..., None].expand(-1, -1, config.max_action_dim)
    return {"rtc_target": torch.nn.functional.pad(guidance.target.to(torch.float32), rows),
            "rtc_weights": torch.nn.functional.pad(weights.to(torch.float32), rows),
            "rtc_scalars": step_scalars(num_steps, guidance.max_guidance).reshape(num_steps, 1, 2)}


def prepare_observation(config: PI0Config, images: Sequence[Tensor], img_masks: Sequence[Tensor],
                        lang_tokens: Tensor, lang_masks: Tensor, state: Optional[Tensor],
                        noise: Tensor, num_steps: int,
                        guidance: Optional[RtcGuidance] = None) -> ObservationTensors:
    """Build every per-call host tensor (tile-padded lengths, masks, positions, timesteps, and
    the RTC tensors when `guidance` is active)."""
    batch, cams, n_img = lang_tokens.shape[0], config.num_image_slots, config.vision.num_patches
    _check(config, images, img_masks, state, noise, batch)
    prefix_len = round_up(cams * n_img + lang_tokens.shape[1])
    extra_lang = prefix_len - cams * n_img - lang_tokens.shape[1]
    tokens = torch.nn.functional.pad(lang_tokens.to(torch.int64), (0, extra_lang))
    lang_valid = torch.nn.functional.pad(lang_masks.to(torch.bool), (0, extra_lang))
    cam_valid = torch.stack([m.to(torch.bool).reshape(batch) for m in img_masks], dim=1)  # [B, C]
    prefix_pad = torch.cat([cam_valid.repeat_interleave(n_img, dim=1), lang_valid], dim=1)

    prefix_allowed = masks.make_att_2d_masks(prefix_pad, torch.zeros_like(prefix_pad))
    n_state = 0 if config.is_pi05 else 1
    suffix_len = round_up(config.suffix_len)
    suffix_pad, suffix_att = suffix_masks(config, batch, suffix_len)
    suffix_allowed = masks.suffix_attention_mask(prefix_pad, suffix_pad, suffix_att)
    prefix_pos = masks.prefix_position_ids(prefix_pad).clamp(min=0)
    suffix_pos = masks.suffix_position_ids(prefix_pad, suffix_pad)
    if int(suffix_pos.max()) >= max_rope_positions(config):
        msg = (f"{lang_tokens.shape[1]} language tokens exceed the RoPE table built for "
               f"tokenizer_max_length={config.tokenizer_max_length}; truncate the prompt")
        raise ObservationError(msg)
    horizon = suffix_len - n_state
    return ObservationTensors(
        images=torch.stack(list(images), dim=1).flatten(0, 1).to(torch.float32),
        img_masks=cam_valid.to(torch.float32),
        lang_tokens=tokens.to(torch.int32),
        lang_masks=lang_valid.to(torch.float32),
        state=None if config.is_pi05 else state.to(torch.float32),
        noise=torch.nn.functional.pad(noise.to(torch.float32),
                                      (0, 0, 0, horizon - config.chunk_size)),
        prefix_mask=_additive(_see_self(prefix_allowed, prefix_pad, 0)),
        prefix_position_ids=prefix_pos.to(torch.int32),
        suffix_mask=_additive(_see_self(suffix_allowed, suffix_pad, prefix_len)),
        suffix_position_ids=suffix_pos.to(torch.int32),
        timesteps=euler_timesteps(num_steps),
        **prepare_rtc(config, guidance, batch, horizon, num_steps),
    )


def field_format(name: str) -> tuple:
    """(ttnn dtype, layout) a per-call field has on the device."""
    dtype = ttnn.uint32 if name in _UINT32 else (
        ttnn.float32 if name in _FLOAT32 else ttnn.bfloat16)
    return dtype, ttnn.ROW_MAJOR_LAYOUT if name in _ROW_MAJOR else ttnn.TILE_LAYOUT


def present_fields(host: ObservationTensors) -> tuple:
    """Names of the fields this call carries (state absent for PI0.5, RTC only when guided)."""
    return tuple(n for n in UPLOAD_FIELDS + RTC_FIELDS if getattr(host, n) is not None)


def upload_observation(host: ObservationTensors, device) -> ObservationTensors:
    """One host->device transfer per field (state skipped for PI0.5, RTC fields only when guided);
    nothing else per call. The result may serve as the persistent input buffers of a trace."""
    out = {name: None for name in UPLOAD_FIELDS + RTC_FIELDS}
    for name in present_fields(host):
        dtype, layout = field_format(name)
        out[name] = ttnn.from_torch(getattr(host, name), dtype=dtype, layout=layout,
                                    device=device, memory_config=ttnn.DRAM_MEMORY_CONFIG)
    return ObservationTensors(**out)


def input_key(host: ObservationTensors) -> tuple:
    """Which persistent buffers fit this call: the fields present and their shapes."""
    return tuple((n, tuple(getattr(host, n).shape)) for n in present_fields(host))


def refresh_observation(host: ObservationTensors, buffers: ObservationTensors,
                        cq_id: int = 0) -> None:
    """Write this call's host tensors into existing device buffers (one transfer per field, on
    command queue `cq_id`) with ttnn.copy_host_to_device_tensor: addresses stay fixed, so a
    captured trace reads the new values. Generic over the fields (RTC ones included)."""
    for name in present_fields(host):
        dtype, layout = field_format(name)
        staged = ttnn.from_torch(getattr(host, name), dtype=dtype, layout=layout)  # host only
        ttnn.copy_host_to_device_tensor(staged, getattr(buffers, name), cq_id=cq_id)
