"""Which bag topics feed which model inputs: node defaults, then the node's params YAML, then flags.

Names and defaults are the node's own table (control/parameters.py, no rclpy needed) and the same
params YAML files the node is launched with; nothing here keeps a copy. Relative topics resolve
against `--namespace` (`/`), `~/x` against the node name, like rclpy does; a camera topic missing
from the bag is replaced by `<topic>/compressed` when that holds CompressedImage. Counterpart:
tools/replay.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pi0_ttnn_node.bag_tools import (COMPRESSED, IMAGE, JOINT_STATE, STRING, BagReader,
                                     BagTopicError)
from pi0_ttnn_node.control.parameters import NODE_NAME, node_values, shipped_params_file
from pi0_ttnn_node.errors import ConfigError


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


def replay_values(params_files: Sequence[str], node_name: str,
                  overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The node's defaults, the shipped params file, each --params-file, then the CLI flags:
    the values a node launched with the same files would read (control/parameters.py)."""
    files = [str(shipped_params_file())] + list(params_files)
    return node_values(files, node_name, overrides)


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
    # what the bag told us becomes the node configuration replay runs with
    values.update({"state.joint_names": state, "action.joint_names": action,
                   "action.dims": dims})
    missing = [j for j in action if j not in state]
    if missing or len(dims) != len(action) or max(dims) >= action_dim:
        raise ConfigError(f"action joints {action} (dims {dims}) must be state joints (missing "
                          f"{missing}), one dim each, dims < {action_dim}")
    return ReplayInputs(cameras, primary, tuple(joint_topics), instruction, tuple(state),
                        tuple(action), tuple(dims))
