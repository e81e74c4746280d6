"""Torch backend: PI0Model on CPU or CUDA, fp32 (default) or bfloat16.

Counterpart of ttnn_backend/backend.py. Weights are loaded once at construction; each call runs
vision, prefix (K/V cached once) and the Euler loop, then returns the chunk as numpy.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import numpy as np
import torch

from pi0_ttnn_node.checkpoint import LoadedCheckpoint
from pi0_ttnn_node.errors import BackendUnavailableError, ConfigError
from pi0_ttnn_node.preprocessing import ModelInputs
from pi0_ttnn_node.rtc import RtcGuidance
from pi0_ttnn_node.torch_backend.torch_pi0_model import PI0Model

LOG = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_torch_device(name: str) -> torch.device:
    """Parse `cpu`, `cuda`, `cuda:N`; fail clearly when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"torch_device {name!r} is not a torch device; use cpu or cuda[:N]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"torch_device {name!r} requested but CUDA is not available "
                                      "on this machine; use torch_device: cpu")
    return device


class TorchBackend:
    """The reference backend; also the golden the TTNN backend is measured against."""

    name = "torch"

    def __init__(self, checkpoint: LoadedCheckpoint, torch_spec: Any) -> None:
        """`torch_spec`: backends.TorchSpec (device, dtype, threads)."""
        if torch_spec.dtype not in _DTYPES:
            raise ConfigError(f"torch dtype {torch_spec.dtype!r} is not supported; expected one "
                              f"of {sorted(_DTYPES)}")
        if torch_spec.threads > 0:
            torch.set_num_threads(torch_spec.threads)
        self.device = resolve_torch_device(torch_spec.device)
        self.dtype = _DTYPES[torch_spec.dtype]
        self.config = checkpoint.config
        with torch.device("meta"):  # no init pass and no second copy of multi-GB weights
            model = PI0Model(self.config)
        model.load_state_dict(checkpoint.state_dict, strict=True, assign=True)
        model = model.to(device=self.device)
        if self.dtype != torch.float32:  # lerobot's layout: vision, norms and heads stay fp32
            model.cast_like_lerobot(self.dtype)
        self.model = model.eval()
        LOG.info("torch backend ready: %s on %s (%s)", self.config.model_type, self.device,
                 torch_spec.dtype)

    def describe(self) -> Dict[str, Any]:
        return {"backend": "torch", "device": str(self.device), "dtype": str(self.dtype),
                "emulated": False, "model_type": self.config.model_type}

    def sample_actions(self, inputs: ModelInputs, noise: torch.Tensor,
                       num_steps: Optional[int] = None,
                       guidance: Optional[RtcGuidance] = None) -> np.ndarray:
        """`guidance` (rtc.RtcGuidance, method forward or vjp) runs the RTC-guided loop."""
        x = inputs.to(self.device, torch.float32)  # the model casts where its weights are bf16
        state = None if self.config.is_pi05 else x.state
        actions = self.model.sample_actions(
            x.images, x.img_masks, x.lang_tokens, x.lang_masks, state,
            noise=noise.to(self.device, torch.float32), num_steps=num_steps, guidance=guidance)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return actions.float().cpu().numpy()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
