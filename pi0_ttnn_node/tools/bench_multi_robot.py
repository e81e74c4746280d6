"""Several robots on one policy: batched calls vs one by one, and per-robot latency under a Fleet.

Core-level (ROS-free) benchmark on the embedded tiny random-weight model, Torch on CPU:

1. throughput: the same N robots' prepared rows run as one batched call (`Pi0Policy.sample_rows`)
   and as N single calls, interleaved round by round; rows per second of each and the ratio;
2. live: a `control.multi_robot.Fleet` of N robots ticking at control_rate_hz on the wall clock
   for --seconds, each robot fed synthetic 3-camera frames at --camera-hz and joint states every
   tick (in the tick thread, like the node's executor), the batching worker on its own thread:
   inference calls per second, rows per call, per-robot observation-to-chunk latency p50 / p95
   (observation stamp -> result handed to the robot's core).

Inputs arrive in-process here, not over DDS: see docs/multi_robot.md. A benchmark, not a test.

    python -m pi0_ttnn_node.tools.bench_multi_robot --robots 1 2 4 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.control.batching import OK, BatchReport, Request, run_batch
from pi0_ttnn_node.control.multi_robot import Fleet
from pi0_ttnn_node.control.parameters import node_values, shipped_params_file
from pi0_ttnn_node.control.robots import robot_specs
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pi0", choices=("pi0", "pi05"))
    p.add_argument("--robots", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=8.0, help="live run per N")
    p.add_argument("--rounds", type=int, default=5, help="throughput rounds per N")
    p.add_argument("--num-steps", type=int, default=10, help="Euler steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--window-ms", type=float, default=5.0, help="batch.window_s in ms")
    p.add_argument("--execute-steps", type=int, default=10, help="schedule.execute_steps")
    p.add_argument("--camera-hz", type=float, default=15.0)
    p.add_argument("--cameras", type=int, default=3, help="cameras fed per robot (the rest are "
                   "missing, i.e. masked and skipped by the vision tower)")
    p.add_argument("--image-size", type=int, nargs=2, default=(96, 72), metavar=("W", "H"))
    p.add_argument("--json", dest="json_out", default="", help="write the results here")
    return p.parse_args(argv)


def fleet_specs(n: int, args: argparse.Namespace) -> Any:
    values = node_values([str(shipped_params_file())], overrides={
        "robots": [f"robot{i}" for i in range(n)], "schedule.execute_steps": args.execute_steps,
        "instruction.default": "pick up the cube", "policy.noise_seed": 0})
    per_robot = {f"robot{i}.instruction.default": f"pick up cube {i}" for i in range(n)}
    return robot_specs(values, per_robot)


class Feeder:
    """Synthetic inputs per robot: all cameras at camera_hz, joint states every call."""

    def __init__(self, fleet: Fleet, camera_hz: float, size: Any, cameras: int = 3) -> None:
        self.fleet, self.period, self.cameras = fleet, 1.0 / camera_hz, cameras
        w, h = size
        self.frames = {name: np.full((h, w, 3), 40 + 50 * i, np.uint8)
                       for i, name in enumerate(fleet.cores)}
        self.next_frame = 0.0

    def __call__(self, now: float) -> None:
        frame_due = now >= self.next_frame
        if frame_due:
            self.next_frame = now + self.period
        for i, (name, core) in enumerate(self.fleet.cores.items()):
            cfg = core.cfg
            if frame_due:
                for cam in cfg.cameras[:self.cameras]:
                    core.assembler.add_image(cam.name, now, self.frames[name])
            core.assembler.joints.add(now, list(cfg.state_joint_names),
                                      np.full(len(cfg.state_joint_names), 0.01 * i))


def percentile(xs: List[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def live(policy: Pi0Policy, n: int, args: argparse.Namespace) -> Dict[str, Any]:
    """A Fleet of n robots on the wall clock; latency from observation stamp to hand-over."""
    latencies: Dict[str, List[float]] = {}

    def on_report(report: BatchReport) -> None:
        now = time.monotonic()
        for o in report.outcomes:
            if o.outcome == OK:
                latencies.setdefault(o.request.robot, []).append(now - o.result.t_obs)

    fleet = Fleet(fleet_specs(n, args), policy, args.window_ms / 1e3, time.monotonic, on_report)
    feed = Feeder(fleet, args.camera_hz, args.image_size, args.cameras)
    dt = 1.0 / fleet.specs[next(iter(fleet.specs))].config["control_rate_hz"]
    fleet.start()
    t0 = time.monotonic()
    next_tick = t0
    try:
        while True:
            now = time.monotonic()
            if now - t0 >= args.seconds:
                break
            feed(now)
            fleet.tick(now)
            next_tick += dt
            time.sleep(max(0.0, next_tick - time.monotonic()))
    finally:
        fleet.stop()
    elapsed = time.monotonic() - t0
    stats = fleet.worker.stats
    per_robot = {name: {"chunks": len(v), "p50_ms": percentile(v, 50) * 1e3,
                        "p95_ms": percentile(v, 95) * 1e3}
                 for name, v in sorted(latencies.items())}
    return {"robots": n, "seconds": elapsed, "calls": stats.calls,
            "calls_per_s": stats.calls / elapsed, "rows_per_call":
            (stats.rows / stats.calls) if stats.calls else 0.0, "outcomes": dict(stats.outcomes),
            "per_robot": per_robot,
            "worst_p95_ms": max((r["p95_ms"] for r in per_robot.values()), default=float("nan"))}


def throughput(policy: Pi0Policy, n: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Rows per second: n rows in one call vs the same n rows one call each (interleaved)."""
    fleet = Fleet(fleet_specs(n, args), policy, 0.0)
    Feeder(fleet, args.camera_hz, args.image_size, args.cameras)(1000.0)
    reqs = [Request(name, core.tick(1000.0).request_id, time.perf_counter())
            for name, core in fleet.cores.items()]
    prepared = [o.prepared for o in run_batch(policy, fleet.cores, reqs).outcomes]
    obs = [p.observation for p in prepared]
    noise = torch.cat([p.noise for p in prepared])
    batched: List[float] = []
    single: List[float] = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        policy.sample_rows(obs, noise)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            policy.sample_rows(obs[i:i + 1], noise[i:i + 1])
        single.append(time.perf_counter() - t)
    b, s = statistics.median(batched), statistics.median(single)
    return {"robots": n, "batched_call_ms": b * 1e3, "single_calls_ms": s * 1e3,
            "rows_per_s_batched": n / b, "rows_per_s_single": n / s, "speedup": s / b}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    path = ensure_embedded_checkpoint(args.model)
    policy = Pi0Policy.load(PolicyConfig(str(path), num_steps=args.num_steps, noise_seed=0),
                            checkpoint=load_checkpoint(path))
    print(f"embedded tiny random-weight {args.model}, torch CPU fp32, {args.threads} thread(s), "
          f"{args.num_steps} Euler steps, {args.cameras} camera(s) per robot, window "
          f"{args.window_ms} ms, in-process inputs")
    results: Dict[str, Any] = {"throughput": [], "live": []}
    for n in args.robots:
        throughput(policy, n, args)  # warm-up of this batch size
        r = throughput(policy, n, args)
        results["throughput"].append(r)
        print(f"N={n} throughput: batched {r['rows_per_s_batched']:.1f} rows/s "
              f"({r['batched_call_ms']:.1f} ms/call), one by one {r['rows_per_s_single']:.1f} "
              f"rows/s, x{r['speedup']:.2f}")
    for n in args.robots:
        r = live(policy, n, args)
        results["live"].append(r)
        lat = ", ".join(f"{k} p50 {v['p50_ms']:.0f} / p95 {v['p95_ms']:.0f} ms ({v['chunks']})"
                        for k, v in r["per_robot"].items())
        print(f"N={n} live: {r['calls_per_s']:.2f} calls/s, {r['rows_per_call']:.2f} rows/call, "
              f"{r['outcomes']}; {lat}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
