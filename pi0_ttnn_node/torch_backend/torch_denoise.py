"""Flow-matching sampler: Gaussian noise at t = 1, forward Euler to t = 0 (data).

dt = -1 / num_steps and t = 1 + k * dt computed exactly per step (lerobot `euler_integrate`; openpi
accumulates t in fp32, which differs in the last bits). x <- x + dt * v in fp32.
Counterpart: ttnn_backend/ttnn_denoise.py.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]


def sample_noise(shape: Sequence[int], generator: Optional[torch.Generator] = None,
                 device: "torch.device | str" = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise x_1, drawn fresh on every call (from `generator` when given)."""
    return torch.normal(0.0, 1.0, size=tuple(shape), generator=generator, dtype=dtype,
                        device=device)


def euler_integrate(velocity_fn: VelocityFn, noise: Tensor, num_steps: int,
                    step_callback: Optional[StepCallback] = None) -> Tensor:
    """Integrate dx/dt = v(x, t) from t = 1 to t = 0 in `num_steps` Euler steps.

    `step_callback(step, t, x_t, v_t)` sees the state each velocity was evaluated at.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    batch = noise.shape[0]
    dt = -1.0 / num_steps
    x_t = noise.to(torch.float32)
    for step in range(num_steps):
        t = torch.tensor(1.0 + step * dt, dtype=torch.float32, device=noise.device).expand(batch)
        v_t = velocity_fn(x_t, t)
        if step_callback is not None:
            step_callback(step, t, x_t, v_t)
        x_t = x_t + dt * v_t
    return x_t
