"""Several robots from one params file: per-robot values, namespaces and noise streams. ROS-free.

`robots: []` (the default) is today's single robot: one set of values, topics unchanged, noise
stream 0. With `robots: [left, right]` every robot starts from the shared values and applies its
own `<robot>.<param>` overrides (a `left:` section next to the shared ones in the params YAML).
Shared-only parameters (the model, the control rate, batching, diagnostics period) cannot be
overridden per robot: one backend and one control timer serve all robots. Topics the robot does
not override are put in its namespace; topics it overrides are used exactly as written.
Counterparts: control/parameters.py (the table), control/batching.py (one inference call for
several robots' requests), docs/multi_robot.md.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pi0_ttnn_node.control.node_config import NodeConfig, build_node_config
from pi0_ttnn_node.control.parameters import SPECS, is_robot_param, load_params_file, node_values
from pi0_ttnn_node.errors import ConfigError

# one backend, one control timer, one batching worker and one /diagnostics serve every robot
SHARED_ONLY = ("autostart", "control_rate_hz", "robots", "batch.", "policy.", "diagnostics.")
TOPIC_PARAMS = ("cameras.topics", "joint_states.topics", "output.topic")
SINGLE = ""  # the robot name of the single-robot (robots: []) configuration


@dataclass(frozen=True)
class RobotSpec:
    """One robot: its name ("" = the single robot), checked config and noise stream."""

    name: str
    config: NodeConfig
    noise_stream: int


def is_shared_only(param: str) -> bool:
    return any(param == s or (s.endswith(".") and param.startswith(s)) for s in SHARED_ONLY)


def robot_topic(robot: str, topic: str) -> str:
    """`topic` in robot `robot`'s namespace: relative `a/b` -> `robot/a/b`, absolute `/a` ->
    `/robot/a`, private `~/a` -> `~/robot/a`. The single robot ("") keeps its topics."""
    if not robot:
        return topic
    if topic.startswith("~/"):
        return f"~/{robot}/{topic[2:]}"
    if topic.startswith("/"):
        return f"/{robot}{topic}"
    return f"{robot}/{topic}"


def noise_stream(robot: str) -> int:
    """A robot's noise stream: 0 for the single robot, else a stable hash of its name (1..2^31),
    so a robot keeps its noise when others are added, removed or reordered."""
    return 0 if not robot else 1 + zlib.crc32(robot.encode("utf-8")) % (2**31 - 1)


def check_robot_names(robots: Sequence[str]) -> None:
    if len(set(robots)) != len(robots):
        raise ConfigError(f"robots must be unique, got {list(robots)}")
    for name in robots:
        if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
            raise ConfigError(f"robot name {name!r} is not a valid ROS namespace token; use "
                              "letters, digits and '_' (not starting with a digit)")
        if name in {s.split(".")[0] for s in SPECS}:
            raise ConfigError(f"robot name {name!r} clashes with the parameter group {name}.*; "
                              "pick another name")


def robot_values(shared: Mapping[str, Any], overrides: Mapping[str, Any],
                 robot: str) -> Dict[str, Any]:
    """The full value set of one robot: shared values, its overrides, namespaced topics.

    `overrides` maps `<robot>.<param>` (any robots) to values; only this robot's are applied."""
    values = dict(shared)
    own: Dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, param = key.partition(".")
        if head != robot:
            continue
        if param not in SPECS:
            raise ConfigError(f"{key}: {param!r} is not a node parameter")
        if is_shared_only(param):
            raise ConfigError(f"{key}: {param} is shared by all robots (one backend, one "
                              "control timer); set it once, without the robot prefix")
        own[param] = value
    for param in TOPIC_PARAMS:
        if param in own:
            continue
        value = values[param]
        values[param] = ([robot_topic(robot, t) for t in value] if isinstance(value, list)
                         else robot_topic(robot, value))
    values.update(own)
    return values


def robot_specs(values: Mapping[str, Any],
                overrides: Optional[Mapping[str, Any]] = None) -> Tuple[RobotSpec, ...]:
    """One RobotSpec per robot (one with name "" when `robots` is empty), each config checked."""
    robots = list(values["robots"] or [])
    if not robots:
        return (RobotSpec(SINGLE, build_node_config(values), 0),)
    check_robot_names(robots)
    overrides = dict(overrides or {})
    stray = sorted(k for k in overrides if not is_robot_param(k, robots))
    if stray:
        raise ConfigError(f"per-robot overrides {stray} name no robot in {robots} or no "
                          "parameter")
    specs: List[RobotSpec] = []
    for robot in robots:
        try:
            cfg = build_node_config(robot_values(values, overrides, robot))
        except ConfigError as err:
            raise ConfigError(f"robot {robot!r}: {err}") from err
        specs.append(RobotSpec(robot, cfg, noise_stream(robot)))
    return tuple(specs)


def robot_specs_from_files(params_files: Sequence[str], node_name: str = "pi0_ttnn_node",
                           overrides: Optional[Mapping[str, Any]] = None
                           ) -> Tuple[RobotSpec, ...]:
    """Shared values (defaults, files, overrides) and each file's `<robot>.*` sections, later
    files winning, like node_values."""
    values = node_values(list(params_files), node_name, overrides)
    robots = list(values["robots"] or [])
    per_robot: Dict[str, Any] = {}
    for path in params_files:
        per_robot.update({k: v for k, v in load_params_file(path, node_name).items()
                          if is_robot_param(k, robots)})
    return robot_specs(values, per_robot)
