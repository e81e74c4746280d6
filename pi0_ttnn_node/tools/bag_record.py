"""pi0-bag-record: a minimal `ros2 bag record` for the topics given, written with rosbags.

Types are taken from the ROS graph once a publisher appears (topics may show up late). QoS follows
the publishers, as rosbag2 does: reliable only when every publisher is reliable, transient_local
when any is (so a latched instruction is caught). Messages are stored as received CDR bytes; log
time is the node clock (--use-sim-time: /clock). Counterpart: tools/bag_play.py.
Exit codes: 0 ok (bag closed and readable), 2 usage, 3 the output path exists.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from pi0_ttnn_node.bag_tools import BagBuilder, BagError, STORAGES


@dataclass
class RecordConfig:
    out: str
    topics: List[str] = field(default_factory=list)
    storage: str = "mcap"
    duration: float = 0.0  # wall seconds; 0 = until interrupted
    use_sim_time: bool = False
    discovery_period: float = 0.2


class BagRecorder:
    """Subscribe to cfg.topics on `node` as their publishers appear; write every message."""

    def __init__(self, node: Any, cfg: RecordConfig, bag: BagBuilder) -> None:
        self.node, self.cfg, self.bag = node, cfg, bag
        self.subscriptions: Dict[str, Any] = {}
        self.counts: Dict[str, int] = {t: 0 for t in cfg.topics}
        self._held: List[tuple] = []  # messages received before the first /clock (sim time 0)
        self.discover()

    def _qos(self, topic: str) -> tuple:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        infos = self.node.get_publishers_info_by_topic(topic)
        reliable = bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                                       for i in infos)
        latched = any(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                      for i in infos)
        return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE if reliable
                          else ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                          else DurabilityPolicy.VOLATILE), latched

    def discover(self) -> None:
        from pi0_ttnn_node.tools.bag_play import message_class

        pending = [t for t in self.cfg.topics if t not in self.subscriptions]
        if not pending:
            return
        graph = dict(self.node.get_topic_names_and_types())
        for topic in pending:
            types = graph.get(topic)
            if not types or not self.node.get_publishers_info_by_topic(topic):
                continue
            msgtype = types[0]
            qos, latched = self._qos(topic)
            self.subscriptions[topic] = self.node.create_subscription(
                message_class(msgtype), topic,
                lambda raw, t=topic, ty=msgtype, lt=latched: self._write(t, ty, raw, lt),
                qos, raw=True)
            self.node.get_logger().info(f"recording {topic} ({msgtype})")

    def _write(self, topic: str, msgtype: str, raw: bytes, latched: bool) -> None:
        now = self.node.get_clock().now().nanoseconds
        self.counts[topic] += 1
        if now == 0:  # sim time not started: stamp these with the first clock value instead
            self._held.append((topic, msgtype, raw, latched))
            return
        for held in self._held:
            self.bag.write_raw(held[0], held[1], now, held[2], held[3])
        self._held.clear()
        self.bag.write_raw(topic, msgtype, now, raw, latched)


def record(cfg: RecordConfig) -> Dict[str, int]:
    """Record until SIGINT/SIGTERM or cfg.duration; the bag is closed (readable) on return."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    stopping = []
    handler = lambda *_: stopping.append(True)  # noqa: E731 - set a flag, nothing else
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)  # our handler closes the bag
    node = rclpy.create_node("pi0_bag_record", parameter_overrides=[
        Parameter("use_sim_time", value=cfg.use_sim_time)])
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        with BagBuilder(cfg.out, cfg.storage) as bag:
            recorder = BagRecorder(node, cfg, bag)
            t_end = time.monotonic() + cfg.duration if cfg.duration > 0 else float("inf")
            next_discovery = 0.0
            # discovery runs on the steady clock: with use_sim_time a ROS timer waits for /clock
            while not stopping and time.monotonic() < t_end:
                if time.monotonic() >= next_discovery:
                    recorder.discover()
                    next_discovery = time.monotonic() + cfg.discovery_period
                try:
                    executor.spin_once(timeout_sec=0.02)
                except ExternalShutdownException:
                    break
            return recorder.counts
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def main(argv: Optional[List[str]] = None) -> int:
    """Console script `pi0-bag-record`."""
    p = argparse.ArgumentParser(prog="pi0-bag-record", description=__doc__.splitlines()[0])
    p.add_argument("out", help="new rosbag2 directory")
    p.add_argument("--topics", nargs="+", required=True)
    p.add_argument("--storage", choices=sorted(STORAGES), default="mcap")
    p.add_argument("--duration", type=float, default=0.0, help="wall seconds (0 = until ^C)")
    p.add_argument("--use-sim-time", action="store_true", help="log times from /clock")
    a = p.parse_args(argv)
    try:
        counts = record(RecordConfig(a.out, a.topics, a.storage, a.duration, a.use_sim_time))
    except BagError as err:
        print(f"pi0-bag-record: {type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    print("recorded " + ", ".join(f"{t}: {n}" for t, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
