"""control/parameters.py: the one parameter table, readable without rclpy, and the shipped file."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pi0_ttnn_node.control import parameters
from pi0_ttnn_node.errors import ConfigError


def test_the_table_and_the_core_need_no_rclpy_and_the_ttnn_rows_are_generated():
    code = ("import sys, pi0_ttnn_node.control.pipeline, pi0_ttnn_node.tools.replay; "
            "assert 'rclpy' not in sys.modules, 'rclpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    ttnn = [s for s in parameters.PARAMETERS if s.name.startswith("policy.ttnn_")]
    assert ttnn and all(s.runtime for s in ttnn)
    assert set(parameters.TTNN_PARAMS) <= set(parameters.BACKEND_PARAMS)
    for name in ("merge.mode", "rtc.method", "rtc.schedule", "rtc.max_guidance",
                 "schedule.min_latency_s"):
        assert name in parameters.SPECS
    assert parameters.SPECS["merge.mode"].choices == ("replace", "blend", "rtc")


def test_shipped_params_file_is_found_in_a_checkout_and_in_an_installed_prefix(tmp_path,
                                                                               monkeypatch):
    assert parameters.shipped_params_file().name == "pi0_ttnn_node.yaml"
    # installed with pip: no checkout next to the package, the file under <prefix>/share
    fake = tmp_path / "site-packages" / "pi0_ttnn_node" / "control" / "parameters.py"
    monkeypatch.setattr(parameters, "__file__", str(fake))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setitem(sys.modules, "ament_index_python", None)  # no ROS either
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", None)
    with pytest.raises(ConfigError, match="pass --params-file"):
        parameters.shipped_params_file()
    installed = tmp_path / "prefix" / "share" / "pi0_ttnn_node" / "config" / "pi0_ttnn_node.yaml"
    installed.parent.mkdir(parents=True)
    installed.write_text("pi0_ttnn_node:\n  ros__parameters: {}\n")
    assert parameters.shipped_params_file() == installed


def test_node_values_layers_files_then_overrides_and_refuses_unknown_names(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("pi0_ttnn_node:\n  ros__parameters:\n    schedule: {execute_steps: 7}\n")
    b.write_text("/**:\n  ros__parameters:\n    schedule: {execute_steps: 9}\n")
    values = parameters.node_values([str(a), str(b)], overrides={"merge.mode": "rtc",
                                                                 "control_rate_hz": None})
    assert values["schedule.execute_steps"] == 9 and values["merge.mode"] == "rtc"
    assert values["control_rate_hz"] == parameters.SPECS["control_rate_hz"].default
    a.write_text("pi0_ttnn_node:\n  ros__parameters:\n    policy: {ttnn_use_trace: true}\n")
    with pytest.raises(ConfigError, match="policy.ttnn_use_trace"):
        parameters.node_values([str(a)])
