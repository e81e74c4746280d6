"""Flow-matching sampler: Gaussian noise at t = 1, forward Euler to t = 0 (data).

dt = -1 / num_steps and t = 1 + k * dt computed exactly per step (lerobot `euler_integrate`; openpi
accumulates t in fp32, which differs in the last bits). x <- x + dt * v in fp32.
With an active rtc.RtcGuidance each velocity is replaced by the RTC-guided one
(`rtc_guided_velocity`, docs/rtc.md); an inactive one runs the plain loop, bit for bit.
Counterpart: ttnn_backend/ttnn_denoise.py.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from pi0_ttnn_node.rtc import RtcGuidance, guidance_weight

VelocityFn = Callable[[Tensor, Tensor], Tensor]
StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]


def sample_noise(shape: Sequence[int], generator: Optional[torch.Generator] = None,
                 device: "torch.device | str" = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise x_1, drawn fresh on every call (from `generator` when given)."""
    return torch.normal(0.0, 1.0, size=tuple(shape), generator=generator, dtype=dtype,
                        device=device)


def rtc_guided_velocity(velocity_fn: VelocityFn, x_t: Tensor, t: Tensor, target: Tensor,
                        weights: Tensor, weight: Union[float, Tensor], method: str) -> Tensor:
    """One RTC-guided velocity in PI0's convention (t runs 1 -> 0): v_guided = v - w * g.

    x0_hat = x_t - t * v(x_t); e = (Y - x0_hat) * W; g = (d x0_hat / d x_t)^T e for `vjp` (one
    backward through `velocity_fn`, whatever it closes over, e.g. the prefix K/V, stays fixed)
    or g = e for `forward`. The paper's u + w * g with u = -v: the Euler step x + dt * v_guided
    (dt < 0) then moves x0_hat toward Y. `t` is [B]; `weights` [B, H] or [B, H, A]; `weight` is
    w(t). Works with any velocity function (tests pass a toy field with a known Jacobian).
    """
    w_b = weights if weights.ndim == x_t.ndim else weights[..., None]
    t_b = t.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    if method == "forward":
        v_t = velocity_fn(x_t, t)
        error = (target - (x_t - t_b * v_t)) * w_b
        return v_t - weight * error
    if method != "vjp":
        raise ValueError(f"RTC method {method!r} is not supported; expected forward or vjp")
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        v_t = velocity_fn(x, t)
        x0_hat = x - t_b * v_t
        with torch.no_grad():
            error = (target - x0_hat) * w_b
        (grad,) = torch.autograd.grad(x0_hat, x, grad_outputs=error)
    return v_t.detach() - weight * grad


def euler_integrate(velocity_fn: VelocityFn, noise: Tensor, num_steps: int,
                    step_callback: Optional[StepCallback] = None,
                    guidance: Optional[RtcGuidance] = None) -> Tensor:
    """Integrate dx/dt = v(x, t) from t = 1 to t = 0 in `num_steps` Euler steps.

    `step_callback(step, t, x_t, v_t)` sees the state each velocity was evaluated at (the guided
    velocity when guidance is active). `guidance` (rtc.RtcGuidance, active) guides every step.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    batch = noise.shape[0]
    dt = -1.0 / num_steps
    x_t = noise.to(torch.float32)
    guided = guidance is not None and guidance.active
    if guided:
        target = guidance.target.to(noise.device, torch.float32)
        weights = guidance.weights.to(noise.device, torch.float32)
    for step in range(num_steps):
        t = torch.tensor(1.0 + step * dt, dtype=torch.float32, device=noise.device).expand(batch)
        if guided:
            weight = guidance_weight(float(t[0]), guidance.max_guidance)
            v_t = rtc_guided_velocity(velocity_fn, x_t, t, target, weights, weight,
                                      guidance.method)
        else:
            v_t = velocity_fn(x_t, t)
        if step_callback is not None:
            step_callback(step, t, x_t, v_t)
        x_t = x_t + dt * v_t
    return x_t
