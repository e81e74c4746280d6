"""Flow-matching Euler loop on the device: x <- x + dt * v in float32, t = 1 + k * dt.

The timesteps of all steps are known before the loop (host, exactly as torch_denoise computes
them) and uploaded once; their sin/cos embeddings are computed once on the device before the loop,
so a step reads only resident tensors (trace-safe). Counterpart: torch_backend/torch_denoise.py.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import ttnn

VelocityFn = Callable[["ttnn.Tensor", "ttnn.Tensor"], "ttnn.Tensor"]
StepCallback = Callable[[int, "ttnn.Tensor", "ttnn.Tensor"], None]


def euler_timesteps(num_steps: int) -> torch.Tensor:
    """[num_steps, 1] float32 times 1 + k * dt, as torch_denoise.euler_integrate evaluates them."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    dt = -1.0 / num_steps
    return torch.tensor([[1.0 + k * dt] for k in range(num_steps)], dtype=torch.float32)


def euler_integrate(velocity_fn: VelocityFn, noise: "ttnn.Tensor", time_embs: "ttnn.Tensor",
                    num_steps: int, step_callback: Optional[StepCallback] = None) -> "ttnn.Tensor":
    """Integrate from t = 1 to t = 0; `time_embs` [num_steps, D] holds embed_timestep of each t.

    `velocity_fn(x_t, time_emb_row)` returns float32 v_t; `step_callback(step, x_t, v_t)` sees
    device tensors (reading them back is a host transfer: tests only).
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    dt = -1.0 / num_steps
    width = time_embs.shape[-1]
    x_t = noise
    for step in range(num_steps):
        time_emb = ttnn.slice(time_embs, [step, 0], [step + 1, width])  # [1, D]
        v_t = velocity_fn(x_t, time_emb)
        if step_callback is not None:
            step_callback(step, x_t, v_t)
        x_t = ttnn.add(x_t, ttnn.multiply(v_t, dt))
    return x_t
