"""pi0-replay: run a rosbag2 recording through the node's own input rules and scheduler, offline.

Messages are fed in log-time order into the node's core (image_conversion, JointStateCache,
ObservationAssembler, ActionScheduler); control ticks run at control_rate_hz on bag time, and an
inference runs where the node would start one. Inference is modelled as taking --sim-latency-ms
of bag time (0 by default), so results do not depend on this machine's speed. Outputs: a rosbag2
of the chunks (`/<node>/action_chunk`, like the node's), report.json and PNG plots.
Exit codes: 0 ok, 1 internal error, 2 usage, 3-6 bag errors (bag_tools), 7 configuration,
checkpoint or backend error, 8 no inference could run (report still written).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
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
from pi0_ttnn_node.bag_tools import (BagBuilder, BagError, BagMessage, BagReader, stamp_seconds)
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import (BackendUnavailableError, ConfigError, ObservationRejected,
                                  Pi0Error)
from pi0_ttnn_node.joint_mapping import JointStateCache
from pi0_ttnn_node.observation_sync import ObservationAssembler, SyncConfig
from pi0_ttnn_node.policy import NoiseSource, Pi0Policy, PolicyConfig
from pi0_ttnn_node.safety import Limits, TrajectoryLimiter, to_absolute
from pi0_ttnn_node.tools import replay_report as rr
from pi0_ttnn_node.tools.replay_inputs import (NODE_NAME, ReplayInputs, node_values,
                                               resolve_inputs)

LOG = logging.getLogger("pi0_replay")
EXIT_INTERNAL, EXIT_CONFIG, EXIT_NO_INFERENCE = 1, 7, 8
OUTPUTS = ("action_chunks", "report.json", "actions.png", "latency.png", "divergence.png")


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
        except ImportError as err:
            raise BackendUnavailableError(f"backend {b.label()} cannot be imported here: {err}; "
                                          "install it or pick --backend torch") from err
    return policies


def _state_index(inputs: ReplayInputs) -> List[int]:
    return [inputs.state_joints.index(j) for j in inputs.action_joints]


def run_replay(args: ReplayArgs) -> Dict[str, Any]:
    """Replay the bag; write the chunk bag, report.json and plots under args.out; return the report."""
    prepare_out(args.out, args.overwrite)
    values = node_values(args.params_file, args.node_name, args.overrides)
    t_load = time.perf_counter()
    policies = load_policies(args, values)
    load_s = time.perf_counter() - t_load
    features = policies["a"].config.features
    labels = {k: b.label() for k, b in zip("ab", args.backends)}
    with BagReader(args.bag) as bag:
        inputs = resolve_inputs(values, bag, args.node_name, args.namespace,
                                features.state_dim, features.action_dim)
        core = CoreFeed(inputs, values)
        dt_ns = int(round(1e9 / float(values["control_rate_hz"])))
        first_ns = bag.start_ns + int(round(args.start_offset * 1e9))
        last_ns = bag.end_ns if args.duration <= 0 else \
            min(bag.end_ns, first_ns + int(round(args.duration * 1e9)))
        ticks = range(first_ns, last_ns + 1, dt_ns)
        topics = {k: f"/{args.node_name}{'' if k == 'a' else '_b'}/action_chunk" for k in policies}
        with BagBuilder(args.out / "action_chunks", args.storage) as out_bag:
            t0 = time.perf_counter()
            records, skipped, n_ticks = replay_ticks(args, core, bag.messages(inputs.topics),
                                                     ticks, policies, out_bag, topics, values)
            wall_s = time.perf_counter() - t0
        report = build_report(args, bag, inputs, core, values, labels, policies, records,
                              skipped, n_ticks, wall_s, load_s, topics)
    for p in policies.values():
        p.close()
    if args.plots:
        report["outputs"]["plots"] = rr.write_plots(
            args.out, records, labels, inputs.action_joints, dt_ns * 1e-9, first_ns * 1e-9,
            report.get("divergence"))
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def replay_ticks(args: ReplayArgs, core: CoreFeed, messages: Any, ticks: range,
                 policies: Dict[str, Pi0Policy], out_bag: BagBuilder, topics: Dict[str, str],
                 values: Dict[str, Any]):
    """The control loop on bag time; returns (records, skipped ticks by reason, ticks run)."""
    from tqdm import tqdm

    inputs, sched = core.inputs, core.scheduler
    dt = core.schedule.dt
    idx = _state_index(inputs)
    latency_ns = int(round(args.sim_latency_ms * 1e6))
    records: List[rr.TickRecord] = []
    skipped: Dict[str, int] = {}
    pending: Optional[tuple] = None  # (arrival ns, chunk, t_obs, request id, state)
    warm = False
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
        noise = tick_noise(args.seed, k, policies["a"].noise_shape(1))
        if not warm:
            for p in policies.values():
                for _ in range(args.warmup):
                    p.sample([obs], noise=noise.clone())
            warm = True
        state = np.asarray(obs.state, dtype=np.float64)[idx]
        rec = rr.TickRecord(k, now, obs.timestamp, state)
        for key, policy in policies.items():
            t_start = time.perf_counter()
            try:
                actions = policy.sample([obs], noise=noise.clone()).actions[0]
            except Pi0Error as err:
                LOG.error("backend %s failed at tick %d: %s", key, k, err)
                skipped[f"inference_failed_{key}"] = skipped.get(f"inference_failed_{key}", 0) + 1
                continue
            rec.latency_ms[key] = (time.perf_counter() - t_start) * 1e3
            chunk = to_absolute(values["action.space"],
                                np.asarray(actions, np.float64)[:, list(inputs.action_dims)],
                                state, dt)
            rec.chunks[key] = chunk
            stamp_ns = core.primary_ns.get(obs.timestamp, int(round(obs.timestamp * 1e9)))
            out_bag.add_trajectory(topics[key], tick_ns + latency_ns, stamp_ns,
                                   inputs.action_joints, chunk, dt)
        if "a" not in rec.chunks:
            sched.on_inference_failed(request_id)
            continue
        records.append(rec)
        pending = (tick_ns + latency_ns, rec.chunks["a"], obs.timestamp, request_id, state)
        bar.set_postfix(inferences=len(records))
        if args.max_inferences and len(records) >= args.max_inferences:
            break
    bar.close()
    return records, skipped, k + 1


def build_report(args: ReplayArgs, bag: BagReader, inputs: ReplayInputs, core: CoreFeed,
                 values: Dict[str, Any], labels: Dict[str, str], policies: Dict[str, Pi0Policy],
                 records: List[rr.TickRecord], skipped: Dict[str, int], n_ticks: int,
                 wall_s: float, load_s: float, topics: Dict[str, str]) -> Dict[str, Any]:
    backends = {}
    for key, policy in policies.items():
        lat = [r.latency_ms[key] for r in records if key in r.latency_ms]
        backends[key] = {"label": labels[key], "describe": policy.backend.describe(),
                         "inferences": len(lat), "latency_ms": rr.latency_summary(lat),
                         "actions_sha256": rr.actions_digest(records, key)}
    report: Dict[str, Any] = {
        "bag": str(bag.path), "storage": bag.storage, "bag_start_s": bag.start_ns * 1e-9,
        "bag_end_s": bag.end_ns * 1e-9, "checkpoint": policies["a"].checkpoint.path.as_posix(),
        "model_type": policies["a"].config.model_type, "seed": args.seed,
        "control_rate_hz": float(values["control_rate_hz"]),
        "sim_latency_ms": args.sim_latency_ms,
        "inputs": {"cameras": [c.__dict__ for c in inputs.cameras], "primary": inputs.primary,
                   "joint_topics": list(inputs.joint_topics),
                   "instruction_topic": inputs.instruction_topic,
                   "state_joints": list(inputs.state_joints),
                   "action_joints": list(inputs.action_joints),
                   "action_dims": list(inputs.action_dims)},
        "ticks": {"total": n_ticks, "inference": len(records),
                  "skipped": sum(skipped.values()), "skipped_by_reason": dict(sorted(skipped.items()))},
        "input_rejects": dict(sorted(core.input_rejects.items())),
        "assembler_counters": dict(sorted(core.assembler.counters.items())),
        "scheduler_counters": dict(sorted(core.scheduler.counters.items())),
        "backends": backends,
        "throughput": {"load_s": round(load_s, 3), "wall_s": round(wall_s, 3),
                       "ticks_per_s": round(n_ticks / wall_s, 2) if wall_s > 0 else None,
                       "inferences_per_s": round(len(records) / wall_s, 3) if wall_s > 0
                       else None},
        "outputs": {"bag": str(args.out / "action_chunks"), "topics": topics, "plots": []},
    }
    if len(policies) == 2:
        report["divergence"] = rr.divergence(records, inputs.action_joints, args.threshold)
    return report


def prepare_out(out: Path, overwrite: bool) -> None:
    """Create the output directory; with overwrite remove only files this tool writes."""
    existing = [out / n for n in OUTPUTS if (out / n).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists; pass --overwrite or a new --out directory")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def parse_args(argv: Optional[List[str]] = None) -> ReplayArgs:
    p = argparse.ArgumentParser(prog="pi0-replay", description=__doc__.splitlines()[0])
    p.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or mcap)")
    p.add_argument("--out", type=Path, help="output directory (default: <bag>_replay)")
    p.add_argument("--params-file", help="the node's params YAML (topics, joints, rates)")
    p.add_argument("--node-name", default=NODE_NAME)
    p.add_argument("--namespace", default="/")
    p.add_argument("--checkpoint", default="", help="checkpoint dir; default: embedded tiny")
    p.add_argument("--model-type", choices=("pi0", "pi05"), default="pi0",
                   help="embedded checkpoint type when no --checkpoint is given")
    p.add_argument("--backend", choices=("torch", "ttnn"), default="torch")
    p.add_argument("--backend-b", choices=("torch", "ttnn"), help="second backend for A/B")
    p.add_argument("--torch-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--torch-dtype-b", default=None, choices=("float32", "bfloat16"))
    p.add_argument("--torch-device", default="cpu")
    p.add_argument("--ttnn-emulate", action="store_true", help="TTNN on its CPU emulation")
    p.add_argument("--seed", type=int, default=0, help="noise seed; -1 = fresh noise")
    p.add_argument("--num-steps", type=int, help="Euler steps (default: checkpoint's)")
    p.add_argument("--camera", action="append", metavar="NAME=TOPIC",
                   help="model camera slot and topic; first is primary and required")
    p.add_argument("--required-cameras", nargs="*", metavar="NAME")
    p.add_argument("--joint-topic", action="append")
    p.add_argument("--instruction", help="default instruction (used until one is in the bag)")
    p.add_argument("--state-joints", nargs="+")
    p.add_argument("--action-joints", nargs="+")
    p.add_argument("--action-dims", nargs="+", type=int)
    p.add_argument("--control-rate-hz", type=float)
    p.add_argument("--execute-steps", type=int)
    p.add_argument("--sim-latency-ms", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=1, help="untimed inferences per backend")
    p.add_argument("--start-offset", type=float, default=0.0, help="seconds after bag start")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to replay (0 = all)")
    p.add_argument("--max-inferences", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.05, help="divergence threshold")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    return ReplayArgs(
        bag=a.bag, out=a.out or Path(f"{a.bag}_replay"), backends=backend_args(a), seed=a.seed,
        checkpoint=a.checkpoint, model_type=a.model_type, params_file=a.params_file,
        node_name=a.node_name, namespace=a.namespace, overrides=overrides(p, a),
        sim_latency_ms=a.sim_latency_ms, warmup=a.warmup, start_offset=a.start_offset,
        duration=a.duration, max_inferences=a.max_inferences, threshold=a.threshold,
        storage=a.storage, plots=not a.no_plots, progress=not a.no_progress,
        overwrite=a.overwrite)


def backend_args(a: argparse.Namespace) -> List[BackendArg]:
    out = [BackendArg(a.backend, a.torch_dtype, a.torch_device, a.ttnn_emulate)]
    if a.backend_b:
        out.append(BackendArg(a.backend_b, a.torch_dtype_b or a.torch_dtype, a.torch_device,
                              a.ttnn_emulate))
    return out


def overrides(p: argparse.ArgumentParser, a: argparse.Namespace) -> Dict[str, Any]:
    """Command-line values as node parameter names (None = not given)."""
    out: Dict[str, Any] = {
        "joint_states.topics": a.joint_topic, "instruction.default": a.instruction,
        "state.joint_names": a.state_joints, "action.joint_names": a.action_joints,
        "action.dims": a.action_dims, "control_rate_hz": a.control_rate_hz,
        "schedule.execute_steps": a.execute_steps, "policy.num_steps": a.num_steps}
    if a.camera:
        pairs = [c.split("=", 1) for c in a.camera]
        if any(len(pair) != 2 or not all(pair) for pair in pairs):
            p.error(f"--camera takes NAME=TOPIC, got {a.camera}")
        names = [n for n, _ in pairs]
        req = set(a.required_cameras if a.required_cameras is not None else names[:1])
        out.update({"cameras.names": names, "cameras.topics": [t for _, t in pairs],
                    "cameras.required": [n in req for n in names], "cameras.primary": names[0]})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Console script `pi0-replay`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_replay(args)
    except BagError as err:
        print(f"pi0-replay: {type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    except Pi0Error as err:
        print(f"pi0-replay: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps({k: report[k] for k in ("ticks", "throughput")}))
    for key, b in report["backends"].items():
        print(f"backend {key} {b['label']}: {b['inferences']} inferences, latency ms "
              f"{b['latency_ms']}")
    if "divergence" in report:
        d = report["divergence"]
        print(f"divergence: pcc {d.get('pcc')} max|A-B| {d.get('max_abs_diff')} first divergent "
              f"tick {d.get('first_divergent_tick')}")
    print(f"wrote {args.out}")
    return EXIT_NO_INFERENCE if report["ticks"]["inference"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
