"""Safety gate: position and velocity clipping, start jump, non-finite refusal, action spaces."""
import math

import numpy as np
import pytest

from pi0_ttnn_node.errors import ConfigError, InferenceError
from pi0_ttnn_node.control.safety import (Limits, TrajectoryLimiter, finite_difference_velocities,
                                  to_absolute)

DT = 0.02


@pytest.fixture
def limiter():
    return TrajectoryLimiter(Limits.create([-1.0, -2.0], [1.0, 2.0], [1.0, 10.0], 0.3))


def test_trajectory_within_limits_passes_unchanged_with_finite_difference_velocities(limiter):
    pos = np.array([[0.0, 0.0], [0.01, 0.1], [0.03, 0.1], [0.04, 0.0]])
    out, vel, rep = limiter.clip_trajectory(pos, np.zeros(2), DT)
    np.testing.assert_array_equal(out, pos)
    expected = np.array([[0.5, 5.0], [0.75, 2.5], [0.75, -2.5], [0.0, 0.0]])
    np.testing.assert_allclose(vel, expected)
    assert (rep.position_clips, rep.velocity_clips, rep.rejected) == (0, 0, False)


def test_positions_are_clipped_to_limits_and_counted(limiter):
    pos = np.array([[0.9, 1.9]] + [[0.9 + 0.01 * i, 1.9 + 0.1 * i] for i in range(1, 20)])
    out, _, rep = limiter.clip_trajectory(pos, np.array([0.9, 1.9]), DT)
    assert out[:, 0].max() == 1.0 and out[:, 1].max() == 2.0
    assert rep.position_clips == int((pos[:, 0] > 1.0).sum() + (pos[:, 1] > 2.0).sum())
    assert limiter.counters["position_clip"] == rep.position_clips


def test_steps_faster_than_max_velocity_are_rate_limited_from_the_start_command(limiter):
    pos = np.array([[0.01, 0.0], [0.2, 0.0], [0.2, 0.0], [0.2, 0.0]])
    out, vel, rep = limiter.clip_trajectory(pos, np.zeros(2), DT)
    np.testing.assert_allclose(out[:, 0], [0.01, 0.03, 0.05, 0.07])
    assert rep.velocity_clips == 3 and limiter.counters["velocity_clip"] == 3
    assert np.abs(np.diff(out[:, 0])).max() <= 1.0 * DT + 1e-12
    assert np.abs(vel[:, 0]).max() <= 1.0 and vel[-1].tolist() == [0.0, 0.0]


def test_first_point_jumping_more_than_max_start_jump_is_rejected(limiter):
    pos = np.array([[0.5, 0.0], [0.5, 0.0]])
    out, vel, rep = limiter.clip_trajectory(pos, np.zeros(2), DT)
    assert out is None and vel is None
    assert rep.rejected and rep.reason == "start_jump" and rep.start_jump == pytest.approx(0.5)
    assert limiter.counters["start_jump"] == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_actions_and_start_are_rejected_and_nothing_non_finite_is_returned(limiter,
                                                                                      bad):
    pos = np.zeros((3, 2))
    pos[1, 1] = bad
    out, vel, rep = limiter.clip_trajectory(pos, np.zeros(2), DT)
    assert out is None and rep.rejected and rep.reason == "nonfinite_action"
    out, _, rep = limiter.clip_trajectory(np.zeros((3, 2)), np.array([0.0, bad]), DT)
    assert out is None and rep.reason == "nonfinite_start"
    assert limiter.counters["nonfinite_action"] == 1 and limiter.counters["nonfinite_start"] == 1


def test_start_outside_the_position_box_never_yields_an_out_of_limit_command(limiter):
    out, vel, rep = limiter.clip_trajectory(np.full((5, 2), 0.9), np.array([1.05, 0.9]), DT)
    assert not rep.rejected
    assert out[:, 0].max() <= 1.0 and np.isfinite(vel).all()


def test_wrong_shapes_raise_inference_error(limiter):
    with pytest.raises(InferenceError):
        limiter.clip_trajectory(np.zeros((3, 3)), np.zeros(2), DT)
    with pytest.raises(InferenceError):
        limiter.clip_trajectory(np.zeros((0, 2)), np.zeros(2), DT)


def test_velocities_of_short_trajectories():
    assert finite_difference_velocities(np.ones((1, 2)), DT).tolist() == [[0.0, 0.0]]
    v = finite_difference_velocities(np.array([[0.0], [0.02]]), DT)
    np.testing.assert_allclose(v, [[1.0], [0.0]])


def test_absolute_actions_are_copied():
    actions = np.arange(6.0).reshape(3, 2)
    out = to_absolute("absolute_position", actions, np.array([9.0, 9.0]), DT)
    np.testing.assert_array_equal(out, actions)
    assert out is not actions


def test_delta_actions_are_relative_to_the_chunk_observation_state():
    actions = np.array([[0.1, 0.0], [0.2, -0.1], [0.3, -0.2]])
    out = to_absolute("delta_position", actions, np.array([1.0, 2.0]), DT)
    np.testing.assert_allclose(out, [[1.1, 2.0], [1.2, 1.9], [1.3, 1.8]])


def test_velocity_actions_are_integrated_from_the_observation_state():
    actions = np.array([[1.0, -1.0], [1.0, 0.0], [2.0, 0.0]])
    out = to_absolute("velocity", actions, np.array([0.5, 0.0]), DT)
    np.testing.assert_allclose(out, [[0.52, -0.02], [0.54, -0.02], [0.58, -0.02]])


def test_unknown_action_space_and_mismatched_shapes_are_errors():
    with pytest.raises(ConfigError):
        to_absolute("torque", np.zeros((2, 2)), np.zeros(2), DT)
    with pytest.raises(InferenceError):
        to_absolute("delta_position", np.zeros((2, 3)), np.zeros(2), DT)


@pytest.mark.parametrize("kwargs", [
    dict(position_lower=[0.0, 1.0], position_upper=[1.0, 1.0], max_velocity=[1, 1]),
    dict(position_lower=[0.0], position_upper=[1.0, 2.0], max_velocity=[1, 1]),
    dict(position_lower=[0.0, 0.0], position_upper=[1.0, 1.0], max_velocity=[1, 0]),
    dict(position_lower=[0.0, math.nan], position_upper=[1.0, 1.0], max_velocity=[1, 1]),
    dict(position_lower=[0.0, 0.0], position_upper=[1.0, 1.0], max_velocity=[1, 1],
         max_start_jump=-0.1),
])
def test_invalid_limits_are_refused(kwargs):
    with pytest.raises(ConfigError):
        Limits.create(**kwargs)
