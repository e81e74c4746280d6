"""The replay loop: bag messages into the node's control core, control ticks on bag time.

The same ControlCore the node drives (control/pipeline.py: scheduling, observation hand-off, noise
from (seed, observation stamp), RTC guidance, merge, limits) is built from the same parameter
table and params YAML; this module only feeds bag messages in, runs the backends where the core
asks for an inference, and hands the result back `--sim-latency-ms` of bag time later (the node
uses it no earlier than `schedule.min_latency_s` after the request; so does the core here).
Backend B sees the same observation, noise and guidance. Counterparts: tools/replay.py (CLI,
report), ros/node.py (the live driver of the same core).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from pi0_ttnn_node import image_conversion
from pi0_ttnn_node.backends import BackendSpec
from pi0_ttnn_node.bag_tools import BagBuilder, BagMessage, stamp_seconds
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.control.node_config import NodeConfig
from pi0_ttnn_node.control.pipeline import ControlCore, InferenceResult, Prepared, make_assembler
from pi0_ttnn_node.control.safety import to_absolute
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import BackendUnavailableError, ObservationRejected, Pi0Error
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig
from pi0_ttnn_node.tools.replay_inputs import NODE_NAME, ReplayInputs
from pi0_ttnn_node.tools.replay_report import TickRecord

LOG = logging.getLogger("pi0_replay")


@dataclass
class ReplayArgs:
    bag: Path
    out: Path
    backends: List[BackendSpec]
    seed: int = 0
    checkpoint: str = ""
    model_type: str = "pi0"
    params_files: List[str] = field(default_factory=list)
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


class CoreFeed:
    """The node's control core, fed from bag messages exactly as the node's callbacks feed it."""

    def __init__(self, inputs: ReplayInputs, cfg: NodeConfig, chunk_size: int,
                 max_action_dim: int) -> None:
        self.inputs = inputs
        self.cfg = cfg
        self.assembler = make_assembler(cfg, lambda _text: self.core.reset("instruction"))
        self.joints = self.assembler.joints
        self.core = ControlCore(cfg, chunk_size, self.assembler, max_action_dim)
        self.scheduler = self.core.scheduler
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
    for key, spec in zip("ab", args.backends):
        cfg = PolicyConfig(checkpoint_dir=path, spec=spec, noise_seed=args.seed,
                           num_steps=int(values["policy.num_steps"]))
        try:
            policies[key] = Pi0Policy.load(cfg, checkpoint=checkpoint)
        except BaseException as err:
            for loaded in policies.values():  # a device opened for backend A is released
                loaded.close()
            if isinstance(err, ImportError):
                raise BackendUnavailableError(f"backend {spec.label()} cannot be imported here: "
                                              f"{err}; install it or pick --backend torch") from err
            raise
    return policies


def replay_ticks(args: ReplayArgs, feed: CoreFeed, messages: Any, ticks: range,
                 policies: Dict[str, Pi0Policy], out_bag: BagBuilder, topics: Dict[str, str],
                 values: Dict[str, Any], trace: Any = None):
    """The control loop on bag time; returns (records, skipped ticks by reason, ticks run).
    `trace` (replay_merge.MergeTrace) sees the core before and after every tick."""
    from tqdm import tqdm

    core = feed.core
    latency_s = args.sim_latency_ms * 1e-3
    records: List[TickRecord] = []
    skipped: Dict[str, int] = {}
    warm = args.warmup == 0
    nxt = next(messages, None)
    bar = tqdm(ticks, unit="tick", file=sys.stderr, disable=not args.progress, leave=False)
    k = -1
    for k, tick_ns in enumerate(bar):
        while nxt is not None and nxt.log_time_ns <= tick_ns:
            feed.feed(nxt)
            nxt = next(messages, None)
        now = tick_ns * 1e-9
        if trace is not None:
            trace.before(core, now)
        tick = core.tick(now)
        if trace is not None:
            trace.after(core, tick)
        for accepted in tick.accepted:
            for rec in records[::-1]:
                if rec.request_id == accepted.result.request_id:
                    rec.accepted = accepted.report.accepted
                    rec.boundary_jump = accepted.report.boundary_jump
                    break
        if tick.request_id is None:
            continue
        try:
            prepared = core.prepare(tick.request_id, policies["a"])
        except ObservationRejected as err:
            skipped[err.reason] = skipped.get(err.reason, 0) + 1
            core.on_failed(tick.request_id, "inference_skipped" if err.reason == "no_new_frame"
                           else "inference_failed")
            continue
        if not warm:
            for policy in policies.values():
                for _ in range(args.warmup):
                    policy.sample([prepared.observation], noise=prepared.noise.clone())
            warm = True
        rec, result = run_backends(feed, policies, prepared, k, now, tick.request_id,
                                   values["action.space"], skipped)
        for key, chunk in rec.chunks.items():
            out_bag.add_trajectory(topics[key], tick_ns + int(round(latency_s * 1e9)),
                                   feed.stamp_ns(rec.t_obs), feed.inputs.action_joints, chunk,
                                   core.dt)
        if result is None:
            core.on_failed(tick.request_id)
            continue
        records.append(rec)
        core.on_result(result, now + latency_s)
        bar.set_postfix(inferences=len(records))
        if args.max_inferences and len(records) >= args.max_inferences:
            break
    bar.close()
    return records, skipped, k + 1


def run_backends(feed: CoreFeed, policies: Dict[str, Pi0Policy], prepared: Prepared, tick: int,
                 now: float, request_id: int, action_space: str, skipped: Dict[str, int]):
    """One prepared inference through every backend (same observation, noise and guidance);
    returns the record (chunks in absolute positions, for the report) and backend A's result."""
    obs = prepared.observation
    idx = [feed.inputs.state_joints.index(j) for j in feed.inputs.action_joints]  # node rule
    state = np.asarray(obs.state, dtype=np.float64)[idx]
    rec = TickRecord(tick, now, obs.timestamp, state, request_id=request_id,
                     delay_steps=prepared.delay_steps)
    result: Optional[InferenceResult] = None
    for key, policy in policies.items():
        t_start = time.perf_counter()
        try:
            out = policy.sample([obs], noise=prepared.noise.clone(), guidance=prepared.guidance)
        except Pi0Error as err:
            LOG.error("backend %s failed at tick %d: %s", key, tick, err)
            skipped[f"inference_failed_{key}"] = skipped.get(f"inference_failed_{key}", 0) + 1
            continue
        rec.latency_ms[key] = (time.perf_counter() - t_start) * 1e3
        picked = np.asarray(out.actions[0], np.float64)[:, list(feed.inputs.action_dims)]
        rec.chunks[key] = to_absolute(action_space, picked, state, feed.core.dt)
        rec.normalized[key] = np.asarray(out.normalized[0], np.float32)
        if key == "a":
            result = InferenceResult(
                actions=out.actions[0], normalized=out.normalized[0],
                state=np.asarray(obs.state, np.float64), t_obs=obs.timestamp,
                latency_s=rec.latency_ms[key] * 1e-3, request_id=request_id,
                backend=policy.cfg.spec.label(), timings_ms=out.timings_ms,
                truncated_prompt=bool(out.truncated_prompt and out.truncated_prompt[0]),
                guided=prepared.guidance is not None)
    if prepared.guidance is not None:
        rec.target = prepared.guidance.target[0].numpy()
    return rec, result
