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
from pathlib import Path
from typing import Any, Dict, List, Optional

from pi0_ttnn_node.bag_tools import BagBuilder, BagError, BagReader
from pi0_ttnn_node.errors import ConfigError, Pi0Error
from pi0_ttnn_node.tools import replay_report as rr
from pi0_ttnn_node.backends import BackendSpec, TorchSpec
from pi0_ttnn_node.control.node_config import build_node_config
from pi0_ttnn_node.tools.replay_engine import CoreFeed, ReplayArgs, load_policies, replay_ticks
from pi0_ttnn_node.tools.replay_merge import MergeTrace
from pi0_ttnn_node.tools.replay_inputs import NODE_NAME, ReplayInputs, replay_values, resolve_inputs
from pi0_ttnn_node.ttnn_backend.ttnn_config import add_ttnn_arguments, runtime_config_from_args

LOG = logging.getLogger("pi0_replay")
EXIT_CONFIG, EXIT_NO_INFERENCE = 7, 8
OUTPUTS = ("action_chunks", "report.json", "actions.png", "latency.png", "divergence.png")


def run_replay(args: ReplayArgs, trace: Optional[MergeTrace] = None) -> Dict[str, Any]:
    """Replay the bag; write the chunk bag, report.json and plots into args.out.

    The report's `merge` section measures every chunk switch (tools/replay_merge.py); pass
    `trace` to keep the per-tick commands."""
    trace = trace if trace is not None else MergeTrace()
    prepare_out(args.out, args.overwrite)
    values = replay_values(args.params_files, args.node_name, args.overrides)
    labels = {k: b.label() for k, b in zip("ab", args.backends)}
    with BagReader(args.bag) as bag:
        bag.check_not_empty()
        t_load = time.perf_counter()
        policies = load_policies(args, values)
        load_s = time.perf_counter() - t_load
        try:
            features = policies["a"].config.features
            inputs = resolve_inputs(values, bag, args.node_name, args.namespace,
                                    features.state_dim, features.action_dim,
                                    args.instruction_topic)
            model = policies["a"].config
            core = CoreFeed(inputs, build_node_config(values), model.chunk_size,
                            model.max_action_dim)
            dt_ns = int(round(1e9 / float(values["control_rate_hz"])))
            # ticks on the clock's dt grid, as the node's control timer runs when it was
            # started before the bag's /clock (rcl timers keep the phase of their start time)
            first_ns = -(-(bag.start_ns + int(round(args.start_offset * 1e9))) // dt_ns) * dt_ns
            last_ns = bag.end_ns if args.duration <= 0 else \
                min(bag.end_ns, first_ns + int(round(args.duration * 1e9)))
            ticks = range(first_ns, last_ns + 1, dt_ns)
            topics = {k: f"/{args.node_name}{'' if k == 'a' else '_b'}/action_chunk"
                      for k in policies}
            with BagBuilder(args.out / "action_chunks", args.storage) as out_bag:
                t0 = time.perf_counter()
                records, skipped, n_ticks = replay_ticks(
                    args, core, bag.messages(inputs.topics), ticks, policies, out_bag, topics,
                    values, trace)
                wall_s = time.perf_counter() - t0
            report = build_report(args, bag, inputs, core, values, labels, policies, records,
                                  skipped, n_ticks, wall_s, load_s, topics)
            report["merge"].update(trace.summary(dt_ns * 1e-9))
        finally:
            for policy in policies.values():
                policy.close()
    if args.plots:
        report["outputs"]["plots"] = rr.write_plots(
            args.out, records, labels, inputs.action_joints, dt_ns * 1e-9, first_ns * 1e-9,
            report.get("divergence"), trace)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def build_report(args: ReplayArgs, bag: BagReader, inputs: ReplayInputs, core: CoreFeed,
                 values: Dict[str, Any], labels: Dict[str, str], policies: Dict[str, Any],
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
                  "skipped": sum(skipped.values()),
                  "skipped_by_reason": dict(sorted(skipped.items())),
                  "inference_ticks": [r.tick for r in records]},
        "input_rejects": dict(sorted(core.input_rejects.items())),
        "assembler_counters": dict(sorted(core.assembler.counters.items())),
        "scheduler_counters": dict(sorted(core.scheduler.counters.items())),
        "merge": {"mode": values["merge.mode"], "rtc_method": values["rtc.method"],
                  "guided_inferences": sum(r.target is not None for r in records)},
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
    p.add_argument("--params-file", action="append", default=[],
                   help="the node's params YAML, applied after the shipped "
                        "config/pi0_ttnn_node.yaml like a launch file's; repeatable")
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
    p.add_argument("--torch-threads", type=int, default=0, help="0 = torch default")
    p.add_argument("--seed", type=int, default=0, help="noise seed; -1 = fresh noise")
    p.add_argument("--num-steps", type=int, help="Euler steps (default: checkpoint's)")
    p.add_argument("--camera", action="append", metavar="NAME=TOPIC",
                   help="model camera slot and topic; first is primary and required")
    p.add_argument("--required-cameras", nargs="*", metavar="NAME")
    p.add_argument("--joint-topic", action="append")
    p.add_argument("--instruction", help="default instruction (used until one is in the bag)")
    p.add_argument("--instruction-topic", default="~/instruction")
    p.add_argument("--state-joints", nargs="+")
    p.add_argument("--action-joints", nargs="+")
    p.add_argument("--action-dims", nargs="+", type=int)
    p.add_argument("--control-rate-hz", type=float)
    p.add_argument("--execute-steps", type=int)
    p.add_argument("--merge", choices=("replace", "blend", "rtc"), help="merge.mode")
    p.add_argument("--rtc-method", choices=("forward", "vjp"), help="rtc.method")
    p.add_argument("--min-latency-s", type=float, help="schedule.min_latency_s")
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
    add_ttnn_arguments(p)
    a = p.parse_args(argv)
    return ReplayArgs(
        bag=a.bag, out=a.out or Path(f"{a.bag}_replay"), backends=backend_args(a), seed=a.seed,
        checkpoint=a.checkpoint, model_type=a.model_type, params_files=a.params_file,
        node_name=a.node_name, namespace=a.namespace, instruction_topic=a.instruction_topic,
        overrides=overrides(p, a),
        sim_latency_ms=a.sim_latency_ms, warmup=a.warmup, start_offset=a.start_offset,
        duration=a.duration, max_inferences=a.max_inferences, threshold=a.threshold,
        storage=a.storage, plots=not a.no_plots, progress=not a.no_progress,
        overwrite=a.overwrite)


def backend_args(a: argparse.Namespace) -> List[BackendSpec]:
    """Backend A (and B) as typed specs; both share the --torch-* and --ttnn-* flags."""
    ttnn = runtime_config_from_args(a)
    out = [BackendSpec(a.backend, TorchSpec(a.torch_device, a.torch_dtype, a.torch_threads), ttnn)]
    if a.backend_b:
        out.append(BackendSpec(a.backend_b, TorchSpec(a.torch_device,
                                                      a.torch_dtype_b or a.torch_dtype,
                                                      a.torch_threads), ttnn))
    return out


def overrides(p: argparse.ArgumentParser, a: argparse.Namespace) -> Dict[str, Any]:
    """Command-line values as node parameter names (None = not given)."""
    out: Dict[str, Any] = {
        "joint_states.topics": a.joint_topic, "instruction.default": a.instruction,
        "state.joint_names": a.state_joints, "action.joint_names": a.action_joints,
        "action.dims": a.action_dims, "control_rate_hz": a.control_rate_hz,
        "schedule.execute_steps": a.execute_steps, "policy.num_steps": a.num_steps,
        "merge.mode": a.merge, "rtc.method": a.rtc_method,
        "schedule.min_latency_s": a.min_latency_s}
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
