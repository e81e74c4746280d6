"""One node, two namespaced robots, over loopback DDS: batching and isolation.

Robot `a` and robot `b` publish their own cameras and joint states in their namespaces; the node
commands each on its own namespaced controller topic. Then `b` turns hostile (stale stamps, NaN
joints, rows whose inference comes back non-finite, output disabled) while `a` must keep being
commanded at its rate with chunks of its own.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from pi0_ttnn_node.ros import conversions
from pi0_ttnn_node.ros.multi_node import Pi0MultiRobotNode
from pi0_ttnn_node.ros.process import autostart
from ros_harness import FAST, PARAMS_FILE, STATE_JOINTS, assert_valid_trajectory, wait_for

ROBOTS = ("a", "b")
ACTION_JOINTS = STATE_JOINTS[:7]


class NanForBrightRows:
    """Backend wrapper: rows whose first image is bright (robot b's frames) come back NaN."""

    def __init__(self, inner):
        self.inner, self.name, self.on = inner, inner.name, False

    def sample_actions(self, inputs, noise, num_steps=None, guidance=None):
        out = self.inner.sample_actions(inputs, noise, num_steps=num_steps, guidance=guidance)
        if self.on:
            bright = inputs.images[0].flatten(1).mean(dim=1) > 0
            out = out.copy()
            out[bright.numpy()] = np.nan
        return out

    def describe(self):
        return self.inner.describe()

    def close(self):
        self.inner.close()


class RobotDriver:
    """Per robot: camera + joint states at 20 Hz in its namespace; records its commands."""

    def __init__(self, ros, node, name: str, level: int) -> None:
        self.node, self.name = node, name
        self.cam = ros.create_publisher(Image, f"{name}/cam_high/image_raw", 1)
        self.js = ros.create_publisher(JointState, f"{name}/joint_states", 10)
        self.commands: List[float] = []  # receipt times
        self.chunks: List[JointTrajectory] = []
        ros.create_subscription(JointTrajectory,
                                f"/{name}/joint_trajectory_controller/joint_trajectory",
                                self._on_command, 50)
        ros.create_subscription(JointTrajectory, f"/pi0_ttnn_node/{name}/action_chunk",
                                self.chunks.append, 50)
        self.frame = np.full((48, 64, 3), level, np.uint8)
        self.stamp_offset = 0.0
        self.nan_joint = False
        self.last: JointTrajectory = None

    def _on_command(self, msg: JointTrajectory) -> None:
        self.commands.append(time.monotonic())
        self.last = msg

    def publish(self) -> None:
        stamp = self.node.get_clock().now().nanoseconds * 1e-9 + self.stamp_offset
        self.cam.publish(conversions.image_msg(self.frame, stamp))
        js = JointState(name=list(STATE_JOINTS), position=[0.0] * len(STATE_JOINTS))
        if self.nan_joint:
            js.position[0] = float("nan")
        js.header.stamp = conversions.sec_to_stamp(stamp)
        self.js.publish(js)


def test_two_robots_are_batched_and_one_hostile_robot_never_touches_the_other(tmp_path):
    params = tmp_path / "robots.yaml"
    params.write_text("pi0_ttnn_node:\n  ros__parameters:\n    robots: [a, b]\n"
                      "    b:\n      limits: {max_start_jump: 50.0}\n")
    overrides = dict(FAST, **{"instruction.default": "pick up the cube",
                              "cameras.names": ["base_0_rgb"],
                              "cameras.topics": ["cam_high/image_raw"],
                              "cameras.required": [True], "batch.window_s": 0.03,
                              "safety.watchdog_timeout_s": 1.0})
    rclpy.init()
    node = Pi0MultiRobotNode(cli_args=["--ros-args", "--params-file", str(PARAMS_FILE),
                                       "--params-file", str(params)],
                             parameter_overrides=[Parameter(k, value=v)
                                                  for k, v in overrides.items()])
    ros = rclpy.create_node("pi0_multi_test_driver")
    drivers: Dict[str, RobotDriver] = {n: RobotDriver(ros, node, n, lvl)
                                       for n, lvl in (("a", 50), ("b", 200))}
    diags: List[DiagnosticArray] = []
    ros.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    enable_b = ros.create_client(SetBool, "/pi0_ttnn_node/b/enable")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(ros)
    spinning = threading.Event()
    spinning.set()
    stop = threading.Event()

    def spin() -> None:
        while spinning.is_set():
            executor.spin_once(timeout_sec=0.05)

    def feed() -> None:
        while not stop.wait(0.05):
            for d in drivers.values():
                d.publish()

    threads = [threading.Thread(target=spin, daemon=True),
               threading.Thread(target=feed, daemon=True)]
    try:
        for t in threads:
            t.start()
        assert autostart(node), node.configure_error
        assert node.fleet.specs["b"].config["limits.max_start_jump"] == 50.0
        assert node.fleet.specs["a"].config["limits.max_start_jump"] == 100.0
        # both robots commanded on their own topics, from batched calls
        assert wait_for(lambda: all(len(d.chunks) >= 3 for d in drivers.values()), 60), \
            {n: len(d.chunks) for n, d in drivers.items()}
        for d in drivers.values():
            assert_valid_trajectory(d.last, ACTION_JOINTS)
        assert max(node.fleet.worker.stats.rows_per_call) == 2
        assert wait_for(lambda: any(s.name.endswith("/b: policy") for arr in diags
                                    for s in arr.status), 10)

        # b turns hostile: NaN inference rows, then stale stamps and NaN joints, output off
        wrapper = NanForBrightRows(node.policy.backend)
        node.policy.backend = wrapper
        wrapper.on = True
        assert wait_for(lambda: node.robots["b"].failures >= 2, 30)
        assert node.robots["a"].failures == 0
        assert enable_b.wait_for_service(10)
        future = enable_b.call_async(SetBool.Request(data=False))
        assert wait_for(future.done, 10) and future.result().success
        drivers["b"].stamp_offset = -10.0
        drivers["b"].nan_joint = True
        a_chunks, b_commands = len(drivers["a"].chunks), len(drivers["b"].commands)
        t0 = time.monotonic()
        time.sleep(4.0)
        window = [t for t in drivers["a"].commands if t >= t0]
        ticks = 4.0 * FAST["control_rate_hz"]
        assert len(window) >= 0.6 * ticks, (len(window), ticks)  # a still commanded every tick
        assert len(drivers["a"].chunks) - a_chunks >= 2  # and still gets new chunks
        assert len(drivers["b"].commands) - b_commands <= 1  # b: at most the disarm hold
        assert node.robots["a"].failures == 0
        assert node.robots["b"].hub.rejects(), "b's hostile inputs were not refused"
        assert not node.robots["a"].hub.rejects().get("nonfinite_state")
    finally:
        stop.set()
        spinning.clear()
        for t in threads:
            t.join(5.0)
        executor.shutdown(timeout_sec=5.0)
        node._release()
        node.destroy_node()
        ros.destroy_node()
        rclpy.shutdown()


def test_the_single_robot_node_refuses_a_robot_list_with_the_way_to_go():
    from ros_harness import make_node
    rclpy.init()
    node = make_node({"robots": ["a", "b"]})
    try:
        assert not autostart(node)
        assert "pi0_ttnn_multi_node" in node.configure_error
    finally:
        node._release()
        node.destroy_node()
        rclpy.shutdown()
