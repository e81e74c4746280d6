"""ControlCore: the one robot loop that the node, offline replay and the soak all drive.

Per control tick: take results whose time has come, splice them into the action queue (replace,
blend or rtc), return the trajectory to command (or a hold) and, when the scheduler says so, a
request id for a new inference. On the inference side (the node's worker thread, or replay's
loop): `prepare` builds the observation at the request's tick time, derives the noise from
(seed, observation stamp) and, for merge.mode rtc, the guidance that makes the new chunk continue
the previous one; `on_result` queues the result until max(arrival, request + min_latency_s).
Drivers only move data in and out (ROS messages, bag messages, a simulated robot). ROS-free.
Counterparts: ros/node.py, tools/replay_engine.py, tools/soak.py (drivers); control/action_queue.py.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from pi0_ttnn_node import rtc
from pi0_ttnn_node.control.action_queue import ActionScheduler, ChunkReport, Trajectory
from pi0_ttnn_node.control.latency import LatencyTracker
from pi0_ttnn_node.control.node_config import NodeConfig
from pi0_ttnn_node.control.safety import TrajectoryLimiter, to_absolute
from pi0_ttnn_node.errors import Pi0Error
from pi0_ttnn_node.joint_mapping import JointStateCache
from pi0_ttnn_node.observation_sync import ObservationAssembler
from pi0_ttnn_node.preprocessing import Observation


def make_assembler(cfg: NodeConfig, on_instruction_change: Any) -> ObservationAssembler:
    """Joint-state cache + observation assembler with the node's sync rules (node, replay)."""
    joints = JointStateCache(cfg.state_joint_names,
                             history_s=max(1.0, 4.0 * cfg["sync.max_state_age_s"]),
                             max_abs_position=cfg["joint_states.max_abs_position"])
    return ObservationAssembler([c.name for c in cfg.cameras], [c.required for c in cfg.cameras],
                                cfg.primary_camera, joints, cfg.sync, on_instruction_change)


def align_previous(prev: np.ndarray, shift: float) -> Tuple[int, np.ndarray]:
    """(whole actions consumed, previous chunk resampled by the fractional rest).

    Observations need not fall on the previous chunk's action grid (a 15 Hz camera under a 50 Hz
    loop): the new chunk's action i is due `shift + i` actions after the previous observation.
    Linear interpolation between neighbouring actions (the last one held) puts the target Y on the
    new chunk's own times, as the queue interpolates the commands it sends."""
    shift = max(0.0, float(shift))
    whole = int(math.floor(shift + 1e-9))
    frac = shift - whole
    if frac < 1e-6:
        return whole, prev
    nxt = np.concatenate([prev[1:], prev[-1:]], axis=0)
    return whole, ((1.0 - frac) * prev + frac * nxt).astype(np.float32)


def stamp_key(t_obs: float) -> int:
    """Noise key of an observation: its stamp in microseconds (robust to float round-trips)."""
    return int(round(t_obs * 1e6))


def noise_key(t_obs: float, stream: int = 0) -> int:
    """Noise key of (observation stamp, robot stream); stream 0 = stamp_key (one robot). Other
    streams sit above every stamp in microseconds (< 2**52), so robots never share noise."""
    return stamp_key(t_obs) + (int(stream) << 52)


@dataclass(frozen=True)
class InferenceResult:
    """One chunk for the core: robot-unit actions of the observation taken at t_obs."""

    actions: np.ndarray  # [H, action_dim] float32, robot units
    normalized: np.ndarray  # [H, max_action_dim] float32, as the model produced it (RTC's Y)
    state: np.ndarray  # [state_dim] the observation's joint state (delta/velocity spaces)
    t_obs: float  # clock seconds (primary camera stamp)
    latency_s: float  # steady-clock duration of build + sample
    request_id: int  # the scheduler request it answers; results of a reset queue are refused
    backend: str
    timings_ms: Dict[str, float]
    truncated_prompt: bool
    guided: bool = False  # computed with RTC guidance


@dataclass(frozen=True)
class Prepared:
    """Everything one inference needs, built on the inference side from the request."""

    observation: Observation
    noise: Any  # torch.Tensor [1, H, max_action_dim]
    guidance: Optional[rtc.RtcGuidance]
    delay_steps: int  # RTC's d used for the guidance (0 without guidance)


@dataclass(frozen=True)
class Accepted:
    """A result taken at a tick: the chunk in absolute positions and what the queue made of it."""

    result: InferenceResult
    chunk: Optional[np.ndarray]  # [H, n_action_joints]; None when the action space failed
    report: ChunkReport


@dataclass(frozen=True)
class Tick:
    """Outcome of one control tick."""

    now: float
    trajectory: Optional[Trajectory]
    hold_reason: str  # "" while commanding
    request_id: Optional[int]  # start an inference for this request now
    accepted: Tuple[Accepted, ...]


@dataclass(frozen=True)
class Command:
    """The trajectory to send: times relative to `stamp` (None = zero stamp, start at once)."""

    positions: np.ndarray
    velocities: Optional[np.ndarray]
    stamp: Optional[float]
    time_from_start: np.ndarray


class ControlCore:
    """Action queue + limiter + observation hand-off + merging for one configured loop."""

    def __init__(self, cfg: NodeConfig, chunk_size: int, assembler: ObservationAssembler,
                 max_action_dim: int, noise_stream: int = 0) -> None:
        self.cfg = cfg
        # 0 = the single robot's noise; several robots each get their own stream (robots.py)
        self.noise_stream = int(noise_stream)
        self.chunk_size = int(chunk_size)
        self.max_action_dim = int(max_action_dim)
        schedule = dataclasses.replace(cfg.schedule, execute_steps=min(
            cfg.schedule.execute_steps, self.chunk_size))
        self.schedule = schedule
        self.scheduler = ActionScheduler(schedule, len(cfg.action_joint_names),
                                         TrajectoryLimiter(cfg.limits), LatencyTracker())
        self.assembler = assembler
        self.state_index = list(cfg.action_state_index)
        self._lock = threading.Lock()
        self._requests: Dict[int, float] = {}  # request id -> tick time of the request
        self._ready: List[Tuple[float, InferenceResult]] = []  # (use at or after, result)
        self._previous: Optional[Tuple[np.ndarray, float]] = None  # normalised chunk, its t_obs
        self._chunk_t_obs: Dict[int, float] = {}  # scheduler chunk id -> observation time
        self.accepted = 0

    @property
    def dt(self) -> float:
        return self.schedule.dt

    # ---- control tick ------------------------------------------------------------------------
    def tick(self, now: float) -> Tick:
        """Merge due results, then the trajectory for `now` and maybe a new inference request."""
        accepted = tuple(self._accept(result, now) for result in self._take_due(now))
        traj = self.scheduler.tick(now)
        request_id = None
        if self.scheduler.should_request_inference(now):
            request_id = self.scheduler.mark_inference_started(now)
            with self._lock:
                self._requests = {request_id: now}
        hold = self.scheduler.hold_reason if traj is None else ""
        return Tick(now, traj, hold, request_id, accepted)

    def request_early(self, now: float, within_s: float) -> Optional[int]:
        """Start a request now when the scheduler would ask within `within_s` anyway (several
        robots: join a batched call that starts now instead of a call of its own later)."""
        if within_s <= 0 or not self.scheduler.should_request_inference(now + within_s):
            return None
        request_id = self.scheduler.mark_inference_started(now)
        with self._lock:
            self._requests = {request_id: now}
        return request_id

    def _take_due(self, now: float) -> List[InferenceResult]:
        with self._lock:
            due = [r for t, r in self._ready if t <= now + 1e-9]
            self._ready = [(t, r) for t, r in self._ready if t > now + 1e-9]
        return due

    def _accept(self, result: InferenceResult, now: float) -> Accepted:
        cfg = self.cfg
        state = np.asarray(result.state, dtype=np.float64)[self.state_index]
        actions = np.asarray(result.actions, dtype=np.float64)[:, list(cfg.action_dims)]
        try:
            chunk = to_absolute(cfg["action.space"], actions, state, self.dt)
        except Pi0Error as err:
            self.scheduler.on_inference_failed(result.request_id, "action_space_failed")
            report = ChunkReport(False, f"action_space: {err}", 0, self.scheduler.delay_steps,
                                 self.scheduler.effective_mode, math.nan, 0)
            return Accepted(result, None, report)
        report = self.scheduler.on_chunk(chunk, result.t_obs, now, result.request_id,
                                         current_state=state)
        if report.accepted:
            self.accepted += 1
            with self._lock:
                self._previous = (np.asarray(result.normalized, np.float32), result.t_obs)
                previous = self._chunk_t_obs.get(self.accepted - 1)
                self._chunk_t_obs = {self.accepted: result.t_obs}
                if previous is not None:  # the tick may still be playing the previous chunk
                    self._chunk_t_obs[self.accepted - 1] = previous
        return Accepted(result, chunk, report)

    def command(self, traj: Trajectory, now: float) -> Command:
        """What to send for `traj` under output.stamp_mode / output.send_velocities."""
        t0 = now
        if self.cfg["output.stamp_mode"] == "observation":
            t0 = self._chunk_t_obs.get(traj.chunk_id, now)
        velocities = traj.velocities if self.cfg["output.send_velocities"] else None
        return Command(traj.positions, velocities, None if t0 == now else t0, traj.times - t0)

    # ---- inference side ----------------------------------------------------------------------
    def requested_at(self, request_id: int) -> Optional[float]:
        with self._lock:
            return self._requests.get(request_id)

    def prepare(self, request_id: int, policy: Any) -> Prepared:
        """Observation at the request's tick time, its noise and (rtc) guidance.

        Raises ObservationRejected like the assembler. `policy` is a Pi0Policy (noise source,
        chunk shape)."""
        t_req = self.requested_at(request_id)
        if t_req is None:
            raise KeyError(f"request {request_id} is not outstanding (reset since?)")
        obs = self.assembler.build(t_req)
        noise = policy.noise.for_key(policy.noise_shape(1),
                                     noise_key(obs.timestamp, self.noise_stream))
        guidance, delay = self._guidance(obs.timestamp, t_req)
        return Prepared(obs, noise, guidance, delay)

    def _guidance(self, t_obs: float, t_req: float) -> Tuple[Optional[rtc.RtcGuidance], int]:
        if self.schedule.merge != "rtc":
            return None, 0
        with self._lock:
            previous = self._previous
        if previous is None:
            return None, 0
        prev_norm, prev_t_obs = previous
        dt = self.dt
        consumed, prev_norm = align_previous(prev_norm, (t_obs - prev_t_obs) / dt)
        # actions of the new chunk at or before the tick that delivers it are never executed
        # from it: they are the frozen prefix d (observation -> request -> expected latency)
        delay = int(math.floor((t_req - t_obs) / dt + 1e-9)) + self.scheduler.delay_steps + 1
        delay = max(0, min(delay, self.chunk_size))
        guidance = rtc.build_guidance(prev_norm[None], consumed, delay,
                                      self.schedule.execute_steps, self.cfg.rtc,
                                      horizon=self.chunk_size, action_dim=self.max_action_dim)
        return guidance, delay

    def on_result(self, result: InferenceResult, arrived_at: float) -> None:
        """Queue a result; it is merged at the first tick at or after max(arrival, request +
        schedule.min_latency_s)."""
        with self._lock:
            t_req = self._requests.pop(result.request_id, arrived_at)
            self._ready.append((max(arrived_at, t_req + self.schedule.min_latency_s), result))

    def on_failed(self, request_id: int, outcome: str = "inference_failed") -> None:
        """The request produced no chunk (no observation, skipped, backend error)."""
        with self._lock:
            self._requests.pop(request_id, None)
        self.scheduler.on_inference_failed(request_id, outcome)

    def current_command(self, now: float) -> Optional[np.ndarray]:
        return self.scheduler.current_command(now)

    def reset(self, reason: str) -> None:
        """Drop the queue and the RTC reference (instruction change, clock jump, ...). Results
        still waiting are merged as usual and refused as `stale_request`, which also ends their
        in-flight mark, so the next inference can start."""
        with self._lock:
            self._previous = None
        self.scheduler.reset(reason)
