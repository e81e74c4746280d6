"""ros/params.py: the parameter table, NodeConfig validation and the on-set validator."""

from __future__ import annotations

import math

import pytest
import rclpy
import yaml
from rclpy.parameter import Parameter

from pi0_ttnn_node.control.node_config import build_node_config
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.ros import params
from pi0_ttnn_node.ttnn_backend.ttnn_config import knob_params
from ros_harness import PARAMS_FILE


def shipped_values() -> dict:
    raw = yaml.safe_load(PARAMS_FILE.read_text())["pi0_ttnn_node"]["ros__parameters"]
    return dict(flatten(raw))


def flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_every_parameter_has_a_description_and_only_runtime_ones_are_writable():
    runtime = {s.name for s in params.PARAMETERS if s.runtime}
    ttnn = {"policy.ttnn_" + row.name for row in knob_params(prefix="")}
    assert runtime == {"policy.backend", "policy.shadow_backend", "policy.torch_device",
                       "policy.torch_dtype", "policy.fault_injection",
                       "instruction.default", "safety.dry_run"} | ttnn
    for spec in params.PARAMETERS:
        desc = params.descriptor(spec)
        assert len(spec.description) > 15, spec.name
        assert desc.read_only == (spec.name not in runtime)
    assert len(params.SPECS) == len(params.PARAMETERS)


def test_shipped_params_file_builds_a_node_config():
    cfg = build_node_config(shipped_values())
    assert cfg.primary_camera == "base_0_rgb"
    assert [c.transport for c in cfg.cameras] == ["raw"] * 3
    assert cfg.action_dims == tuple(range(7))
    assert cfg.backend.label() == "torch/cpu/float32" and cfg.shadow is None
    assert math.isclose(cfg.dt, 0.02)


@pytest.mark.parametrize("name, value, fragment", [
    ("limits.max_velocity", [1.0] * 6, "limits.max_velocity has 6 entries, expected 7"),
    ("state.joint_names", [], "state.joint_names must list unique joint names"),
    ("action.joint_names", ["a", "a"], "action.joint_names must list unique"),
    ("cameras.required", [True], "cameras.required has 1 entries, expected 3"),
    ("cameras.transports", ["raw", "udp"], "cameras.transports has 2 entries"),
    ("cameras.primary", "left_wrist_0_rgb", "must be required"),
    ("limits.position_lower", [4.0] * 7, "limits.position_lower must be below"),
    ("sync.max_image_age_s", float("nan"), "must be finite"),
    ("limits.max_velocity", [1.0, 1.0, 1.0, float("inf"), 1.0, 1.0, 1.0], "must be finite"),
    ("policy.backend", "tensorflow", "must be one of"),
    ("action.dims", [0, 1, 2, 3, 4, 5, 5], "action.dims must be unique"),
])
def test_build_node_config_names_the_faulty_parameter(name, value, fragment):
    values = shipped_values()
    values[name] = value
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        build_node_config(values)


def test_validator_refuses_non_finite_unknown_backend_and_twin_ttnn_shadow():
    current = shipped_values()
    validate = params.make_validator(lambda: current)
    nan = validate([Parameter("sync.max_image_age_s", value=float("nan"))])
    assert not nan.successful and "finite" in nan.reason
    unknown = validate([Parameter("policy.backend", value="jax")])
    assert not unknown.successful and "jax" in unknown.reason
    current["policy.backend"] = "ttnn"
    twin = validate([Parameter("policy.shadow_backend", value="ttnn")])
    assert not twin.successful
    assert validate([Parameter("policy.torch_dtype", value="bfloat16")]).successful


def test_live_node_declares_every_parameter_and_rejects_bad_runtime_sets():
    from ros_harness import make_node

    rclpy.init()
    try:
        node = make_node({"autostart": True})
        declared = set(node._parameters) - {"use_sim_time", "start_type_description_service"}
        assert declared == set(params.SPECS)
        assert node.get_parameter("policy.num_steps").value == 2  # override beats the file
        assert params.read_values(node)["action.dims"] == []  # typed, unset array
        results = node.set_parameters([Parameter("policy.backend", value="jax"),
                                       Parameter("control_rate_hz", value=20.0),
                                       Parameter("policy.torch_dtype", value="bfloat16")])
        assert [r.successful for r in results] == [False, False, True]
        assert "jax" in results[0].reason
        assert node.get_parameter("policy.torch_dtype").value == "bfloat16"
        node.destroy_node()
    finally:
        rclpy.shutdown()


def test_ttnn_parameters_are_generated_from_the_knob_table_not_written_by_hand():
    rows = knob_params()
    names = [s.name for s in params.PARAMETERS if s.name.startswith("policy.ttnn_")]
    assert names == [r.name for r in rows] and "policy.ttnn_use_trace" not in params.SPECS
    for row in rows:
        spec = params.SPECS[row.name]
        assert (spec.default, spec.choices, spec.low, spec.high) == \
            (row.default, tuple(row.choices), row.low, row.high)
    values = shipped_values()
    values.update({"policy.backend": "ttnn", "policy.ttnn_preset": "fast",
                   "policy.ttnn_fidelity_denoise": "HiFi4", "policy.ttnn_emulate": True})
    spec = build_node_config(values).backend
    assert spec.backend == "ttnn" and spec.ttnn.emulate and spec.ttnn.trace == "whole"
    assert spec.ttnn.fidelity_denoise == "HiFi4" and spec.ttnn.fidelity_vision == "HiFi2"


def test_backend_changes_map_parameter_sets_to_worker_requests():
    from pi0_ttnn_node.ros.policy_loader import backend_changes

    values = shipped_values()
    primary, shadow_changed, _ = backend_changes({"policy.torch_dtype"}, values)
    assert primary.label() == "torch/cpu/float32" and not shadow_changed
    values.update({"policy.fault_injection": "mode=nan", "policy.shadow_backend": "torch"})
    primary, shadow_changed, shadow = backend_changes({"policy.ttnn_fidelity_denoise"}, values)
    assert primary.label().endswith("(FAULT INJECTION)") and primary.fault_injection == "mode=nan"
    assert shadow_changed and shadow.label() == "torch/cpu/float32"  # never with faults
    assert backend_changes({"safety.dry_run"}, values)[:2] == (None, False)
