"""QoS profiles of the node's topics, and the incompatible-QoS warning for subscriptions.

Images: BEST_EFFORT (matches reliable publishers and rosbag2 too), KEEP_LAST depth 1, so a slow
consumer never lags. Joint states: BEST_EFFORT depth 10. Instruction: RELIABLE + TRANSIENT_LOCAL
depth 1, which a VOLATILE publisher silently fails to match, hence the event callback.
Counterpart: ros/node.py.
"""

from __future__ import annotations

from typing import Any, Callable

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from pi0_ttnn_node.ros.params import NodeConfig


def image_qos(cfg: NodeConfig) -> QoSProfile:
    reliability = (ReliabilityPolicy.BEST_EFFORT if cfg["qos.image_reliability"] == "best_effort"
                   else ReliabilityPolicy.RELIABLE)
    return QoSProfile(depth=cfg["qos.image_depth"], reliability=reliability)


def joint_state_qos() -> QoSProfile:
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


def instruction_qos(cfg: NodeConfig) -> QoSProfile:
    durability = (DurabilityPolicy.TRANSIENT_LOCAL
                  if cfg["qos.instruction_durability"] == "transient_local"
                  else DurabilityPolicy.VOLATILE)
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=durability)


def command_qos() -> QoSProfile:
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def chunk_qos() -> QoSProfile:
    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def incompatible_qos_warning(topic: str, warn: Callable[[str], Any]) -> SubscriptionEventCallbacks:
    """Event callbacks that log when a publisher on `topic` cannot match our QoS."""

    def on_incompatible(event: Any) -> None:
        warn(f"a publisher on {topic} has incompatible QoS (policy id "
             f"{event.last_policy_kind}); nothing it sends arrives. For ~/instruction publish "
             "with --qos-durability transient_local --qos-reliability reliable")

    return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)
