"""QoS profiles of the node's topics, camera subscriptions that follow their publishers' QoS.

Images: `qos.image_reliability: auto` (default) subscribes each camera with the reliability its
publishers offer, as rosbag2 does: RELIABLE when every publisher is reliable, BEST_EFFORT when any
is best-effort (a reliable subscription cannot match it) or none is known yet. The choice is
re-checked every AUTO_RECHECK_S as publishers appear, change or leave, and the subscription is
re-created when it must change. Why not always best_effort: on one host Fast DDS loses about half
of large raw frames under best effort (a 640x480 rgb8 frame is bigger than the default 512 KB
shared-memory segment) while reliable loses none. KEEP_LAST depth 1 either way, so a slow consumer
never lags. Joint states: BEST_EFFORT depth 10. Instruction: RELIABLE + TRANSIENT_LOCAL depth 1,
which a VOLATILE publisher silently fails to match, hence the event callback.
Counterparts: ros/node.py (creates CameraSubscriptions), ros/diagnostics.py (reports the choice).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

LOG = logging.getLogger(__name__)

IMAGE_RELIABILITY_CHOICES = ("auto", "best_effort", "reliable")
AUTO_RECHECK_S = 1.0
_POLICY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def image_qos(cfg: Any, reliability: Optional[str] = None) -> QoSProfile:
    """Image profile; `reliability` (best_effort | reliable) overrides the parameter (auto)."""
    choice = reliability or cfg["qos.image_reliability"]
    if choice not in _POLICY:
        choice = "best_effort"  # auto before anything is known: matches every publisher
    return QoSProfile(depth=cfg["qos.image_depth"], reliability=_POLICY[choice])


def offered_reliability(publishers: Sequence[Any]) -> str:
    """Summarise publishers' QoS (TopicEndpointInfo list): reliable, best_effort, mixed or none."""
    kinds = set()
    for info in publishers:
        kinds.add("reliable" if info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                  else "best_effort")
    if not kinds:
        return "none"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def choose_reliability(setting: str, offered: str) -> str:
    """The reliability to subscribe with: explicit settings win; auto follows the publishers."""
    if setting in _POLICY:
        return setting
    return "reliable" if offered == "reliable" else "best_effort"


def joint_state_qos() -> QoSProfile:
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


def instruction_qos(cfg: Any) -> QoSProfile:
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
             "with --qos-durability transient_local --qos-reliability reliable; for images use "
             "qos.image_reliability: auto or best_effort")

    return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)


class CameraSubscriptions:
    """One image subscription per camera, re-created when its reliability must change.

    `on_image(camera, msg)` receives every frame; `msg_type(camera)` gives Image or
    CompressedImage. `reliability[name]` is the reliability in use, `offered[name]` what the
    publishers offered at the last check (reliable, best_effort, mixed, none), `changes[name]`
    how often the subscription was re-created. With an explicit setting nothing is re-created.
    """

    def __init__(self, node: Any, cfg: Any, msg_type: Callable[[Any], Any],
                 on_image: Callable[[Any, Any], None], callback_group: Any = None,
                 warn: Optional[Callable[[str], Any]] = None) -> None:
        self.node, self.cfg = node, cfg
        self.setting = cfg["qos.image_reliability"]
        self._msg_type, self._on_image = msg_type, on_image
        self._group = callback_group
        self._warn = warn or LOG.warning
        self._subs: Dict[str, Any] = {}
        self.topics: Dict[str, str] = {}  # camera -> fully resolved topic
        self.reliability: Dict[str, str] = {}
        self.offered: Dict[str, str] = {}
        self.changes: Dict[str, int] = {}
        self._timer = None
        for cam in cfg.cameras:
            offered = self._offered(cam)
            self._subscribe(cam, choose_reliability(self.setting, offered))
            self.offered[cam.name] = offered
            self.changes[cam.name] = 0
        if self.setting == "auto":
            self._timer = node.create_timer(AUTO_RECHECK_S, self.refresh,
                                            callback_group=callback_group)

    def _resolve(self, topic: str) -> str:
        try:
            return self.node.resolve_topic_name(topic)
        except Exception:  # noqa: BLE001 - older rclpy: the subscription knows its name
            return topic

    def _offered(self, cam: Any) -> str:
        topic = self.topics.get(cam.name) or self._resolve(cam.topic)
        try:
            return offered_reliability(self.node.get_publishers_info_by_topic(topic))
        except Exception as err:  # noqa: BLE001 - graph query failure: keep what we have
            LOG.debug("publisher lookup on %s failed: %r", topic, err)
            return self.offered.get(cam.name, "none")

    def _subscribe(self, cam: Any, reliability: str) -> None:
        old = self._subs.pop(cam.name, None)
        if old is not None:
            self.node.destroy_subscription(old)
        sub = self.node.create_subscription(
            self._msg_type(cam), cam.topic, lambda m, c=cam: self._on_image(c, m),
            image_qos(self.cfg, reliability), callback_group=self._group,
            event_callbacks=incompatible_qos_warning(cam.topic, self._warn))
        self._subs[cam.name] = sub
        self.topics[cam.name] = getattr(sub, "topic_name", None) or self._resolve(cam.topic)
        self.reliability[cam.name] = reliability

    def refresh(self) -> List[str]:
        """Re-check the publishers (auto only); return the cameras whose subscription changed."""
        changed = []
        if self.setting != "auto":
            return changed
        for cam in self.cfg.cameras:
            if cam.name not in self._subs:
                continue  # closed
            offered = self._offered(cam)
            self.offered[cam.name] = offered
            want = choose_reliability(self.setting, offered)
            if want != self.reliability[cam.name]:
                LOG.info("camera %s: publishers offer %s; re-subscribing %s (was %s)", cam.name,
                         offered, want, self.reliability[cam.name])
                self._subscribe(cam, want)
                self.changes[cam.name] += 1
                changed.append(cam.name)
        return changed

    def describe(self, camera: str) -> Dict[str, Any]:
        """Diagnostic values of one camera's subscription."""
        return {"qos_setting": self.setting, "qos_reliability": self.reliability.get(camera, ""),
                "publishers_offer": self.offered.get(camera, ""),
                "qos_changes": self.changes.get(camera, 0)}

    def close(self) -> None:
        """Destroy the timer and every subscription (cleanup)."""
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
            self._timer = None
        for sub in self._subs.values():
            self.node.destroy_subscription(sub)
        self._subs.clear()
