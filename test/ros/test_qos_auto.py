"""qos.image_reliability auto over DDS: each camera follows its publishers, lossy cameras are named.

The publishers live in a second rclpy context (their own DDS participant), so the subscriber
learns about them through loopback discovery, as it would from a camera driver process.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Dict, List

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from pi0_ttnn_node.ros import conversions, diagnostics, qos
from pi0_ttnn_node.ros.inputs import InputStats

BEST_EFFORT = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


class Cfg:
    """The slice of NodeConfig CameraSubscriptions reads."""

    def __init__(self, setting: str, topics: Dict[str, str]) -> None:
        self.cameras = tuple(SimpleNamespace(name=n, topic=t, transport="raw")
                             for n, t in topics.items())
        self.values = {"qos.image_reliability": setting, "qos.image_depth": 1}

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


class Pair:
    """A subscriber node (default context) and a publisher node in a second context."""

    def __init__(self) -> None:
        rclpy.init()
        self.pub_ctx = Context()
        rclpy.init(context=self.pub_ctx)
        self.sub = rclpy.create_node("pi0_qos_sub")
        self.pub = rclpy.create_node("pi0_qos_pub", context=self.pub_ctx)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.sub)
        self.frames: Dict[str, List[Any]] = {}

    def on_image(self, cam: Any, msg: Image) -> None:
        self.frames.setdefault(cam.name, []).append(msg)

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def close(self) -> None:
        self.executor.shutdown()
        self.sub.destroy_node()
        self.pub.destroy_node()
        rclpy.shutdown(context=self.pub_ctx)
        rclpy.shutdown()


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


def _subs(pair: Pair, setting: str, topics: Dict[str, str]) -> qos.CameraSubscriptions:
    return qos.CameraSubscriptions(pair.sub, Cfg(setting, topics), lambda cam: Image,
                                   pair.on_image)


def _frame(stamp: float, size=(640, 480)) -> Image:
    rgb = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    return conversions.image_msg(rgb, stamp)


def test_reliable_publisher_of_raw_640x480_is_matched_as_reliable_and_loses_nothing(pair):
    pub = pair.pub.create_publisher(Image, "/cam_a/image_raw", RELIABLE)
    subs = _subs(pair, "auto", {"a": "/cam_a/image_raw"})
    assert pair.spin_until(lambda: subs.reliability["a"] == "reliable", 10.0), subs.offered
    assert subs.offered["a"] == "reliable"
    assert pair.spin_until(lambda: pub.get_subscription_count() == 1, 10.0)
    pair.spin(0.5)  # the reliable reader is matched both ways before the first frame
    frame = _frame(1.0)
    for k in range(20):
        frame.header.stamp = conversions.sec_to_stamp(1.0 + k / 15)
        pub.publish(frame)
        pair.spin(1 / 15)
    pair.spin_until(lambda: len(pair.frames.get("a", [])) >= 20, 5.0)
    got = pair.frames.get("a", [])
    assert len(got) >= 19 and got[-1].width == 640 and len(got[-1].data) == 640 * 480 * 3
    subs.close()


def test_best_effort_publisher_is_matched_as_best_effort_and_explicit_choices_hold(pair):
    be = pair.pub.create_publisher(Image, "/cam_b/image_raw", BEST_EFFORT)
    rel = pair.pub.create_publisher(Image, "/cam_c/image_raw", RELIABLE)
    auto = _subs(pair, "auto", {"b": "/cam_b/image_raw"})
    explicit = _subs(pair, "best_effort", {"c": "/cam_c/image_raw"})
    assert pair.spin_until(lambda: auto.offered["b"] == "best_effort", 10.0)
    pair.spin(1.5)  # at least one more re-check
    assert auto.reliability["b"] == "best_effort" and auto.changes["b"] == 0
    assert explicit.reliability["c"] == "best_effort" and explicit.setting == "best_effort"
    assert explicit.refresh() == []
    assert pair.spin_until(lambda: be.get_subscription_count() == 1
                           and rel.get_subscription_count() == 1, 10.0)
    for k in range(5):
        be.publish(_frame(2.0 + k, (64, 48)))
        rel.publish(_frame(2.0 + k, (64, 48)))
        pair.spin(0.05)
    assert pair.spin_until(lambda: pair.frames.get("b") and pair.frames.get("c"), 5.0)
    auto.close()
    explicit.close()


def test_auto_re_subscribes_when_the_publishers_change(pair):
    rel = pair.pub.create_publisher(Image, "/cam_d/image_raw", RELIABLE)
    subs = _subs(pair, "auto", {"d": "/cam_d/image_raw"})
    assert pair.spin_until(lambda: subs.reliability["d"] == "reliable", 10.0)
    be = pair.pub.create_publisher(Image, "/cam_d/image_raw", BEST_EFFORT)
    # a reliable reader cannot match the best-effort writer: back to best_effort
    assert pair.spin_until(lambda: subs.reliability["d"] == "best_effort", 10.0), subs.offered
    assert subs.offered["d"] == "mixed"
    pair.pub.destroy_publisher(be)
    assert pair.spin_until(lambda: subs.reliability["d"] == "reliable", 10.0), subs.offered
    assert subs.changes["d"] >= 2
    assert subs.describe("d")["qos_setting"] == "auto"
    del rel
    subs.close()


def test_lossy_camera_is_reported_with_the_likely_cause(pair):
    """Frames stamped at 30 Hz of which only 2 in 6 are delivered (the rest 'lost' on the way):
    the stamps reveal the publishing rate, the diagnostic names the loss and its likely cause."""
    pub = pair.pub.create_publisher(Image, "/cam_e/image_raw", BEST_EFFORT)
    stats = {"e": InputStats()}
    clock = pair.sub.get_clock()

    def now() -> float:
        return clock.now().nanoseconds * 1e-9

    def on_image(cam: Any, msg: Image) -> None:
        stats[cam.name].arrived(now(), conversions.stamp_to_sec(msg.header.stamp))

    subs = qos.CameraSubscriptions(pair.sub, Cfg("auto", {"e": "/cam_e/image_raw"}),
                                   lambda cam: Image, on_image)
    assert pair.spin_until(lambda: pub.get_subscription_count() == 1, 10.0)
    t0, period = now(), 1 / 30
    for k in range(60):  # 2 s of a 30 Hz camera, frames 2..5 of every 6 lost
        if k % 6 < 2:
            pub.publish(_frame(t0 + k * period, (64, 48)))
        pair.spin(period)
    pair.spin(0.2)
    values, warning = diagnostics.camera_delivery(stats["e"], now(), "raw", subs.describe("e"))
    assert abs(values["stamped_rate_hz"] - 30.0) < 3.0, values
    assert values["delivered_fraction"] < 0.5, values
    assert "likely cause" in warning and "best-effort delivery of large raw frames" in warning
    assert "Hz published" in warning
    # a complete 30 Hz camera: no warning
    full = InputStats()
    for k in range(40):
        full.arrived(100.0 + k / 30, 50.0 + k / 30)
    values, warning = diagnostics.camera_delivery(full, 100.0 + 40 / 30, "raw",
                                                  {"qos_reliability": "reliable"})
    assert warning == "" and values["delivered_fraction"] > 0.95
    subs.close()


def test_likely_cause_depends_on_the_qos_in_use():
    assert "reliable" in diagnostics.likely_loss_cause("raw", "best_effort", "reliable")
    assert "CPU" in diagnostics.likely_loss_cause("raw", "reliable", "reliable")
    assert "socket buffers" in diagnostics.likely_loss_cause("compressed", "best_effort", "none")
    assert qos.choose_reliability("auto", "mixed") == "best_effort"
    assert qos.choose_reliability("auto", "none") == "best_effort"
    assert qos.choose_reliability("reliable", "best_effort") == "reliable"
