"""Real-time chunking (RTC) guidance: the numbers both backends feed into their denoise loops.

RTC (Black, Galliker, Levine 2025, arXiv 2506.07339) makes a new action chunk continue the chunk the
robot is executing, by guided inpainting inside the flow-matching loop; no retraining. This module
is ROS-free and backend-free: the guidance description (`RtcGuidance`), the prefix weight schedule
W, the per-step guidance weight w(t), the target Y built from the previous chunk, and one builder
the control core calls. The guided Euler step itself lives in torch_backend/torch_denoise.py
(forward and vjp) and ttnn_backend/ttnn_denoise.py (forward). Maths and conventions: docs/rtc.md.

Convention (PI0 / lerobot / this project): flow time t runs 1 -> 0 (noise -> data), the Euler step
is x <- x + dt * v with dt = -1/N, the clean estimate is x0_hat = x_t - t * v, and the guided
velocity is v_guided = v - w(t) * g (the paper's u + w * g with u = -v): it moves x0_hat toward Y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from pi0_ttnn_node.errors import ConfigError, ObservationError

METHODS = ("forward", "vjp")
SCHEDULES = ("exp", "linear")
ArrayLike = Union[Tensor, np.ndarray]


@dataclass(frozen=True, eq=False)  # eq on tensors is ambiguous: compare by identity
class RtcGuidance:
    """What one guided inference needs: target Y, prefix weights W, max guidance weight beta.

    `target` [B, H, max_action_dim] float32 is Y in the model's normalised, padded action space
    (the space the backend returns); `weights` [B, H] float32 is W, broadcast over action dims;
    `max_guidance` is beta (the paper's Kinetix code uses 5, lerobot 10); `method` is `forward`
    (Jacobian taken as identity, no backward pass; both backends) or `vjp` (the paper's
    vector-Jacobian product through one denoise step; Torch only).
    """

    target: Tensor
    weights: Tensor
    max_guidance: float
    method: str = "forward"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"RTC method {self.method!r} is not supported; expected one of "
                              f"{list(METHODS)} (forward: no backward pass, vjp: paper-exact)")
        beta = float(self.max_guidance)
        if not math.isfinite(beta) or beta < 0:
            raise ConfigError(f"RTC max_guidance (beta) must be a finite number >= 0, got "
                              f"{self.max_guidance!r}; 0 turns guidance off, 5-10 is typical")
        for name, value, ndim, what in (("target", self.target, 3, "[B, H, max_action_dim]"),
                                        ("weights", self.weights, 2, "[B, H]")):
            if not isinstance(value, Tensor):
                raise TypeError(f"RTC {name} must be a torch.Tensor {what}, got "
                                f"{type(value).__name__}; use torch.as_tensor(...)")
            if value.dtype != torch.float32 or value.ndim != ndim:
                raise ConfigError(f"RTC {name} must be float32 {what}; got {value.dtype} with "
                                  f"shape {tuple(value.shape)}")
            if not bool(torch.isfinite(value).all()):
                raise ConfigError(f"RTC {name} contains non-finite values; build it from a chunk "
                                  "the policy accepted (check_chunk)")
        if tuple(self.weights.shape) != tuple(self.target.shape[:2]):
            raise ConfigError(f"RTC weights have shape {tuple(self.weights.shape)}; expected "
                              f"[B, H] = {tuple(self.target.shape[:2])} to match the target")
        if bool((self.weights < 0).any()):
            raise ConfigError("RTC weights must be >= 0 (1 = frozen prefix, 0 = free)")

    @property
    def active(self) -> bool:
        """False when guidance cannot change anything (beta = 0 or W = 0): backends then run the
        plain sampler, so the output is bit-identical to an unguided call."""
        return float(self.max_guidance) > 0 and bool((self.weights != 0).any())

    def check_shape(self, batch: int, horizon: int, action_dim: int) -> None:
        """Raise ObservationError unless Y is [batch, horizon, action_dim] (the model's chunk)."""
        expected = (batch, horizon, action_dim)
        if tuple(self.target.shape) != expected:
            raise ObservationError(f"RTC target has shape {tuple(self.target.shape)}; the model "
                                   f"samples {expected} (normalised actions padded to "
                                   "max_action_dim)")


@dataclass(frozen=True)
class RtcConfig:
    """The user-facing RTC knobs (node parameters `rtc.method`, `rtc.schedule`, `rtc.max_guidance`)."""

    schedule: str = "exp"
    max_guidance: float = 5.0
    method: str = "forward"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"RTC schedule {self.schedule!r} is not supported; expected one of "
                              f"{list(SCHEDULES)}")
        if self.method not in METHODS:
            raise ConfigError(f"RTC method {self.method!r} is not supported; expected one of "
                              f"{list(METHODS)}")
        if not math.isfinite(float(self.max_guidance)) or self.max_guidance < 0:
            raise ConfigError(f"RTC max_guidance must be finite and >= 0, got {self.max_guidance}")


def prefix_weights(delay: int, execution_horizon: int, horizon: int,
                   schedule: str = "exp") -> Tensor:
    """W [horizon] float32: 1 for i < d, decaying over d <= i < H - s, 0 for i >= max(d, H - s).

    The decay uses the linear ramp c_i = (H - s - i) / (H - s - d + 1) (strictly between 1 and 0,
    as in the paper's code); `exp` maps it to c_i * (e^c_i - 1) / (e - 1). When d > H - s (a
    latency the execution horizon does not allow for) the frozen part wins: the first d actions
    will be executed from the old chunk whatever happens, so they keep weight 1.
    """
    for name, value in (("delay", delay), ("execution_horizon", execution_horizon),
                        ("horizon", horizon)):
        if isinstance(value, bool) or int(value) != value:
            raise ConfigError(f"RTC {name} must be an integer number of actions, got {value!r}")
    d, s, h = int(delay), int(execution_horizon), int(horizon)
    if h <= 0:
        raise ConfigError(f"RTC horizon must be > 0 (the chunk length), got {h}")
    if not 0 <= d <= h or not 0 <= s <= h:
        raise ConfigError(f"RTC delay {d} and execution horizon {s} must lie in [0, {h}] "
                          f"(the chunk length); the paper assumes d <= s <= H - d")
    if schedule not in SCHEDULES:
        raise ConfigError(f"RTC schedule {schedule!r} is not supported; expected one of "
                          f"{list(SCHEDULES)}")
    idx = torch.arange(h, dtype=torch.float64)
    end = h - s
    ramp = ((end - idx) / max(end - d + 1, 1)).clamp(0.0, 1.0)
    if schedule == "exp":
        ramp = ramp * torch.expm1(ramp) / (math.e - 1.0)
    weights = torch.where(idx < d, torch.ones_like(ramp), ramp)
    weights = torch.where(idx >= max(d, end), torch.zeros_like(weights), weights)
    return weights.to(torch.float32)


def guidance_weight(t: float, max_guidance: float) -> float:
    """w(t) = min(beta, c / r2) in PI0's time t (1 = noise, 0 = data); float64 on the host.

    With the paper's tau = 1 - t: r2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2), c = (1 - tau) / tau,
    so c / r2 = (t^2 + (1 - t)^2) / (t (1 - t)); it is infinite at t = 1 and t = 0, where w = beta.
    """
    beta = float(max_guidance)
    if beta == 0.0:
        return 0.0
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"flow time t must lie in [0, 1], got {t}")
    tau = 1.0 - t
    if tau <= 0.0 or tau >= 1.0:
        return beta
    r2 = (1.0 - tau) ** 2 / (tau ** 2 + (1.0 - tau) ** 2)
    c = (1.0 - tau) / tau
    return min(beta, c / r2)


def euler_times(num_steps: int) -> List[float]:
    """The flow times the Euler loops evaluate: t_k = 1 + k * dt, dt = -1 / N (as float32)."""
    if num_steps <= 0:
        raise ConfigError(f"num_steps must be a positive integer, got {num_steps}")
    dt = -1.0 / num_steps
    return [float(np.float32(1.0 + k * dt)) for k in range(num_steps)]


def step_scalars(num_steps: int, max_guidance: float) -> Tensor:
    """[num_steps, 2] float32 rows (t_k, w_k): what a device loop reads per step (no host maths
    inside the loop). w_k is computed from the float32 t_k the loops use."""
    rows = [(t, guidance_weight(t, max_guidance)) for t in euler_times(num_steps)]
    return torch.tensor(rows, dtype=torch.float32)


def build_target(prev_normalized: ArrayLike, consumed: int, horizon: int) -> Tensor:
    """Y [B, horizon, A] float32: the previous chunk shifted left by `consumed`, edge-padded.

    `prev_normalized` is the previous chunk as the backend returned it ([B, H_prev, A] normalised,
    padded). `consumed` = actions of it already executed at the new observation time, so Y[i] is the
    action the old chunk would command i ticks after the observation. Padding repeats the last
    action of the old chunk (hold), not zeros: 0 in normalised space is the dataset mean, a real
    pose, and zero-padding pulls any padded index that still has weight toward it (lerobot #4454).
    `build_guidance` also gives padded indices weight 0.
    """
    prev = _as_tensor(prev_normalized)
    if prev.ndim != 3 or prev.shape[1] == 0:
        raise ConfigError(f"previous chunk must be [B, H, A] with H > 0, got {tuple(prev.shape)}")
    if isinstance(consumed, bool) or int(consumed) != consumed or consumed < 0:
        raise ConfigError(f"consumed must be an integer >= 0 (actions already executed), got "
                          f"{consumed!r}")
    if horizon <= 0:
        raise ConfigError(f"horizon must be > 0, got {horizon}")
    consumed = int(consumed)
    # nothing left: hold the last commanded action
    left = prev[:, consumed:consumed + horizon] if consumed < prev.shape[1] else prev[:, -1:]
    pad = horizon - left.shape[1]
    if pad > 0:
        left = torch.cat([left, left[:, -1:].expand(-1, pad, -1)], dim=1)
    return left.clone()  # never a view of the caller's (possibly inference-mode) chunk


def remaining_actions(prev_len: int, consumed: int) -> int:
    """How many actions of a chunk of length `prev_len` are still to come after `consumed`."""
    return max(int(prev_len) - int(consumed), 0)


def build_guidance(prev_normalized: ArrayLike, consumed: int, delay: int, execution_horizon: int,
                   config: RtcConfig, horizon: Optional[int] = None,
                   action_dim: Optional[int] = None) -> RtcGuidance:
    """RtcGuidance for the next inference from the previous chunk and the scheduler's numbers.

    `consumed`: actions of the previous chunk executed at the new observation time; `delay` d:
    ticks between the observation and the first tick the new chunk drives (from the measured
    latency, never assumed 0); `execution_horizon` s: actions executed from a chunk before the
    next one takes over. W comes from prefix_weights and is 0 where the old chunk has no action
    left (so padding never pulls). `action_dim` pads/crops Y's last dim (default: as given).
    """
    prev = _as_tensor(prev_normalized)
    if prev.ndim != 3:
        raise ConfigError(f"previous chunk must be [B, H, A], got {tuple(prev.shape)}")
    h = prev.shape[1] if horizon is None else int(horizon)
    target = build_target(prev, consumed, h)
    if action_dim is not None and action_dim != target.shape[2]:
        if action_dim < target.shape[2]:
            target = target[..., :action_dim].contiguous()
        else:
            target = torch.nn.functional.pad(target, (0, action_dim - target.shape[2]))
    weights = prefix_weights(min(delay, h), min(execution_horizon, h), h, config.schedule)
    weights[remaining_actions(prev.shape[1], consumed):] = 0.0
    weights = weights[None].expand(prev.shape[0], -1).contiguous()
    return RtcGuidance(target=target, weights=weights, max_guidance=float(config.max_guidance),
                       method=config.method)


def weighted_error(chunk: ArrayLike, guidance: RtcGuidance) -> Tensor:
    """Per-batch sum of |(Y - chunk) * W| (the quantity guidance reduces), for tests and reports."""
    diff = (guidance.target - _as_tensor(chunk)) * guidance.weights[..., None]
    return diff.abs().flatten(1).sum(dim=1)


def frozen_prefix_error(chunk: ArrayLike, target: ArrayLike, delay: int) -> float:
    """max |chunk[:, :d] - Y[:, :d]| over batch, actions and dims (0 when d = 0)."""
    if delay <= 0:
        return 0.0
    a, y = _as_tensor(chunk), _as_tensor(target)
    return float((a[:, :delay] - y[:, :delay]).abs().max())


def _as_tensor(value: ArrayLike) -> Tensor:
    """numpy or torch -> float32 torch on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", torch.float32)
    return torch.as_tensor(np.asarray(value), dtype=torch.float32)
