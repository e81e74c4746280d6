"""Which bag topics feed which model inputs: node defaults, then the node's params YAML, then flags.

Names and defaults are the node's (`ros/params.py`; a test keeps them equal), read here without
rclpy so replay runs on machines without ROS. Relative topics resolve against `--namespace` (`/`),
`~/x` against the node name, like rclpy does; a camera topic missing from the bag is replaced by
`<topic>/compressed` when that holds CompressedImage. Counterpart: tools/replay.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from pi0_ttnn_node.bag_tools import (COMPRESSED, IMAGE, JOINT_STATE, STRING, BagReader,
                                     BagTopicError)
from pi0_ttnn_node.errors import ConfigError

NODE_NAME = "pi0_ttnn_node"
# the node parameters replay uses, with the node's defaults (ros/params.py PARAMETERS)
NODE_DEFAULTS: Dict[str, Any] = {
    "control_rate_hz": 50.0,
    "cameras.names": ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"],
    "cameras.topics": ["cam_high/image_raw", "cam_left_wrist/image_raw",
                       "cam_right_wrist/image_raw"],
    "cameras.required": [True, False, False],
    "cameras.primary": "",
    "joint_states.topics": ["joint_states"],
    "state.joint_names": [],
    "action.joint_names": [],
    "action.dims": [],
    "action.space": "absolute_position",
    "instruction.default": "",
    "schedule.mode": "async",
    "schedule.execute_steps": 25,
    "schedule.margin_steps": 2,
    "schedule.max_delay_steps": 20,
    "merge.mode": "replace",
    "merge.blend_steps": 5,
    "sync.max_image_age_s": 0.25,
    "sync.max_state_age_s": 0.1,
    "sync.max_camera_skew_s": 0.05,
    "policy.checkpoint_dir": "",
    "policy.model_type": "auto",
    "policy.num_steps": 0,
    "limits.position_lower": [],
    "limits.position_upper": [],
    "limits.max_velocity": [],
    "limits.max_start_jump": 0.3,
}


@dataclass(frozen=True)
class CameraInput:
    name: str  # model image slot
    topic: str
    required: bool
    msgtype: Optional[str]  # Image or CompressedImage; None when an optional camera is absent


@dataclass(frozen=True)
class ReplayInputs:
    cameras: Tuple[CameraInput, ...]
    primary: str
    joint_topics: Tuple[str, ...]
    instruction_topic: Optional[str]  # None when the bag has none and a default text is set
    state_joints: Tuple[str, ...]
    action_joints: Tuple[str, ...]
    action_dims: Tuple[int, ...]

    @property
    def topics(self) -> List[str]:
        out = [c.topic for c in self.cameras if c.msgtype] + list(self.joint_topics)
        return out + ([self.instruction_topic] if self.instruction_topic else [])


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_params_file(path: "str | Path", node_name: str = NODE_NAME) -> Dict[str, Any]:
    """`<node>: ros__parameters:` (or `/**:`) of a node params YAML, flattened to dotted names."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read params file {path}: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"params file {path} is not a YAML mapping")
    for key in (node_name, "/" + node_name, "/**"):
        section = doc.get(key)
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            return _flatten(section["ros__parameters"])
    raise ConfigError(f"params file {path} has no '{node_name}: ros__parameters:' section; "
                      f"top-level keys: {list(doc)}")


def node_values(params_file: Optional[str], node_name: str,
                overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Node defaults, then the params file, then the command-line overrides (non-None)."""
    values = dict(NODE_DEFAULTS)
    if params_file:
        values.update({k: v for k, v in load_params_file(params_file, node_name).items()
                       if k in NODE_DEFAULTS})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def resolve_topic(name: str, node_name: str = NODE_NAME, namespace: str = "/") -> str:
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if name.startswith("~"):
        return f"{ns}/{node_name}{name[1:]}"
    return name if name.startswith("/") else f"{ns}/{name}"


def _first_joint_names(bag: BagReader, topics: Sequence[str]) -> List[str]:
    for m in bag.messages(topics):
        return list(m.msg.name)
    return []


def resolve_inputs(values: Dict[str, Any], bag: BagReader, node_name: str, namespace: str,
                   state_dim: int, action_dim: int,
                   instruction_topic: str = "~/instruction") -> ReplayInputs:
    """Map node parameters onto the bag; raise a BagError subclass or ConfigError."""
    bag.check_not_empty()
    names, topics = list(values["cameras.names"]), list(values["cameras.topics"])
    required = list(values["cameras.required"])
    if len(topics) != len(names) or len(required) != len(names):
        raise ConfigError(f"cameras.names {names}, cameras.topics {topics} and cameras.required "
                          f"{required} must have the same length")
    have = bag.topics()
    topics = [resolve_topic(t, node_name, namespace) for t in topics]
    # image_transport naming: `<topic>/compressed` stands in for a raw topic the bag lacks
    topics = [t + "/compressed" if t not in have and have.get(t + "/compressed") == COMPRESSED
              else t for t in topics]
    wanted = {t: (IMAGE, COMPRESSED) for t, r in zip(topics, required) if r or t in have}
    joint_topics = [resolve_topic(t, node_name, namespace) for t in values["joint_states.topics"]]
    wanted.update({t: (JOINT_STATE,) for t in joint_topics})
    instruction = resolve_topic(instruction_topic, node_name, namespace)
    if instruction in have or not values["instruction.default"]:
        if instruction not in have:
            listing = ", ".join(sorted(have))
            raise BagTopicError(f"instruction topic {instruction} not in the bag (topics: "
                                f"{listing}); pass --instruction TEXT or --instruction-topic")
        wanted[instruction] = (STRING,)
    else:
        instruction = None
    types = bag.require(wanted)
    cameras = tuple(CameraInput(n, t, bool(r), types.get(t))
                    for n, t, r in zip(names, topics, required))
    primary = values["cameras.primary"] or names[0]
    state = list(values["state.joint_names"])
    if not state:
        state = _first_joint_names(bag, joint_topics)
        if len(state) != state_dim:
            raise ConfigError(f"state.joint_names not set and the first JointState lists {state}"
                              f" ({len(state)} joints); the checkpoint's state has {state_dim}: "
                              "pass --state-joints in the model's order")
    if len(state) != state_dim or len(set(state)) != len(state):
        raise ConfigError(f"state joints {state} must be {state_dim} unique names (the "
                          "checkpoint's state size)")
    action = list(values["action.joint_names"]) or state[:action_dim]
    dims = [int(d) for d in values["action.dims"]] or list(range(len(action)))
    missing = [j for j in action if j not in state]
    if missing or len(dims) != len(action) or max(dims) >= action_dim:
        raise ConfigError(f"action joints {action} (dims {dims}) must be state joints (missing "
                          f"{missing}), one dim each, dims < {action_dim}")
    return ReplayInputs(cameras, primary, tuple(joint_topics), instruction, tuple(state),
                        tuple(action), tuple(dims))
