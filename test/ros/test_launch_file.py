"""launch/pi0_ttnn_node.launch.py checked statically (launch has no wheel here), and the node run
as a separate process with the same params file, the way the launch file starts it."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points

import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from trajectory_msgs.msg import JointTrajectory

from pi0_ttnn_node.control.node_config import build_node_config
from pi0_ttnn_node.ros import params
from ros_harness import PARAMS_FILE, REPO, Driver, make_node
from test_ros_params import flatten

LAUNCH_FILE = REPO / "launch" / "pi0_ttnn_node.launch.py"
CONFIGS = ["pi0_ttnn_node.yaml", "single_arm.yaml", "bimanual_3cam.yaml"]


def launch_constants() -> dict:
    tree = ast.parse(LAUNCH_FILE.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            out[node.targets[0].id] = node.value.value
    out["arguments"] = [n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                        and getattr(n.func, "id", "") == "DeclareLaunchArgument"]
    out["functions"] = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    return out


def file_keys(name: str) -> set:
    raw = yaml.safe_load((REPO / "config" / name).read_text())
    assert list(raw) == ["pi0_ttnn_node"] and list(raw["pi0_ttnn_node"]) == ["ros__parameters"]
    return {k for k, _ in flatten(raw["pi0_ttnn_node"]["ros__parameters"])}


def test_launch_file_names_the_console_script_and_the_shipped_params_file():
    consts = launch_constants()
    assert "generate_launch_description" in consts["functions"]
    assert consts["arguments"] == ["params_file", "use_sim_time", "backend", "namespace",
                                   "dry_run", "instruction"]
    assert 'f"{PACKAGE} = {PACKAGE}.ros.node:main"' in (REPO / "setup.py").read_text()
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get(consts["EXECUTABLE"]) == "pi0_ttnn_node.ros.node:main", \
        "the installed package lacks the console script; run pip install -e ."
    assert consts["PACKAGE"] == consts["EXECUTABLE"] == "pi0_ttnn_node"
    text = LAUNCH_FILE.read_text()
    for key in ('"policy.backend"', '"safety.dry_run"', '"use_sim_time"', '"instruction.default"',
                "LifecycleNode("):
        assert key in text, key
    assert set(params.SPECS) >= {"policy.backend", "safety.dry_run"}
    assert (REPO / "config" / consts["DEFAULT_PARAMS"]) == PARAMS_FILE and PARAMS_FILE.is_file()
    from pi0_ttnn_node.ros.node import main  # the entry point resolves
    assert callable(main)


def test_params_file_keys_are_exactly_the_declared_parameters():
    rclpy.init()
    try:
        node = make_node()
        declared = set(node._parameters) - {"use_sim_time", "start_type_description_service"}
        node.destroy_node()
    finally:
        rclpy.shutdown()
    assert file_keys("pi0_ttnn_node.yaml") == declared == set(params.SPECS)


def test_example_configs_only_use_declared_parameters_and_validate():
    base = dict(flatten(yaml.safe_load(PARAMS_FILE.read_text())["pi0_ttnn_node"]
                        ["ros__parameters"]))
    for name in CONFIGS[1:]:
        assert file_keys(name) <= set(params.SPECS), name
        raw = yaml.safe_load((REPO / "config" / name).read_text())
        values = dict(base, **dict(flatten(raw["pi0_ttnn_node"]["ros__parameters"])))
        # backend availability depends on the machine, not on the file
        values["policy.backend"], values["policy.shadow_backend"] = "torch", ""
        cfg = build_node_config(values)
        assert len(cfg.action_joint_names) == len(cfg.position_lower), name


def test_console_script_runs_with_the_shipped_params_file_until_sigint():
    env = dict(os.environ)
    cmd = [sys.executable, "-c", "from pi0_ttnn_node.ros.node import main; main()",
           "--ros-args", "--params-file", str(PARAMS_FILE), "-p", "policy.num_steps:=2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    rclpy.init()
    try:
        listener = rclpy.create_node("pi0_launch_test_listener")
        chunks = []
        listener.create_subscription(JointTrajectory, "/pi0_ttnn_node/action_chunk",
                                     chunks.append, 10)

        class ClockSource:  # the driver stamps inputs with this clock
            def get_clock(self):
                return listener.get_clock()

        driver = Driver(ClockSource())
        executor = SingleThreadedExecutor()
        executor.add_node(listener)
        executor.add_node(driver.ros)
        deadline = time.monotonic() + 90
        while not chunks and time.monotonic() < deadline and proc.poll() is None:
            driver.publish_once()
            executor.spin_once(timeout_sec=0.05)
        assert chunks, "the node published no ~/action_chunk"
        assert list(chunks[0].joint_names) == [f"joint_{i}" for i in range(1, 8)]
        assert len(chunks[0].points) == 50
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        rclpy.shutdown()
    assert "EMBEDDED TINY RANDOM-WEIGHT DEMO MODEL" in output
    assert "active at 50.0 Hz, output DRY RUN" in output, output[-2000:]
    assert proc.returncode == 0, output[-2000:]
