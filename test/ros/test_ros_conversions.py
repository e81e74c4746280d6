"""ros/conversions.py: stamps, image decoders, joint arrays, trajectory and diagnostic messages."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import CompressedImage, Image, JointState

from pi0_ttnn_node.image_conversion import ImageRejected
from pi0_ttnn_node.ros import conversions as cv


def test_stamps_round_trip_to_the_nanosecond():
    for t in (0.0, 1.5, 1700000000.123456789, 12.999999999):
        stamp = cv.sec_to_stamp(t)
        assert 0 <= stamp.nanosec < 1_000_000_000
        assert abs(cv.stamp_to_sec(stamp) - t) < 1e-6


def test_raw_image_decoder_honours_row_padding_and_bgr_order():
    rgb = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    padded = np.zeros((5, 7 * 3 + 11), dtype=np.uint8)  # 11 bytes of row padding
    padded[:, :21] = rgb[:, :, ::-1].reshape(5, 21)
    msg = Image(height=5, width=7, encoding="bgr8", step=32,
                data=array.array("B", padded.tobytes()))
    decoded = cv.image_decoder(msg)()
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, rgb)


def test_raw_image_decoder_refuses_depth_and_short_data_with_a_reason():
    depth = Image(height=2, width=2, encoding="16UC1", step=4, data=array.array("B", bytes(8)))
    with pytest.raises(ImageRejected) as err:
        cv.image_decoder(depth)
    assert err.value.reason == "unsupported_encoding"
    short = Image(height=2, width=2, encoding="rgb8", step=6, data=array.array("B", bytes(7)))
    with pytest.raises(ImageRejected) as err:
        cv.image_decoder(short)
    assert err.value.reason == "data_too_short"


def test_compressed_decoder_returns_rgb_and_refuses_garbage():
    rgb = np.zeros((8, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red survives PNG exactly
    msg = CompressedImage(format="png", data=cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes())
    assert np.array_equal(cv.compressed_decoder(msg)(), rgb)
    with pytest.raises(ImageRejected) as err:
        cv.compressed_decoder(CompressedImage(format="jpeg", data=b"not an image"))
    assert err.value.reason == "unsupported_format"


def test_joint_state_arrays_keep_message_order_and_stamp():
    msg = JointState(name=["b", "a"], position=[2.0, 1.0])
    msg.header.stamp = cv.sec_to_stamp(3.25)
    stamp, names, pos = cv.joint_state_arrays(msg)
    assert stamp == 3.25 and names == ["b", "a"] and pos.tolist() == [2.0, 1.0]


def test_trajectory_builder_reuses_points_and_sets_times():
    builder = cv.TrajectoryBuilder(["j1", "j2"], dt=0.02, max_points=50)
    pos = np.arange(10, dtype=np.float64).reshape(5, 2)
    msg = builder.build(pos, np.ones((5, 2)))
    times, p, v = cv.trajectory_arrays(msg)
    assert np.allclose(times, 0.02 * np.arange(1, 6)) and np.array_equal(p, pos)
    assert v.shape == (5, 2) and msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 0
    first_point = msg.points[0]
    again = builder.build(pos[:3] + 1, None, stamp=5.5, time_from_start=np.array([.01, .03, .05]))
    assert again.points[0] is first_point and len(again.points) == 3
    times, p, v = cv.trajectory_arrays(again)
    assert np.allclose(times, [.01, .03, .05]) and v.shape == (3, 0)
    assert cv.stamp_to_sec(again.header.stamp) == 5.5
    with pytest.raises(ValueError):
        builder.build(np.zeros((51, 2)))
    with pytest.raises(ValueError):
        builder.build(np.zeros((3, 3)))


def test_action_chunk_builder_starts_at_time_zero():
    builder = cv.TrajectoryBuilder(["j"], dt=0.1, max_points=4, first_index=0)
    times, _, _ = cv.trajectory_arrays(builder.build(np.zeros((4, 1))))
    assert np.allclose(times, [0.0, 0.1, 0.2, 0.3])


def test_hold_trajectory_is_one_point_at_rest():
    msg = cv.hold_trajectory(["a", "b"], np.array([0.5, -0.5]), dt=0.02)
    times, pos, vel = cv.trajectory_arrays(msg)
    assert times.tolist() == [0.02] and pos.tolist() == [[0.5, -0.5]] and vel.tolist() == [[0, 0]]


def test_diagnostic_status_formats_values_and_levels():
    status = cv.diagnostic_status("x: policy", "WARN", "holding", "hw",
                                  {"latency_ms": 12.3456789, "jumps": [0.1, 0.25], "n": 3})
    assert status.level == DiagnosticStatus.WARN
    assert cv.status_values(status) == {"latency_ms": "12.3457", "jumps": "[0.1, 0.25]",
                                        "n": "3"}
