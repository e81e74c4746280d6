"""Backend selection: one frozen `BackendSpec` travels from parameters / CLI flags to the backend.

Both backends take the same `ModelInputs` and the same host-drawn noise and return the normalised,
32-padded action chunk [B, H, max_action_dim] as float32 numpy, so A/B comparisons see identical
inputs. No import-time aliasing: the backend class is chosen here, by name, at run time. Fault
injection is not wired here: the node's policy loader wraps a backend when a test asks for it.
Counterparts: ttnn_backend/ttnn_config.py (the TTNN half of the spec), ros/params.py (parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Protocol

import numpy as np
import torch

from pi0_ttnn_node.checkpoint import LoadedCheckpoint
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.preprocessing import ModelInputs
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig

BACKENDS = ("torch", "ttnn")
TORCH_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TorchSpec:
    """How the Torch backend runs: device (cpu, cuda, cuda:N), compute dtype, intra-op threads."""

    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0  # 0 = leave torch's default

    def __post_init__(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise ConfigError(f"torch dtype {self.dtype!r} is not supported; expected one of "
                              f"{list(TORCH_DTYPES)}")
        if self.threads < 0:
            raise ConfigError(f"torch threads must be >= 0 (0 = torch default), got {self.threads}")


@dataclass(frozen=True)
class BackendSpec:
    """Which backend and how it runs; any change of a field means a different loaded backend."""

    backend: str = "torch"
    torch: TorchSpec = field(default_factory=TorchSpec)
    ttnn: TtRuntimeConfig = field(default_factory=TtRuntimeConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; expected one of "
                              f"{list(BACKENDS)}")

    def label(self) -> str:
        """Short human-readable name for logs and diagnostics."""
        if self.backend == "torch":
            return f"torch/{self.torch.device}/{self.torch.dtype}"
        return f"ttnn/{self.ttnn.device_id}" + ("/emulated" if self.ttnn.emulate else "")


class PolicyBackend(Protocol):
    """What the policy needs from a backend."""

    name: str

    def describe(self) -> Dict[str, Any]:
        """Backend, device and precision, for diagnostics and benchmark output."""

    def sample_actions(self, inputs: ModelInputs, noise: torch.Tensor,
                       num_steps: Optional[int] = None, guidance: Any = None) -> np.ndarray:
        """Run vision, prefix and the Euler loop (RTC-guided when `guidance` is given);
        return [B, H, max_action_dim] float32."""

    def close(self) -> None:
        """Release the model and any device."""


def create_backend(spec: BackendSpec, checkpoint: LoadedCheckpoint) -> PolicyBackend:
    """Build the backend `spec` names from an already-loaded checkpoint."""
    if not isinstance(spec, BackendSpec):
        raise ConfigError(f"create_backend expects a BackendSpec, got {type(spec).__name__}; "
                          "build one with BackendSpec(backend=..., torch=..., ttnn=...)")
    if spec.backend == "torch":
        from pi0_ttnn_node.torch_backend.backend import TorchBackend

        return TorchBackend(checkpoint, spec.torch)
    from pi0_ttnn_node.ttnn_backend.backend import TtnnBackend

    return TtnnBackend(checkpoint, spec.ttnn)
