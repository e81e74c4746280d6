"""Action-space conversion and the safety gate every trajectory passes before it is queued.

Positions are clipped to per-joint limits and to max_velocity*dt per step (from the current
command), a chunk whose first point jumps more than max_start_jump (0.3 rad typical) is refused,
and nothing non-finite ever comes out. ROS counterpart: `limits.*` and `action.space` parameters;
action_queue.py calls the limiter when it merges a chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from pi0_ttnn_node.errors import ConfigError, InferenceError

ACTION_SPACES = ("absolute_position", "delta_position", "velocity")


@dataclass(frozen=True)
class Limits:
    """Per-joint limits [n] in robot units (rad, rad/s); a scalar start jump covers all joints."""

    position_lower: np.ndarray
    position_upper: np.ndarray
    max_velocity: np.ndarray
    max_start_jump: np.ndarray

    @classmethod
    def create(cls, position_lower: Sequence[float], position_upper: Sequence[float],
               max_velocity: Sequence[float], max_start_jump: Union[float, Sequence[float]] = 0.3
               ) -> "Limits":
        """Build validated limits; raise ConfigError naming the offending joint index."""
        lower = np.asarray(position_lower, dtype=np.float64)
        n = lower.shape[0] if lower.ndim == 1 else 0
        arrays = {"position_lower": lower,
                  "position_upper": np.asarray(position_upper, dtype=np.float64),
                  "max_velocity": np.asarray(max_velocity, dtype=np.float64),
                  "max_start_jump": np.broadcast_to(
                      np.asarray(max_start_jump, dtype=np.float64), (n,)).copy()}
        for name, arr in arrays.items():
            if arr.shape != (n,) or n == 0:
                raise ConfigError(f"limits.{name} has shape {arr.shape}; expected ({n},), n > 0")
            if not np.isfinite(arr).all():
                raise ConfigError(f"limits.{name} must be finite; got {arr.tolist()}")
        bad = np.flatnonzero(arrays["position_lower"] >= arrays["position_upper"])
        if bad.size:
            raise ConfigError(f"limits.position_lower >= position_upper at joints {bad.tolist()}")
        for name in ("max_velocity", "max_start_jump"):
            bad = np.flatnonzero(arrays[name] <= 0)
            if bad.size:
                raise ConfigError(f"limits.{name} must be > 0; joints {bad.tolist()} are not")
        for arr in arrays.values():
            arr.setflags(write=False)
        return cls(**arrays)

    @property
    def num_joints(self) -> int:
        return self.position_lower.shape[0]


def to_absolute(space: str, actions: np.ndarray, obs_state: np.ndarray, dt: float) -> np.ndarray:
    """Convert a chunk [T, n] in `space` to absolute positions [T, n].

    delta_position: each action is an offset from the state at the chunk's own observation (not
    re-anchored per tick). velocity: p_i = s + dt * sum_{j<=i} v_j, integrated from that state.
    Non-finite values pass through; clip_trajectory refuses them.
    """
    actions = np.asarray(actions, dtype=np.float64)
    obs_state = np.asarray(obs_state, dtype=np.float64)
    if actions.ndim != 2 or obs_state.shape != (actions.shape[1],):
        msg = f"actions {actions.shape} and state {obs_state.shape} do not match as [T, n] and [n]"
        raise InferenceError(msg)
    if space == "absolute_position":
        return actions.copy()
    if space == "delta_position":
        return obs_state + actions
    if space == "velocity":
        return obs_state + np.cumsum(actions, axis=0) * dt
    raise ConfigError(f"action.space '{space}' is unknown; expected one of {ACTION_SPACES}")


def finite_difference_velocities(positions: np.ndarray, dt: float) -> np.ndarray:
    """Velocities [T, n]: forward difference at the first point, central inside, 0 at the last.

    The last point is 0 because the joint_trajectory_controller refuses a non-zero final velocity
    unless allow_nonzero_velocity_at_trajectory_end is set.
    """
    vel = np.zeros_like(positions)
    t = positions.shape[0]
    if t >= 2:
        vel[0] = (positions[1] - positions[0]) / dt
    if t >= 3:
        vel[1:-1] = (positions[2:] - positions[:-2]) / (2.0 * dt)
    return vel


@dataclass(frozen=True)
class ClipReport:
    """What the gate did to one trajectory. `reason` is set only when `rejected`."""

    position_clips: int
    velocity_clips: int
    start_jump: float  # max |first point - current command| over joints, after position clipping
    rejected: bool
    reason: str = ""


class TrajectoryLimiter:
    """Clip trajectories to Limits and count what was clipped or refused, per reason."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.counters: Dict[str, int] = {"position_clip": 0, "velocity_clip": 0,
                                         "start_jump": 0, "nonfinite_action": 0,
                                         "nonfinite_start": 0}

    def clip_trajectory(self, positions: np.ndarray, start: np.ndarray, dt: float
                        ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], ClipReport]:
        """Return (positions [T, n], velocities [T, n], report); arrays are None when rejected.

        `start` is the position being commanded now; the first point is limited relative to it.
        """
        lim = self.limits
        positions = np.asarray(positions, dtype=np.float64)
        start = np.asarray(start, dtype=np.float64)
        n = lim.num_joints
        if positions.ndim != 2 or positions.shape[0] == 0 or positions.shape[1] != n:
            raise InferenceError(f"trajectory shape {positions.shape}; expected [T > 0, {n}]")
        if start.shape != (n,):
            raise InferenceError(f"start command shape {start.shape}; expected ({n},)")
        if not (math.isfinite(dt) and dt > 0):
            raise ConfigError(f"dt must be a positive finite number; got {dt}")
        if not np.isfinite(start).all():
            return self._reject("nonfinite_start", math.nan)
        if not np.isfinite(positions).all():
            return self._reject("nonfinite_action", math.nan)
        clipped = np.clip(positions, lim.position_lower, lim.position_upper)
        position_clips = int(np.count_nonzero(clipped != positions))
        jump_per_joint = np.abs(clipped[0] - start)
        start_jump = float(jump_per_joint.max())
        if (jump_per_joint > lim.max_start_jump).any():
            return self._reject("start_jump", start_jump)
        max_step = lim.max_velocity * dt
        steps = np.diff(clipped, axis=0, prepend=start[None, :])
        velocity_clips = 0
        if (np.abs(steps) > max_step).any():
            # sequential: each limited step moves the base of the next one
            prev = start
            for i in range(clipped.shape[0]):
                step = clipped[i] - prev
                limited = np.clip(step, -max_step, max_step)
                velocity_clips += int(np.count_nonzero(limited != step))
                prev = prev + limited
                clipped[i] = prev
            # a start outside the position box could leave the first steps outside it
            np.clip(clipped, lim.position_lower, lim.position_upper, out=clipped)
        self.counters["position_clip"] += position_clips
        self.counters["velocity_clip"] += velocity_clips
        velocities = finite_difference_velocities(clipped, dt)
        np.clip(velocities, -lim.max_velocity, lim.max_velocity, out=velocities)
        report = ClipReport(position_clips, velocity_clips, start_jump, rejected=False)
        return clipped, velocities, report

    def _reject(self, reason: str, start_jump: float
                ) -> Tuple[None, None, ClipReport]:
        self.counters[reason] += 1
        return None, None, ClipReport(0, 0, start_jump, rejected=True, reason=reason)
