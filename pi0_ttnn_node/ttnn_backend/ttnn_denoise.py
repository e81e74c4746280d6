"""Flow-matching Euler loop on the device: x <- x + dt * v in float32, t = 1 + k * dt.

The timesteps of all steps are known before the loop (host, exactly as torch_denoise computes
them) and uploaded once; their sin/cos embeddings are computed once on the device before the loop,
so a step reads only resident tensors (trace-safe). RTC guidance (`forward` method, rtc.py) adds
a few elementwise ops per step on resident tensors (Y, W and per-step (t_k, w_k) uploaded with the
observation); TTNN has no autograd, so the `vjp` method is Torch-only.
Counterpart: torch_backend/torch_denoise.py.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class RtcDeviceInputs:
    """RTC guidance on the device (ttnn_inputs.RTC_FIELDS), all float32 TILE.

    target: Y [B, Tp, A] (rows past chunk_size are zero with zero weight); weights: W broadcast
    over action dims on the host [B, Tp, A]; scalars: [num_steps, 1, 2] rows (t_k, w_k).
    """

    target: "ttnn.Tensor"
    weights: "ttnn.Tensor"
    scalars: "ttnn.Tensor"

    def tensors(self) -> list:
        return [self.target, self.weights, self.scalars]


def rtc_forward_velocity(x_t: "ttnn.Tensor", v_t: "ttnn.Tensor", rtc: RtcDeviceInputs,
                         step: int) -> "ttnn.Tensor":
    """v - w_k * (Y - (x_t - t_k * v)) * W: RTC `forward` guidance (Jacobian taken as identity),
    PI0's sign convention (torch_denoise.rtc_guided_velocity). t_k, w_k are [1, 1, 1] slices."""
    t_k = ttnn.slice(rtc.scalars, [step, 0, 0], [step + 1, 1, 1])
    w_k = ttnn.slice(rtc.scalars, [step, 0, 1], [step + 1, 1, 2])
    x0_hat = ttnn.subtract(x_t, ttnn.multiply(v_t, t_k))
    error = ttnn.multiply(ttnn.subtract(rtc.target, x0_hat), rtc.weights)
    return ttnn.subtract(v_t, ttnn.multiply(error, w_k))


def euler_integrate(velocity_fn: VelocityFn, noise: "ttnn.Tensor", time_embs: "ttnn.Tensor",
                    num_steps: int, step_callback: Optional[StepCallback] = None,
                    rtc: Optional[RtcDeviceInputs] = None) -> "ttnn.Tensor":
    """Integrate from t = 1 to t = 0; `time_embs` [num_steps, D] holds embed_timestep of each t
    (sliced per step), or is a list with one precomputed conditioning per step.

    `velocity_fn(x_t, time_emb_row)` returns float32 v_t; `step_callback(step, x_t, v_t)` sees
    device tensors (reading them back is a host transfer: tests only). `rtc` guides each step.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    dt = -1.0 / num_steps
    per_step = isinstance(time_embs, (list, tuple))  # conditioning precomputed before the loop
    width = None if per_step else time_embs.shape[-1]
    x_t = noise
    for step in range(num_steps):
        time_emb = time_embs[step] if per_step else ttnn.slice(time_embs, [step, 0],
                                                                [step + 1, width])  # [1, D]
        v_t = velocity_fn(x_t, time_emb)
        if rtc is not None:
            v_t = rtc_forward_velocity(x_t, v_t, rtc, step)
        if step_callback is not None:
            step_callback(step, x_t, v_t)
        x_t = ttnn.add(x_t, ttnn.multiply(v_t, dt))
    return x_t
