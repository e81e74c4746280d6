"""The running node over DDS (issue 11): camera QoS follows the publishers, inputs refused at the
door with counted reasons, one instruction rule set, present-tense diagnostics, process tuning."""

from __future__ import annotations

import gc
import sys

from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState

from pi0_ttnn_node.ros import conversions, process_tuning
from ros_harness import STATE_JOINTS, Session, policy_status, wait_for

HOSTILE = ("pick up\n\tthe \u202ered\u202c cube " * 4200)[:100_800]


def values(session: Session) -> dict:
    status = policy_status(session.driver.diagnostics)
    return {} if status is None else conversions.status_values(status)


def input_status(session: Session, key: str):
    for arr in reversed(session.driver.diagnostics):
        for status in arr.status:
            if status.name.endswith(": " + key):
                return status
    return None


def test_camera_subscription_follows_its_publishers_reliability():
    """The harness publishes reliable: auto subscribes reliable; a best-effort camera on another
    topic gets best effort. Both are reported on the camera statuses."""
    overrides = {"cameras.names": ["base_0_rgb", "left_wrist_0_rgb"],
                 "cameras.topics": ["cam_high/image_raw", "cam_left/image_raw"],
                 "cameras.required": [True, False]}
    with Session(overrides) as s:
        be = s.driver.ros.create_publisher(
            Image, "cam_left/image_raw", QoSProfile(depth=1,
                                                    reliability=ReliabilityPolicy.BEST_EFFORT))
        s.bring_up()
        s.driver.start()
        subs = s.node.camera_subs
        assert wait_for(lambda: subs.reliability["base_0_rgb"] == "reliable"
                        and subs.reliability["left_wrist_0_rgb"] == "best_effort"
                        and subs.offered["left_wrist_0_rgb"] == "best_effort", 15), subs.offered
        status = lambda: input_status(s, "camera base_0_rgb")  # noqa: E731
        assert wait_for(lambda: status() is not None and conversions.status_values(status())
                        .get("qos_reliability") == "reliable", 15)
        vals = conversions.status_values(status())
        assert vals["qos_setting"] == "auto" and vals["publishers_offer"] == "reliable"
        assert wait_for(lambda: len(s.driver.trajectories) >= 1, 60), values(s)
        del be


def test_negative_stamps_and_absurd_joint_values_are_refused_and_counted():
    with Session() as s:
        s.bring_up()
        s.driver.start()
        assert wait_for(lambda: int(values(s).get("inferences", "0")) >= 1, 60), values(s)
        bad_cam = conversions.image_msg(s.driver.frame, 0.0)
        bad_cam.header.stamp.sec = -100
        bad_js = JointState(name=list(STATE_JOINTS), position=[0.0] * len(STATE_JOINTS))
        bad_js.header.stamp.sec = -3
        huge = JointState(name=list(STATE_JOINTS), position=[0.1] * len(STATE_JOINTS))
        huge.position[2] = 1e300
        huge.header.stamp = conversions.sec_to_stamp(s.node._now())
        for _ in range(3):
            s.driver.cam_pubs[0].publish(bad_cam)
            s.driver.js_pub.publish(bad_js)
            s.driver.js_pub.publish(huge)
        assert wait_for(lambda: int(values(s).get("reject.invalid_stamp", 0)) >= 2
                        and int(values(s).get("reject.position_out_of_range", 0)) >= 1, 20), \
            values(s)
        # the other joints of the refused message were stored at its stamp
        hist = s.node.hub.joints._hist[STATE_JOINTS.index(STATE_JOINTS[3])]
        assert 0.1 in hist.values


def test_instruction_default_parameter_obeys_the_topic_rules():
    with Session() as s:
        s.bring_up()
        result = s.node.set_parameters([Parameter("instruction.default", value=HOSTILE)])[0]
        assert not result.successful
        assert "instruction_too_long" in result.reason and "100800 characters" in result.reason
        ok = s.node.set_parameters([Parameter("instruction.default",
                                              value=" fold\n\tthe \u202etowel ")])[0]
        assert ok.successful


def test_failed_switch_warning_clears_when_the_running_backend_is_requested_again():
    with Session() as s:
        s.bring_up()
        s.driver.start()
        running = s.node.status.backend_active
        assert s.node.set_parameters([Parameter("policy.torch_device", value="cuda:7")])[0] \
            .successful
        assert wait_for(lambda: "backend switch failed" in
                        (policy_status(s.driver.diagnostics).message
                         if policy_status(s.driver.diagnostics) else ""), 60), values(s)
        assert s.node.status.backend_active == running
        assert s.node.set_parameters([Parameter("policy.torch_device", value="cpu")])[0] \
            .successful
        count = len(s.driver.diagnostics)
        assert wait_for(lambda: len(s.driver.diagnostics) > count + 1, 10)
        status = policy_status(s.driver.diagnostics)
        assert "backend switch failed" not in status.message, status.message
        assert conversions.status_values(status)["backend_error"] == ""


def test_configure_applies_the_process_tuning():
    with Session({"policy.torch_threads": 0}) as s:
        s.bring_up()
        import torch

        assert torch.get_num_threads() == process_tuning.default_torch_threads()
        assert sys.getswitchinterval() == process_tuning.SWITCH_INTERVAL_S
        assert gc.get_freeze_count() > 0 and s.node._tuning.gc_frozen > 0
        assert wait_for(lambda: values(s).get("process.torch_threads") ==
                        str(process_tuning.default_torch_threads()), 10), values(s)


def test_lossy_camera_is_reported_on_diagnostics_with_the_likely_cause():
    """A 30 Hz camera (by its stamps) of which only 2 frames in 6 arrive: WARN naming the loss."""
    import threading
    import time

    with Session() as s:
        s.bring_up()
        stop = threading.Event()

        def publish() -> None:
            k = 0
            while not stop.wait(1 / 30):
                stamp = s.node._now()
                if k % 6 < 2:
                    s.driver.cam_pubs[0].publish(conversions.image_msg(s.driver.frame, stamp))
                js = JointState(name=list(STATE_JOINTS), position=[0.1] * len(STATE_JOINTS))
                js.header.stamp = conversions.sec_to_stamp(stamp)
                s.driver.js_pub.publish(js)
                k += 1

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        try:
            def lossy() -> bool:
                st = input_status(s, "camera base_0_rgb")
                return st is not None and "likely cause" in st.message

            assert wait_for(lossy, 20), [input_status(s, "camera base_0_rgb")]
            st = input_status(s, "camera base_0_rgb")
            vals = conversions.status_values(st)
            assert st.level == st.WARN and "Hz published (header stamps)" in st.message
            assert abs(float(vals["stamped_rate_hz"]) - 30.0) < 4.0, vals
            assert float(vals["delivered_fraction"]) < 0.5, vals
            assert "CPU load" in st.message  # reliable subscription: frames skipped late
        finally:
            stop.set()
            thread.join(2.0)
            time.sleep(0.1)


def test_instruction_from_the_launch_argument_or_params_file_fails_configure_with_the_reason():
    """Launch's `instruction` argument becomes instruction.default at start-up, where no set
    callback runs: configure applies the same rules and fails naming them."""
    from pi0_ttnn_node.ros.process import autostart

    with Session({"instruction.default": HOSTILE}) as s:
        assert not autostart(s.node)
        assert "instruction_too_long" in s.node.configure_error, s.node.configure_error
    with Session({"instruction.default": "  tidy\n\tup \u202e"}, instruction=None) as s:
        s.bring_up()
        assert s.node.hub.assembler.instruction == "tidy up"
