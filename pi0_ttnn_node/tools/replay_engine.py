"""The replay loop: bag messages into the node's core, control ticks on bag time, backends called.

CoreFeed builds the same core objects as ros/inputs.py and ros/node.py (JointStateCache,
ObservationAssembler, ActionScheduler with the node's ScheduleConfig and limits) and feeds them
exactly as the node's callbacks do. Noise depends on (seed, tick) only and is shared by both
backends. Counterparts: tools/replay.py (CLI, report), ros/node.py (the live control loop).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from pi0_ttnn_node import image_conversion
from pi0_ttnn_node.action_queue import ActionScheduler, LatencyTracker, ScheduleConfig
from pi0_ttnn_node.backends import BackendOptions
from pi0_ttnn_node.bag_tools import BagBuilder, BagMessage, stamp_seconds
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import BackendUnavailableError, ObservationRejected, Pi0Error
from pi0_ttnn_node.joint_mapping import JointStateCache
from pi0_ttnn_node.observation_sync import ObservationAssembler, SyncConfig
from pi0_ttnn_node.policy import NoiseSource, Pi0Policy, PolicyConfig
from pi0_ttnn_node.safety import Limits, TrajectoryLimiter, to_absolute
from pi0_ttnn_node.tools.replay_inputs import NODE_NAME, ReplayInputs
from pi0_ttnn_node.tools.replay_report import TickRecord

LOG = logging.getLogger("pi0_replay")


@dataclass
class BackendArg:
    backend: str
    torch_dtype: str = "float32"
    torch_device: str = "cpu"
    ttnn_emulate: bool = False

    def label(self) -> str:
        if self.backend == "torch":
            return f"torch/{self.torch_device}/{self.torch_dtype}"
        return "ttnn" + ("/emulated" if self.ttnn_emulate else "")


@dataclass
class ReplayArgs:
    bag: Path
    out: Path
    backends: List[BackendArg]
    seed: int = 0
    checkpoint: str = ""
    model_type: str = "pi0"
    params_file: Optional[str] = None
    node_name: str = NODE_NAME
    namespace: str = "/"
    instruction_topic: str = "~/instruction"
    overrides: Dict[str, Any] = field(default_factory=dict)
    sim_latency_ms: float = 0.0
    warmup: int = 1
    start_offset: float = 0.0
    duration: float = 0.0  # 0 = to the end
    max_inferences: int = 0  # 0 = no limit
    threshold: float = 0.05
    storage: str = "mcap"
    plots: bool = True
    progress: bool = True
    overwrite: bool = False


def tick_noise(seed: int, tick: int, shape: tuple) -> torch.Tensor:
    """Noise for one control tick: a function of (seed, tick) only, shared by both backends."""
    if seed < 0:
        return NoiseSource(-1).draw(shape)
    derived = int(np.random.SeedSequence([seed, tick]).generate_state(1, np.uint32)[0])
    return NoiseSource(derived).draw(shape)


class CoreFeed:
    """The node's core objects, fed from bag messages exactly as the node's callbacks feed them."""

    def __init__(self, inputs: ReplayInputs, values: Dict[str, Any]) -> None:
        self.inputs = inputs
        dt = 1.0 / float(values["control_rate_hz"])
        self.schedule = ScheduleConfig(
            mode=values["schedule.mode"], execute_steps=int(values["schedule.execute_steps"]),
            margin_steps=int(values["schedule.margin_steps"]),
            max_delay_steps=int(values["schedule.max_delay_steps"]), merge=values["merge.mode"],
            blend_steps=int(values["merge.blend_steps"]), control_rate_hz=1.0 / dt)
        limiter = None
        if values["limits.position_lower"]:
            limiter = TrajectoryLimiter(Limits.create(
                values["limits.position_lower"], values["limits.position_upper"],
                values["limits.max_velocity"], values["limits.max_start_jump"]))
        self.scheduler = ActionScheduler(self.schedule, len(inputs.action_joints), limiter,
                                         LatencyTracker())
        self.joints = JointStateCache(inputs.state_joints,
                                      history_s=max(1.0, 4.0 * values["sync.max_state_age_s"]))
        sync = SyncConfig(max_image_age_s=values["sync.max_image_age_s"],
                          max_state_age_s=values["sync.max_state_age_s"],
                          max_camera_skew_s=values["sync.max_camera_skew_s"],
                          default_instruction=values["instruction.default"])
        self.assembler = ObservationAssembler(
            [c.name for c in inputs.cameras], [c.required for c in inputs.cameras],
            inputs.primary, self.joints, sync,
            lambda _text: self.scheduler.reset("instruction"))
        self.cameras = {c.topic: c for c in inputs.cameras if c.msgtype}
        self.input_rejects: Dict[str, int] = {}
        self.primary_ns: Dict[float, int] = {}  # float stamp -> exact ns of recent primary frames

    def stamp_ns(self, t_obs: float) -> int:
        """Exact header stamp (ns) of the primary frame whose float stamp is t_obs."""
        return self.primary_ns.get(t_obs, int(round(t_obs * 1e9)))

    def feed(self, m: BagMessage) -> None:
        receipt = m.log_time_ns * 1e-9
        try:
            if m.topic in self.cameras:
                self._image(self.cameras[m.topic], m, receipt)
            elif m.topic in self.inputs.joint_topics:
                self.joints.add(stamp_seconds(m.msg.header), list(m.msg.name),
                                np.asarray(m.msg.position, dtype=np.float64), receipt)
            else:
                self.assembler.set_instruction(m.msg.data)
        except ObservationRejected as err:
            self.input_rejects[err.reason] = self.input_rejects.get(err.reason, 0) + 1

    def _image(self, cam: Any, m: BagMessage, receipt: float) -> None:
        msg = m.msg
        if cam.msgtype.endswith("/CompressedImage"):
            decoder = image_conversion.compressed_image_decoder(msg.format, msg.data)
        else:
            decoder = image_conversion.raw_image_decoder(msg.encoding, msg.height, msg.width,
                                                         msg.step, msg.data)
        stamp = stamp_seconds(msg.header)
        if self.assembler.add_image(cam.name, stamp, decoder, receipt_time=receipt) and \
                cam.name == self.inputs.primary:
            if len(self.primary_ns) > 64:
                self.primary_ns.clear()
            self.primary_ns[stamp] = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def load_policies(args: ReplayArgs, values: Dict[str, Any]) -> Dict[str, Pi0Policy]:
    """Backend 'a' (and 'b'): one checkpoint read, shared by both."""
    path = args.checkpoint or values["policy.checkpoint_dir"] or \
        str(ensure_embedded_checkpoint(args.model_type))
    checkpoint = load_checkpoint(path, strict=True, progress=False)
    policies = {}
    for key, b in zip("ab", args.backends):
        cfg = PolicyConfig(checkpoint_dir=path, backend=b.backend,
                           num_steps=int(values["policy.num_steps"]),
                           options=BackendOptions(torch_device=b.torch_device,
                                                  torch_dtype=b.torch_dtype,
                                                  ttnn_emulate=b.ttnn_emulate))
        try:
            policies[key] = Pi0Policy.load(cfg, checkpoint=checkpoint)
        except BaseException as err:
            for loaded in policies.values():  # a device opened for backend A is released
                loaded.close()
            if isinstance(err, ImportError):
                raise BackendUnavailableError(f"backend {b.label()} cannot be imported here: "
                                              f"{err}; install it or pick --backend torch") from err
            raise
    return policies


def replay_ticks(args: ReplayArgs, core: CoreFeed, messages: Any, ticks: range,
                 policies: Dict[str, Pi0Policy], out_bag: BagBuilder, topics: Dict[str, str],
                 values: Dict[str, Any]):
    """The control loop on bag time; returns (records, skipped ticks by reason, ticks run)."""
    from tqdm import tqdm

    sched = core.scheduler
    latency_ns = int(round(args.sim_latency_ms * 1e6))
    records: List[TickRecord] = []
    skipped: Dict[str, int] = {}
    pending: Optional[tuple] = None  # (arrival ns, chunk, t_obs, request id, state)
    warm = args.warmup == 0
    nxt = next(messages, None)
    bar = tqdm(ticks, unit="tick", file=sys.stderr, disable=not args.progress, leave=False)
    k = -1
    for k, tick_ns in enumerate(bar):
        while nxt is not None and nxt.log_time_ns <= tick_ns:
            core.feed(nxt)
            nxt = next(messages, None)
        now = tick_ns * 1e-9
        if pending is not None and pending[0] <= tick_ns:
            sched.on_chunk(pending[1], pending[2], now, pending[3], current_state=pending[4])
            pending = None
        sched.tick(now)
        if not sched.should_request_inference(now):
            continue
        try:
            obs = core.assembler.build(now)
        except ObservationRejected as err:
            skipped[err.reason] = skipped.get(err.reason, 0) + 1
            continue
        request_id = sched.mark_inference_started(now)
        rec = run_backends(args, core, policies, obs, k, now, warm, values["action.space"],
                           skipped)
        warm = True
        for key, chunk in rec.chunks.items():
            out_bag.add_trajectory(topics[key], tick_ns + latency_ns, core.stamp_ns(rec.t_obs),
                                   core.inputs.action_joints, chunk, core.schedule.dt)
        if "a" not in rec.chunks:
            sched.on_inference_failed(request_id)
            continue
        records.append(rec)
        pending = (tick_ns + latency_ns, rec.chunks["a"], rec.t_obs, request_id, rec.state)
        bar.set_postfix(inferences=len(records))
        if args.max_inferences and len(records) >= args.max_inferences:
            break
    bar.close()
    return records, skipped, k + 1


def run_backends(args: ReplayArgs, core: CoreFeed, policies: Dict[str, Pi0Policy], obs: Any,
                 tick: int, now: float, warm: bool, action_space: str,
                 skipped: Dict[str, int]) -> TickRecord:
    """One observation through every backend with the same noise; chunks in absolute positions."""
    dt = core.schedule.dt
    idx = [core.inputs.state_joints.index(j) for j in core.inputs.action_joints]  # node rule
    state = np.asarray(obs.state, dtype=np.float64)[idx]
    noise = tick_noise(args.seed, tick, policies["a"].noise_shape(1))
    rec = TickRecord(tick, now, obs.timestamp, state)
    for key, policy in policies.items():
        if not warm:
            for _ in range(args.warmup):
                policy.sample([obs], noise=noise.clone())
        t_start = time.perf_counter()
        try:
            actions = policy.sample([obs], noise=noise.clone()).actions[0]
        except Pi0Error as err:
            LOG.error("backend %s failed at tick %d: %s", key, tick, err)
            skipped[f"inference_failed_{key}"] = skipped.get(f"inference_failed_{key}", 0) + 1
            continue
        rec.latency_ms[key] = (time.perf_counter() - t_start) * 1e3
        picked = np.asarray(actions, np.float64)[:, list(core.inputs.action_dims)]
        rec.chunks[key] = to_absolute(action_space, picked, state, dt)
    return rec
