"""The DDS side of tools/hostile_inputs.py: good input stream, bad-input windows, output records.

A thread publishes a primary raw frame, a JPEG wrist frame and a joint state per period, all with
one stamp (wall clock = the node's clock on one host). During a case one channel carries the bad
message instead, after a quiet gap long enough that no earlier good input can pair with it.
"""

from __future__ import annotations

import array
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from pi0_ttnn_node.ros.conversions import stamp_to_sec, status_values
from pi0_ttnn_node.tools import hostile_cases as hc
from pi0_ttnn_node.tools.hostile_cases import GOOD_INSTRUCTION, NODE, Row

OUTPUT_TOPIC = "/joint_trajectory_controller/joint_trajectory"
_CONTROL = set(range(0, 32)) | set(range(0x7F, 0xA0)) | {0x200B, 0x202E}


class Attacker:
    """Publishes good and bad inputs, records the node's outputs and diagnostics."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.node = rclpy.create_node("pi0_hostile_driver")
        n = self.node
        self.pubs = {"primary": n.create_publisher(Image, "/cam_high/image_raw", 10),
                     "wrist": n.create_publisher(CompressedImage,
                                                 "/cam_left_wrist/image_raw/compressed", 10),
                     "joints": n.create_publisher(JointState, "/joint_states", 10)}
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.instruction_pub = n.create_publisher(String, f"{NODE}/instruction", latched)
        self.outputs: List[Tuple[float, float, str]] = []  # (header stamp, receipt time, topic)
        self.diags: List[Tuple[float, Dict[str, str]]] = []
        self._lock = threading.Lock()
        n.create_subscription(JointTrajectory, OUTPUT_TOPIC,
                              lambda m: self._on_output(m, OUTPUT_TOPIC), 50)
        n.create_subscription(JointTrajectory, f"{NODE}/action_chunk",
                              lambda m: self._on_output(m, "action_chunk"), 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.get_state = n.create_client(GetState, f"{NODE}/get_state")
        self.set_params = n.create_client(SetParameters, f"{NODE}/set_parameters")
        self.get_params = n.create_client(GetParameters, f"{NODE}/get_parameters")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()
        self.paused = threading.Event()
        self.override: Optional[Tuple[str, hc.Case]] = None
        self.bad_stamps: List[float] = []
        self.t_applied = 0.0
        self._stop = threading.Event()
        self._stream: Optional[threading.Thread] = None
        self.instruction_pub.publish(String(data=GOOD_INSTRUCTION))

    # ---- records -------------------------------------------------------------------------------
    def _on_output(self, msg: JointTrajectory, topic: str) -> None:
        with self._lock:
            self.outputs.append((stamp_to_sec(msg.header.stamp), time.time(), topic))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(": policy"):
                values = dict(status_values(status), _level=str(int.from_bytes(status.level,
                                                                              "little")),
                              _message=status.message)
                with self._lock:
                    self.diags.append((time.time(), values))

    def latest_diag(self, after: float = 0.0) -> Optional[Dict[str, str]]:
        with self._lock:
            return next((v for t, v in reversed(self.diags) if t > after), None)

    def rejects(self, after: float = 0.0) -> Dict[str, int]:
        values = self.latest_diag(after) or {}
        return {k[7:]: int(v) for k, v in values.items() if k.startswith("reject.")}

    def wait_output_after(self, t: float, timeout: float) -> bool:
        """True once a command or chunk observed after `t` arrives."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if any(stamp > t for stamp, _, topic in self.outputs[-20:]
                       if topic == OUTPUT_TOPIC):
                    return True
            time.sleep(0.02)
        return False

    def commands_received(self, t0: float, t1: float) -> List[float]:
        """Stamps of controller commands (holds excluded) received between t0 and t1."""
        with self._lock:
            return [s for s, t, topic in self.outputs
                    if topic == OUTPUT_TOPIC and s > 0 and t0 < t <= t1]

    def outputs_from(self, t0: float, t1: float, stamps: List[float]) -> List[float]:
        with self._lock:
            out = [s for s, _, _ in self.outputs]
        return [s for s in out if t0 <= s <= t1 or any(abs(s - b) < 1e-3 for b in stamps)]

    # ---- node state ----------------------------------------------------------------------------
    def state(self, attempts: int = 3) -> str:
        if not self.get_state.wait_for_service(5.0):
            return "unreachable"
        # A reply can be lost while the server has not yet matched this client's response
        # reader (DDS discovery is asynchronous), so one unanswered call is retried.
        for _ in range(attempts):
            reply = self.get_state.call(GetState.Request(), timeout_sec=5.0)
            if reply is not None:
                return reply.current_state.label
        return "no reply"

    def wait_active(self, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.state() == "active":
                return True
            time.sleep(0.5)
        return False

    # ---- the input stream --------------------------------------------------------------------
    def start_good_stream(self) -> None:
        def loop() -> None:
            i = 0
            while not self._stop.wait(1.0 / self.cfg.rate_hz):
                if not self.paused.is_set():
                    self.publish_cycle(time.time(), i)
                    i += 1
        self._stream = threading.Thread(target=loop, daemon=True)
        self._stream.start()

    def publish_cycle(self, stamp: float, i: int) -> None:
        good = {"primary": lambda: hc.raw(stamp), "wrist": lambda: hc.compressed(stamp),
                "joints": lambda: hc.joints(stamp)}
        override = self.override
        for channel, make in good.items():
            if override is not None and override[0] == channel:
                msg = override[1].make(stamp, i)
                self.bad_stamps.append(stamp_to_sec(msg.header.stamp))
            else:
                msg = make()
            self.pubs[channel].publish(msg)

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.join(2.0)
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()

    # ---- cases -------------------------------------------------------------------------------
    def run_case(self, case: hc.Case) -> Row:
        row = Row(case.kind, case.expected)
        if case.channel == "param":
            return self._param_case(case, row)
        before = self.rejects()
        self.paused.set()
        time.sleep(self.cfg.quiet_s)
        t0 = time.time()
        self.bad_stamps = []
        if case.channel == "instruction":
            t1 = self._instruction_window(case, row)
        elif case.channel == "burst":
            for i in range(300):
                self.publish_cycle(time.time(), i)
            t1 = time.time()
            self.paused.clear()
        else:
            self.override = (case.channel, case)
            self.paused.clear()
            time.sleep(self.cfg.window_s)
            self.override = None
            t1 = time.time()
        row.resumed = self.wait_output_after(t1, self.cfg.resume_timeout_s)
        time.sleep(3 * 0.1)  # three diagnostics periods
        after = self.rejects(t1)
        grown = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
        row.observed = row.observed or (", ".join(f"{k}+{v}" for k, v in sorted(
            grown.items(), key=lambda kv: -kv[1])) or "none")
        # a refused instruction leaves the old one in force: output during the window is its own
        if case.channel == "instruction":
            kept = case.expected == "instruction_too_long"
            hits = [] if kept else self.commands_received(self.t_applied, t1)
        else:
            hits = self.outputs_from(t0, t1, self.bad_stamps)
        row.published_from_it = (f"{len(hits)} (by design)" if case.used and hits
                                 else str(len(hits)))
        row.active = self.state() == "active"
        counted = not case.expected or case.expected in grown
        row.ok = row.ok if row.observed.startswith("FAIL") else (
            row.active and row.resumed and counted and (case.used or not hits))
        return row

    def _instruction_window(self, case: hc.Case, row: Any) -> float:
        self.paused.clear()
        sent = time.time()
        self.instruction_pub.publish(String(data=case.make()))
        self.t_applied = sent
        while time.time() - sent < 2.0:  # diagnostics show when the node took the text over
            values = self.latest_diag(sent) or {}
            if values.get("instruction", GOOD_INSTRUCTION) != GOOD_INSTRUCTION:
                self.t_applied = time.time()
                break
            time.sleep(0.02)
        time.sleep(self.cfg.window_s)
        values = self.latest_diag(time.time() - 0.2) or {}
        in_force = values.get("instruction", "")
        if case.used and any(ord(c) in _CONTROL for c in in_force):
            row.observed = f"FAIL: control characters kept: {in_force!r}"
        elif case.expected == "instruction_too_long" and in_force != GOOD_INSTRUCTION:
            row.observed = f"FAIL: instruction replaced by {in_force[:40]!r}"
        t1 = time.time()
        self.instruction_pub.publish(String(data=GOOD_INSTRUCTION))
        if case.used:
            row.observed = row.observed or f"cleaned: {in_force[:30]!r}"
        return t1

    def _param_case(self, case: hc.Case, row: Any) -> Any:
        param = case.make()
        old = self._get(param.name)
        request = SetParameters.Request(parameters=[param.to_parameter_msg()])
        reply = self.set_params.call(request, timeout_sec=10.0)
        result = reply.results[0] if reply is not None else None
        unchanged = self._get(param.name) == old
        if result is None:
            row.observed = "no reply"
        else:
            row.observed = ("ACCEPTED" if result.successful else "refused: ") + result.reason
        row.published_from_it = "value unchanged" if unchanged else "VALUE CHANGED"
        row.resumed = self.wait_output_after(time.time(), self.cfg.resume_timeout_s)
        row.active = self.state() == "active"
        row.ok = bool(result is not None and not result.successful and result.reason
                      and unchanged and row.resumed and row.active)
        return row

    def _get(self, name: str) -> Any:
        reply = self.get_params.call(GetParameters.Request(names=[name]), timeout_sec=10.0)
        if reply is None or not reply.values:
            return None
        v = reply.values[0]
        return (v.type, v.bool_value, v.integer_value, v.double_value, v.string_value)

    def run_huge_raw(self) -> Any:
        """One real 7680x4320 rgb8 Image (99.5 MB): refused from its metadata, node unharmed."""
        row = Row("raw: real 8K Image (99.5 MB)", "image_too_large")
        before = self.rejects()
        msg = hc.raw(time.time(), width=7680, height=4320, data=b"")
        msg.data = array.array("B", bytes(7680 * 4320 * 3))
        t0 = time.time()
        self.pubs["primary"].publish(msg)
        deadline = time.time() + 20.0
        while time.time() < deadline and \
                self.rejects(t0).get("image_too_large", 0) <= before.get("image_too_large", 0):
            time.sleep(0.2)
        grown = self.rejects(t0).get("image_too_large", 0) - before.get("image_too_large", 0)
        row.observed = f"image_too_large+{grown}" if grown > 0 else "not delivered / not counted"
        row.resumed = self.wait_output_after(time.time(), self.cfg.resume_timeout_s)
        row.active = self.state() == "active"
        row.published_from_it = "0"
        row.ok = row.active and row.resumed
        return row
