"""rclpy glue for the node's parameter table: descriptors, declaration, reading, on-set checks.

The table itself (names, kinds, defaults, ranges) is ROS-free in control/parameters.py, so offline
replay and the soak read the same defaults and the same params YAML without rclpy; NodeConfig and
its typed sub-configs are built in control/node_config.py. Counterpart: ros/node.py (applies
runtime changes).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from pi0_ttnn_node.control.parameters import PARAMETERS, SPECS, ParamSpec, check_value

T = Parameter.Type


def ptype(spec: ParamSpec) -> Parameter.Type:
    """The rclpy parameter type of a table row (`kind` names it: bool, double_array, ...)."""
    return T[spec.kind.upper()]


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """Descriptor with description, choices, range and read_only (everything not runtime)."""
    kind = ptype(spec)
    text = spec.description + (f" One of {list(spec.choices)}." if spec.choices else "")
    desc = ParameterDescriptor(name=spec.name, type=kind.value, description=text,
                               read_only=not spec.runtime)
    if spec.low is not None and kind == T.INTEGER:
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                           step=0)]
    elif spec.low is not None and kind == T.DOUBLE:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                        to_value=float(spec.high), step=0.0)]
    return desc


def declare_parameters(node: Any) -> None:
    """Declare every parameter on `node` with its descriptor (overrides come from --params-file)."""
    for spec in PARAMETERS:
        default = ptype(spec) if spec.default is None else spec.default
        node.declare_parameter(spec.name, default, descriptor(spec))


def read_values(node: Any) -> Dict[str, Any]:
    """Current values of every parameter; typed-but-unset arrays read as []."""
    out: Dict[str, Any] = {}
    for spec in PARAMETERS:
        try:
            value = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            value = []
        out[spec.name] = list(value) if isinstance(value, (list, tuple)) or \
            hasattr(value, "tolist") else value
    return out


def make_validator(current: Callable[[], Mapping[str, Any]]
                   ) -> Callable[[List[Parameter]], SetParametersResult]:
    """Build the on-set callback: per-value checks plus shadow != backend. No side effects."""

    def validate(params: List[Parameter]) -> SetParametersResult:
        merged = dict(current())
        for param in params:
            spec = SPECS.get(param.name)
            if spec is None:
                continue  # rclpy's own parameters (use_sim_time, ...)
            reason = check_value(spec, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            merged[param.name] = param.value
        shadow = merged.get("policy.shadow_backend")
        if shadow and shadow == merged.get("policy.backend") and \
                merged.get("policy.backend") != "torch":
            return SetParametersResult(successful=False, reason=(
                f"policy.shadow_backend {shadow!r} equals policy.backend; a second {shadow} "
                "backend would compete for the same device"))
        return SetParametersResult(successful=True)

    return validate


def apply_after_set(node: Any, validate: Callable[[List[Parameter]], SetParametersResult],
                    apply: Callable[[List[Parameter]], None]
                    ) -> Callable[[List[Parameter]], SetParametersResult]:
    """Humble has no post-set callback: validate, and apply accepted changes once they are
    stored, from a one-shot timer."""

    def callback(changed: List[Parameter]) -> SetParametersResult:
        result = validate(changed)
        if result.successful:
            timer: List[Any] = []

            def apply_once() -> None:
                timer[0].cancel()
                node.destroy_timer(timer[0])
                apply(changed)

            timer.append(node.create_timer(0.0, apply_once))
        return result

    return callback
