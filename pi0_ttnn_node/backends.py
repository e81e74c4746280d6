"""Backend selection: one function, one parameter (`torch` | `ttnn`).

Both backends take the same `ModelInputs` and the same host-drawn noise and return the normalised,
32-padded action chunk [B, H, max_action_dim] as float32 numpy, so A/B comparisons see identical
inputs. No import-time aliasing: the backend class is chosen here, by name, at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Protocol

import numpy as np
import torch

from pi0_ttnn_node.checkpoint import LoadedCheckpoint
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.preprocessing import ModelInputs

BACKENDS = ("torch", "ttnn")


@dataclass
class BackendOptions:
    """Settings for building a backend; only the fields of the chosen backend are used."""

    torch_device: str = "cpu"
    torch_dtype: str = "float32"
    torch_threads: int = 0  # 0 = leave torch's default
    ttnn_device_id: int = 0
    ttnn_emulate: bool = False
    ttnn_weight_dtype: str = "bfloat16"
    ttnn_use_trace: bool = False
    ttnn_l1_small_size: int = 24576
    ttnn_trace_region_size: int = 80_000_000
    ttnn_num_command_queues: int = 1
    extra: Dict[str, Any] = field(default_factory=dict)


class PolicyBackend(Protocol):
    """What the policy needs from a backend."""

    name: str

    def describe(self) -> Dict[str, Any]:
        """Backend, device and precision, for diagnostics and benchmark output."""

    def sample_actions(self, inputs: ModelInputs, noise: torch.Tensor,
                       num_steps: Optional[int] = None) -> np.ndarray:
        """Run vision, prefix and the Euler loop; return [B, H, max_action_dim] float32."""

    def close(self) -> None:
        """Release the model and any device."""


def create_backend(name: str, checkpoint: LoadedCheckpoint,
                   options: Optional[BackendOptions] = None) -> PolicyBackend:
    """Build the named backend from an already-loaded checkpoint.

    `options.extra["fault_injection"]` (tests only) wraps it in fault_injection's backend.
    """
    options = options or BackendOptions()
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if options.extra.get("fault_injection"):
        from pi0_ttnn_node.fault_injection import plan_from_options, wrap_backend

        plan = plan_from_options(options.extra)
        return wrap_backend(lambda: _build(name, checkpoint, options), plan)
    return _build(name, checkpoint, options)


def _build(name: str, checkpoint: LoadedCheckpoint, options: BackendOptions) -> PolicyBackend:
    if name == "torch":
        from pi0_ttnn_node.torch_backend.backend import TorchBackend

        return TorchBackend(checkpoint, options)
    if name == "ttnn":
        from pi0_ttnn_node.ttnn_backend.backend import TtnnBackend

        return TtnnBackend(checkpoint, options)
    raise ConfigError(f"unknown backend {name!r}; expected one of {BACKENDS}")
