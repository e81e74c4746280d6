"""Several robots, one policy: per-robot configs, batched calls, per-row isolation (ROS-free).

The embedded tiny PI0 with 2 Euler steps; robots differ in instruction, joint state and noise.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.control import robots as robots_mod
from pi0_ttnn_node.control.batching import FAILED, OK, REJECTED, Request, deliver, run_batch
from pi0_ttnn_node.control.multi_robot import Fleet, make_core
from pi0_ttnn_node.control.parameters import node_values, shipped_params_file
from pi0_ttnn_node.control.pipeline import noise_key, stamp_key
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import ConfigError, InferenceError
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig

RATE = 50.0
DT = 1.0 / RATE
T0 = 1000.0
JOINTS = [f"joint_{i}" for i in range(1, 8)] + ["gripper"]
BASE = {"limits.position_lower": [-10.0] * 7, "limits.position_upper": [10.0] * 7,
        "limits.max_velocity": [100.0] * 7, "limits.max_start_jump": 100.0,
        "control_rate_hz": RATE, "cameras.names": ["base_0_rgb"], "cameras.topics": ["cam"],
        "cameras.required": [True], "instruction.default": "pick up the cube"}


@pytest.fixture(scope="module")
def policy():
    path = ensure_embedded_checkpoint("pi0")
    return Pi0Policy.load(PolicyConfig(str(path), num_steps=2, noise_seed=3),
                          checkpoint=load_checkpoint(path))


def specs(names, per_robot=None, **shared):
    values = node_values([str(shipped_params_file())],
                         overrides=dict(BASE, robots=list(names), **shared))
    return robots_mod.robot_specs(values, per_robot or {})


def cores_for(policy, names, per_robot=None, **shared):
    cfg = policy.config
    return {s.name: make_core(s, cfg.chunk_size, cfg.max_action_dim)
            for s in specs(names, per_robot, **shared)}


def feed(core, t, level=100, state=0.0):
    core.assembler.add_image("base_0_rgb", t, np.full((48, 64, 3), level, np.uint8))
    core.assembler.joints.add(t, JOINTS, np.full(8, state))


def requests_at(cores, now):
    out = []
    for name, core in cores.items():
        tick = core.tick(now)
        assert tick.request_id is not None, name
        out.append(Request(name, tick.request_id, time.perf_counter()))
    return out


# ---- configuration ---------------------------------------------------------------------------
def test_no_robots_is_the_single_robot_with_unchanged_topics_and_noise():
    (only,) = specs([])
    assert only.name == "" and only.noise_stream == 0
    assert only.config["cameras.topics"] == ["cam"]
    assert only.config["output.topic"] == "/joint_trajectory_controller/joint_trajectory"
    assert noise_key(12.345678, 0) == stamp_key(12.345678)


def test_each_robot_gets_its_namespace_overrides_and_own_noise_stream(tmp_path):
    f = tmp_path / "robots.yaml"
    f.write_text("pi0_ttnn_node:\n  ros__parameters:\n    robots: [left, right]\n"
                 "    left:\n      limits: {max_start_jump: 0.5}\n"
                 "      output: {topic: /arm_l/cmd}\n"
                 "      instruction: {default: fold the towel}\n")
    left, right = robots_mod.robot_specs_from_files(
        [str(shipped_params_file()), str(f)], overrides={k: v for k, v in BASE.items()})
    assert (left.name, right.name) == ("left", "right")
    assert left.config["limits.max_start_jump"] == 0.5
    assert right.config["limits.max_start_jump"] == 100.0  # the shared value
    assert left.config["output.topic"] == "/arm_l/cmd"  # overridden: used as written
    assert right.config["output.topic"] == "/right/joint_trajectory_controller/joint_trajectory"
    assert right.config["cameras.topics"] == ["right/cam"]
    assert right.config["joint_states.topics"] == ["right/joint_states"]
    assert left.config["instruction.default"] == "fold the towel"
    assert left.noise_stream != right.noise_stream and 0 not in (left.noise_stream,
                                                                 right.noise_stream)
    # a robot keeps its stream when the list changes
    assert robots_mod.noise_stream("left") == left.noise_stream
    assert robots_mod.robot_topic("left", "~/enable") == "~/left/enable"


def test_shared_only_unknown_and_bad_robot_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="shared by all robots"):
        specs(["a", "b"], {"a.policy.backend": "ttnn"})
    with pytest.raises(ConfigError, match="name no robot"):
        specs(["a", "b"], {"c.limits.max_start_jump": 1.0})
    with pytest.raises(ConfigError, match="unique"):
        specs(["a", "a"])
    with pytest.raises(ConfigError, match="clashes"):
        specs(["limits"])
    with pytest.raises(ConfigError, match="robot 'b'"):
        specs(["a", "b"], {"b.limits.position_lower": [0.0]})
    f = tmp_path / "bad.yaml"
    f.write_text("pi0_ttnn_node:\n  ros__parameters:\n    robots: [a]\n"
                 "    a: {limits: {max_strat_jump: 1.0}}\n")
    with pytest.raises(ConfigError, match="a.limits.max_strat_jump"):
        node_values([str(f)])


# ---- one call, several rows ------------------------------------------------------------------
def test_batched_rows_equal_each_robot_run_alone_with_its_own_noise(policy):
    cores = cores_for(policy, ["a", "b", "c"], {"b.instruction.default": "open the drawer"})
    for i, core in enumerate(cores.values()):
        feed(core, T0, level=60 + 50 * i, state=0.1 * i)
    reqs = requests_at(cores, T0)
    report = run_batch(policy, cores, reqs)
    assert report.calls == 1 and report.rows_per_call == (3,)
    assert [o.outcome for o in report.outcomes] == [OK, OK, OK]
    noises = []
    for outcome in report.outcomes:
        prepared = outcome.prepared
        noises.append(prepared.noise)
        alone = policy.sample([prepared.observation], noise=prepared.noise)
        np.testing.assert_allclose(outcome.result.actions, alone.actions[0], atol=1e-4)
        assert outcome.result.latency_s > 0 and outcome.batch_rows == 3
    assert not torch.equal(noises[0], noises[1]) and not torch.equal(noises[1], noises[2])
    deliver(report, cores, lambda: T0 + 0.1)
    for core in cores.values():
        assert core.tick(T0 + 6 * DT).accepted[0].report.accepted


class _NanRow:
    """Backend wrapper: row `bad` comes back NaN, or the call raises when `raise_on` state seen."""

    def __init__(self, backend, bad=None, raise_on=None):
        self.inner, self.bad, self.raise_on, self.name = backend, bad, raise_on, backend.name

    def sample_actions(self, inputs, noise, num_steps=None, guidance=None):
        if self.raise_on is not None and bool((inputs.state[:, 0] > self.raise_on).any()):
            raise InferenceError("hostile row")
        out = self.inner.sample_actions(inputs, noise, num_steps=num_steps, guidance=guidance)
        if self.bad is not None:
            out = out.copy()
            out[self.bad] = np.nan
        return out

    def describe(self):
        return self.inner.describe()


def test_a_bad_row_stale_input_or_failing_call_affects_only_its_robot(policy, monkeypatch):
    cores = cores_for(policy, ["a", "b", "c"])
    for name in "ab":
        feed(cores[name], T0)
    feed(cores["c"], T0 - 5.0)  # c: only a stale frame -> rejected at prepare
    cores["c"].assembler.joints.add(T0, JOINTS, np.zeros(8))
    reqs = requests_at(cores, T0)
    monkeypatch.setattr(policy, "backend", _NanRow(policy.backend, bad=1))
    report = run_batch(policy, cores, reqs)
    by = {o.request.robot: o for o in report.outcomes}
    monkeypatch.setattr(policy, "backend", policy.backend.inner)
    good = policy.sample([by["a"].prepared.observation], noise=by["a"].prepared.noise).actions[0]
    assert by["a"].outcome == OK and by["b"].outcome == FAILED and by["c"].outcome == REJECTED
    assert report.rows_per_call == (2,)
    assert "non-finite" in by["b"].reason
    np.testing.assert_allclose(by["a"].result.actions, good, atol=1e-4)

    # a row that makes the whole call raise: the others are re-run alone and still served
    monkeypatch.setattr(policy, "backend", _NanRow(policy.backend, raise_on=0.5))
    cores = cores_for(policy, ["a", "b"])
    feed(cores["a"], T0 + 1.0)
    feed(cores["b"], T0 + 1.0, state=0.9)  # hostile: this row raises
    reqs = [Request(n, rid, time.perf_counter()) for n, rid in (
        (n, c.tick(T0 + 1.0).request_id) for n, c in cores.items())]
    report = run_batch(policy, cores, reqs)
    by = {o.request.robot: o for o in report.outcomes}
    assert by["a"].outcome == OK and by["b"].outcome == FAILED and "hostile" in by["b"].reason
    assert report.rows_per_call == (2, 1, 1)


def test_stale_observation_is_rejected_for_its_robot_only(policy):
    cores = cores_for(policy, ["a", "b"])
    feed(cores["a"], T0)
    feed(cores["b"], T0 - 2.0)  # older than sync.max_image_age_s
    cores["b"].assembler.joints.add(T0, JOINTS, np.zeros(8))
    reqs = requests_at(cores, T0)
    report = run_batch(policy, cores, reqs)
    assert [o.outcome for o in report.outcomes] == [OK, REJECTED]
    assert report.rows_per_call == (1,)


def test_rtc_guidance_is_per_row_and_unguided_rows_ride_along(policy):
    cores = cores_for(policy, ["a", "b"], **{"merge.mode": "rtc", "schedule.execute_steps": 5})
    for core in cores.values():
        feed(core, T0)
    report = run_batch(policy, cores, requests_at(cores, T0))
    deliver(report, cores, lambda: T0)
    for core in cores.values():
        core.tick(T0 + DT)
    cores["b"].reset("instruction")  # b has no previous chunk now: unguided
    reqs = []
    for k in range(30):  # tick until both ask again
        now = T0 + (k + 2) * DT
        for name, core in cores.items():
            feed(core, now)
            tick = core.tick(now)
            if tick.request_id is not None and name not in {r.robot for r in reqs}:
                reqs.append(Request(name, tick.request_id, time.perf_counter()))
        if len(reqs) == 2:
            break
    assert len(reqs) == 2
    report = run_batch(policy, cores, reqs)
    by = {o.request.robot: o for o in report.outcomes}
    assert report.calls == 1 and by["a"].result.guided and not by["b"].result.guided
    for req in reqs:  # each row equals its robot's own guided / plain call
        prepared = by[req.robot].prepared
        alone = policy.sample([prepared.observation], noise=prepared.noise,
                              guidance=prepared.guidance)
        np.testing.assert_allclose(by[req.robot].result.actions, alone.actions[0], atol=1e-4)


# ---- the worker thread and the window ----------------------------------------------------------
def test_fleet_batches_due_requests_and_a_silent_robot_does_not_stop_the_others(policy):
    fleet = Fleet(specs(["a", "b", "c"], **{"schedule.execute_steps": 1}), policy,
                  window_s=0.02)
    fleet.start()
    try:
        t0 = time.monotonic()
        now = t0
        while now - t0 < 2.0:
            for name, core in fleet.cores.items():
                if name != "c" or now - t0 < 0.5:  # c's inputs stop after 0.5 s
                    feed(core, now)
            fleet.tick(now)
            time.sleep(DT)
            now = time.monotonic()
    finally:
        fleet.stop()
    stats = fleet.worker.stats
    assert stats.calls > 0 and max(stats.rows_per_call) >= 2
    accepted = {n: c.accepted for n, c in fleet.cores.items()}
    late = {n: c.scheduler.counters.get("inference_skipped", 0)
            for n, c in fleet.cores.items()}
    assert accepted["a"] >= 3 and accepted["b"] >= 3, accepted
    assert late["c"] > 0 and late["a"] == 0 and late["b"] == 0, late


def test_the_window_batches_requests_oldest_first_and_goes_at_once_when_all_have_asked():
    from pi0_ttnn_node.control.multi_robot import BatchingWorker
    worker = BatchingWorker(None, {"a": None, "b": None, "c": None}, window_s=0.08,
                            now=time.monotonic)
    t0 = time.perf_counter()
    assert worker.submit("b", 1)
    time.sleep(0.02)
    assert worker.submit("a", 7)
    assert not worker.submit("a", 8)  # one request per robot at a time
    batch = worker._take()
    waited = time.perf_counter() - t0
    assert [(r.robot, r.request_id) for r in batch] == [("b", 1), ("a", 7)]
    assert 0.07 <= waited < 0.5, waited  # the window counts from the oldest request
    assert not worker.submit("b", 2)  # b's request is in the running call
    worker._running = set()
    t0 = time.perf_counter()
    for name in "cab":
        assert worker.submit(name, 3)
    batch = worker._take()
    assert len(batch) == 3 and time.perf_counter() - t0 < 0.05  # every robot asked: no wait


def test_the_benchmark_reports_calls_rows_and_per_robot_latency(tmp_path, capsys):
    import json

    from pi0_ttnn_node.tools import bench_multi_robot
    out = tmp_path / "bench.json"
    assert bench_multi_robot.main(["--robots", "2", "--seconds", "1.5", "--rounds", "1",
                                   "--num-steps", "1", "--cameras", "1", "--json",
                                   str(out)]) == 0
    text = capsys.readouterr().out
    assert "N=2 throughput" in text and "N=2 live" in text and "tiny random-weight" in text
    result = json.loads(out.read_text())
    (thr,), (live,) = result["throughput"], result["live"]
    assert thr["rows_per_s_batched"] > 0 and thr["rows_per_s_single"] > 0
    assert live["calls"] > 0 and set(live["per_robot"]) == {"robot0", "robot1"}


def test_robots_out_of_phase_are_brought_into_one_call_by_align_steps(policy):
    """b starts 7 ticks after a: without alignment their requests never meet in one call."""
    def run(align):
        fleet = Fleet(specs(["a", "b"], **{"schedule.execute_steps": 10,
                                          "batch.align_steps": align}), policy, window_s=0.0)
        rows = []
        for k in range(45):  # simulated clock; each call is run in line, lands 2 ticks later
            now = T0 + k * DT
            for name, core in fleet.cores.items():
                if name == "a" or k >= 7:
                    feed(core, now)
            fleet.tick(now)
            with fleet.worker._cond:
                batch = sorted(fleet.worker._pending.values(), key=lambda r: r.submitted)
                fleet.worker._pending = {}
            if batch:
                report = run_batch(policy, fleet.cores, batch)
                if report.calls:  # not only rejected rows (b before its first frame)
                    rows.append(report.rows_per_call)
                deliver(report, fleet.cores, lambda: now + 2 * DT)
        return rows, fleet
    rows_off, _ = run(0)
    rows_on, fleet = run(5)
    assert all(r == (1,) for r in rows_off), rows_off  # never together
    assert fleet.aligned >= 1 and (2,) in rows_on[-3:], rows_on  # together from then on
    assert all(c.accepted >= 3 for c in fleet.cores.values())
