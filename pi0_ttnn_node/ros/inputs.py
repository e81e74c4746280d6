"""Targets of the subscription callbacks: cheap checks, store the latest data, count per input.

Images are only checked here (metadata or compressed header, microseconds) and stored as decoder
closures; the worker decodes the frames it uses. Joint states go to the JointStateCache merged by
name; instructions to the ObservationAssembler. Nothing raises out of a callback: every refusal is
counted by reason. Counterparts: observation_sync.py, joint_mapping.py, ros/node.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Optional, Tuple

from pi0_ttnn_node import image_conversion
from pi0_ttnn_node.control.node_config import CameraSpec, NodeConfig
from pi0_ttnn_node.control.pipeline import make_assembler
from pi0_ttnn_node.errors import ObservationRejected
from pi0_ttnn_node.observation_sync import SyncConfig
from pi0_ttnn_node.ros import conversions

LOG = logging.getLogger(__name__)

RATE_WINDOW_S = 5.0  # received / stamped rate window (node clock)
RATE_WINDOW_MAX = 1024
RATE_MIN_SAMPLES = 8
LOSSY_BELOW = 0.7  # delivered fraction under which /diagnostics warns with the likely cause


class InputStats:
    """Counts, newest accepted stamp, receipt times and the received vs stamped rate of one input.

    Rates come from a sliding window (RATE_WINDOW_S of node-clock receipt times, so sim-time
    replay at any speed compares like with like): `received_hz` is what arrived; `stamped_hz` is
    the publisher's rate implied by the header stamps, 1 / (10th percentile of the stamp steps
    between consecutive received messages): consecutive frames still arrive in pairs under loss,
    so the short steps reveal the publishing period while the gaps reveal the loss.
    """

    __slots__ = ("count", "last_stamp", "last_steady", "last_reject", "refused_latest",
                 "zero_stamps", "_rate_count", "_rate_t", "_window")

    def __init__(self) -> None:
        self.count = 0
        self.last_stamp: Optional[float] = None
        self.last_steady: Optional[float] = None
        self.last_reject = ""
        self.refused_latest = False  # the newest message was refused
        self.zero_stamps = 0
        self._rate_count = 0
        self._rate_t = time.monotonic()
        self._window: Deque[Tuple[float, float]] = deque(maxlen=RATE_WINDOW_MAX)

    def arrived(self, receipt: Optional[float] = None, stamp: Optional[float] = None) -> None:
        """Count one message (refused ones too); `stamp` feeds the stamped-rate estimate."""
        self.count += 1
        self.last_steady = time.monotonic()
        if receipt is not None and stamp is not None and stamp > 0.0:
            self._window.append((receipt, stamp))

    def received(self, stamp: float, receipt: Optional[float] = None) -> None:
        """Count one message and take its stamp as the newest accepted one."""
        self.arrived(receipt, stamp)
        self.last_stamp = stamp

    def rate(self) -> float:
        """Messages per second since the previous call (diagnostics period)."""
        now = time.monotonic()
        rate = (self.count - self._rate_count) / max(now - self._rate_t, 1e-6)
        self._rate_count, self._rate_t = self.count, now
        return rate

    def delivery(self, now: float) -> Dict[str, float]:
        """received_hz, stamped_hz and delivered (their ratio) over the last RATE_WINDOW_S.

        NaN where the window holds too little (fewer than RATE_MIN_SAMPLES messages).
        """
        while self._window and now - self._window[0][0] > RATE_WINDOW_S:
            self._window.popleft()
        nan = float("nan")
        samples = list(self._window)
        if len(samples) < RATE_MIN_SAMPLES:
            return {"received_hz": nan, "stamped_hz": nan, "delivered": nan}
        received = (len(samples) - 1) / max(samples[-1][0] - samples[0][0], 1e-6)
        stamps = sorted(st for _, st in samples)
        steps = sorted(b - a for a, b in zip(stamps, stamps[1:]) if b - a > 1e-6)
        if not steps:
            return {"received_hz": received, "stamped_hz": nan, "delivered": nan}
        period = steps[int(0.1 * (len(steps) - 1))]
        stamped = 1.0 / period
        return {"received_hz": received, "stamped_hz": stamped,
                "delivered": min(1.0, received / stamped)}


class InputHub:
    """Owns the joint cache and the observation assembler for one configured node."""

    def __init__(self, cfg: NodeConfig, now: Callable[[], float],
                 on_instruction_change: Callable[[str], None],
                 bridge: Optional[object] = None, image_size: Optional[int] = None) -> None:
        self.cfg = cfg
        self.now = now
        self.bridge = bridge
        # the model's square image size: frames are decoded straight to it (image_conversion)
        self.target_size = None if image_size is None else (int(image_size), int(image_size))
        # the same joint cache and assembler (sync rules) that replay and the soak build
        self.assembler = make_assembler(cfg, on_instruction_change)
        self.joints = self.assembler.joints
        self.stats: Dict[str, InputStats] = {f"camera {c.name}": InputStats()
                                             for c in cfg.cameras}
        self.stats["joint_states"] = InputStats()
        self.stats["instruction"] = InputStats()
        self.instruction_received = False
        self._rejects: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._size_warned: set = set()

    def count_reject(self, key: str, reason: str) -> None:
        with self._lock:
            self._rejects[reason] = self._rejects.get(reason, 0) + 1
        if key in self.stats:
            self.stats[key].last_reject = reason
            self.stats[key].refused_latest = True

    def rejects(self) -> Dict[str, int]:
        """Refusals by reason: callback-level ones plus the assembler's build-time ones."""
        with self._lock:
            merged = dict(self._rejects)
        for reason, n in list(self.assembler.counters.items()):
            merged[reason] = merged.get(reason, 0) + n
        return merged

    def on_image(self, camera: CameraSpec, msg: object) -> None:
        key = f"camera {camera.name}"
        stats = self.stats[key]
        receipt = self.now()
        try:
            stamp = conversions.checked_stamp(msg.header.stamp)
        except ObservationRejected as err:
            stats.arrived()
            self.count_reject(key, err.reason)
            return
        stats.arrived(receipt, stamp)
        try:
            if camera.transport == "raw":
                self._check_size(camera, msg.width, msg.height)
                decoder = conversions.image_decoder(msg, bridge=self.bridge,
                                                    target_size=self.target_size)
            else:
                width, height = image_conversion.check_compressed_image(msg.format, msg.data)
                self._check_size(camera, width, height)
                decoder = conversions.compressed_decoder(msg, target_size=self.target_size)
            zeros = self.assembler.zero_stamps
            self.assembler.add_image(camera.name, stamp, decoder, receipt_time=receipt)
            stats.zero_stamps += self.assembler.zero_stamps - zeros
            stats.last_stamp = receipt if stamp == 0.0 else stamp
            stats.refused_latest = False
        except ObservationRejected as err:
            self.count_reject(key, err.reason)
            LOG.debug("camera %s frame refused: %s", camera.name, err)

    def _check_size(self, camera: CameraSpec, width: int, height: int) -> None:
        if camera.expected_size and (width, height) != camera.expected_size \
                and camera.name not in self._size_warned:
            self._size_warned.add(camera.name)
            LOG.warning("camera %s sends %dx%d, expected %dx%d (cameras.expected_sizes); is the "
                        "topic remapped to the right camera?", camera.name, width, height,
                        *camera.expected_size)

    def on_joint_state(self, msg: object) -> None:
        stats = self.stats["joint_states"]
        receipt = self.now()
        try:
            stamp, names, positions = conversions.joint_state_arrays(msg)
        except ObservationRejected as err:
            stats.arrived()
            self.count_reject("joint_states", err.reason)
            return
        stats.arrived(receipt, stamp)
        zeros = self.joints.zero_stamps
        try:
            self.joints.add(stamp, names, positions, receipt_time=receipt)
            stats.refused_latest = False
            stats.last_stamp = receipt if stamp == 0.0 else stamp
        except ObservationRejected as err:
            if err.reason in ("nonfinite_state", "position_out_of_range"):
                stats.last_stamp = receipt if stamp == 0.0 else stamp  # other joints updated
            self.count_reject("joint_states", err.reason)
        stats.zero_stamps += self.joints.zero_stamps - zeros

    def on_instruction(self, text: str) -> None:
        self.stats["instruction"].received(self.now())
        self.instruction_received = True
        try:
            self.assembler.set_instruction(text)
        except ObservationRejected as err:
            # the assembler already counted it; counting here too would report it twice
            self.stats["instruction"].last_reject = err.reason
            LOG.warning("instruction refused: %s", err)

    def set_default_instruction(self, text: str) -> None:
        """Apply a new instruction.default; it takes effect now if no instruction was received."""
        cfg = self.assembler.config
        self.assembler.config = SyncConfig(
            max_image_age_s=cfg.max_image_age_s, max_state_age_s=cfg.max_state_age_s,
            max_camera_skew_s=cfg.max_camera_skew_s, future_tolerance_s=cfg.future_tolerance_s,
            max_instruction_chars=cfg.max_instruction_chars, default_instruction=text)
        if not self.instruction_received:
            self.assembler.set_instruction("")

    def reset(self) -> None:
        self.assembler.reset()
