"""Assemble one time-consistent Observation from the latest camera frames, joint states and text.

Observation time t_obs = the primary camera's header stamp; other cameras must lie within
`max_camera_skew_s` (0.05 s) of it, ages are judged by header stamps against the node clock (so
sim-time replay works), and frames are decoded only when an observation is built (worker thread).
ROS counterpart: the node's callbacks call add_image / set_instruction; its worker calls build.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from pi0_ttnn_node.errors import ConfigError, ObservationRejected
from pi0_ttnn_node.image_conversion import ImageRejected
from pi0_ttnn_node.instruction_rules import MAX_INSTRUCTION_CHARS, clean_instruction
from pi0_ttnn_node.joint_mapping import JointStateCache
from pi0_ttnn_node.preprocessing import Observation

logger = logging.getLogger(__name__)

FrameSource = Union[np.ndarray, Callable[[], np.ndarray]]


@dataclass(frozen=True)
class SyncConfig:
    """Time bounds (seconds, node clock) and instruction rules for building observations."""

    max_image_age_s: float = 0.25
    max_state_age_s: float = 0.1
    max_camera_skew_s: float = 0.05
    future_tolerance_s: float = 0.05  # stamps ahead of the node clock by more than this: refused
    max_instruction_chars: int = MAX_INSTRUCTION_CHARS  # instruction_rules.py
    default_instruction: str = ""

    def __post_init__(self) -> None:
        for name in ("max_image_age_s", "max_state_age_s", "max_camera_skew_s",
                     "future_tolerance_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"sync.{name} must be a finite number >= 0; got {value!r}")
        if self.max_instruction_chars <= 0:
            msg = f"max_instruction_chars must be > 0; got {self.max_instruction_chars}"
            raise ConfigError(msg)
        # the default obeys the same rules as ~/instruction (instruction_rules.py)
        try:
            cleaned = clean_instruction(self.default_instruction, self.max_instruction_chars)
        except ObservationRejected as err:
            raise ConfigError(f"instruction.default refused: {err}") from err
        object.__setattr__(self, "default_instruction", cleaned)


class _Frame:
    __slots__ = ("stamp", "source", "image")

    def __init__(self, stamp: float, source: FrameSource) -> None:
        self.stamp = stamp
        self.source = source
        self.image: Optional[np.ndarray] = source if isinstance(source, np.ndarray) else None


class ObservationAssembler:
    """Keep the latest frame per camera and the current instruction; build observations on demand.

    Thread model: add_image / set_instruction from subscription callbacks, build from the one
    inference worker. Decoding happens in build, once per frame (the result is cached).
    """

    def __init__(self, camera_names: Sequence[str], required: Sequence[bool], primary: str,
                 joints: JointStateCache, config: SyncConfig = SyncConfig(),
                 on_instruction_change: Optional[Callable[[str], None]] = None) -> None:
        names = list(camera_names)
        if not names or len(set(names)) != len(names) or len(required) != len(names):
            msg = f"camera names {names} must be unique and match required flags {list(required)}"
            raise ConfigError(msg)
        if primary not in names or not required[names.index(primary)]:
            raise ConfigError(f"primary camera '{primary}' must be one of {names} and required")
        self.camera_names = tuple(names)
        self.required = {n: bool(r) for n, r in zip(names, required)}
        self.primary = primary
        self.joints = joints
        self.config = config
        self._on_change = on_instruction_change
        self._lock = threading.Lock()
        self._frames: Dict[str, _Frame] = {}
        self._zero_stamp_warned: set = set()
        self.zero_stamps = 0  # frames whose stamp 0 was replaced by the receipt time
        self._last_now: Optional[float] = None
        self._last_built: Optional[tuple] = None  # (camera, stamp) pairs of the last observation
        self._instruction = config.default_instruction
        self.instruction_version = 0
        self.counters: Dict[str, int] = {}
        self.masked: Dict[str, str] = {}  # optional cameras masked in the last build, and why

    # ---- inputs ------------------------------------------------------------------------------
    def add_image(self, camera: str, stamp: float, frame: FrameSource,
                  receipt_time: Optional[float] = None) -> bool:
        """Store the newest frame of `camera`; return False when it is older than the stored one.

        `frame` is an RGB array or a zero-argument decoder (image_conversion.*_decoder). A zero
        stamp falls back to `receipt_time` with a one-time warning per camera (counted in
        `zero_stamps`); the frame then carries transport delay in its age, which is why real
        stamps are preferred. A negative or non-finite stamp raises ObservationRejected
        (invalid_stamp), counted by the caller like every other callback-level refusal. A stamp more
        than future_tolerance_s ahead of `receipt_time` raises ObservationRejected(future_stamp).
        """
        if camera not in self.required:
            raise ConfigError(f"unknown camera '{camera}'; configured: {list(self.camera_names)}")
        if not math.isfinite(stamp) or stamp < 0.0:
            # no clock produces one: a broken driver, which "use the receipt time" would hide
            msg = (f"camera '{camera}' stamp is {stamp}; header stamps must be >= 0 "
                   "(0 = use the receipt time)")
            raise ObservationRejected("invalid_stamp", msg)
        if stamp == 0.0 and receipt_time is None:
            msg = f"camera '{camera}' stamp is {stamp} and no receipt time was given"
            self._count("zero_stamp")
            raise ObservationRejected("zero_stamp", msg)
        if receipt_time is not None and stamp - receipt_time > self.config.future_tolerance_s:
            # stored, it would hide every newer real frame until the clock caught up with it
            msg = (f"camera '{camera}' stamp {stamp:.3f} is {stamp - receipt_time:.3f} s ahead "
                   f"of the clock; limit {self.config.future_tolerance_s} s")
            raise ObservationRejected("future_stamp", msg)
        if stamp == 0.0:
            self.zero_stamps += 1
            if camera not in self._zero_stamp_warned:
                logger.warning("camera '%s' sends header.stamp 0; using receipt time", camera)
                self._zero_stamp_warned.add(camera)
            stamp = float(receipt_time)
        with self._lock:
            old = self._frames.get(camera)
            if old is not None and stamp < old.stamp:
                self._count_locked("out_of_order")
                return False
            self._frames[camera] = _Frame(float(stamp), frame)
        return True

    def set_instruction(self, text: str) -> bool:
        """Set the task text; return True when the effective instruction changed.

        Empty or whitespace-only text falls back to the default instruction (or none, so build
        refuses with no_instruction). A refused text (too long) leaves the current one in force.
        A change bumps `instruction_version` and calls `on_instruction_change` (reset the queue).
        """
        try:
            cleaned = clean_instruction(text, self.config.max_instruction_chars)
        except ObservationRejected as err:
            self._count(err.reason)
            raise
        effective = cleaned or self.config.default_instruction
        with self._lock:
            changed = effective != self._instruction
            self._instruction = effective
            if changed:
                self.instruction_version += 1
                self._last_built = None  # same frames, new task: worth a new inference
        if not cleaned:
            logger.warning("empty instruction received; using default '%s'", effective)
        if changed and self._on_change is not None:
            self._on_change(effective)
        return changed

    @property
    def instruction(self) -> str:
        return self._instruction

    def reset(self) -> None:
        """Forget frames, joint history and the clock reference (clock jumped back); keep text."""
        with self._lock:
            self._frames.clear()
            self._last_now = None
            self._last_built = None
        self.joints.reset()

    # ---- build -------------------------------------------------------------------------------
    def build(self, now: float) -> Observation:
        """Return the observation at the primary camera's stamp, or raise ObservationRejected.

        Reasons: clock_jump_back, no_instruction, camera_missing, no_new_frame (every frame it
        would use was already used and the instruction is unchanged: the state is looked up at the
        same t_obs, so a new inference would only redraw noise), stale_image, future_stamp,
        camera_skew, the joint reasons (missing_joints, stale_state, nonfinite_state) and the
        image reasons from decoding. An optional camera failing a check is masked (None) instead.
        """
        try:
            return self._build(now)
        except ObservationRejected as err:
            self._count(err.reason)
            raise

    def _build(self, now: float) -> Observation:
        with self._lock:
            last, self._last_now = self._last_now, now
            frames = dict(self._frames)
            instruction = self._instruction
            last_built = self._last_built
        if last is not None and now < last:
            self.reset()
            raise ObservationRejected("clock_jump_back", f"clock went back from {last} to {now}")
        if not instruction:
            raise ObservationRejected("no_instruction", "no instruction and no default is set")
        primary = frames.get(self.primary)
        if primary is None:
            raise ObservationRejected("camera_missing", f"no frame yet from '{self.primary}'")
        t_obs = primary.stamp
        used: Dict[str, _Frame] = {self.primary: primary}
        masked: Dict[str, str] = {}
        self._check_time(self.primary, t_obs, t_obs, now)
        for name in self.camera_names:
            if name == self.primary:
                continue
            try:
                frame = frames.get(name)
                if frame is None:
                    raise ObservationRejected("camera_missing", f"no frame yet from '{name}'")
                self._check_time(name, frame.stamp, t_obs, now)
                used[name] = frame
            except ObservationRejected as err:
                if self.required[name]:
                    raise
                masked[name] = err.reason
        key = tuple(sorted((name, frame.stamp) for name, frame in used.items()))
        if key == last_built:
            raise ObservationRejected("no_new_frame", f"frames at {t_obs:.3f} were already used; "
                                      "waiting for a newer one")
        state = self.joints.lookup(t_obs, self.config.max_state_age_s)
        images: Dict[str, Optional[np.ndarray]] = {name: None for name in self.camera_names}
        for name, frame in used.items():
            images[name] = self._decode(name, frame)
        self.masked = masked
        with self._lock:
            self._last_built = key
        for reason in masked.values():
            self._count("masked_" + reason)
        return Observation(images=images, state=state, instruction=instruction, timestamp=t_obs)

    def _check_time(self, name: str, stamp: float, t_obs: float, now: float) -> None:
        cfg = self.config
        if stamp - now > cfg.future_tolerance_s:
            msg = f"'{name}' stamp {stamp:.3f} is {stamp - now:.3f} s ahead of the clock {now:.3f}"
            raise ObservationRejected("future_stamp", msg)
        if now - stamp > cfg.max_image_age_s:
            msg = f"'{name}' frame is {now - stamp:.3f} s old; limit {cfg.max_image_age_s} s"
            raise ObservationRejected("stale_image", msg)
        if abs(stamp - t_obs) > cfg.max_camera_skew_s:
            msg = (f"'{name}' stamp differs from the primary's by {stamp - t_obs:+.3f} s; "
                   f"limit {cfg.max_camera_skew_s} s")
            raise ObservationRejected("camera_skew", msg)

    def _decode(self, name: str, frame: _Frame) -> np.ndarray:
        if frame.image is None:
            try:
                image = frame.source()
            except ImageRejected:
                self._drop(name, frame)
                raise
            except Exception as err:  # a decoder bug must not end the worker; the frame is bad
                self._drop(name, frame)
                raise ImageRejected("decode_failed", f"camera '{name}': {err!r}") from err
            frame.image = image
        if frame.image.ndim != 3 or frame.image.shape[2] != 3 or frame.image.dtype != np.uint8:
            self._drop(name, frame)
            shape = frame.image.shape
            msg = f"camera '{name}' frame is {frame.image.dtype} {shape}; need HxWx3 uint8"
            raise ImageRejected("bad_frame", msg)
        return frame.image

    def _drop(self, name: str, frame: _Frame) -> None:
        # a frame that failed to decode is removed so the next build does not retry it
        with self._lock:
            if self._frames.get(name) is frame:
                del self._frames[name]

    def frame_stamps(self) -> Dict[str, Tuple[float, bool]]:
        """Stamp and decoded flag of each stored frame (diagnostics)."""
        with self._lock:
            return {n: (f.stamp, f.image is not None) for n, f in self._frames.items()}

    def _count(self, reason: str) -> None:
        with self._lock:
            self._count_locked(reason)

    def _count_locked(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1
