"""ROS messages <-> core values: stamps as float seconds, image decoders, joints, trajectories.

Trajectory messages are built from preallocated points whose time_from_start never changes, and
positions/velocities are assigned as array('d') in bulk (rclpy validates other sequences element by
element), so a 50-point, 14-joint message costs well under a millisecond. cv_bridge is used for raw
images only where it is importable. Counterparts: image_conversion.py, joint_mapping.py, node.py.
"""

from __future__ import annotations

import array
import math
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from pi0_ttnn_node import image_conversion
from pi0_ttnn_node.errors import ObservationRejected

try:  # the robot has cv_bridge; here the numpy path is the tested one
    from cv_bridge import CvBridge
except ImportError:
    CvBridge = None

LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN,
          "ERROR": DiagnosticStatus.ERROR, "STALE": DiagnosticStatus.STALE}


def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time (or Duration) -> float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def checked_stamp(stamp: Any) -> float:
    """An input header stamp as float seconds; ObservationRejected(invalid_stamp) when it is not
    a valid time: negative seconds or nanosec >= 1e9 (no clock produces either; "use the receipt
    time" is only for the documented 0 stamp, see observation_sync / joint_mapping)."""
    if stamp.sec < 0 or not 0 <= stamp.nanosec < 1_000_000_000:
        raise ObservationRejected("invalid_stamp", f"header stamp sec={stamp.sec} nanosec="
                                  f"{stamp.nanosec} is not a valid time (need sec >= 0, "
                                  "0 <= nanosec < 1e9); fix the publisher's clock")
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(t: float) -> Time:
    """Float seconds (>= 0) -> builtin_interfaces/Time, nanoseconds rounded."""
    sec, nsec = divmod(int(round(t * 1e9)), 1_000_000_000)
    return Time(sec=sec, nanosec=nsec)


def sec_to_duration(t: float) -> Duration:
    sec, nsec = divmod(int(round(t * 1e9)), 1_000_000_000)
    return Duration(sec=sec, nanosec=nsec)


def image_decoder(msg: Image, max_pixels: int = image_conversion.DEFAULT_MAX_PIXELS,
                  bridge: Optional[Any] = None, target_size: Optional[Tuple[int, int]] = None
                  ) -> Callable[[], np.ndarray]:
    """Check a raw Image now (metadata only) and return a closure producing RGB uint8 later.

    Raises image_conversion.ImageRejected with a `reason` for bad metadata. With a CvBridge the
    closure uses it, after the same checks, so both paths refuse the same messages.
    `target_size` (height, width): the closure returns the frame resized with pad to it.
    """
    if bridge is None:
        return image_conversion.raw_image_decoder(msg.encoding, msg.height, msg.width, msg.step,
                                                  msg.data, max_pixels, target_size)
    image_conversion.check_raw_image(msg.encoding, msg.height, msg.width, msg.step,
                                     memoryview(msg.data).nbytes, max_pixels)

    def decode() -> np.ndarray:
        rgb = np.ascontiguousarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        if target_size is None or rgb.shape[:2] == tuple(target_size):
            return rgb
        return image_conversion.resize_with_pad_u8(rgb, target_size[0], target_size[1])

    return decode


def compressed_decoder(msg: CompressedImage,
                       max_pixels: int = image_conversion.DEFAULT_MAX_PIXELS,
                       target_size: Optional[Tuple[int, int]] = None
                       ) -> Callable[[], np.ndarray]:
    """Check a CompressedImage header now and return a closure decoding it later."""
    return image_conversion.compressed_image_decoder(msg.format, msg.data, max_pixels,
                                                     target_size)


def make_bridge() -> Optional[Any]:
    return CvBridge() if CvBridge is not None else None


def joint_state_arrays(msg: JointState) -> Tuple[float, Sequence[str], np.ndarray]:
    """JointState -> (stamp seconds, names, positions float64); no reordering here.

    Raises ObservationRejected(invalid_stamp) for an invalid header stamp (checked_stamp)."""
    positions = np.frombuffer(msg.position, dtype=np.float64) if len(msg.position) else \
        np.zeros(0, dtype=np.float64)
    return checked_stamp(msg.header.stamp), list(msg.name), positions


def image_msg(rgb: np.ndarray, stamp: float, frame_id: str = "", encoding: str = "rgb8") -> Image:
    """RGB uint8 [H, W, 3] -> sensor_msgs/Image (test publishers and the replay tool)."""
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, is_bigendian=0,
                step=rgb.shape[1] * rgb.shape[2])
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.data = array.array("B", np.ascontiguousarray(rgb).tobytes())
    return msg


def _doubles(row: np.ndarray) -> array.array:
    out = array.array("d")
    out.frombytes(np.ascontiguousarray(row, dtype=np.float64).tobytes())
    return out


class TrajectoryBuilder:
    """Reusable JointTrajectory with up to `max_points` preallocated points.

    Point j has time_from_start = (j + first_index) * dt: first_index 1 for controller commands
    (the first point lies one period ahead), 0 for ~/action_chunk (point i at i * dt).
    The returned message is reused by the next build: publish it before building again.
    """

    def __init__(self, joint_names: Sequence[str], dt: float, max_points: int,
                 first_index: int = 1) -> None:
        if not (math.isfinite(dt) and dt > 0) or max_points <= 0:
            raise ValueError(f"dt must be > 0 and max_points > 0, got {dt}, {max_points}")
        self.joint_names = list(joint_names)
        self.dt = dt
        self.msg = JointTrajectory(joint_names=self.joint_names)
        self._points = [
            JointTrajectoryPoint(time_from_start=sec_to_duration((j + first_index) * dt))
            for j in range(max_points)]
        self._empty = array.array("d")

    def build(self, positions: np.ndarray, velocities: Optional[np.ndarray] = None,
              stamp: Optional[float] = None, frame_id: str = "",
              time_from_start: Optional[np.ndarray] = None) -> JointTrajectory:
        """positions/velocities [T, n] in joint_names order; stamp None = 0 (start on arrival).

        `time_from_start` [T] (seconds, strictly increasing) replaces the preset j * dt grid, for
        queued actions whose absolute times are not a whole number of periods from now.
        """
        count, n = positions.shape
        if n != len(self.joint_names) or count == 0 or count > len(self._points):
            raise ValueError(f"positions {positions.shape} do not fit {len(self.joint_names)} "
                             f"joints and at most {len(self._points)} points")
        pos64 = np.ascontiguousarray(positions, dtype=np.float64)
        vel64 = None if velocities is None else np.ascontiguousarray(velocities, dtype=np.float64)
        points = self._points[:count]
        for j, point in enumerate(points):
            point.positions = _doubles(pos64[j])
            point.velocities = self._empty if vel64 is None else _doubles(vel64[j])
        if time_from_start is not None:
            nanos = np.round(np.asarray(time_from_start, dtype=np.float64) * 1e9).astype(np.int64)
            for point, ns in zip(points, nanos.tolist()):
                point.time_from_start.sec, point.time_from_start.nanosec = divmod(ns, 1_000_000_000)
        self.msg.points = points
        self.msg.header.stamp = sec_to_stamp(stamp) if stamp else Time()
        self.msg.header.frame_id = frame_id
        return self.msg


def hold_trajectory(joint_names: Sequence[str], position: np.ndarray, dt: float,
                    with_velocity: bool = True) -> JointTrajectory:
    """One-point trajectory that keeps `position` (velocity 0), starting on arrival (stamp 0)."""
    point = JointTrajectoryPoint(positions=_doubles(position),
                                 time_from_start=sec_to_duration(dt))
    if with_velocity:
        point.velocities = _doubles(np.zeros(len(joint_names)))
    return JointTrajectory(joint_names=list(joint_names), points=[point])


def trajectory_arrays(msg: JointTrajectory) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """JointTrajectory -> (times [T], positions [T, n], velocities [T, n] or [T, 0])."""
    times = np.array([stamp_to_sec(p.time_from_start) for p in msg.points])
    pos = np.array([np.frombuffer(p.positions, dtype=np.float64) for p in msg.points])
    vel = np.array([np.frombuffer(p.velocities, dtype=np.float64) for p in msg.points])
    return times, pos.reshape(len(msg.points), -1), vel.reshape(len(msg.points), -1)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def diagnostic_status(name: str, level: str, message: str, hardware_id: str,
                      values: Mapping[str, Any]) -> DiagnosticStatus:
    """One DiagnosticStatus; values are formatted compactly (floats to 6 significant digits)."""
    return DiagnosticStatus(level=LEVELS[level], name=name, message=message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=_format(v))
                                    for k, v in values.items()])


def diagnostic_array(stamp: Time, statuses: Iterable[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray(status=list(statuses))
    msg.header.stamp = stamp
    return msg


def status_values(status: DiagnosticStatus) -> dict:
    """KeyValue list -> dict (tests and tools reading /diagnostics)."""
    return {kv.key: kv.value for kv in status.values}
