"""TTNN backend: PI0ModelTTNN on a Tenstorrent card, or on the CPU emulation when asked for.

Counterpart of torch_backend/backend.py. The device is opened once (runtime.py) with the
`ttnn_*` options, weights are converted once and stay resident; each call uploads the observation
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
from pi0_ttnn_node.ttnn_backend.runtime import TtRuntimeConfig, open_tt_device

LOG = logging.getLogger(__name__)


def runtime_config_from_options(options: Any) -> TtRuntimeConfig:
    """Map BackendOptions.ttnn_* onto the runtime config (extra keys may set fidelities)."""
    extra = dict(getattr(options, "extra", {}) or {})
    known = {k: extra[k] for k in ("matmul_fidelity", "sdpa_fidelity", "fp32_dest_acc",
                                   "emulated_board", "activation_dtype") if k in extra}
    return TtRuntimeConfig(
        device_id=options.ttnn_device_id, l1_small_size=options.ttnn_l1_small_size,
        trace_region_size=options.ttnn_trace_region_size if options.ttnn_use_trace else 0,
        num_command_queues=options.ttnn_num_command_queues, emulate=options.ttnn_emulate,
        weight_dtype=options.ttnn_weight_dtype, use_trace=options.ttnn_use_trace, **known)


class TtnnBackend:
    """PI0 / PI0.5 resident on one device; the device is released by close()."""

    name = "ttnn"

    def __init__(self, checkpoint: LoadedCheckpoint, options: Any) -> None:
        self.config = checkpoint.config
        self.runtime_config = runtime_config_from_options(options)
        self.handle = open_tt_device(self.runtime_config)
        try:
            from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

            self.model: Optional[Any] = PI0ModelTTNN(self.config, checkpoint.state_dict,
                                                     self.handle.device, self.runtime_config)
        except BaseException:
            self.handle.close()
            raise
        level = logging.WARNING if self.handle.is_emulated else logging.INFO
        LOG.log(level, "ttnn backend ready: %s on %s (%s weights, trace %s)%s",
                self.config.model_type, self.handle, self.runtime_config.weight_dtype,
                "on" if self.runtime_config.use_trace else "off",
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
                "weight_dtype": rc.weight_dtype, "matmul_fidelity": rc.matmul_fidelity,
                "trace": rc.use_trace, "model_type": self.config.model_type}

    def sample_actions(self, inputs: ModelInputs, noise: torch.Tensor,
                       num_steps: Optional[int] = None) -> np.ndarray:
        if self.model is None:
            raise BackendUnavailableError("the ttnn backend was closed; create a new one")
        state = None if self.config.is_pi05 else inputs.state
        actions = self.model.sample_actions(inputs.images, inputs.img_masks, inputs.lang_tokens,
                                            inputs.lang_masks, state, noise=noise,
                                            num_steps=num_steps)
        return actions.numpy()

    def close(self) -> None:
        """Release the trace, drop the weights and close the device; safe to call twice."""
        try:
            if self.model is not None:
                self.model.release_trace()
        finally:
            self.model = None
            self.handle.close()
