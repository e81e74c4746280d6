"""pi0-bag-play: publish a rosbag2 over DDS with /clock, like `ros2 bag play --clock`, no ros2cli.

Messages go out as their recorded CDR bytes (headers untouched) when the playback clock reaches
their log time; /clock (rosgraph_msgs/Clock) carries that bag time at --clock-hz (40 Hz, as
`--clock` alone) so nodes with use_sim_time follow the bag. Topics recorded as transient_local
(the instruction) are republished latched. Counterparts: tools/bag_record.py, tools/replay.py.
Exit codes: 0 ok, 2 usage, 3-6 bag errors (bag_tools.BagError), 9 a --wait-for-subscriber topic
got no subscriber in time.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from pi0_ttnn_node.bag_tools import BagError, BagReader, BagTypeError, is_latched

EXIT_NO_SUBSCRIBER = 9


def message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' -> the rclpy message class; BagTypeError when not installed."""
    pkg, _, name = msgtype.rpartition("/")
    try:
        return getattr(importlib.import_module(pkg.replace("/", ".")), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise BagTypeError(f"message type {msgtype} has no Python package here ({err}); install "
                           f"the ROS package providing {pkg.split('/')[0]}") from err


@dataclass
class PlayConfig:
    bag: str
    rate: float = 1.0
    start_offset: float = 0.0  # seconds after the bag's first message
    loop: bool = False
    max_loops: int = 0  # with loop: stop after this many passes (0 = until interrupted)
    clock_hz: float = 40.0  # 0 = no /clock
    topics: List[str] = field(default_factory=list)  # empty = all
    remap: Dict[str, str] = field(default_factory=dict)
    wait_for: List[str] = field(default_factory=list)  # topics that need a subscriber first
    wait_timeout: float = 30.0
    delay: float = 0.0  # wall seconds between the first /clock and the first message


class BagPlayer:
    """Publish one bag on `node`; blocking, single thread (no executor needed to publish)."""

    def __init__(self, node: Any, cfg: PlayConfig) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        if not cfg.rate > 0:
            raise ValueError(f"rate must be > 0, got {cfg.rate}")
        self.node, self.cfg = node, cfg
        self.clock_pub = node.create_publisher(Clock, "/clock", 10) if cfg.clock_hz > 0 else None
        self._clock_msg = Clock()
        self.publishers: Dict[str, Any] = {}
        self.latched: set = set()
        self.published = 0
        self._stop = False
        with BagReader(cfg.bag) as bag:
            types = bag.topics()
            wanted = cfg.topics or sorted(types)
            bag.require({t: () for t in wanted})
            for conn in bag.connections(wanted):
                if conn.topic in self.publishers:
                    continue
                latched = is_latched(conn)
                if latched:
                    self.latched.add(conn.topic)
                qos = QoSProfile(depth=1 if latched else 10,
                                 reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                                 else DurabilityPolicy.VOLATILE)
                self.publishers[conn.topic] = node.create_publisher(
                    message_class(conn.msgtype), cfg.remap.get(conn.topic, conn.topic), qos)
        self.topics = list(self.publishers)

    def stop(self) -> None:
        self._stop = True

    def wait_for_subscribers(self) -> Optional[str]:
        """Block until every cfg.wait_for topic has a subscriber; return the first that has none."""
        deadline = time.monotonic() + self.cfg.wait_timeout
        for topic in self.cfg.wait_for:
            while self.node.count_subscribers(topic) == 0:
                if time.monotonic() > deadline or self._stop:
                    return topic
                time.sleep(0.05)
        return None

    def _publish_clock(self, bag_ns: int) -> None:
        if self.clock_pub is not None:
            self._clock_msg.clock.sec, self._clock_msg.clock.nanosec = divmod(bag_ns, 10**9)
            self.clock_pub.publish(self._clock_msg)

    def play_once(self) -> int:
        """One pass over the bag; return the number of messages published."""
        cfg = self.cfg
        count = 0
        with BagReader(cfg.bag) as bag:
            start = bag.start_ns + int(round(cfg.start_offset * 1e9))
            clock_period = 1.0 / cfg.clock_hz if cfg.clock_hz > 0 else float("inf")
            # latched messages from before the start offset still define the session (instruction)
            for m in bag.raw_messages(sorted(self.latched), stop_ns=start):
                self.publishers[m.topic].publish(bytes(m.msg))
            self._publish_clock(start)
            wall0 = time.monotonic() + cfg.delay
            next_clock = time.monotonic()
            for m in bag.raw_messages(self.topics, start_ns=start):
                due = wall0 + (m.log_time_ns - start) / 1e9 / cfg.rate
                while not self._stop:
                    now = time.monotonic()
                    if now >= next_clock:
                        self._publish_clock(start + max(0, int((now - wall0) * cfg.rate * 1e9)))
                        next_clock = now + clock_period
                    if now >= due:
                        break
                    time.sleep(max(0.0, min(due, next_clock) - now))
                if self._stop:
                    break
                self.publishers[m.topic].publish(bytes(m.msg))
                count += 1
            self._publish_clock(bag.end_ns)
        self.published += count
        return count

    def run(self) -> int:
        passes = 0
        while not self._stop:
            self.play_once()
            passes += 1
            if not self.cfg.loop or (self.cfg.max_loops and passes >= self.cfg.max_loops):
                break
        return passes


def parse_args(argv: Optional[List[str]] = None) -> PlayConfig:
    p = argparse.ArgumentParser(prog="pi0-bag-play", description=__doc__.splitlines()[0])
    p.add_argument("bag", help="rosbag2 directory (sqlite3 or mcap)")
    p.add_argument("-r", "--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--start-offset", type=float, default=0.0, help="seconds after bag start")
    p.add_argument("-l", "--loop", action="store_true", help="replay until interrupted; the "
                   "clock jumps back at each pass")
    p.add_argument("--max-loops", type=int, default=0)
    p.add_argument("--clock-hz", type=float, default=40.0, help="/clock rate; 0 = no /clock")
    p.add_argument("--topics", nargs="+", default=[], help="only these topics")
    p.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO")
    p.add_argument("--wait-for-subscriber", nargs="+", default=[], metavar="TOPIC",
                   help="start only when these (remapped) topics have a subscriber")
    p.add_argument("--wait-timeout", type=float, default=30.0)
    p.add_argument("--delay", type=float, default=0.0, help="wall seconds before the first message")
    a = p.parse_args(argv)
    remap = {}
    for item in a.remap:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            p.error(f"--remap takes FROM:=TO, got {item!r}")
        remap[src] = dst
    return PlayConfig(a.bag, a.rate, a.start_offset, a.loop, a.max_loops, a.clock_hz, a.topics,
                      remap, a.wait_for_subscriber, a.wait_timeout, a.delay)


def main(argv: Optional[List[str]] = None) -> int:
    """Console script `pi0-bag-play`."""
    cfg = parse_args(argv)
    import rclpy

    rclpy.init()
    node = rclpy.create_node("pi0_bag_play")
    try:
        player = BagPlayer(node, cfg)
        signal.signal(signal.SIGTERM, lambda *_: player.stop())
        missing = player.wait_for_subscribers()
        if missing:
            print(f"pi0-bag-play: no subscriber on {missing} within {cfg.wait_timeout} s",
                  file=sys.stderr)
            return EXIT_NO_SUBSCRIBER
        passes = player.run()
        time.sleep(0.3)  # let DDS deliver the last reliable samples before the node goes
        print(f"published {player.published} messages on {len(player.topics)} topics in "
              f"{passes} pass(es)")
        return 0
    except BagError as err:
        print(f"pi0-bag-play: {type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
