"""TTNN backend: PI0ModelTTNN on a Tenstorrent card, or on the CPU emulation when asked for.

Counterpart of torch_backend/backend.py. The device is opened once (runtime.py) with the typed
TtRuntimeConfig (ttnn_config.py: every `policy.ttnn_*` knob, resolved from a preset), weights are
converted once and stay resident; each call uploads the observation
once and downloads the chunk once. The emulation is only used with `ttnn_emulate: true`, and
`describe()` says so.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import numpy as np
import torch

from pi0_ttnn_node.checkpoint import LoadedCheckpoint
from pi0_ttnn_node.errors import BackendUnavailableError
from pi0_ttnn_node.preprocessing import ModelInputs
from pi0_ttnn_node.ttnn_backend.runtime import open_tt_device
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig

LOG = logging.getLogger(__name__)


class TtnnBackend:
    """PI0 / PI0.5 resident on one device; the device is released by close()."""

    name = "ttnn"

    def __init__(self, checkpoint: LoadedCheckpoint, runtime_config: TtRuntimeConfig) -> None:
        if not isinstance(runtime_config, TtRuntimeConfig):
            raise TypeError(f"TtnnBackend takes a ttnn_config.TtRuntimeConfig, got "
                            f"{type(runtime_config).__name__}; build one with "
                            "resolve_runtime_config(preset, overrides)")
        self.config = checkpoint.config
        self.runtime_config = runtime_config
        self.handle = open_tt_device(self.runtime_config)
        try:
            from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

            if runtime_config.mesh_shape != "1x1":  # data parallel over chips
                from pi0_ttnn_node.ttnn_backend.ttnn_mesh import MeshPI0ModelTTNN

                self.model: Optional[Any] = MeshPI0ModelTTNN(
                    self.config, checkpoint.state_dict, self.handle.device, self.runtime_config)
            else:
                self.model = PI0ModelTTNN(self.config, checkpoint.state_dict,
                                          self.handle.device, self.runtime_config)
        except BaseException:
            self.handle.close()
            raise
        level = logging.WARNING if self.handle.is_emulated else logging.INFO
        rc = self.runtime_config
        LOG.log(level, "ttnn backend ready: %s on %s (weights vision/vlm/expert %s/%s/%s, "
                "trace %s, %d CQ)%s", self.config.model_type, self.handle,
                rc.weight_dtype_vision, rc.weight_dtype_vlm, rc.weight_dtype_expert, rc.trace,
                rc.num_command_queues,
                " -- CPU EMULATION, NOT A TENSTORRENT CARD" if self.handle.is_emulated else "")

    @property
    def is_emulated(self) -> bool:
        return self.handle.is_emulated

    def describe(self) -> Dict[str, Any]:
        rc = self.runtime_config
        device = f"Tenstorrent device {rc.device_id}"
        if self.is_emulated:
            device = ("EMULATED (CPU, not a Tenstorrent card; timings are not hardware timings) "
                      f"{rc.emulated_board}")
        return {"backend": "ttnn", "device": device, "emulated": self.is_emulated,
                "mesh_shape": rc.mesh_shape,
                "model_type": self.config.model_type, "trace": rc.trace,
                "num_command_queues": rc.num_command_queues,
                "weight_dtypes": {"vision": rc.weight_dtype_vision, "vlm": rc.weight_dtype_vlm,
                                  "expert": rc.weight_dtype_expert, "heads": rc.weight_dtype_heads},
                "fidelities": {"vision": rc.fidelity_vision, "prefill": rc.fidelity_prefill,
                               "denoise": rc.fidelity_denoise, "sdpa": rc.fidelity_sdpa}}

    def sample_actions(self, inputs: ModelInputs, noise: torch.Tensor,
                       num_steps: Optional[int] = None, guidance: Any = None) -> np.ndarray:
        """Action chunk [B, chunk, max_action_dim]; `guidance`: rtc.RtcGuidance or None."""
        if self.model is None:
            raise BackendUnavailableError("the ttnn backend was closed; create a new one")
        state = None if self.config.is_pi05 else inputs.state
        actions = self.model.sample_actions(inputs.images, inputs.img_masks, inputs.lang_tokens,
                                            inputs.lang_masks, state, noise=noise,
                                            num_steps=num_steps, guidance=guidance)
        return actions.numpy()

    def close(self) -> None:
        """Release the trace, drop the weights and close the device; safe to call twice."""
        try:
            if self.model is not None:
                self.model.release_trace()
        finally:
            self.model = None
            self.handle.close()
