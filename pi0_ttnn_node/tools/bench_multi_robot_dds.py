"""Several robots over DDS: the multi-robot node fed by one recorded bag per robot (loopback).

For each N: writes N demo bags (different seeds, same timeline), starts `pi0_ttnn_multi_node`
with `robots: [robot0 .. robotN-1]` on sim time, and plays each bag with `pi0-bag-play`, its
topics remapped into its robot's namespace (robot0's player also publishes /clock). This process
listens to every `~/<robot>/action_chunk` and /clock and reports, per N: chunks per robot, the
per-robot observation-to-chunk latency p50 / p95 (clock at receipt - chunk stamp, converted to
wall seconds by the playback rate), how old each robot's frames already are when they arrive
(the players start a little apart, so a robot's bag can trail the /clock of robot0's player), and the node's batched calls and rows per call from
/diagnostics. DDS stays on this host (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) on a private
domain. A benchmark, not a test; embedded tiny random-weight model, Torch CPU.

    python -m pi0_ttnn_node.tools.bench_multi_robot_dds --robots 1 2 4 --seconds 6 --rate 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robots", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=6.0, help="bag length")
    p.add_argument("--rate", type=float, default=0.5, help="playback speed factor")
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--window-ms", type=float, default=5.0)
    p.add_argument("--execute-steps", type=int, default=10)
    p.add_argument("--transport", default="raw", choices=("raw", "compressed"))
    p.add_argument("--image-size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    p.add_argument("--domain", type=int, default=0, help="ROS_DOMAIN_ID; 0 = random 150-199")
    p.add_argument("--json", dest="json_out", default="")
    return p.parse_args(argv)


def _params(path: Path, n: int, args: argparse.Namespace) -> Path:
    robots = ", ".join(f"robot{i}" for i in range(n))
    topics = ", ".join(f"{c}/image_raw" + ("/compressed" if args.transport == "compressed"
                                          else "") for c in CAMERAS)
    path.write_text(
        "pi0_ttnn_node:\n  ros__parameters:\n"
        f"    robots: [{robots}]\n    autostart: true\n    use_sim_time: true\n"
        f"    batch: {{window_s: {args.window_ms / 1e3}}}\n"
        f"    policy: {{num_steps: {args.num_steps}, noise_seed: 0, warmup_iterations: 1,"
        " torch_threads: 1}\n"
        f"    cameras: {{topics: [{topics}], transports: [{args.transport}]}}\n"
        f"    schedule: {{execute_steps: {args.execute_steps}}}\n"
        "    limits: {max_start_jump: 100.0}\n"
        "    safety: {watchdog_timeout_s: 30.0}\n"
        "    diagnostics: {period_s: 0.5}\n")
    return path


class Listener:
    """Chunks per robot with the sim clock at receipt; the latest /diagnostics."""

    def __init__(self, n: int, transport: str) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, Image

        topic_type = Image if transport == "raw" else CompressedImage
        camera_suffix = "image_raw" if transport == "raw" else "image_raw/compressed"
        from trajectory_msgs.msg import JointTrajectory

        self.ros = rclpy.create_node(f"pi0_bench_dds_{n}")
        self.clock = 0.0
        self.latency: Dict[str, List[float]] = {f"robot{i}": [] for i in range(n)}
        self.frame_age: Dict[str, List[float]] = {f"robot{i}": [] for i in range(n)}
        self.diag: Dict[str, Dict[str, str]] = {}
        self.ros.create_subscription(Clock, "/clock", self._on_clock, 10)
        self.ros.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        for name in self.latency:
            self.ros.create_subscription(JointTrajectory, f"/pi0_ttnn_node/{name}/action_chunk",
                                         lambda m, r=name: self._on_chunk(r, m), 50)
            # the players start a little apart: a robot's frames reach us this old already
            self.ros.create_subscription(topic_type, f"/{name}/cam_high/{camera_suffix}",
                                         lambda m, r=name: self._on_frame(r, m), 5)

    def _on_clock(self, msg: Any) -> None:
        self.clock = msg.clock.sec + msg.clock.nanosec * 1e-9

    def _on_chunk(self, robot: str, msg: Any) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if self.clock > 0:
            self.latency[robot].append(self.clock - stamp)

    def _on_frame(self, robot: str, msg: Any) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if self.clock > 0:
            self.frame_age[robot].append(self.clock - stamp)

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            self.diag[status.hardware_id] = {kv.key: kv.value for kv in status.values}


def run_n(n: int, args: argparse.Namespace, env: Dict[str, str], tmp: Path) -> Dict[str, Any]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from pi0_ttnn_node import bag_tools

    bags = [bag_tools.make_demo_bag(tmp / f"bag{n}_{i}", seconds=args.seconds, seed=i,
                                    transport=args.transport,
                                    image_size=tuple(args.image_size)) for i in range(n)]
    params = _params(tmp / f"robots{n}.yaml", n, args)
    log = open(tmp / f"log{n}.txt", "w")
    procs: List[subprocess.Popen] = []

    def start(cmd: List[str]) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, *cmd], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    listener = Listener(n, args.transport)
    executor = SingleThreadedExecutor()
    executor.add_node(listener.ros)
    spinning = threading.Event()
    spinning.set()
    spin = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05)
                                            for _ in iter(spinning.is_set, False)], daemon=True)
    spin.start()
    try:
        from pi0_ttnn_node.control.parameters import shipped_params_file
        start(["-m", "pi0_ttnn_node.ros.multi_node", "--ros-args", "--params-file",
               str(shipped_params_file()), "--params-file", str(params)])
        players = []
        for i, bag in enumerate(bags):
            suffix = "/compressed" if args.transport == "compressed" else ""
            remap = [f"/{c}/image_raw{suffix}:=/robot{i}/{c}/image_raw{suffix}" for c in CAMERAS]
            remap += [f"/joint_states:=/robot{i}/joint_states",
                      f"/pi0_ttnn_node/instruction:=/pi0_ttnn_node/robot{i}/instruction"]
            players.append(start(["-m", "pi0_ttnn_node.tools.bag_play", str(bag), "--rate",
                                  str(args.rate), "--clock-hz", "100" if i == 0 else "0",
                                  "--remap", *remap, "--wait-for-subscriber",
                                  f"/robot{i}/joint_states", "--wait-timeout", "120",
                                  "--delay", "2.0"]))
        for p in players:
            p.wait(timeout=120 + args.seconds / args.rate + 30)
        time.sleep(1.0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        spinning.clear()
        spin.join(2.0)
        executor.shutdown()
        listener.ros.destroy_node()
        log.close()
    def ms(v: List[float], q: float) -> Optional[float]:
        return float(np.percentile(v, q)) / args.rate * 1e3 if v else None

    per_robot = {r: {"chunks": len(v), "p50_ms": ms(v, 50), "p95_ms": ms(v, 95),
                     "frame_age_p50_ms": ms(listener.frame_age[r], 50)}
                 for r, v in listener.latency.items()}
    diag = next(iter(listener.diag.values()), {})
    return {"robots": n, "per_robot": per_robot, "batched_calls": diag.get("batched_calls"),
            "rows_per_call": diag.get("rows_per_call"), "log": str(tmp / f"log{n}.txt")}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    domain = args.domain or random.SystemRandom().randint(150, 199)
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain))
    os.environ.pop("ROS_STATIC_PEERS", None)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    import rclpy

    rclpy.init()
    tmp = Path(tempfile.mkdtemp(prefix="pi0_bench_dds_"))
    print(f"multi-robot node over loopback DDS (domain {domain}), embedded tiny random-weight "
          f"pi0, torch CPU 1 thread, {args.num_steps} steps, bags {args.seconds} s at rate "
          f"{args.rate}, {args.transport} {args.image_size[0]}x{args.image_size[1]} x3 cameras; "
          "latency in wall ms (sim / rate)")
    results = []
    try:
        for n in args.robots:
            r = run_n(n, args, env, tmp)
            results.append(r)
            nan = float("nan")
            lat = ", ".join(f"{k} {v['chunks']} chunks p50 {v['p50_ms'] or nan:.0f} / "
                            f"p95 {v['p95_ms'] or nan:.0f} ms (frames arrive "
                            f"{v['frame_age_p50_ms'] or nan:.0f} ms old)"
                            for k, v in r["per_robot"].items())
            print(f"N={n}: batched calls {r['batched_calls']}, rows/call {r['rows_per_call']}; "
                  f"{lat}")
    finally:
        rclpy.shutdown()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
