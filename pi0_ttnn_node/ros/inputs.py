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
from typing import Callable, Dict, Optional

from pi0_ttnn_node import image_conversion
from pi0_ttnn_node.errors import ObservationRejected
from pi0_ttnn_node.joint_mapping import JointStateCache
from pi0_ttnn_node.observation_sync import ObservationAssembler, SyncConfig
from pi0_ttnn_node.ros import conversions
from pi0_ttnn_node.ros.params import CameraSpec, NodeConfig

LOG = logging.getLogger(__name__)


class InputStats:
    """Message count, newest header stamp and steady receipt time of one input."""

    __slots__ = ("count", "last_stamp", "last_steady", "last_reject", "refused_latest",
                 "_rate_count", "_rate_t")

    def __init__(self) -> None:
        self.count = 0
        self.last_stamp: Optional[float] = None
        self.last_steady: Optional[float] = None
        self.last_reject = ""
        self.refused_latest = False  # the newest message was refused
        self._rate_count = 0
        self._rate_t = time.monotonic()

    def received(self, stamp: float) -> None:
        self.count += 1
        self.last_stamp = stamp
        self.last_steady = time.monotonic()

    def rate(self) -> float:
        """Messages per second since the previous call (diagnostics period)."""
        now = time.monotonic()
        rate = (self.count - self._rate_count) / max(now - self._rate_t, 1e-6)
        self._rate_count, self._rate_t = self.count, now
        return rate


class InputHub:
    """Owns the joint cache and the observation assembler for one configured node."""

    def __init__(self, cfg: NodeConfig, now: Callable[[], float],
                 on_instruction_change: Callable[[str], None],
                 bridge: Optional[object] = None) -> None:
        self.cfg = cfg
        self.now = now
        self.bridge = bridge
        history = max(1.0, 4.0 * cfg["sync.max_state_age_s"])
        self.joints = JointStateCache(cfg.state_joint_names, history_s=history)
        sync = SyncConfig(max_image_age_s=cfg["sync.max_image_age_s"],
                          max_state_age_s=cfg["sync.max_state_age_s"],
                          max_camera_skew_s=cfg["sync.max_camera_skew_s"],
                          default_instruction=cfg["instruction.default"])
        self.assembler = ObservationAssembler([c.name for c in cfg.cameras],
                                              [c.required for c in cfg.cameras],
                                              cfg.primary_camera, self.joints, sync,
                                              on_instruction_change)
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
        stamp = conversions.stamp_to_sec(msg.header.stamp)
        self.stats[key].received(stamp)
        try:
            if camera.transport == "raw":
                self._check_size(camera, msg.width, msg.height)
                decoder = conversions.image_decoder(msg, bridge=self.bridge)
            else:
                width, height = image_conversion.check_compressed_image(msg.format, msg.data)
                self._check_size(camera, width, height)
                decoder = conversions.compressed_decoder(msg)
            self.assembler.add_image(camera.name, stamp, decoder, receipt_time=self.now())
            self.stats[key].refused_latest = False
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
        stamp, names, positions = conversions.joint_state_arrays(msg)
        self.stats["joint_states"].received(stamp)
        try:
            self.joints.add(stamp, names, positions, receipt_time=self.now())
            self.stats["joint_states"].refused_latest = False
        except ObservationRejected as err:
            self.count_reject("joint_states", err.reason)

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
