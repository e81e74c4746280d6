"""Small rosbag2 recordings (sqlite3 or MCAP) written and read with `rosbags`, no ROS install.

`BagBuilder` writes Image / CompressedImage / JointState / String / JointTrajectory messages with
ROS 2 Humble or Jazzy definitions; `make_demo_bag` is the deterministic demo session (3 cameras at
15 Hz, joints at 100 Hz, one instruction). `BagReader` wraps `AnyReader` and turns every failure
into a `BagError` subclass with its own CLI exit code. Counterparts: tools/replay.py, bag_play.py.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import (Connection, Qos, QosDurability, QosHistory, QosLiveliness,
                                QosReliability, QosTime)
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, TypesysError, get_typestore

from pi0_ttnn_node.errors import Pi0Error

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
DISTROS = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
JOINT_STATE = "sensor_msgs/msg/JointState"
STRING = "std_msgs/msg/String"
TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
DEMO_START_NS = 1_700_000_000 * 10**9  # a plausible wall-clock epoch, like a real recording
DEMO_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
DEMO_JOINTS = tuple(f"joint_{i}" for i in range(1, 8)) + ("gripper",)
DEMO_INSTRUCTION = "pick up the red block and place it in the bowl"
DEMO_INSTRUCTION_TOPIC = "/pi0_ttnn_node/instruction"
DEMO_JOINT_TOPIC = "/joint_states"


class BagError(Pi0Error):
    """A rosbag2 recording cannot be used; `exit_code` is what the CLI tools return."""

    exit_code = 3


class BagOpenError(BagError):
    """The path is missing, is not a rosbag2 directory, or its files are corrupt."""

    exit_code = 3


class BagTopicError(BagError):
    """A topic the tool needs is not in the bag."""

    exit_code = 4


class BagTypeError(BagError):
    """A topic has an unexpected message type, or a type the bag does not define."""

    exit_code = 5


class BagEmptyError(BagError):
    """The bag, or a topic the tool needs, holds no messages."""

    exit_code = 6


def typestore_for(distro: str = "jazzy") -> Any:
    if distro not in DISTROS:
        raise BagTypeError(f"unknown ROS 2 distro {distro!r}; expected one of {sorted(DISTROS)}")
    return get_typestore(DISTROS[distro])


def camera_topic(name: str, transport: str) -> str:
    """`/cam_high/image_raw`, or `/cam_high/image_raw/compressed` (image_transport naming)."""
    return f"/{name}/image_raw" + ("/compressed" if transport == "compressed" else "")


def latched_qos() -> Qos:
    """Reliable + transient_local depth 1: what the node's ~/instruction subscription expects."""
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


def is_latched(connection: Connection) -> bool:
    """True when the recording publisher offered transient_local (replay it latched too)."""
    profiles = getattr(connection.ext, "offered_qos_profiles", None) or []
    return any(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles)


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


class BagBuilder:
    """Write one rosbag2 directory; a context manager. Times are integer nanoseconds (exact)."""

    def __init__(self, path: "str | Path", storage: str = "mcap", distro: str = "jazzy") -> None:
        if storage not in STORAGES:
            raise BagOpenError(f"storage {storage!r} unknown; expected one of {sorted(STORAGES)}")
        self.path = Path(path)
        self.typestore = typestore_for(distro)
        try:
            self.writer = Writer(self.path, version=Writer.VERSION_LATEST,
                                 storage_plugin=STORAGES[storage])
        except WriterError as err:
            raise BagOpenError(f"cannot create bag {self.path}: {err}; choose a new path") from err
        self._conns: Dict[str, Connection] = {}
        self._types = self.typestore.types

    def __enter__(self) -> "BagBuilder":
        try:
            self.writer.open()
        except WriterError as err:
            raise BagOpenError(f"cannot create bag {self.path}: {err}; choose a new path") from err
        return self

    def __exit__(self, *exc: Any) -> None:
        self.writer.close()

    def _header(self, stamp_ns: int, frame_id: str = "") -> Any:
        sec, nsec = divmod(int(stamp_ns), 10**9)
        return self._types["std_msgs/msg/Header"](
            stamp=self._types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
            frame_id=frame_id)

    def write(self, topic: str, msgtype: str, log_time_ns: int, msg: Any,
              latched: bool = False) -> None:
        """Serialize `msg` (a typestore message) to CDR and store it at `log_time_ns`."""
        conn = self._conns.get(topic)
        if conn is None:
            qos = [latched_qos()] if latched else []
            conn = self.writer.add_connection(topic, msgtype, typestore=self.typestore,
                                              offered_qos_profiles=qos)
            self._conns[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagTypeError(f"topic {topic} already holds {conn.msgtype}, not {msgtype}")
        data = self.typestore.serialize_cdr(msg, msgtype)
        self.writer.write(conn, int(log_time_ns), data)

    def write_raw(self, topic: str, msgtype: str, log_time_ns: int, data: bytes,
                  latched: bool = False) -> None:
        """Store already-serialized CDR bytes (the recorder's path)."""
        conn = self._conns.get(topic)
        if conn is None:
            conn = self.writer.add_connection(topic, msgtype, typestore=self.typestore,
                                              offered_qos_profiles=[latched_qos()] if latched
                                              else [])
            self._conns[topic] = conn
        self.writer.write(conn, int(log_time_ns), data)

    def add_image(self, topic: str, stamp_ns: int, rgb: np.ndarray, encoding: str = "rgb8",
                  frame_id: str = "", log_time_ns: Optional[int] = None) -> None:
        """RGB uint8 [H, W, 3] stored as rgb8 or bgr8 (channels swapped for bgr8)."""
        if encoding not in ("rgb8", "bgr8"):
            raise BagTypeError(f"encoding {encoding!r} not supported here; use rgb8 or bgr8")
        pixels = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
        h, w = rgb.shape[:2]
        msg = self._types[IMAGE](header=self._header(stamp_ns, frame_id), height=h, width=w,
                                 encoding=encoding, is_bigendian=0, step=w * 3,
                                 data=np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1))
        self.write(topic, IMAGE, stamp_ns if log_time_ns is None else log_time_ns, msg)

    def add_compressed(self, topic: str, stamp_ns: int, rgb: np.ndarray, fmt: str = "jpeg",
                       frame_id: str = "", log_time_ns: Optional[int] = None,
                       quality: int = 90) -> None:
        """RGB uint8 [H, W, 3] encoded by OpenCV as jpeg or png (format as image_transport)."""
        if fmt not in ("jpeg", "png"):
            raise BagTypeError(f"compressed format {fmt!r} not supported; use jpeg or png")
        params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
        ok, buf = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"), rgb[:, :, ::-1], params)
        if not ok:
            raise BagTypeError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
        msg = self._types[COMPRESSED](header=self._header(stamp_ns, frame_id),
                                      format=f"rgb8; {fmt} compressed bgr8", data=buf.reshape(-1))
        self.write(topic, COMPRESSED, stamp_ns if log_time_ns is None else log_time_ns, msg)

    def add_joint_state(self, topic: str, stamp_ns: int, names: Sequence[str],
                        positions: Sequence[float], velocities: Sequence[float] = (),
                        efforts: Sequence[float] = (), log_time_ns: Optional[int] = None) -> None:
        msg = self._types[JOINT_STATE](header=self._header(stamp_ns), name=list(names),
                                       position=np.asarray(positions, dtype=np.float64),
                                       velocity=np.asarray(velocities, dtype=np.float64),
                                       effort=np.asarray(efforts, dtype=np.float64))
        self.write(topic, JOINT_STATE, stamp_ns if log_time_ns is None else log_time_ns, msg)

    def add_string(self, topic: str, log_time_ns: int, text: str, latched: bool = True) -> None:
        self.write(topic, STRING, log_time_ns, self._types[STRING](data=text), latched=latched)

    def add_trajectory(self, topic: str, log_time_ns: int, stamp_ns: int,
                       joint_names: Sequence[str], positions: np.ndarray, dt: float,
                       first_index: int = 0) -> None:
        """[T, n] positions as JointTrajectory: time_from_start = (i + first_index) * dt."""
        point_t = self._types["trajectory_msgs/msg/JointTrajectoryPoint"]
        duration_t = self._types["builtin_interfaces/msg/Duration"]
        empty = np.zeros(0, dtype=np.float64)
        points = []
        for i, row in enumerate(np.asarray(positions, dtype=np.float64)):
            sec, nsec = divmod(int(round((i + first_index) * dt * 1e9)), 10**9)
            points.append(point_t(positions=row.copy(), velocities=empty, accelerations=empty,
                                  effort=empty, time_from_start=duration_t(sec=sec, nanosec=nsec)))
        msg = self._types[TRAJECTORY](header=self._header(stamp_ns),
                                      joint_names=list(joint_names), points=points)
        self.write(topic, TRAJECTORY, log_time_ns, msg)


def demo_frame(background: np.ndarray, camera_index: int, q: np.ndarray) -> np.ndarray:
    """Background plus a red block whose position follows the first two joints."""
    h, w = background.shape[:2]
    frame = background.copy()
    bw, bh = max(4, w // 8), max(4, h // 6)
    x = int((0.5 + 0.4 * np.sin(q[0] + camera_index)) * (w - bw))
    y = int((0.5 + 0.4 * np.cos(q[1] - camera_index)) * (h - bh))
    frame[y:y + bh, x:x + bw] = (200, 40 + 60 * camera_index, 30)
    return frame


def demo_joint_positions(t: np.ndarray) -> np.ndarray:
    """Smooth joint trajectory [len(t), 8] in radians (gripper in [0, 0.8])."""
    t = np.asarray(t, dtype=np.float64)[:, None]
    k = np.arange(7, dtype=np.float64)[None, :]
    arm = 0.4 * np.sin(0.8 * t * (1 + 0.15 * k) + k)
    gripper = 0.4 + 0.4 * np.sin(0.5 * t)
    return np.concatenate([arm, gripper], axis=1)


def make_demo_bag(path: "str | Path", seconds: float = 3.0,
                  camera_names: Sequence[str] = DEMO_CAMERAS, transport: str = "raw",
                  storage: str = "mcap", seed: int = 0, image_size: Tuple[int, int] = (320, 240),
                  camera_hz: float = 15.0, joint_hz: float = 100.0, encoding: str = "rgb8",
                  distro: str = "jazzy", shuffle_joints: bool = False) -> Path:
    """Write the deterministic demo session and return its path.

    Topics: `/<camera>/image_raw[/compressed]` per camera, `/joint_states` (DEMO_JOINTS; with
    `shuffle_joints` in alphabetical order, as UR drivers publish them, plus a `head_pan` the
    model does not use), and the instruction on `/pi0_ttnn_node/instruction` (latched) at the
    start. Header stamps are capture times; log times trail them by 2 ms (cameras) and 0.5 ms
    (joints), as a recorder's receipt times would. `transport`: raw (Image, `encoding` rgb8/bgr8) or
    compressed (jpeg). Same arguments -> byte-identical message data.
    """
    if transport not in ("raw", "compressed"):
        raise BagTypeError(f"transport {transport!r} unknown; expected raw or compressed")
    if seconds <= 0:
        raise BagEmptyError(f"seconds must be > 0 to write any message, got {seconds}")
    rng = np.random.default_rng(seed)
    w, h = image_size
    backgrounds = [rng.integers(0, 60, (h, w, 3), dtype=np.uint8) for _ in camera_names]
    names = sorted(DEMO_JOINTS + ("head_pan",)) if shuffle_joints else list(DEMO_JOINTS)
    order = [DEMO_JOINTS.index(n) if n in DEMO_JOINTS else len(DEMO_JOINTS) for n in names]
    end_ns = int(round(seconds * 1e9))
    events: List[Tuple[int, int, Any]] = []  # (log time ns, tie-break, event)
    for stamp in range(0, end_ns, int(round(1e9 / joint_hz))):
        events.append((stamp + 500_000, 0, ("joint", stamp)))
    for stamp in range(0, end_ns, int(round(1e9 / camera_hz))):
        for c in range(len(camera_names)):
            events.append((stamp + 2_000_000, 1 + c, ("camera", stamp, c)))
    with BagBuilder(path, storage, distro) as bag:
        bag.add_string(DEMO_INSTRUCTION_TOPIC, DEMO_START_NS, DEMO_INSTRUCTION)
        for log_ns, _, event in sorted(events, key=lambda e: (e[0], e[1])):
            stamp = event[1]
            q = demo_joint_positions(np.array([stamp * 1e-9]))[0]
            if event[0] == "joint":
                positions = np.append(q, 0.0)[order]  # head_pan stays at 0
                bag.add_joint_state(DEMO_JOINT_TOPIC, DEMO_START_NS + stamp, names, positions,
                                    velocities=np.zeros(len(names)),
                                    log_time_ns=DEMO_START_NS + log_ns)
                continue
            c = event[2]
            frame = demo_frame(backgrounds[c], c, q)
            topic = camera_topic(camera_names[c], transport)
            if transport == "raw":
                bag.add_image(topic, DEMO_START_NS + stamp, frame, encoding, camera_names[c],
                              DEMO_START_NS + log_ns)
            else:
                bag.add_compressed(topic, DEMO_START_NS + stamp, frame, "jpeg", camera_names[c],
                                   DEMO_START_NS + log_ns)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any  # a rosbags typestore message, or raw CDR bytes from raw_messages


def resolve_bag_path(path: "str | Path") -> Path:
    """A rosbag2 directory, or a file inside one (`.mcap`, `.db3`) -> the directory."""
    p = Path(path)
    if not p.exists():
        raise BagOpenError(f"bag {p} does not exist; pass a rosbag2 directory (with "
                           "metadata.yaml)")
    if p.is_file() and (p.parent / "metadata.yaml").is_file():
        return p.parent
    if not (p / "metadata.yaml").is_file():
        raise BagOpenError(f"{p} is not a rosbag2 directory: no metadata.yaml; pass the "
                           "directory `ros2 bag record` created")
    return p


class BagReader:
    """`AnyReader` with typed errors; a context manager. Times are nanoseconds (log time)."""

    def __init__(self, path: "str | Path") -> None:
        self.path = resolve_bag_path(path)
        self._reader: Optional[AnyReader] = None

    def __enter__(self) -> "BagReader":
        try:
            reader = AnyReader([self.path], default_typestore=typestore_for("jazzy"))
            reader.open()
        except (AnyReaderError, ReaderError, TypesysError, sqlite3.DatabaseError, OSError,
                ValueError, KeyError) as err:
            raise BagOpenError(f"cannot open bag {self.path}: {err}; the recording is corrupt "
                               "or not a rosbag2 (sqlite3 or mcap) bag") from err
        self._reader = reader
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self) -> AnyReader:
        if self._reader is None:
            raise BagOpenError(f"bag {self.path} is not open; use `with BagReader(path)`")
        return self._reader

    @property
    def storage(self) -> str:
        files = [f.name for f in self.path.iterdir()]
        return "mcap" if any(n.endswith(".mcap") for n in files) else "sqlite3"

    def topics(self) -> Dict[str, str]:
        """Topic -> message type (None-typed topics with mixed types are reported as 'mixed')."""
        return {name: info.msgtype or "mixed" for name, info in self.reader.topics.items()}

    def counts(self) -> Dict[str, int]:
        return {name: info.msgcount for name, info in self.reader.topics.items()}

    @property
    def start_ns(self) -> int:
        return self.reader.start_time

    @property
    def end_ns(self) -> int:
        """Log time of the last message (AnyReader's end_time is one past it)."""
        return self.reader.end_time - 1

    def connections(self, topics: Sequence[str]) -> List[Connection]:
        return [c for c in self.reader.connections if c.topic in set(topics)]

    def check_not_empty(self) -> None:
        if self.reader.message_count == 0:
            raise BagEmptyError(f"bag {self.path} holds no messages; record again")

    def require(self, wanted: Mapping[str, Sequence[str]]) -> Dict[str, str]:
        """Check topics exist with one of the allowed types and hold messages; return their types.

        Raises BagEmptyError (no messages at all, or a wanted topic is empty), BagTopicError
        (listing every topic in the bag) or BagTypeError.
        """
        self.check_not_empty()
        have, counts = self.topics(), self.counts()
        missing = [t for t in wanted if t not in have]
        if missing:
            listing = ", ".join(f"{t} ({ty}, {counts[t]} msgs)" for t, ty in sorted(have.items()))
            raise BagTopicError(f"topic(s) {missing} not in bag {self.path}; it has: {listing}; "
                                "remap with the tool's topic options or --params-file")
        for topic, allowed in wanted.items():
            if allowed and have[topic] not in allowed:
                raise BagTypeError(f"topic {topic} has type {have[topic]}; expected one of "
                                   f"{list(allowed)}")
            if have[topic] not in self.reader.typestore.types:
                raise BagTypeError(f"topic {topic} has type {have[topic]}, which the bag does "
                                   "not define and ROS 2 Jazzy does not know")
            if counts[topic] == 0:
                raise BagEmptyError(f"topic {topic} in bag {self.path} has no messages")
        return {t: have[t] for t in wanted}

    def raw_messages(self, topics: Sequence[str], start_ns: Optional[int] = None,
                     stop_ns: Optional[int] = None) -> Iterator[BagMessage]:
        """Messages of `topics` in log-time order as raw CDR bytes."""
        conns = self.connections(topics)
        if not conns:
            return
        try:
            for conn, t_ns, raw in self.reader.messages(conns, start=start_ns, stop=stop_ns):
                yield BagMessage(conn.topic, conn.msgtype, t_ns, raw)
        except (AnyReaderError, ReaderError, sqlite3.DatabaseError, OSError, ValueError,
                KeyError) as err:
            raise BagOpenError(f"reading bag {self.path} failed: {err}; the file is corrupt "
                               "or truncated") from err

    def messages(self, topics: Sequence[str], start_ns: Optional[int] = None,
                 stop_ns: Optional[int] = None) -> Iterator[BagMessage]:
        """Messages of `topics` in log-time order, deserialized."""
        for m in self.raw_messages(topics, start_ns, stop_ns):
            try:
                msg = self.reader.deserialize(m.msg, m.msgtype)
            except (AnyReaderError, TypesysError, KeyError, ValueError, IndexError) as err:
                raise BagTypeError(f"cannot deserialize a {m.msgtype} message on {m.topic} at "
                                   f"{m.log_time_ns} ns: {err!r}; the definition in the bag "
                                   "does not match the data") from err
            yield BagMessage(m.topic, m.msgtype, m.log_time_ns, msg)


def stamp_seconds(header: Any) -> float:
    """std_msgs/Header (rosbags) -> float seconds."""
    return header.stamp.sec + header.stamp.nanosec * 1e-9
