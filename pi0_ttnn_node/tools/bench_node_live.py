"""Tick steadiness of the real node while inferences run back to back (tiny embedded PI0, CPU).

The node runs as in `pi0_ttnn_node` (ros/node.py main): lifecycle node, the node's own executor in
the main thread, the inference worker thread. A publisher subprocess (its own DDS participant, like
camera drivers) sends three raw cameras (default 640x480 bgr8 at 15 Hz), joint states at 50 Hz and
the instruction; a recorder subprocess notes when each controller command arrives. Reported:
- tick work: duration of every control-tick callback (queue update, inference trigger, message
  build, publish), p50/p95/p99/max, while an inference is in flight and over all ticks, next to
  the tick thread's own CPU time (the difference is waiting: for the GIL or for a CPU);
- tick start jitter: |start-to-start interval - 1/rate| of the control timer;
- command period jitter as the subscriber sees it: |arrival interval - 1/rate|;
- inferences completed, their latency, and gc pauses seen during the run.
`--baseline` skips the node's process tuning (ros/process_tuning.py) to show its effect.
Run: python -m pi0_ttnn_node.tools.bench_node_live [--seconds 20] [--baseline]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

RATE_HZ = 50.0
COMMAND_TOPIC = "/joint_trajectory_controller/joint_trajectory"
CAMERA_TOPICS = ("cam_high/image_raw", "cam_left_wrist/image_raw", "cam_right_wrist/image_raw")
REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "pi0_ttnn_node.yaml"


def percentiles(samples_s: List[float]) -> Dict[str, float]:
    """p50/p95/p99/max in ms (NaN when empty)."""
    if not samples_s:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"),
                "max_ms": float("nan"), "n": 0}
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "n": len(ms)}


def period_jitter(times_s: List[float], period_s: float) -> List[float]:
    """|interval - period| for consecutive times."""
    t = np.asarray(times_s, dtype=np.float64)
    return list(np.abs(np.diff(t) - period_s)) if len(t) > 1 else []


# ---- driver subprocess -------------------------------------------------------------------------
def run_driver(role: str, seconds: float, camera_hz: float, width: int, height: int,
               joints: List[str]) -> Dict[str, Any]:
    """role publish: cameras, joint states, instruction. role record: command arrival times
    (perf_counter s). Two processes, so publishing big frames never delays a recorded arrival."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from pi0_ttnn_node.ros import conversions

    rclpy.init()
    node = rclpy.create_node(f"pi0_bench_{role}")
    arrivals: List[float] = []
    stop = threading.Event()
    thread = None
    if role == "record":
        node.create_subscription(JointTrajectory, COMMAND_TOPIC,
                                 lambda m: arrivals.append(time.perf_counter()), 50)
    else:
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        cams = [node.create_publisher(Image, t, reliable) for t in CAMERA_TOPICS]
        js_pub = node.create_publisher(JointState, "joint_states", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_publisher(String, "/pi0_ttnn_node/instruction", latched).publish(
            String(data="pick up the red cube"))
        frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        images = [conversions.image_msg(frame, 0.0, encoding="bgr8") for _ in cams]
        positions = [0.1 * i for i in range(len(joints))]

        def publish() -> None:
            next_cam = next_js = time.monotonic()
            while not stop.is_set():
                now_m = time.monotonic()
                stamp = conversions.sec_to_stamp(node.get_clock().now().nanoseconds * 1e-9)
                if now_m >= next_js:
                    js = JointState(name=joints, position=positions)
                    js.header.stamp = stamp
                    js_pub.publish(js)
                    next_js += 1.0 / RATE_HZ
                if now_m >= next_cam:
                    for pub, msg in zip(cams, images):
                        msg.header.stamp = stamp
                        pub.publish(msg)
                    next_cam += 1.0 / camera_hz
                time.sleep(max(0.0, min(next_js, next_cam) - time.monotonic()))

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    stop.set()
    if thread is not None:
        thread.join(2.0)
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    return {"arrivals": arrivals}


# ---- the node side -----------------------------------------------------------------------------
class TickRecorder:
    """Wraps the node's control-tick callback: start times, durations, inference in flight."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.starts: List[float] = []
        self.work: List[float] = []
        self.busy: List[bool] = []
        self.cpu: List[float] = []  # the tick thread's own CPU time: work minus waiting
        self._orig = node._on_control_tick
        node._on_control_tick = self._tick  # the timer is created in on_activate, after this

    def _tick(self) -> None:
        worker = self.node.worker
        busy = bool(worker is not None and worker.busy)
        t0, c0 = time.perf_counter(), time.thread_time()
        self._orig()
        self.work.append(time.perf_counter() - t0)
        self.cpu.append(time.thread_time() - c0)
        self.starts.append(t0)
        self.busy.append(busy)


class GcRecorder:
    """Durations of garbage collections during the run (gc.callbacks)."""

    def __init__(self) -> None:
        self.pauses: List[float] = []
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: Dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._t0)

    def close(self) -> None:
        gc.callbacks.remove(self._cb)


def node_overrides(num_steps: int) -> Dict[str, Any]:
    return {"control_rate_hz": RATE_HZ, "safety.dry_run": False, "autostart": False,
            "limits.max_start_jump": 100.0, "sync.max_image_age_s": 1.0,
            "sync.max_state_age_s": 0.5, "sync.max_camera_skew_s": 0.2,
            "schedule.execute_steps": 1, "policy.num_steps": num_steps,
            "policy.warmup_iterations": 2, "safety.watchdog_timeout_s": 5.0,
            "qos.image_reliability": "auto"}


def run_live(seconds: float = 20.0, camera_hz: float = 15.0, size: str = "640x480",
             baseline: bool = False, num_steps: int = 0,
             params_file: Optional[str] = None,
             switch_interval_ms: float = 0.0) -> Dict[str, Any]:
    """Start the driver subprocess and the node; return the measured figures."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy
    from rclpy.parameter import Parameter

    from pi0_ttnn_node.ros import node as node_module
    from pi0_ttnn_node.ros import process_tuning
    try:  # the node's own process setup (executor, autostart), as its console script uses it
        from pi0_ttnn_node.ros import process as process_module
    except ImportError:  # older layout: both live in ros/node.py
        process_module = node_module

    if switch_interval_ms:
        process_tuning.SWITCH_INTERVAL_S = switch_interval_ms * 1e-3
    if baseline:  # the node's process tuning off: measure what it fixes
        process_tuning.apply_before_load = lambda threads=0: process_tuning.Tuning(
            threads, sys.getswitchinterval(), gc.get_threshold())
        process_tuning.apply_after_configure = lambda tuning: tuning
    width, height = (int(v) for v in size.split("x"))
    params = params_file or str(REPO_CONFIG)
    rclpy.init()
    overrides = [Parameter(k, value=v) for k, v in node_overrides(num_steps).items()]
    node = node_module.Pi0PolicyNode(cli_args=["--ros-args", "--params-file", params],
                                     parameter_overrides=overrides)
    joints = list(node.get_parameter("state.joint_names").value)
    ticks = TickRecorder(node)
    executor = process_module.make_executor()
    executor.add_node(node)
    assert process_module.autostart(node), f"node did not activate: {node.configure_error}"
    warm = time.monotonic() + 1.0
    while time.monotonic() < warm:  # let the first tick settle before the driver starts
        executor.spin_once(timeout_sec=0.05)
    drivers = [subprocess.Popen(
        [sys.executable, "-m", "pi0_ttnn_node.tools.bench_node_live", "--driver", role,
         "--seconds", str(seconds), "--camera-hz", str(camera_hz), "--size", size,
         "--joints", ",".join(joints)], stdout=subprocess.PIPE, text=True)
        for role in ("record", "publish")]
    driver = drivers[0]
    gcs = GcRecorder()
    first_tick = len(ticks.work)
    infer0 = node.status.inferences
    deadline = time.monotonic() + seconds + 1.0
    while time.monotonic() < deadline and driver.poll() is None:
        executor.spin_once(timeout_sec=0.05)
    out, _ = driver.communicate(timeout=60)
    drivers[1].communicate(timeout=60)
    gcs.close()
    inferences = node.status.inferences - infer0
    latency = node.scheduler.latency if node.scheduler is not None else None
    executor.shutdown()
    node._release()
    node.destroy_node()
    rclpy.shutdown()
    arrivals = json.loads(out.strip().splitlines()[-1])["arrivals"]
    work = ticks.work[first_tick:]
    busy = ticks.busy[first_tick:]
    dt = 1.0 / RATE_HZ
    return {
        "conditions": {"seconds": seconds, "cameras": f"3 raw {size} bgr8 at {camera_hz} Hz",
                       "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
                       "tuning": "off (baseline)" if baseline else "on",
                       "switch_interval_ms": sys.getswitchinterval() * 1e3},
        "tick.work_while_inferring": percentiles([w for w, b in zip(work, busy) if b]),
        "tick.work_all": percentiles(work),
        "tick.cpu_time_all": percentiles(ticks.cpu[first_tick:]),
        "tick.start_jitter": percentiles(period_jitter(ticks.starts[first_tick:], dt)),
        "command.period_jitter_subscriber": percentiles(period_jitter(arrivals, dt)),
        "inference.count": {"n": inferences},
        "inference.latency_p50_ms": {"value": float("nan") if latency is None or
                                     latency.p50 is None else latency.p50 * 1e3},
        "gc.pauses": percentiles(gcs.pauses),
    }


def print_results(results: Dict[str, Any]) -> None:
    print("conditions:", json.dumps(results["conditions"]))
    print(f"{'stage':36s} {'p50_ms':>8s} {'p95_ms':>8s} {'p99_ms':>8s} {'max_ms':>8s} {'n':>6s}")
    for name, row in results.items():
        if name == "conditions":
            continue
        if "p50_ms" in row:
            print(f"{name:36s} {row['p50_ms']:8.3f} {row['p95_ms']:8.3f} {row['p99_ms']:8.3f} "
                  f"{row['max_ms']:8.3f} {row['n']:6d}")
        else:
            print(f"{name:36s} " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else
                                             f"{k}={v}" for k, v in row.items()))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--camera-hz", type=float, default=15.0)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--num-steps", type=int, default=0,
                        help="Euler steps (0 = the checkpoint's)")
    parser.add_argument("--baseline", action="store_true",
                        help="skip the node's process tuning")
    parser.add_argument("--params-file", default=None)
    parser.add_argument("--switch-interval-ms", type=float, default=0.0,
                        help="override process_tuning.SWITCH_INTERVAL_S (experiments)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--driver", choices=("publish", "record"), help=argparse.SUPPRESS)
    parser.add_argument("--joints", default="", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.driver:
        w, h = (int(v) for v in ns.size.split("x"))
        result = run_driver(ns.driver, ns.seconds, ns.camera_hz, w, h, ns.joints.split(","))
        print(json.dumps(result))
        return
    results = run_live(ns.seconds, ns.camera_hz, ns.size, ns.baseline, ns.num_steps,
                       ns.params_file, ns.switch_interval_ms)
    print(json.dumps(results) if ns.json else "", end="\n" if ns.json else "")
    if not ns.json:
        print_results(results)


if __name__ == "__main__":
    main()
