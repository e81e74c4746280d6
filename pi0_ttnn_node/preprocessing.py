"""Observation -> model inputs (images, masks, tokens, state) and model output -> robot actions.

Images: RGB uint8 HxWx3, resized with pad to the checkpoint's image size (224), scaled to [-1, 1].
State: checked, normalised, zero-padded to max_state_dim (32); PI0.5 also puts it in the prompt.
Actions: [B, H, max_action_dim] truncated to action_dim, then unnormalised.
Counterparts: tokenizer.py (prompts), normalization.py (statistics), backends.py (ModelInputs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import ConfigError, InferenceError, ObservationError
from pi0_ttnn_node.image_conversion import resize_with_pad_u8, resized_size  # noqa: F401
from pi0_ttnn_node.tokenizer import PromptTokenizer

def _check_image(image: Any, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        seen = (f"{type(image).__name__} {getattr(image, 'dtype', '')} "
                f"{getattr(image, 'shape', '')}")
        raise ObservationError(f"{name} must be an RGB uint8 array [H, W, 3], got {seen}; "
                               "convert BGR/grey/float images in the ROS layer")
    return image


def resize_with_pad(image: np.ndarray, height: int = 224, width: int = 224) -> np.ndarray:
    """Resize keeping the aspect ratio (bilinear, no antialias), pad with 0, centred.

    Geometry is lerobot 0.6.1 `policies/common/vla_utils.py::resize_with_pad_torch`: odd padding
    remainder on the bottom/right. That resizes float [0, 1] tensors; resizing uint8 with OpenCV
    (half-pixel centres like align_corners=False, fixed-point weights) rounds to the uint8 grid,
    so pixels differ by at most about one step (2/255 after scaling); see test_preprocessing.py.
    """
    image = _check_image(image)
    if image.shape[:2] == (height, width):
        return image
    return resize_with_pad_u8(image, height, width)


def to_model_image(image: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1], written into `out` when given."""
    image = _check_image(image)
    if out is None:
        out = np.empty((3,) + image.shape[:2], dtype=np.float32)
    # lerobot's float32 ops (x / 255 * 2 - 1), in place: about 3x faster than a lookup table.
    out[...] = image.transpose(2, 0, 1)
    out /= np.float32(255.0)
    out *= np.float32(2.0)
    out -= np.float32(1.0)
    return out


def pad_vector(x: np.ndarray, dim: int) -> np.ndarray:
    """Zero-pad the last axis to `dim` (after normalisation, as openpi and lerobot do)."""
    if x.shape[-1] > dim:
        raise ObservationError(f"vector has {x.shape[-1]} values, more than the padded size {dim}")
    out = np.zeros(x.shape[:-1] + (dim,), dtype=x.dtype)
    out[..., :x.shape[-1]] = x
    return out


@dataclass
class Observation:
    """One robot observation. Camera names are the checkpoint's (`observation.images.<name>`)."""

    images: Dict[str, Optional[np.ndarray]]  # name -> RGB uint8 [H, W, 3], None when absent
    state: np.ndarray  # [state_dim], robot units
    instruction: str
    timestamp: float = 0.0


@dataclass
class ModelInputs:
    images: List[torch.Tensor]  # per slot [B, 3, S, S] float32 in [-1, 1]
    img_masks: List[torch.Tensor]  # per slot [B] bool
    lang_tokens: torch.Tensor  # [B, L] int64
    lang_masks: torch.Tensor  # [B, L] bool
    state: torch.Tensor  # [B, max_state_dim] float32, normalised and zero-padded
    truncated: List[bool] = field(default_factory=list)

    def to(self, device: Union[str, torch.device],
           dtype: torch.dtype = torch.float32) -> "ModelInputs":
        """Move to `device`; images and state take `dtype`, tokens and masks keep theirs."""
        return dataclasses.replace(
            self, images=[im.to(device, dtype) for im in self.images],
            img_masks=[m.to(device) for m in self.img_masks],
            lang_tokens=self.lang_tokens.to(device), lang_masks=self.lang_masks.to(device),
            state=self.state.to(device, dtype), truncated=list(self.truncated))


class Preprocessor:
    """Batch observations into ModelInputs.

    Camera rule: every slot keeps its checkpoint position; an absent camera (None or missing key)
    is an all -1 image with mask False. lerobot 0.6.1 instead moves absent cameras to the end
    (`modeling_pi0.py::_preprocess_images`). Masked image tokens are neither keys nor queries and
    do not advance position ids, so both layouts give valid tokens the same positions and the same
    attention; keeping the slot lets masks differ per sample inside a batch.
    """

    def __init__(self, config: PI0Config, normalizer: Any, tokenizer: PromptTokenizer) -> None:
        if tokenizer.model_type != config.model_type or \
                tokenizer.max_length != config.tokenizer_max_length:
            raise ConfigError(
                f"tokenizer is for {tokenizer.model_type} with {tokenizer.max_length} tokens, the "
                f"model is {config.model_type} with {config.tokenizer_max_length}; build the "
                "tokenizer from the checkpoint's config")
        self.config = config
        self.normalizer = normalizer
        self.tokenizer = tokenizer
        self.size = config.vision.image_size
        names = config.features.camera_names
        self._slot = {n: i for i, n in enumerate(names)}
        self._slot.update({k: i for i, k in enumerate(config.features.image_keys)})

    def __call__(self, observations: Sequence[Observation]) -> ModelInputs:
        if len(observations) == 0:
            raise ObservationError("got an empty batch; expected at least one observation")
        cfg, batch, n_slots = self.config, len(observations), len(self.config.features.image_keys)
        # every slot is written below (image or -1): no full-buffer fill first
        images = np.empty((n_slots, batch, 3, self.size, self.size), dtype=np.float32)
        masks = np.zeros((n_slots, batch), dtype=bool)
        states = np.zeros((batch, cfg.features.state_dim), dtype=np.float32)
        for b, obs in enumerate(observations):
            for key, image in obs.images.items():
                slot = self._slot.get(key)
                if slot is None:
                    raise ObservationError(
                        f"camera {key!r} is not a camera of this checkpoint; expected one of "
                        f"{list(cfg.features.camera_names)}")
                if image is not None:
                    resized = resize_with_pad(_check_image(image, f"camera {key!r}"),
                                              self.size, self.size)
                    to_model_image(resized, out=images[slot, b])
                    masks[slot, b] = True
            for slot in np.flatnonzero(~masks[:, b]):
                images[slot, b] = -1.0  # absent camera: all -1 with mask False
            if not masks[:, b].any():
                raise ObservationError(
                    f"observation {b} has no camera image; at least one of "
                    f"{list(cfg.features.camera_names)} is needed")
            states[b] = self._normalized_state(obs.state)
            if not isinstance(obs.instruction, str):
                raise ObservationError(f"instruction must be str, got {obs.instruction!r}")
        prompts = self.tokenizer.tokenize([o.instruction for o in observations],
                                          states if cfg.is_pi05 else None)
        return ModelInputs(
            images=[torch.from_numpy(images[s]) for s in range(n_slots)],
            img_masks=[torch.from_numpy(masks[s]) for s in range(n_slots)],
            lang_tokens=torch.from_numpy(prompts.tokens),
            lang_masks=torch.from_numpy(prompts.masks),
            state=torch.from_numpy(pad_vector(states, cfg.max_state_dim)),
            truncated=prompts.truncated)

    def _normalized_state(self, state: Any) -> np.ndarray:
        dim = self.config.features.state_dim
        try:
            raw = np.asarray(state, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ObservationError(f"state must be numeric, got {state!r}") from err
        if raw.shape != (dim,):
            raise ObservationError(f"state has shape {raw.shape}, the checkpoint expects ({dim},)")
        if not np.all(np.isfinite(raw)):
            raise ObservationError(f"state has non-finite values {raw.tolist()}; check the robot "
                                   "joint state source")
        norm = np.asarray(self.normalizer.normalize_state(raw))
        if norm.shape != (dim,) or not np.all(np.isfinite(norm)):
            raise ObservationError(f"normalised state {norm.tolist()} is not {dim} finite values; "
                                   "check the state normalisation statistics")
        return norm


class Postprocessor:
    """Model chunk [B, H, max_action_dim] -> robot actions [B, H, action_dim] in robot units."""

    def __init__(self, config: PI0Config, normalizer: Any) -> None:
        self.config = config
        self.normalizer = normalizer

    def __call__(self, actions: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().to("cpu", torch.float32).numpy()
        actions = np.asarray(actions, dtype=np.float32)
        cfg = self.config
        if actions.ndim != 3 or actions.shape[-1] != cfg.max_action_dim:
            raise InferenceError(f"action chunk has shape {actions.shape}, expected "
                                 f"[B, H, {cfg.max_action_dim}]")
        if not np.all(np.isfinite(actions)):
            raise InferenceError("action chunk has non-finite values; the backend diverged "
                                 "(check weights, dtype and the number of steps)")
        # lerobot truncates before unnormalising; openpi unnormalises first with pass-through of
        # the padded dims: the robot dims come out the same.
        out = self.normalizer.unnormalize_actions(actions[..., :cfg.features.action_dim])
        return np.asarray(out, dtype=np.float32)
