"""Backend faults against a real node process over loopback DDS (embedded checkpoint, 2 steps).

TTNN without a card at configure (unconfigured with the reason, or torch by fallback), a device
failing mid-run, NaN and wrong-shaped chunks, and inference slower than a chunk: each holds,
reports on /diagnostics, publishes nothing non-finite, and recovers once the fault is cleared by
deleting its flag file. Faults come from the test-only `policy.fault_injection` parameter.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np
import pytest
import rclpy
from trajectory_msgs.msg import JointTrajectory

from pi0_ttnn_node.ros.conversions import trajectory_arrays
from pi0_ttnn_node.tools.hostile_driver import OUTPUT_TOPIC, Attacker
from pi0_ttnn_node.tools.hostile_inputs import HarnessConfig, set_loopback_env, start_node


class NodeRun:
    """A node process plus the driver; records every command's arrays for finiteness checks."""

    def __init__(self, tmp_path: Path, extra: Dict[str, str]) -> None:
        set_loopback_env(int(os.environ["ROS_DOMAIN_ID"]))
        self.log = tmp_path / "node.log"
        self.proc = start_node(extra, self.log)
        rclpy.init()
        self.attacker = Attacker(HarnessConfig())
        self.commands = []
        self.attacker.node.create_subscription(JointTrajectory, OUTPUT_TOPIC,
                                               self.commands.append, 50)

    def close(self) -> None:
        self.attacker.close()
        rclpy.shutdown()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def diag(self, after: float = 0.0) -> Dict[str, str]:
        return self.attacker.latest_diag(after) or {}

    def wait_diag(self, predicate, timeout: float = 30.0) -> Dict[str, str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            values = self.diag(time.time() - 0.5)
            if values and predicate(values):
                return values
            time.sleep(0.05)
        return self.diag()

    def all_commands_finite(self) -> bool:
        return all(np.isfinite(a).all() for m in list(self.commands)
                   for a in trajectory_arrays(m)[1:])


@pytest.fixture
def node_run(request, tmp_path) -> Iterator[NodeRun]:
    run = NodeRun(tmp_path, request.param)
    yield run
    run.close()


def fault(tmp_path: Path, mode: str, **kw) -> Tuple[Dict[str, str], Path]:
    """Node arguments for a fault that lasts while the returned flag file exists."""
    flag = tmp_path / f"fault_{mode}"
    flag.touch()
    spec = ",".join([f"mode={mode}", f"active_file={flag}"] + [f"{k}={v}" for k, v in kw.items()])
    return {"policy.fault_injection": f"'{spec}'"}, flag


TTNN_NO_CARD = {"policy.backend": "ttnn", "policy.ttnn_emulate": "false"}


@pytest.mark.parametrize("node_run", [TTNN_NO_CARD], indirect=True)
def test_ttnn_without_a_card_leaves_the_node_unconfigured_with_the_reason(node_run):
    deadline = time.time() + 60
    while time.time() < deadline and "configure failed" not in node_run.log.read_text():
        time.sleep(0.2)
    log = node_run.log.read_text()
    assert "configure failed" in log and "no Tenstorrent device" in log, log[-2000:]
    assert node_run.attacker.state() == "unconfigured"


@pytest.mark.parametrize("node_run", [dict(TTNN_NO_CARD, **{"policy.fallback_backend": "torch"})],
                         indirect=True)
def test_fallback_backend_brings_the_node_up_on_torch(node_run):
    assert node_run.attacker.wait_active(60)
    node_run.attacker.start_good_stream()
    assert node_run.attacker.wait_output_after(time.time(), 30)
    values = node_run.wait_diag(lambda v: v.get("backend", "").startswith("torch"))
    assert values["backend"].startswith("torch/cpu")
    assert "no Tenstorrent device" in values["backend_error"]


def _fault_cycle(run: NodeRun, flag: Path, failure_key: str) -> None:
    """Good output, then failures and a hold with ERROR, then recovery once the flag is gone."""
    a = run.attacker
    assert a.wait_active(60)
    a.start_good_stream()
    values = run.wait_diag(lambda v: int(v.get("consecutive_failures", 0)) >= 3)
    assert int(values["consecutive_failures"]) >= 3, values
    assert int(values.get(failure_key, 0)) >= 3, values
    assert values["_level"] == "2" and "failed inferences" in values["_message"], values
    status = run.wait_diag(lambda v: "holding" in v.get("hold_reason", "") or
                           v.get("queue_depth") == "0")
    assert status.get("queue_depth") == "0", status
    assert a.state() == "active"
    stop = time.time()
    time.sleep(0.5)
    assert not [s for s, t, topic in a.outputs if topic == OUTPUT_TOPIC and s > 0 and
                t > stop + 0.3], "commands from new chunks while the backend fails"
    flag.unlink()
    cleared = time.time()
    assert a.wait_output_after(cleared, 30), "no output after the fault was cleared"
    values = run.wait_diag(lambda v: v.get("consecutive_failures") == "0")
    assert values.get("consecutive_failures") == "0"
    assert run.all_commands_finite()


@pytest.mark.parametrize("mode, key", [("device_lost", "failures.inference"),
                                       ("nan", "failures.inference"),
                                       ("wrong_shape", "failures.inference")])
def test_backend_fault_mid_run_holds_reports_and_recovers_when_cleared(tmp_path, mode, key):
    extra, flag = fault(tmp_path, mode, first_call=4)  # warm-up and two good inferences first
    run = NodeRun(tmp_path, extra)
    try:
        _fault_cycle(run, flag, key)
    finally:
        run.close()


def test_inference_slower_than_the_chunk_runs_dry_holds_and_stays_active(tmp_path):
    # 50 actions at 20 Hz last 2.5 s; a 3.5 s inference lets the queue run dry
    extra, flag = fault(tmp_path, "slow", first_call=3, delay_s=3.5)
    extra["schedule.execute_steps"] = "25"
    run = NodeRun(tmp_path, extra)
    try:
        a = run.attacker
        assert a.wait_active(60)
        a.start_good_stream()
        values = run.wait_diag(lambda v: int(v.get("queue.hold_queue_dry", 0)) >= 1, 40)
        assert int(values.get("queue.hold_queue_dry", 0)) >= 1, values
        assert a.state() == "active"
        flag.unlink()
        assert a.wait_output_after(time.time(), 30)
        assert run.all_commands_finite()
    finally:
        run.close()


def test_clearing_policy_fault_injection_by_parameter_rebuilds_a_healthy_backend(tmp_path):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    run = NodeRun(tmp_path, {"policy.fault_injection": "'mode=device_lost,first_call=3'"})
    try:
        a = run.attacker
        assert a.wait_active(60)
        a.start_good_stream()
        values = run.wait_diag(lambda v: int(v.get("consecutive_failures", 0)) >= 3)
        assert "FAULT INJECTION" in values["backend"], values
        request = SetParameters.Request(parameters=[
            Parameter("policy.fault_injection", Parameter.Type.STRING, "").to_parameter_msg()])
        reply = a.set_params.call(request, timeout_sec=10.0)
        assert reply is not None and reply.results[0].successful
        cleared = time.time()
        assert a.wait_output_after(cleared, 30)
        values = run.wait_diag(lambda v: "FAULT" not in v.get("backend", "FAULT") and
                               v.get("consecutive_failures") == "0")
        assert values["backend"] == "torch/cpu/float32", values
        assert values["consecutive_failures"] == "0", values
    finally:
        run.close()
