"""ControlCore, the loop node, replay and soak share: requests, hand-off, noise, merging, latency.

Runs the embedded tiny PI0 with 2 Euler steps on a simulated clock: inference runs for real,
its latency is simulated (the result is handed back `latency` seconds after the request), so the
scheduling is deterministic and fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.control.node_config import build_node_config
from pi0_ttnn_node.control.parameters import node_values, shipped_params_file
from pi0_ttnn_node.control.pipeline import ControlCore, InferenceResult, make_assembler
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import ObservationRejected
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig

RATE = 50.0
DT = 1.0 / RATE
T0 = 1000.0
JOINTS = [f"joint_{i}" for i in range(1, 8)] + ["gripper"]
WIDE = {"limits.position_lower": [-10.0] * 7, "limits.position_upper": [10.0] * 7,
        "limits.max_velocity": [100.0] * 7, "limits.max_start_jump": 100.0}


@pytest.fixture(scope="module")
def policy():
    path = ensure_embedded_checkpoint("pi0")
    return Pi0Policy.load(PolicyConfig(str(path), num_steps=2, noise_seed=3),
                          checkpoint=load_checkpoint(path))


def make_core(policy, **overrides):
    values = node_values([str(shipped_params_file())], overrides=dict(
        WIDE, **{"control_rate_hz": RATE, "cameras.names": ["base_0_rgb"],
                 "cameras.topics": ["cam"], "cameras.required": [True],
                 "instruction.default": "pick up the cube"}, **overrides))
    cfg = build_node_config(values)
    holder = {}
    assembler = make_assembler(cfg, lambda _text: holder["core"].reset("instruction"))
    core = ControlCore(cfg, policy.config.chunk_size, assembler, policy.config.max_action_dim)
    holder["core"] = core
    return core


def feed_inputs(core, t, frame_period=DT):
    """A camera frame (when due) and a joint state at time t."""
    if round(t / frame_period, 6) == round(t / frame_period):
        core.assembler.add_image("base_0_rgb", t, np.full((48, 64, 3), 100, np.uint8))
    core.assembler.joints.add(t, JOINTS, np.zeros(8))


def run(core, policy, ticks, latency_of, start=T0):
    """Drive `ticks` control ticks; inference i takes latency_of(i) simulated seconds.
    Returns the per-tick outcomes and the prepared inferences (observation, guidance)."""
    ticks_out, prepared_all = [], []
    for k in range(ticks):
        now = start + k * DT
        feed_inputs(core, now)
        tick = core.tick(now)
        ticks_out.append(tick)
        if tick.request_id is None:
            continue
        try:
            prepared = core.prepare(tick.request_id, policy)
        except ObservationRejected:
            core.on_failed(tick.request_id, "inference_skipped")
            continue
        out = policy.sample([prepared.observation], noise=prepared.noise,
                            guidance=prepared.guidance)
        prepared_all.append((prepared, out))
        core.on_result(InferenceResult(
            actions=out.actions[0], normalized=out.normalized[0],
            state=np.asarray(prepared.observation.state), t_obs=prepared.observation.timestamp,
            latency_s=0.0, request_id=tick.request_id, backend="torch", timings_ms={},
            truncated_prompt=False, guided=prepared.guidance is not None),
            now + latency_of(len(prepared_all) - 1))
    return ticks_out, prepared_all


def test_slow_then_fast_backend_returns_the_scheduler_from_sync_to_async(policy):
    """Issue 11 item 7: warm-up and first-call timings must not keep the loop in sync mode."""
    core = make_core(policy, **{"schedule.execute_steps": 10, "schedule.max_delay_steps": 20})
    core.scheduler.latency.seed([2.1, 3.3])  # a first run right after install: slow warm-up
    assert core.scheduler.effective_mode == "sync"
    # three slow live inferences (1 s = 50 ticks), then fast ones (60 ms = 3 ticks)
    ticks, done = run(core, policy, 400, lambda i: 1.0 if i < 3 else 0.06)
    modes = [a.report.mode for t in ticks for a in t.accepted]
    assert modes[:3] == ["sync"] * 3, modes
    assert "async" in modes and modes[-1] == "async", modes
    first_async = modes.index("async")
    assert first_async <= 3 + 5  # RECOVERY_SAMPLES fast results bring async back
    assert core.scheduler.counters.get("latency_recovered", 0) == 1
    assert core.scheduler.delay_steps == 3


def test_warmup_timings_alone_never_decide_the_mode(policy):
    core = make_core(policy, **{"schedule.execute_steps": 10})
    core.scheduler.latency.seed([2.1, 3.3])
    ticks, _ = run(core, policy, 60, lambda i: 0.06)
    modes = [a.report.mode for t in ticks for a in t.accepted]
    assert modes and set(modes) == {"async"}


def test_noise_depends_on_the_observation_stamp_only(policy):
    a = make_core(policy)
    b = make_core(policy)
    policy.noise.draw(policy.noise_shape(1))  # a warm-up draw must not shift anything
    _, done_a = run(a, policy, 3, lambda i: 0.0)
    _, done_b = run(b, policy, 3, lambda i: 0.0)
    assert done_a and done_a[0][0].observation.timestamp == done_b[0][0].observation.timestamp
    np.testing.assert_array_equal(done_a[0][0].noise.numpy(), done_b[0][0].noise.numpy())
    other = make_core(policy)
    _, done_c = run(other, policy, 3, lambda i: 0.0, start=T0 + 0.5)
    assert not np.array_equal(done_a[0][0].noise.numpy(), done_c[0][0].noise.numpy())


def test_min_latency_holds_a_fast_result_until_its_time(policy):
    core = make_core(policy, **{"schedule.min_latency_s": 0.09})  # 4.5 ticks
    ticks, done = run(core, policy, 12, lambda i: 0.0)
    accepted_at = [t.now for t in ticks if t.accepted]
    assert accepted_at and accepted_at[0] == pytest.approx(T0 + 5 * DT)
    assert core.scheduler.latency.last == pytest.approx(5 * DT)


def test_execute_steps_is_clamped_to_the_chunk_and_limits_always_apply(policy):
    core = make_core(policy, **{"schedule.execute_steps": 500,
                                "limits.max_start_jump": 1e-4})
    assert core.schedule.execute_steps == policy.config.chunk_size
    ticks, _ = run(core, policy, 5, lambda i: 0.0)
    reports = [a.report for t in ticks for a in t.accepted]
    assert reports and not reports[0].accepted and reports[0].reason == "start_jump"


def test_rtc_guidance_targets_the_previous_chunk_from_the_new_observation_on(policy):
    core = make_core(policy, **{"merge.mode": "rtc", "schedule.execute_steps": 10,
                                "rtc.max_guidance": 5.0})
    ticks, done = run(core, policy, 40, lambda i: 0.06)  # 3 ticks
    guided = [(p, out) for p, out in done if p.guidance is not None]
    assert done[0][0].guidance is None and len(guided) >= 2
    first, first_out = done[0]
    prepared, out = guided[0]
    shift = int(round((prepared.observation.timestamp - first.observation.timestamp) / DT))
    target = prepared.guidance.target[0].numpy()
    np.testing.assert_allclose(target[:50 - shift], first_out.normalized[0][shift:], atol=0)
    d = prepared.delay_steps
    assert d >= 1 and bool((prepared.guidance.weights[0, :d] == 1).all())
    # the guided chunk honours the frozen prefix far better than an unguided one would
    plain = policy.sample([prepared.observation], noise=prepared.noise).normalized[0]
    guided_err = np.abs(out.normalized[0][:d] - target[:d]).mean()
    plain_err = np.abs(plain[:d] - target[:d]).mean()
    assert guided_err < 0.5 * plain_err, (guided_err, plain_err)


def test_reset_drops_the_rtc_reference_and_a_waiting_result_never_blocks_the_loop(policy):
    core = make_core(policy, **{"merge.mode": "rtc", "schedule.min_latency_s": 0.1})
    k = 0
    while core._previous is None or not core._ready:  # until a result waits for its time
        run(core, policy, 1, lambda i: 0.0, start=T0 + k * DT)
        k += 1
    assert core.scheduler.in_flight
    core.reset("instruction")
    assert core._previous is None and core.scheduler.hold_reason == "no_chunk"
    later, _ = run(core, policy, 20, lambda i: 0.0, start=T0 + k * DT)
    reports = [a.report for t in later for a in t.accepted]
    assert reports[0].reason == "stale_request"  # the waiting one, refused
    assert any(r.accepted for r in reports[1:])  # and the loop goes on


def test_per_tick_replanning_starts_the_next_inference_when_the_previous_one_lands(policy):
    """schedule.execute_steps 1 + merge.mode rtc: inference back to back, every chunk guided."""
    core = make_core(policy, **{"merge.mode": "rtc", "schedule.execute_steps": 1})
    ticks, done = run(core, policy, 40, lambda i: 0.06)  # 3 ticks each
    merged = [t for t in ticks if t.accepted]
    assert len(merged) >= 10
    # the tick that merges a chunk also asks for the next one: no idle tick in between
    assert all(t.request_id is not None for t in merged)
    assert all(p.guidance is not None for p, _ in done[1:])
    requests = [i for i, t in enumerate(ticks) if t.request_id is not None]
    assert set(np.diff(requests)) == {3}
