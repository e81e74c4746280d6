"""Timed action queue: when to ask for the next chunk, how to splice it in, what to send each tick.

Every action has an absolute node-clock time t_obs + i*dt (dt = 1/control_rate_hz, 20 ms at 50 Hz).
Async mode starts inference d = ceil(p95 latency / dt) + margin steps before the planned switch and
drops the actions that elapsed meanwhile; sync mode plays execute_steps, holds, re-plans (openpi).
ROS counterpart: the node's control timer calls tick and should_request_inference; its worker
calls on_chunk.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from pi0_ttnn_node.control.latency import LatencyTracker
from pi0_ttnn_node.control.safety import ClipReport, TrajectoryLimiter, finite_difference_velocities
from pi0_ttnn_node.errors import ConfigError

logger = logging.getLogger(__name__)

MODES = ("async", "sync")
MERGES = ("replace", "blend", "rtc")  # rtc: the chunk itself continues the queue; spliced as-is
RECOVERY_SAMPLES = 5  # this many live latencies in a row within max_delay_steps end sync mode
_EPS = 1e-6  # seconds; an action due within this of now counts as already commanded


@dataclass(frozen=True)
class ScheduleConfig:
    """Scheduling parameters (`schedule.*`, `merge.*`, `control_rate_hz` in the node YAML)."""

    mode: str = "async"
    execute_steps: int = 25  # most actions of one chunk played before switching (1: every tick)
    margin_steps: int = 2
    max_delay_steps: int = 20  # p95 delay beyond this: behave as sync
    merge: str = "replace"
    blend_steps: int = 5
    control_rate_hz: float = 50.0
    min_latency_s: float = 0.0  # a chunk is used no earlier than this after its request

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"schedule.mode '{self.mode}' unknown; expected one of {MODES}")
        if self.merge not in MERGES:
            raise ConfigError(f"merge.mode '{self.merge}' unknown; expected one of {MERGES}")
        for name in ("execute_steps", "blend_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("margin_steps", "max_delay_steps"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"schedule.{name} must be >= 0; got {getattr(self, name)}")
        if not (math.isfinite(self.min_latency_s) and self.min_latency_s >= 0):
            raise ConfigError(f"schedule.min_latency_s must be >= 0; got {self.min_latency_s}")
        rate = self.control_rate_hz
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"control_rate_hz must be a positive finite number; got {rate}")

    @property
    def dt(self) -> float:
        return 1.0 / self.control_rate_hz


@dataclass(frozen=True)
class Trajectory:
    """Remaining actions at a tick. Arrays are read-only views, times strictly increasing, > now."""

    times: np.ndarray  # [T] absolute node-clock seconds
    positions: np.ndarray  # [T, n]
    velocities: np.ndarray  # [T, n], last row 0 when it is the chunk's last action
    chunk_id: int

    def time_from_start(self, now: float) -> np.ndarray:
        """Seconds from `now` to each point (for a JointTrajectory stamped 0 or stamped `now`)."""
        return self.times - now


@dataclass(frozen=True)
class ChunkReport:
    """Outcome of on_chunk. `boundary_jump`: max |new chunk - old command| at the switch point."""

    accepted: bool
    reason: str  # "" when accepted
    dropped: int  # actions whose time elapsed during inference
    delay_steps: int
    mode: str  # effective mode ("sync" also when delay_steps > max_delay_steps)
    boundary_jump: float
    queued: int
    clip: Optional[ClipReport] = None


class ActionScheduler:
    """The action queue with latency compensation and merge policy; thread-safe.

    Internally the queue stores a first, never-published point: the command at the moment of
    the switch. It makes `current_command` exact between the switch and the first new action.
    """

    def __init__(self, config: ScheduleConfig, num_joints: int,
                 limiter: Optional[TrajectoryLimiter] = None,
                 latency: Optional[LatencyTracker] = None) -> None:
        self.config = config
        self.num_joints = int(num_joints)
        self.limiter = limiter
        self.latency = latency if latency is not None else LatencyTracker()
        self.counters: Dict[str, int] = {}
        self.hold_reason = "no_chunk"
        self._lock = threading.Lock()
        self._next_id = 0
        self._in_flight: Optional[int] = None
        self._in_flight_since = 0.0
        self._first_valid_id = 0
        self._chunk_id = 0
        self._last_now: Optional[float] = None
        self._last_mode = config.mode
        self._clear_queue()

    def _clear_queue(self) -> None:
        self._times: Optional[np.ndarray] = None  # [1 + T]
        self._pos: Optional[np.ndarray] = None  # [1 + T, n]
        self._vel: Optional[np.ndarray] = None  # [1 + T, n]

    # ---- timing ------------------------------------------------------------------------------
    @property
    def delay_steps(self) -> int:
        p95 = self.latency.p95
        return 0 if p95 is None else int(math.ceil(p95 / self.config.dt - 1e-9))

    @property
    def effective_mode(self) -> str:
        if self.config.mode == "sync" or self.delay_steps > self.config.max_delay_steps:
            return "sync"
        return "async"

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def _split(self, now: float) -> int:
        # index of the first queued point still in the future
        return int(np.searchsorted(self._times, now + _EPS, side="right"))

    # ---- control tick ------------------------------------------------------------------------
    def tick(self, now: float) -> Optional[Trajectory]:
        """Return the remaining trajectory, or None (hold) with `hold_reason` set."""
        with self._lock:
            if self._last_now is not None and now < self._last_now:
                self._reset_locked("clock_jump_back")
                self._last_now = now
                return self._hold("clock_jump_back")
            self._last_now = now
            if self._times is None:
                return self._hold("no_chunk")
            i = self._split(now)
            if i >= self._times.shape[0]:
                return self._hold("queue_dry")
            self.hold_reason = ""
            return Trajectory(self._times[i:], self._pos[i:], self._vel[i:], self._chunk_id)

    def _hold(self, reason: str) -> None:
        self.hold_reason = reason
        key = "hold_" + reason
        self.counters[key] = self.counters.get(key, 0) + 1
        return None

    def current_command(self, now: float) -> Optional[np.ndarray]:
        """Position commanded at `now` (interpolated; the last point once the queue ran dry)."""
        with self._lock:
            return None if self._times is None else self._interp(now)

    def queue_snapshot(self) -> Optional[tuple]:
        """(times, positions) of the queue as it stands, read-only; None when empty."""
        with self._lock:
            return None if self._times is None else (self._times, self._pos)

    def _interp(self, t: float) -> np.ndarray:
        times, pos = self._times, self._pos
        i = int(np.searchsorted(times, t, side="right"))
        if i == 0:
            return pos[0].copy()
        if i >= times.shape[0]:
            return pos[-1].copy()
        w = (t - times[i - 1]) / (times[i] - times[i - 1])
        return pos[i - 1] + w * (pos[i] - pos[i - 1])

    # ---- inference requests ------------------------------------------------------------------
    def should_request_inference(self, now: float) -> bool:
        """True when the worker should start an inference now (never while one is in flight).

        async: when the queue holds <= d + margin actions, or when played + d + margin reaches
        execute_steps, so the new chunk lands around execute_steps. sync: when the queue is dry.
        """
        cfg = self.config
        with self._lock:
            if self._in_flight is not None:
                return False
            if self._times is None:
                return True
            i = self._split(now)
            remaining = self._times.shape[0] - i
            if remaining == 0:
                return True
            if self.effective_mode == "sync":
                return False
            lead = self.delay_steps + cfg.margin_steps
            played = i - 1  # the first stored point is the switch point, not an action
            return remaining <= lead or played + lead >= cfg.execute_steps

    def mark_inference_started(self, now: float) -> int:
        """Record that an inference started; return its request id for on_chunk."""
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
            self._in_flight = request_id
            self._in_flight_since = now
            return request_id

    def on_inference_failed(self, request_id: int, outcome: str = "inference_failed") -> None:
        """Clear the in-flight mark after an inference that produced no chunk (the queue keeps
        playing); `outcome` names the counter, e.g. `inference_skipped` when nothing was new."""
        with self._lock:
            if self._in_flight == request_id:
                self._in_flight = None
            self.counters[outcome] = self.counters.get(outcome, 0) + 1

    # ---- new chunk ---------------------------------------------------------------------------
    def on_chunk(self, chunk: np.ndarray, t_obs: float, now: float, request_id: int,
                 current_state: Optional[np.ndarray] = None) -> ChunkReport:
        """Merge a chunk [H, n] of absolute positions observed at `t_obs`, arriving at `now`.

        `current_state` (the measured joints) is the start reference when nothing was commanded
        yet. Never raises for bad data: a refused chunk leaves the queue as it was.
        """
        cfg = self.config
        with self._lock:
            if self._in_flight == request_id:
                self._in_flight = None
                self._add_latency(now - self._in_flight_since)
            d, mode = self.delay_steps, self.effective_mode
            if mode != self._last_mode:
                logger.warning("schedule mode now %s (p95 delay %d steps, max %d)", mode, d,
                               cfg.max_delay_steps)
                self._last_mode = mode
            if request_id < self._first_valid_id:
                return self._refuse("stale_request", 0, d, mode)
            chunk = np.asarray(chunk, dtype=np.float64)
            if chunk.ndim != 2 or chunk.shape[0] == 0 or chunk.shape[1] != self.num_joints:
                return self._refuse("bad_shape", 0, d, mode)
            if not np.isfinite(chunk).all():
                return self._refuse("nonfinite_action", 0, d, mode)
            if self._times is not None:
                start = self._interp(now)
            elif current_state is not None:
                start = np.asarray(current_state, dtype=np.float64)
            else:
                return self._refuse("no_start_reference", 0, d, mode)
            times, new, dropped = self._align(chunk, t_obs, now, mode)
            if new.shape[0] == 0:
                return self._refuse("chunk_elapsed", dropped, d, mode)
            old_ref = self._old_reference(times)
            ref0 = old_ref[0] if old_ref is not None else start
            boundary_jump = float(np.abs(new[0] - ref0).max())
            if cfg.merge == "blend" and old_ref is not None:
                new = self._blend(new, old_ref, times)
            clip = None
            if self.limiter is not None:
                new, vel, clip = self.limiter.clip_trajectory(new, start, cfg.dt)
                if clip.rejected:
                    return self._refuse(clip.reason, dropped, d, mode, boundary_jump, clip)
            else:
                vel = finite_difference_velocities(new, cfg.dt)
            self._commit(now, start, times, new, vel)
            self._count("chunk_accepted")
            return ChunkReport(True, "", dropped, d, mode, boundary_jump, new.shape[0], clip)

    def _add_latency(self, seconds: float) -> None:
        # Chunks are taken at control ticks, so the latency that matters is a whole number of
        # ticks; rounding keeps timer jitter (< dt / 2) out of the delay estimate.
        dt = self.config.dt
        self.latency.add(round(seconds / dt) * dt)
        recent = self.latency.recent(RECOVERY_SAMPLES)
        limit = self.config.max_delay_steps
        if self.delay_steps > limit and len(recent) == RECOVERY_SAMPLES and \
                all(math.ceil(s / dt - 1e-9) <= limit for s in recent):
            # slow samples from the past (first calls, a busy disk) no longer describe the loop
            self.latency.keep_recent(RECOVERY_SAMPLES)
            self._count("latency_recovered")

    def _align(self, chunk: np.ndarray, t_obs: float, now: float, mode: str):
        dt = self.config.dt
        if mode == "sync":
            # the robot held still during inference, so the chunk starts over from its first action
            new = chunk[: self.config.execute_steps]
            return now + dt * np.arange(1, new.shape[0] + 1), new, 0
        times = t_obs + dt * np.arange(chunk.shape[0])
        dropped = int(np.searchsorted(times, now + _EPS, side="right"))
        return times[dropped:], chunk[dropped:], dropped

    def _old_reference(self, times: np.ndarray) -> Optional[np.ndarray]:
        """Old command at the new chunk's times (held at its last point); None without a queue."""
        if self._times is None:
            return None
        out = np.empty((times.shape[0], self.num_joints))
        for j in range(self.num_joints):
            out[:, j] = np.interp(times, self._times, self._pos[:, j])
        return out

    def _blend(self, new: np.ndarray, old_ref: np.ndarray, times: np.ndarray) -> np.ndarray:
        # linear cross-fade: weight of the new chunk (j+1)/(blend_steps+1) at its j-th point,
        # only where the old queue still had actions (beyond its end there is nothing to fade from)
        k = self.config.blend_steps
        w = np.minimum(1.0, np.arange(1, new.shape[0] + 1) / (k + 1.0))
        w[times > self._times[-1] + _EPS] = 1.0
        return w[:, None] * new + (1.0 - w[:, None]) * old_ref

    def _commit(self, now: float, start: np.ndarray, times: np.ndarray, pos: np.ndarray,
                vel: np.ndarray) -> None:
        self._times = np.concatenate(([now], times))
        self._pos = np.concatenate((start[None, :], pos))
        self._vel = np.concatenate((np.zeros((1, self.num_joints)), vel))
        for arr in (self._times, self._pos, self._vel):
            arr.setflags(write=False)
        self._chunk_id += 1
        self.hold_reason = ""

    def _refuse(self, reason: str, dropped: int, d: int, mode: str,
                jump: float = math.nan, clip: Optional[ClipReport] = None) -> ChunkReport:
        self._count("reject_" + reason)
        queued = 0 if self._times is None else self._times.shape[0] - 1
        return ChunkReport(False, reason, dropped, d, mode, jump, queued, clip)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    # ---- reset -------------------------------------------------------------------------------
    def reset(self, reason: str = "reset") -> None:
        """Drop the queue (instruction change, clock jump, ~/reset); discard in-flight results."""
        with self._lock:
            self._reset_locked(reason)

    def _reset_locked(self, reason: str) -> None:
        self._clear_queue()
        self._first_valid_id = self._next_id
        self._last_now = None
        self.hold_reason = "no_chunk"
        self._count("reset_" + reason)
