"""Small pieces shared by the TTNN modules: module base, dtype names, tile padding, time sinusoid.

Tiles are 32 x 32; sequence lengths and head widths handed to ttnn are padded to multiples of 32.
`create_sinusoidal_pos_embedding_ttnn` mirrors torch_suffix.create_sinusoidal_pos_embedding
(periods 4e-3 ... 4.0, sin half first) on the device. Counterpart: torch_backend (no single file).
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
import ttnn

from pi0_ttnn_node.errors import ConfigError

TILE = 32
DTYPE_NAMES = ("bfloat16", "bfloat8_b", "float32")


class LightweightModule:
    """Module base without torch.nn machinery: calling the object runs `forward`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")


def get_ttnn_dtype(name: str) -> "ttnn.DataType":
    """Map `bfloat16` | `bfloat8_b` | `float32` to the ttnn dtype; reject anything else."""
    if name not in DTYPE_NAMES:
        raise ConfigError(f"ttnn dtype {name!r} is not supported; expected one of {DTYPE_NAMES}")
    return getattr(ttnn, name)


def round_up(value: int, multiple: int = TILE) -> int:
    """Smallest multiple of `multiple` that is >= value."""
    return -(-int(value) // multiple) * multiple


def sinusoid_frequencies(dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """Return [1, dim // 2] float32 inverse periods 1 / period, computed in float64 on the host."""
    if dim % 2:
        raise ConfigError(f"time embedding width must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
    period = min_period * (max_period / min_period) ** fraction
    return (1.0 / period).to(torch.float32)[None, :]


def create_sinusoidal_pos_embedding_ttnn(time: Union[float, "ttnn.Tensor"],
                                         inv_period: "ttnn.Tensor") -> "ttnn.Tensor":
    """Return [sin(2 pi t / period), cos(2 pi t / period)] as [B, dim] float32 on the device.

    Args:
        time: a Python float (scalar timestep, gives [1, dim]) or a float32 device tensor [B, 1].
        inv_period: resident float32 [1, dim // 2] from `sinusoid_frequencies`.

    The phase t / period reaches 250 cycles at the shortest period, so whole cycles are removed
    first (a float32 -> uint32 -> float32 round trip gives an integer n; truncating or rounding
    both work): the device's sin/cos then only see arguments within one period of zero.
    """
    if isinstance(time, (int, float)):
        cycles = ttnn.multiply(inv_period, float(time))  # [1, half]
    else:
        half = inv_period.shape[-1]
        # [B, 1] -> [B, half] first: an explicit repeat keeps the multiply a plain row broadcast.
        cycles = ttnn.multiply(ttnn.repeat(time, (1, half)), inv_period)
    whole = ttnn.typecast(ttnn.typecast(cycles, ttnn.uint32), ttnn.float32)
    angle = ttnn.multiply(ttnn.subtract(cycles, whole), 2.0 * math.pi)
    return ttnn.concat([ttnn.sin(angle), ttnn.cos(angle)], dim=-1)
