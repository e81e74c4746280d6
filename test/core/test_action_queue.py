"""ActionScheduler: latency compensation, triggers, merge policies, sync mode, holds and resets."""
import math

import numpy as np
import pytest

from pi0_ttnn_node.control.action_queue import ActionScheduler, ScheduleConfig
from pi0_ttnn_node.control.latency import LatencyTracker
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.control.safety import Limits, TrajectoryLimiter

DT = 0.02
T0 = 10.0
N = 2


def _sched(latency=None, limiter=None, **cfg) -> ActionScheduler:
    tracker = LatencyTracker()
    if latency is not None:  # live measurements (warm-up seeds would give way to the first one)
        for _ in range(10):
            tracker.add(latency)
    return ActionScheduler(ScheduleConfig(**cfg), N, limiter=limiter, latency=tracker)


def _feed(s, chunk, t_obs, now, state=None):
    rid = s.mark_inference_started(now)
    return s.on_chunk(chunk, t_obs, now, rid, current_state=np.zeros(N) if state is None else state)


def _const(value, h=50):
    return np.full((h, N), float(value))


def _ramp(h=50):
    return np.repeat((np.arange(h) * 0.001)[:, None], N, axis=1)


def test_actions_elapsed_during_inference_are_dropped():
    s = _sched()
    rep = _feed(s, _ramp(), T0, T0 + 0.105)  # 5.25 steps late: actions 0..5 are in the past
    assert rep.accepted and rep.dropped == 6 and rep.queued == 44
    traj = s.tick(T0 + 0.105)
    np.testing.assert_allclose(traj.times[0], T0 + 6 * DT)
    np.testing.assert_allclose(traj.positions[0], [0.006, 0.006])
    assert (traj.times > T0 + 0.105).all() and (np.diff(traj.times) > 0).all()


def test_trajectory_is_read_only_with_zero_final_velocity_and_time_from_start():
    s = _sched()
    _feed(s, _ramp(5), T0, T0)
    traj = s.tick(T0 + 0.001)
    assert not traj.positions.flags.writeable
    assert traj.velocities[-1].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(traj.velocities[1], [0.05, 0.05])
    np.testing.assert_allclose(traj.time_from_start(T0 + 0.001), [0.019, 0.039, 0.059, 0.079])


def test_async_trigger_comes_p95_delay_plus_margin_before_execute_steps():
    s = _sched(latency=0.1, execute_steps=25, margin_steps=2)  # d = 5, lead = 7
    assert s.delay_steps == 5 and s.should_request_inference(T0)
    _feed(s, _ramp(), T0, T0)
    # action 0 (at t_obs = now) was dropped on arrival; at T0 + i*dt actions 1..i have played
    played_at_trigger = next(i for i in range(50)
                             if s.tick(T0 + i * DT) and s.should_request_inference(T0 + i * DT))
    assert played_at_trigger == 25 - 7


def test_async_trigger_when_remaining_actions_fall_to_the_delay():
    s = _sched(latency=0.1, execute_steps=100, margin_steps=2)
    _feed(s, _ramp(10), T0, T0)
    assert not s.should_request_inference(T0 + 1 * DT + 0.001)  # 8 remain
    assert s.should_request_inference(T0 + 2 * DT + 0.001)  # 7 remain


def test_only_one_inference_is_in_flight():
    s = _sched()
    assert s.should_request_inference(T0)
    rid = s.mark_inference_started(T0)
    assert not s.should_request_inference(T0) and s.in_flight
    s.on_inference_failed(rid)
    assert s.should_request_inference(T0) and s.counters["inference_failed"] == 1


def test_a_skipped_inference_frees_the_slot_and_is_not_counted_as_a_failure():
    s = _sched()
    rid = s.mark_inference_started(T0)
    s.on_inference_failed(rid, "inference_skipped")
    assert s.should_request_inference(T0) and not s.in_flight
    assert s.counters["inference_skipped"] == 1 and "inference_failed" not in s.counters


def test_latency_is_measured_from_request_to_chunk_in_whole_ticks():
    s = _sched()
    rid = s.mark_inference_started(T0)
    # chunks are taken at ticks: 70 ms is 3.5 ticks, counted as 4 (timer jitter < dt/2 drops out)
    s.on_chunk(_ramp(), T0, T0 + 0.07, rid, current_state=np.zeros(N))
    assert s.latency.last == pytest.approx(0.08) and s.delay_steps == 4
    rid = s.mark_inference_started(T0 + 1.0)
    s.on_chunk(_ramp(), T0 + 1.0, T0 + 1.0 + 0.079, rid, current_state=np.zeros(N))
    assert s.latency.last == pytest.approx(0.08)


def test_warmup_seed_stands_in_only_until_the_first_live_latency():
    tracker = LatencyTracker()
    tracker.seed([2.1, 3.3])  # first calls after an install, disk still busy
    assert tracker.provisional and tracker.p95 > 3.0
    tracker.add(0.06)
    assert not tracker.provisional and tracker.count == 1 and tracker.p95 == pytest.approx(0.06)


def test_sync_fallback_ends_once_live_latencies_are_fast_again():
    s = _sched(max_delay_steps=20, execute_steps=10)
    now = T0
    for latency in (0.9, 0.9, 0.9):  # slow live inferences: p95 46 steps > 20
        rid = s.mark_inference_started(now)
        s.on_chunk(_ramp(), now, now + latency, rid, current_state=np.zeros(N))
        now += 2.0
    assert s.effective_mode == "sync"
    modes = []
    for _ in range(5):  # fast ones: 3 steps each
        rid = s.mark_inference_started(now)
        modes.append(s.on_chunk(_ramp(), now, now + 0.06, rid, current_state=np.zeros(N)).mode)
        now += 2.0
    assert modes == ["sync"] * 4 + ["async"] and s.effective_mode == "async"
    assert s.counters["latency_recovered"] == 1 and s.delay_steps == 3


def test_replace_switches_to_the_new_chunk_and_reports_the_boundary_jump():
    s = _sched(merge="replace")
    _feed(s, _const(0.0), T0, T0)
    rep = _feed(s, _const(0.2), T0 + 0.2, T0 + 0.2 + 0.005)
    assert rep.accepted and rep.boundary_jump == pytest.approx(0.2)
    traj = s.tick(T0 + 0.21)
    np.testing.assert_allclose(traj.positions, 0.2)
    assert traj.times[0] == pytest.approx(T0 + 0.22)


def test_first_chunk_boundary_jump_is_measured_against_the_current_state():
    s = _sched()
    rep = _feed(s, _const(0.1), T0, T0, state=np.array([0.0, 0.05]))
    assert rep.boundary_jump == pytest.approx(0.1)


def test_blend_cross_fades_linearly_over_blend_steps():
    s = _sched(merge="blend", blend_steps=5)
    _feed(s, _const(0.0), T0, T0)
    rep = _feed(s, _const(1.0), T0 + 0.1, T0 + 0.1 + 0.005)
    assert rep.boundary_jump == pytest.approx(1.0)
    traj = s.tick(T0 + 0.105)
    expected = np.minimum(1.0, np.arange(1, traj.times.size + 1) / 6.0)
    np.testing.assert_allclose(traj.positions[:, 0], expected)


def test_blend_interpolates_the_old_queue_at_the_new_chunk_times():
    s = _sched(merge="blend", blend_steps=3)
    _feed(s, np.repeat((np.arange(50) * DT)[:, None], N, axis=1), T0, T0)  # position = t - T0
    t_obs = T0 + 0.05  # half a step off the old grid
    _feed(s, _const(0.5), t_obs, t_obs + 0.001)
    traj = s.tick(t_obs + 0.001)
    old = traj.times[:4] - T0
    w = np.array([0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(traj.positions[:4, 1], w * 0.5 + (1 - w) * old)


def test_blend_beyond_the_end_of_the_old_queue_takes_the_new_chunk():
    s = _sched(merge="blend", blend_steps=5)
    _feed(s, _const(0.0, h=3), T0, T0)
    _feed(s, _const(1.0), T0 + 0.02, T0 + 0.025)
    traj = s.tick(T0 + 0.025)
    np.testing.assert_allclose(traj.positions[:3, 0], [1 / 6, 1.0, 1.0])


def test_sync_mode_plays_execute_steps_from_the_chunk_start_then_holds_and_replans():
    s = _sched(mode="sync", execute_steps=5)
    now = T0 + 0.3  # inference took 15 steps; the robot held still, so nothing is dropped
    rep = _feed(s, _ramp(), T0, now)
    assert rep.mode == "sync" and rep.dropped == 0 and rep.queued == 5
    traj = s.tick(now)
    np.testing.assert_allclose(traj.positions[:, 0], [0.0, 0.001, 0.002, 0.003, 0.004])
    np.testing.assert_allclose(traj.times, now + DT * np.arange(1, 6))
    assert not any(s.should_request_inference(now + i * DT + 0.001) for i in range(5))
    assert s.tick(now + 5 * DT + 0.001) is None and s.hold_reason == "queue_dry"
    assert s.should_request_inference(now + 5 * DT + 0.001)


def test_delay_beyond_max_delay_steps_falls_back_to_sync():
    s = _sched(latency=0.5, max_delay_steps=20, execute_steps=10)  # d = 25
    assert s.effective_mode == "sync"
    rep = _feed(s, _ramp(), T0, T0 + 0.5)
    assert rep.mode == "sync" and rep.dropped == 0 and rep.queued == 10


def test_execute_steps_one_replans_every_tick():
    s = _sched(execute_steps=1)
    ids = []
    for i in range(10):
        now = T0 + i * DT
        assert s.should_request_inference(now)
        _feed(s, _const(i * 0.01), now - 0.001, now)
        ids.append(s.tick(now).chunk_id)
    assert ids == list(range(1, 11))


def test_dry_queue_holds_with_a_reason():
    s = _sched()
    assert s.tick(T0) is None and s.hold_reason == "no_chunk"
    _feed(s, _const(0.1, h=3), T0, T0)
    assert s.tick(T0 + 0.03) is not None
    assert s.tick(T0 + 0.07) is None and s.hold_reason == "queue_dry"
    np.testing.assert_allclose(s.current_command(T0 + 0.07), [0.1, 0.1])
    assert s.counters["hold_queue_dry"] == 1


def test_reset_clears_the_queue_and_discards_the_in_flight_result():
    s = _sched()
    _feed(s, _const(0.1), T0, T0)
    rid = s.mark_inference_started(T0 + 0.01)
    s.reset("instruction_changed")
    assert s.tick(T0 + 0.02) is None and s.hold_reason == "no_chunk"
    assert not s.should_request_inference(T0 + 0.02)  # the old request still occupies the worker
    rep = s.on_chunk(_const(0.2), T0, T0 + 0.03, rid, current_state=np.zeros(N))
    assert not rep.accepted and rep.reason == "stale_request"
    assert s.should_request_inference(T0 + 0.03)
    assert s.counters["reset_instruction_changed"] == 1


def test_clock_jump_back_resets_the_queue():
    s = _sched()
    _feed(s, _const(0.1), T0, T0)
    s.tick(T0 + 0.1)
    assert s.tick(T0 - 3.0) is None and s.hold_reason == "clock_jump_back"
    assert s.tick(T0 - 2.98) is None and s.hold_reason == "no_chunk"


@pytest.mark.parametrize("chunk, reason", [
    (np.full((50, N), math.nan), "nonfinite_action"),
    (np.zeros((50, N + 1)), "bad_shape"),
    (np.zeros((0, N)), "bad_shape"),
])
def test_bad_chunks_are_refused_and_the_old_queue_keeps_playing(chunk, reason):
    s = _sched()
    _feed(s, _const(0.1), T0, T0)
    rep = _feed(s, chunk, T0 + 0.02, T0 + 0.03)
    assert not rep.accepted and rep.reason == reason
    np.testing.assert_allclose(s.tick(T0 + 0.03).positions, 0.1)


def test_chunk_that_elapsed_entirely_is_refused():
    rep = _feed(_sched(), _const(0.1, h=5), T0, T0 + 1.0)
    assert not rep.accepted and rep.reason == "chunk_elapsed" and rep.dropped == 5


def test_first_chunk_needs_a_start_reference():
    s = _sched()
    rid = s.mark_inference_started(T0)
    assert s.on_chunk(_const(0.0), T0, T0, rid).reason == "no_start_reference"


def test_limiter_rejects_a_start_jump_and_clips_what_it_accepts():
    limits = Limits.create([-1.0, -1.0], [0.5, 1.0], [1.0, 1.0], 0.3)
    s = _sched(limiter=TrajectoryLimiter(limits))
    rep = _feed(s, _const(0.6), T0, T0)
    assert not rep.accepted and rep.reason == "start_jump" and s.tick(T0) is None
    rep = _feed(s, np.repeat((np.arange(50) * 0.05)[:, None], N, axis=1), T0, T0)
    assert rep.accepted and rep.clip.velocity_clips > 0 and rep.clip.position_clips > 0
    traj = s.tick(T0)
    assert traj.positions[:, 0].max() <= 0.5 and traj.positions[:, 1].max() <= 1.0
    assert np.abs(np.diff(traj.positions, axis=0)).max() <= 1.0 * DT + 1e-12


def test_latency_tracker_reports_percentiles_over_a_rolling_window():
    tracker = LatencyTracker(window=20)
    tracker.seed(np.linspace(0.01, 0.2, 20))
    assert tracker.last == pytest.approx(0.2) and tracker.count == 20
    assert tracker.p50 == pytest.approx(0.105) and tracker.p95 == pytest.approx(0.1905)
    tracker.seed([0.05] * 20)
    assert tracker.p95 == pytest.approx(0.05)
    tracker.add(-1.0)
    tracker.add(math.nan)
    assert tracker.count == 20


@pytest.mark.parametrize("kwargs", [dict(mode="rtc"), dict(merge="average"),
                                    dict(execute_steps=0), dict(control_rate_hz=0.0),
                                    dict(margin_steps=-1), dict(control_rate_hz=math.inf)])
def test_invalid_schedule_config_is_refused(kwargs):
    with pytest.raises(ConfigError):
        ScheduleConfig(**kwargs)
