"""The running node over DDS: trajectories for raw and JPEG cameras, refusals, A/B, sim time.

Every test runs the embedded tiny checkpoint on the torch backend (2 Euler steps, 10 Hz control),
feeds it from a driver node on a loopback-only domain and reads what it publishes.
"""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import SetBool

from pi0_ttnn_node.ros import conversions
from pi0_ttnn_node.control.parameters import backend_available
from ros_harness import Session, assert_valid_trajectory, policy_status, wait_for


def values(session: Session) -> dict:
    status = policy_status(session.driver.diagnostics)
    return {} if status is None else conversions.status_values(status)


@pytest.mark.parametrize("transport, size", [("raw", (64, 48)), ("compressed", (640, 480))])
def test_node_publishes_valid_trajectories_for_each_image_transport(transport, size):
    overrides = {"cameras.transports": [transport]}
    with Session(overrides, transport=transport, size=size) as s:
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: len(s.driver.trajectories) >= 3, 60), values(s)
        names = list(s.node.cfg.action_joint_names)
        for msg in s.driver.trajectories[:3]:
            pos = assert_valid_trajectory(msg, names)
            assert msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0
            assert np.all(pos >= -3.0) and np.all(pos <= 3.0)  # limits from the params file
        chunk = s.driver.chunks[0]
        times, raw, _ = conversions.trajectory_arrays(chunk)
        assert raw.shape == (50, 7) and np.allclose(times, 0.1 * np.arange(50))
        t_obs = conversions.stamp_to_sec(chunk.header.stamp)
        assert abs(t_obs - s.node.get_clock().now().nanoseconds * 1e-9) < 10.0


def test_observation_stamp_mode_stamps_commands_with_the_chunk_observation_time():
    with Session({"output.stamp_mode": "observation"}) as s:
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: len(s.driver.trajectories) >= 3, 60)
        t_obs = {conversions.stamp_to_sec(c.header.stamp) for c in s.driver.chunks}
        msg = s.driver.trajectories[-1]
        assert conversions.stamp_to_sec(msg.header.stamp) in t_obs
        assert_valid_trajectory(msg, list(s.node.cfg.action_joint_names))


def test_dry_run_publishes_only_the_action_chunk_until_enabled():
    with Session({"safety.dry_run": True}) as s:
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: len(s.driver.chunks) >= 1, 60)
        assert wait_for(lambda: values(s).get("inferences", "0") != "0", 10)
        assert s.driver.trajectories == []
        client = s.driver.ros.create_client(SetBool, "/pi0_ttnn_node/enable")
        assert client.wait_for_service(5.0)
        reply = client.call(SetBool.Request(data=True), timeout_sec=10.0)
        assert reply.success and s.node.get_parameter("safety.dry_run").value is False
        assert wait_for(lambda: len(s.driver.trajectories) >= 1, 30)
        reply = client.call(SetBool.Request(data=False), timeout_sec=10.0)
        assert reply.success and s.node.get_parameter("safety.dry_run").value is True
        assert wait_for(lambda: len(s.driver.trajectories[-1].points) == 1, 5)  # hold on disarm
        count = len(s.driver.trajectories)
        assert not wait_for(lambda: len(s.driver.trajectories) > count, 1.0)


@pytest.mark.parametrize("fault, reason, status_name", [
    ("stale", "stale_image", "policy"), ("missing_camera", "camera_missing", "policy"),
    ("nan_joint", "nonfinite_state", "joint_states")])
def test_bad_inputs_produce_no_motion_and_a_diagnostic_reason(fault, reason, status_name):
    with Session() as s:
        if fault == "stale":
            s.driver.stamp_offset = -10.0
        elif fault == "missing_camera":
            s.driver.publish_images = False
        else:
            s.driver.nan_joint = "joint_3"
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: int(values(s).get(f"reject.{reason}", 0)) > 2, 30), values(s)
        status = next(st for st in s.driver.diagnostics[-1].status
                      if st.name.endswith(": " + status_name))
        assert status.level != status.OK and reason in status.message, status.message
        assert values(s)["inferences"] == "0" and values(s)["queue_depth"] == "0"
        assert s.driver.trajectories == [] and s.driver.chunks == []


def test_new_instruction_resets_the_queue():
    with Session() as s:
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: len(s.driver.trajectories) >= 1, 60)
        s.driver.instr_pub.publish(String(data="put the cube in the bowl"))
        assert wait_for(lambda: values(s).get("queue.reset_instruction") == "1", 10), values(s)
        assert values(s)["instruction"] == "put the cube in the bowl"


def test_runtime_backend_switch_keeps_publishing():
    with Session() as s:
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: len(s.driver.trajectories) >= 2, 60)
        result = s.node.set_parameters([Parameter("policy.torch_dtype", value="bfloat16")])[0]
        assert result.successful
        assert wait_for(lambda: values(s).get("backend") == "torch/cpu/bfloat16", 60), values(s)
        assert wait_for(lambda: values(s).get("device.dtype") == "torch.bfloat16", 5), values(s)
        count = len(s.driver.trajectories)
        chunks = int(values(s)["queue.chunk_accepted"])
        assert wait_for(lambda: int(values(s)["queue.chunk_accepted"]) >= chunks + 2, 60)
        assert len(s.driver.trajectories) > count
        assert values(s)["backend_error"] == ""
        refused = s.node.set_parameters([Parameter("policy.backend", value="jax")])[0]
        assert not refused.successful


def test_shadow_backend_reports_divergence_without_publishing_it():
    with Session({"policy.shadow_backend": "torch"}) as s:
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: "ab_pcc" in values(s), 60), values(s)
        v = values(s)
        # same weights, dtype and noise: the shadow must agree with the primary
        assert float(v["ab_pcc"]) > 0.9999 and v["shadow_backend"] == "torch/cpu/float32"
        diffs = [float(x) for x in v["ab_max_abs_diff"].strip("[]").split(",")]
        assert len(diffs) == 7 and max(diffs) < 1e-4
        s.node.set_parameters([Parameter("policy.shadow_backend", value="")])
        assert wait_for(lambda: "ab_pcc" not in values(s), 30)


@pytest.mark.skipif(backend_available("ttnn") is not None,
                    reason=f"ttnn backend: {backend_available('ttnn')}")
def test_runtime_switch_to_emulated_ttnn_backend():
    with Session({"policy.ttnn_emulate": True}) as s:
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: len(s.driver.trajectories) >= 1, 60)
        assert s.node.set_parameters([Parameter("policy.backend", value="ttnn")])[0].successful
        assert wait_for(lambda: values(s).get("backend", "").startswith("ttnn"), 300), values(s)
        count = len(s.driver.trajectories)
        assert wait_for(lambda: len(s.driver.trajectories) > count + 2, 120)
        assert_valid_trajectory(s.driver.trajectories[-1], list(s.node.cfg.action_joint_names))


def test_sim_time_drives_stamps_and_a_backward_jump_resets():
    with Session({"use_sim_time": True}, use_sim_time=True) as s:
        s.driver.sim_time = 1000.0
        s.driver.publish_once()
        assert wait_for(lambda: s.node.get_clock().now().nanoseconds > 999e9, 10)
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: len(s.driver.chunks) >= 1 and len(s.driver.trajectories) >= 1,
                        60)
        t_obs = conversions.stamp_to_sec(s.driver.chunks[0].header.stamp)
        assert 1000.0 < t_obs < 1100.0  # sim time, not wall time
        s.driver.sim_time = 500.0
        assert wait_for(lambda: int(values(s).get("queue.reset_clock_jump_back", "0")) >= 1,
                        20), values(s)
        count = len(s.driver.chunks)
        assert wait_for(lambda: len(s.driver.chunks) > count, 60)
        t_new = conversions.stamp_to_sec(s.driver.chunks[-1].header.stamp)
        assert 500.0 < t_new < 600.0
