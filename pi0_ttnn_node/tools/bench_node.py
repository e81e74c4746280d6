"""Benchmark the node's own costs next to model time (tiny embedded checkpoint, CPU).

Isolated tick: queue update (tick + inference trigger), JointTrajectory build, publish over DDS to
a subscriber (14 joints, 50-point chunk, 50 Hz). Per inference: observation preparation for 3 raw
640x480 bgr8 cameras as the node does it (decode straight to the model size, normalisation,
tokenisation; target < 3 ms median) and the old full-size path for comparison; JPEG decode
(640x480) separately. Live (tools/bench_node_live.py): the real node in its own process layout
(executor + inference worker) with inferences back to back and three raw cameras from another
process: tick work p50/p95/p99/max while inferring (targets p99 < 2 ms, max < 5 ms) and the
command period jitter a 50 Hz subscriber sees (target p99 < 3 ms).
Run: python -m pi0_ttnn_node.tools.bench_node [--ticks 2000] [--reps 50] [--live-seconds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import cv2
import numpy as np

from pi0_ttnn_node.control.action_queue import ActionScheduler, ScheduleConfig
from pi0_ttnn_node.control.safety import Limits, TrajectoryLimiter

JOINTS = 14
CHUNK = 50
RATE_HZ = 50.0
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclass
class BenchArgs:
    ticks: int = 2000
    reps: int = 50
    model_reps: int = 3


def summary(samples_s: List[float]) -> Dict[str, float]:
    ms = sorted(s * 1e3 for s in samples_s)
    return {"median_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
            "p99_ms": ms[int(0.99 * (len(ms) - 1))], "max_ms": ms[-1], "n": len(ms)}


def timed(fn: Callable[[], object], reps: int) -> List[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_tick(args: BenchArgs) -> Dict[str, Dict[str, float]]:
    """Queue update + message build + publish, with a subscriber spinning in this process."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from trajectory_msgs.msg import JointTrajectory

    from pi0_ttnn_node.ros.conversions import TrajectoryBuilder

    dt = 1.0 / RATE_HZ
    names = [f"joint_{i}" for i in range(JOINTS)]
    limits = Limits.create([-3.0] * JOINTS, [3.0] * JOINTS, [5.0] * JOINTS, 1.0)
    sched = ActionScheduler(ScheduleConfig(control_rate_hz=RATE_HZ), JOINTS,
                            TrajectoryLimiter(limits))
    builder = TrajectoryBuilder(names, dt, CHUNK + 1)
    rng = np.random.default_rng(0)
    rclpy.init()
    node = rclpy.create_node("pi0_bench_node")
    received: List[int] = []
    pub = node.create_publisher(JointTrajectory, "bench_trajectory", 1)
    node.create_subscription(JointTrajectory, "bench_trajectory",
                             lambda m: received.append(len(m.points)), 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05)
                                               for _ in iter(stop.is_set, True)], daemon=True)
    spinner.start()
    queue_s, build_s, publish_s = [], [], []
    now = 100.0
    try:
        for k in range(args.ticks):
            now += dt
            if k % 25 == 0:  # a new chunk every 25 ticks, as execute_steps: 25 does
                chunk = 0.1 * np.cumsum(rng.normal(0, 0.01, (CHUNK, JOINTS)), axis=0)
                rid = sched.mark_inference_started(now - 0.1)
                sched.on_chunk(chunk, now - 0.1, now, rid, current_state=chunk[0])
            t0 = time.perf_counter()
            traj = sched.tick(now)
            sched.should_request_inference(now)
            t1 = time.perf_counter()
            msg = builder.build(traj.positions, traj.velocities, time_from_start=traj.times - now)
            t2 = time.perf_counter()
            pub.publish(msg)
            t3 = time.perf_counter()
            queue_s.append(t1 - t0)
            build_s.append(t2 - t1)
            publish_s.append(t3 - t2)
    finally:
        stop.set()
        spinner.join(2.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    total = [a + b + c for a, b, c in zip(queue_s, build_s, publish_s)]
    return {"tick.queue_update": summary(queue_s), "tick.message_build": summary(build_s),
            "tick.publish": summary(publish_s), "tick.total": summary(total),
            "tick.received_by_subscriber": {"n": len(received)}}


def bench_observation(args: BenchArgs) -> Dict[str, Dict[str, float]]:
    """3 raw 640x480 bgr8 cameras -> model inputs; JPEG decode; model time for reference."""
    from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
    from pi0_ttnn_node.image_conversion import compressed_image_to_rgb, raw_image_to_rgb
    from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig
    from pi0_ttnn_node.preprocessing import Observation

    policy = Pi0Policy.load(PolicyConfig(str(ensure_embedded_checkpoint("pi0"))))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in CAMERAS]
    payloads = [f.tobytes() for f in frames]
    jpeg = cv2.imencode(".jpg", frames[0], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    state = np.zeros(policy.config.features.state_dim)
    instruction = "pick up the red cube and put it in the bowl"

    size = policy.config.vision.image_size

    def convert() -> List[np.ndarray]:
        return [raw_image_to_rgb("bgr8", 480, 640, 640 * 3, p) for p in payloads]

    def convert_to_model_size() -> List[np.ndarray]:  # what the node's decoders do
        return [raw_image_to_rgb("bgr8", 480, 640, 640 * 3, p, target_size=(size, size))
                for p in payloads]

    images = convert()
    obs = Observation(images=dict(zip(CAMERAS, images)), state=state, instruction=instruction)
    tokenizer = policy.tokenizer
    results = {
        "obs.convert_3_raw_bgr8_full_size": summary(timed(convert, args.reps)),
        "obs.convert_3_raw_bgr8_to_model": summary(timed(convert_to_model_size, args.reps)),
        "obs.resize_normalize_tokenize": summary(timed(lambda: policy.prepare([obs]), args.reps)),
        "obs.tokenize_only": summary(timed(lambda: tokenizer.tokenize([instruction]), args.reps)),
        "obs.total_3_cameras_full_size": summary(timed(lambda: policy.prepare([Observation(
            images=dict(zip(CAMERAS, convert())), state=state, instruction=instruction)]),
            args.reps)),
        "obs.total_3_cameras (node path)": summary(timed(lambda: policy.prepare([Observation(
            images=dict(zip(CAMERAS, convert_to_model_size())), state=state,
            instruction=instruction)]), args.reps)),
        "jpeg.decode_640x480": summary(timed(lambda: compressed_image_to_rgb("jpeg", jpeg),
                                             args.reps)),
    }
    policy.sample([obs])  # first call outside the measurement
    results["model.sample_tiny_torch_cpu"] = summary(timed(lambda: policy.sample([obs]),
                                                           args.model_reps))
    policy.close()
    return results


def run(args: BenchArgs) -> Dict[str, Dict[str, float]]:
    results = bench_tick(args)
    results.update(bench_observation(args))
    return results


def run_live(seconds: float) -> Dict[str, Dict[str, float]]:
    """The node's own process layout with inferences back to back (tools/bench_node_live.py)."""
    from pi0_ttnn_node.tools import bench_node_live

    live = bench_node_live.run_live(seconds=seconds)
    out: Dict[str, Dict[str, float]] = {}
    for name, row in live.items():
        if name != "conditions" and "p50_ms" in row:
            out["live." + name] = {"median_ms": row["p50_ms"], "p95_ms": row["p95_ms"],
                                   "p99_ms": row["p99_ms"], "max_ms": row["max_ms"],
                                   "n": row["n"]}
    out["live.inferences"] = {"n": live["inference.count"]["n"]}
    print("live conditions:", live["conditions"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=BenchArgs.ticks)
    parser.add_argument("--reps", type=int, default=BenchArgs.reps)
    parser.add_argument("--model-reps", type=int, default=BenchArgs.model_reps)
    parser.add_argument("--live-seconds", type=float, default=20.0,
                        help="length of the live run (node + inferences); 0 skips it")
    ns = parser.parse_args()
    results = run(BenchArgs(ticks=ns.ticks, reps=ns.reps, model_reps=ns.model_reps))
    if ns.live_seconds > 0:
        results.update(run_live(ns.live_seconds))
    print(f"{'stage':40s} {'median_ms':>10s} {'p95_ms':>9s} {'p99_ms':>9s} {'max_ms':>9s} "
          f"{'n':>6s}")
    for name, row in results.items():
        if "median_ms" not in row:
            print(f"{name:40s} {'':>10s} {'':>9s} {'':>9s} {'':>9s} {row['n']:6d}")
            continue
        print(f"{name:40s} {row['median_ms']:10.3f} {row['p95_ms']:9.3f} "
              f"{row.get('p99_ms', float('nan')):9.3f} {row['max_ms']:9.3f} {row['n']:6d}")


if __name__ == "__main__":
    main()
