"""Test harness: the real node in-process plus a driver node, both on one executor, over DDS.

The driver publishes camera frames (raw or JPEG), joint states and an instruction stamped with the
node's clock, and records what the node publishes. Overrides keep runs short: 2 Euler steps, 10 Hz
control, one warm-up. Imported by the test_ros_* files; conftest.py has set the DDS domain first.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from pi0_ttnn_node.ros import conversions
from pi0_ttnn_node.ros.node import Pi0PolicyNode

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO / "config" / "pi0_ttnn_node.yaml"
OUTPUT_TOPIC = "/joint_trajectory_controller/joint_trajectory"
STATE_JOINTS = [f"joint_{i}" for i in range(1, 8)] + ["gripper"]
FAST = {"policy.num_steps": 2, "policy.warmup_iterations": 1, "control_rate_hz": 10.0,
        "safety.dry_run": False, "limits.max_start_jump": 100.0, "sync.max_image_age_s": 2.0,
        "sync.max_state_age_s": 1.0, "sync.max_camera_skew_s": 0.5,
        "schedule.execute_steps": 5, "policy.noise_seed": 0, "diagnostics.period_s": 0.3,
        "safety.watchdog_timeout_s": 5.0, "autostart": False}


def make_node(overrides: Optional[Dict[str, Any]] = None, name: str = "pi0_ttnn_node",
              params_file: Path = PARAMS_FILE) -> Pi0PolicyNode:
    values = dict(FAST)
    values.update(overrides or {})
    plist = [Parameter(k, value=v) for k, v in values.items()]
    return Pi0PolicyNode(name, cli_args=["--ros-args", "--params-file", str(params_file)],
                         parameter_overrides=plist)


class Driver:
    """Publishes inputs at `rate_hz` from a thread and records outputs."""

    def __init__(self, node: Pi0PolicyNode, transport: str = "raw", size=(64, 48),
                 cameras=("cam_high/image_raw",), instruction: Optional[str] = "pick up the cube",
                 use_sim_time: bool = False) -> None:
        self.node = node
        self.ros = rclpy.create_node(
            "pi0_test_driver",
            parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)])
        self.transport, self.size = transport, size
        msg_type = Image if transport == "raw" else CompressedImage
        self.cam_pubs = [self.ros.create_publisher(msg_type, t, 1) for t in cameras]
        self.js_pub = self.ros.create_publisher(JointState, "joint_states", 10)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.instr_pub = self.ros.create_publisher(String, "/pi0_ttnn_node/instruction", qos)
        self.clock_pub = self.ros.create_publisher(ClockMsg, "/clock", 10)
        self.trajectories: List[JointTrajectory] = []
        self.chunks: List[JointTrajectory] = []
        self.diagnostics: List[DiagnosticArray] = []
        self.ros.create_subscription(JointTrajectory, OUTPUT_TOPIC, self.trajectories.append, 10)
        self.ros.create_subscription(JointTrajectory, "/pi0_ttnn_node/action_chunk",
                                     self.chunks.append, 10)
        self.ros.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.positions = np.linspace(-0.5, 0.5, len(STATE_JOINTS))
        self.stamp_offset = 0.0  # added to the node clock: negative = stale inputs
        self.nan_joint: Optional[str] = None
        self.sim_time: Optional[float] = None
        self.publish_images = True
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if instruction is not None:
            self.instr_pub.publish(String(data=instruction))
        rng = np.random.default_rng(0)
        self.frame = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        self.jpeg = cv2.imencode(".jpg", self.frame)[1].tobytes()

    def publish_once(self) -> None:
        if self.sim_time is not None:
            self.sim_time += 0.05
            self.clock_pub.publish(ClockMsg(clock=conversions.sec_to_stamp(self.sim_time)))
        stamp = self.node.get_clock().now().nanoseconds * 1e-9 + self.stamp_offset
        if self.publish_images:
            for pub in self.cam_pubs:
                if self.transport == "raw":
                    pub.publish(conversions.image_msg(self.frame, stamp))
                else:
                    msg = CompressedImage(format="jpeg", data=self.jpeg)
                    msg.header.stamp = conversions.sec_to_stamp(stamp)
                    pub.publish(msg)
        js = JointState(name=list(STATE_JOINTS), position=[float(p) for p in self.positions])
        if self.nan_joint is not None:
            js.position[STATE_JOINTS.index(self.nan_joint)] = float("nan")
        js.header.stamp = conversions.sec_to_stamp(stamp)
        self.js_pub.publish(js)

    def start(self, rate_hz: float = 20.0) -> "Driver":
        def loop() -> None:
            while not self._stop.wait(1.0 / rate_hz):
                self.publish_once()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)


class Session:
    """rclpy context + executor thread + node + driver; use as a context manager."""

    def __init__(self, overrides: Optional[Dict[str, Any]] = None, **driver_kw: Any) -> None:
        self.overrides = overrides or {}
        self.driver_kw = driver_kw

    def __enter__(self) -> "Session":
        rclpy.init()
        self.node = make_node(self.overrides)
        self.driver = Driver(self.node, **self.driver_kw)
        self.executor = MultiThreadedExecutor(num_threads=4)
        self.executor.add_node(self.node)
        self.executor.add_node(self.driver.ros)
        self._spinning = threading.Event()
        self._spinning.set()

        def spin() -> None:
            # spin_once in a loop, so the executor is idle before shutdown destroys its guard
            while self._spinning.is_set():
                self.executor.spin_once(timeout_sec=0.05)

        self.thread = threading.Thread(target=spin, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.driver.stop()
        self._spinning.clear()
        self.thread.join(5.0)
        self.executor.shutdown(timeout_sec=5.0)
        self.node._release()
        self.node.destroy_node()
        self.driver.ros.destroy_node()
        rclpy.shutdown()

    @property
    def state(self) -> str:
        return self.node._state_machine.current_state[1]

    def bring_up(self) -> None:
        from pi0_ttnn_node.ros.process import autostart
        assert autostart(self.node), f"node did not reach active: {self.state}"


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def policy_status(diags: List[DiagnosticArray]):
    """Latest policy DiagnosticStatus (or None) from recorded /diagnostics messages."""
    for arr in reversed(diags):
        for status in arr.status:
            if status.name.endswith(": policy"):
                return status
    return None


def assert_valid_trajectory(msg: JointTrajectory, joint_names: List[str]) -> np.ndarray:
    """Names, strictly increasing positive times, finite positions/velocities; return positions."""
    assert list(msg.joint_names) == list(joint_names)
    times, pos, vel = conversions.trajectory_arrays(msg)
    assert len(times) > 0
    assert times[0] > 0 and np.all(np.diff(times) > 0), times
    assert pos.shape == (len(times), len(joint_names))
    assert np.isfinite(pos).all() and np.isfinite(vel).all()
    return pos
