"""Faults at the policy level, no ROS: bad checkpoints, failing or lying backends, deadline misses.

File-level refusals (pickles, truncated headers) are tested in test/core/test_checkpoint_loading.py.
Here each fault goes through Pi0Policy.load / sample or the real InferenceWorker and scheduler,
checking the Pi0Error subclass, its message, and that nothing reaches the action queue.
"""

from __future__ import annotations

import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from pi0_ttnn_node.backends import BackendSpec, create_backend
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.control.action_queue import ActionScheduler, ScheduleConfig
from pi0_ttnn_node.control.pipeline import Prepared
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import (BackendUnavailableError, CheckpointError, ConfigError,
                                  InferenceError, TokenizerError)
from pi0_ttnn_node.fault_injection import FaultInjectingBackend, FaultPlan, inject_faults
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig
from pi0_ttnn_node.preprocessing import Observation
from pi0_ttnn_node.ros.inference_worker import InferenceWorker


@pytest.fixture(scope="module")
def embedded() -> Path:
    return ensure_embedded_checkpoint("pi0")


@pytest.fixture
def ckpt_copy(tmp_path, embedded) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(embedded, dst)
    return dst


@pytest.fixture(scope="module")
def observation(embedded) -> Observation:
    names = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    return Observation(images={n: np.full((48, 64, 3), 90, np.uint8) for n in names},
                       state=np.zeros(8), instruction="pick up the cube", timestamp=10.0)


def policy_with(embedded: Path, fault: str = "", **cfg) -> Pi0Policy:
    """A policy as the node's loader builds it: faults wrapped by inject_faults only."""
    return inject_faults(Pi0Policy.load(PolicyConfig(str(embedded), num_steps=1, noise_seed=0,
                                                     **cfg)), fault)


# ---- loading ------------------------------------------------------------------------------------
def test_policy_load_of_a_missing_checkpoint_raises_checkpoint_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        Pi0Policy.load(PolicyConfig(str(tmp_path / "nowhere")))


def test_policy_load_of_a_truncated_weight_file_raises_checkpoint_error(ckpt_copy):
    weights = ckpt_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Pi0Policy.load(PolicyConfig(str(ckpt_copy)))


def test_policy_load_of_a_wrong_shaped_tensor_names_key_and_both_shapes(ckpt_copy):
    tensors = load_file(str(ckpt_copy / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("action_out_proj.weight"))
    tensors[key] = tensors[key][:-1].contiguous()
    save_file(tensors, str(ckpt_copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match="action_out_proj.weight.*expected"):
        Pi0Policy.load(PolicyConfig(str(ckpt_copy)))


def test_policy_load_of_a_pickle_only_directory_refuses_to_unpickle(ckpt_copy):
    (ckpt_copy / "model.safetensors").unlink()
    marker = ckpt_copy / "unpickled"
    # if anything unpickled this, the marker file would appear
    payload = pickle.dumps(_Touch(str(marker)))
    (ckpt_copy / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(CheckpointError, match="pickle|safetensors"):
        Pi0Policy.load(PolicyConfig(str(ckpt_copy)))
    assert not marker.exists()


class _Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_policy_load_without_a_tokenizer_raises_tokenizer_error(ckpt_copy):
    (ckpt_copy / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError, match="tokenizer_path"):
        Pi0Policy.load(PolicyConfig(str(ckpt_copy)))


def test_policy_load_with_a_missing_explicit_tokenizer_names_the_path(embedded, tmp_path):
    with pytest.raises(TokenizerError, match="absent.model"):
        Pi0Policy.load(PolicyConfig(str(embedded), tokenizer_path=str(tmp_path / "absent.model")))


def test_tokenizer_path_that_is_a_directory_is_refused_before_reading(embedded, tmp_path):
    with pytest.raises(TokenizerError, match="not a regular file"):
        Pi0Policy.load(PolicyConfig(str(embedded), tokenizer_path=str(tmp_path)))


def test_unknown_backend_name_raises_config_error(embedded):
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        Pi0Policy.load(PolicyConfig(str(embedded), spec=BackendSpec("tensorflow")))


def test_device_unavailable_at_load_raises_backend_unavailable(embedded):
    with pytest.raises(BackendUnavailableError, match="not available"):
        policy_with(embedded, "mode=unavailable_at_init")


def test_fault_plan_refuses_unknown_modes_and_keys():
    with pytest.raises(ConfigError, match="mode 'explode'"):
        FaultPlan.parse("mode=explode")
    with pytest.raises(ConfigError, match="accepts"):
        FaultPlan.parse("mode=nan,when=later")
    assert FaultPlan.parse("mode=slow,delay_s=0.25,first_call=2") == \
        FaultPlan("slow", first_call=2, delay_s=0.25)


# ---- inference ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, match", [("raise", "injected fault"), ("nan", "non-finite"),
                                         ("inf", "non-finite"), ("wrong_shape", "shape")])
def test_bad_backend_output_raises_inference_error(embedded, observation, mode, match):
    policy = policy_with(embedded, f"mode={mode}")
    with pytest.raises(InferenceError, match=match):
        policy.sample([observation])


def test_device_lost_mid_run_fails_from_the_nth_call_and_recovers_when_cleared(
        embedded, observation, tmp_path):
    flag = tmp_path / "device_lost"
    flag.touch()
    policy = policy_with(embedded, f"mode=device_lost,first_call=2,active_file={flag}")
    policy.sample([observation])
    for _ in range(3):
        with pytest.raises(BackendUnavailableError, match="call"):
            policy.sample([observation])
    flag.unlink()
    assert np.isfinite(policy.sample([observation]).actions).all()


def test_wrapper_is_absent_unless_asked_for(embedded, observation):
    policy = policy_with(embedded)
    assert not isinstance(policy.backend, FaultInjectingBackend)
    assert not isinstance(create_backend(BackendSpec(), load_checkpoint(embedded)),
                          FaultInjectingBackend)  # the production factory never wraps
    backend = inject_faults(policy_with(embedded), "mode=nan,num_calls=1").backend
    assert isinstance(backend, FaultInjectingBackend)
    assert backend.is_faulty(1) and not backend.is_faulty(2)
    backend.clear()
    assert not backend.is_faulty(1)


def run_worker(policy: Pi0Policy, observation: Observation, n: int):
    """Drive the node's real InferenceWorker n times; return (results, failures)."""
    results, failures, done = [], [], threading.Semaphore(0)
    worker = InferenceWorker(
        lambda spec: policy, lambda p: [],
        lambda request_id, p: Prepared(observation, p.noise.draw(p.noise_shape(1)), None, 0),
        lambda r: (results.append(r), done.release()),
        lambda i, err: done.release(),
        lambda stage, i, err: (failures.append((stage, err)), done.release()),
        lambda d: None, lambda role, spec, err: None)
    worker.start()
    try:
        worker.load("torch").result(30)
        for i in range(n):
            assert worker.request_inference(i)
            assert done.acquire(timeout=30)
            while worker.busy:
                threading.Event().wait(0.001)
    finally:
        worker.stop()
    return results, failures


@pytest.mark.parametrize("mode", ["raise", "nan", "wrong_shape", "device_lost"])
def test_worker_reports_failures_and_hands_nothing_to_the_scheduler(embedded, observation, mode):
    policy = policy_with(embedded, f"mode={mode},first_call=2,num_calls=2")
    results, failures = run_worker(policy, observation, 4)
    assert [r.request_id for r in results] == [0, 3]
    assert [stage for stage, _ in failures] == ["inference", "inference"]
    expected = BackendUnavailableError if mode == "device_lost" else InferenceError
    assert all(isinstance(err, expected) for _, err in failures)
    assert all(np.isfinite(r.actions).all() for r in results)


# ---- deadline miss --------------------------------------------------------------------------
def test_inference_slower_than_the_chunk_runs_the_queue_dry_then_holds():
    cfg = ScheduleConfig(execute_steps=5, margin_steps=0, control_rate_hz=50.0)
    sched = ActionScheduler(cfg, num_joints=2)
    chunk = np.zeros((10, 2))
    rid = sched.mark_inference_started(0.0)
    assert sched.on_chunk(chunk, t_obs=0.0, now=0.0, request_id=rid,
                          current_state=np.zeros(2)).accepted
    late = sched.mark_inference_started(0.05)
    outputs = [sched.tick(0.02 * k) for k in range(1, 15)]  # actions at 0.02 .. 0.18 s
    assert all(t is not None for t in outputs[:8])
    assert all(t is None for t in outputs[8:]) and sched.hold_reason == "queue_dry"
    assert sched.counters["hold_queue_dry"] >= 1
    # observed at 0.05 s, back at 0.3 s (13 steps late, async): all 10 actions elapsed, refused
    report = sched.on_chunk(np.ones((10, 2)), t_obs=0.05, now=0.3, request_id=late)
    assert not report.accepted and report.reason == "chunk_elapsed" and report.mode == "async"
    assert sched.tick(0.32) is None


def test_latency_beyond_max_delay_falls_back_to_sync_and_replays_the_chunk_from_its_start():
    cfg = ScheduleConfig(execute_steps=5, margin_steps=0, max_delay_steps=20,
                         control_rate_hz=50.0)
    sched = ActionScheduler(cfg, num_joints=2)
    rid = sched.mark_inference_started(0.0)
    report = sched.on_chunk(np.zeros((10, 2)), t_obs=0.0, now=0.5, request_id=rid,
                            current_state=np.zeros(2))
    assert report.accepted and report.mode == "sync" and report.queued == 5
    traj = sched.tick(0.5)
    assert traj is not None and traj.times[0] > 0.5 and traj.times.shape[0] == 5


# ---- future stamps at intake --------------------------------------------------------------------
def test_future_stamped_frame_is_refused_at_intake_and_does_not_block_newer_frames():
    from pi0_ttnn_node.errors import ObservationRejected
    from pi0_ttnn_node.joint_mapping import JointStateCache
    from pi0_ttnn_node.observation_sync import ObservationAssembler, SyncConfig

    joints = JointStateCache(["a"])
    asm = ObservationAssembler(["cam"], [True], "cam", joints,
                               SyncConfig(default_instruction="go"))
    frame = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ObservationRejected, match="ahead of the clock") as err:
        asm.add_image("cam", 105.0, frame, receipt_time=100.0)
    assert err.value.reason == "future_stamp"
    assert asm.add_image("cam", 100.01, frame, receipt_time=100.02)
    joints.add(100.0, ["a"], [0.1], receipt_time=100.0)
    assert asm.build(100.03).timestamp == pytest.approx(100.01)


def test_future_stamped_joint_state_is_refused_and_keeps_the_history():
    from pi0_ttnn_node.errors import ObservationRejected
    from pi0_ttnn_node.joint_mapping import JointStateCache

    cache = JointStateCache(["a", "b"], history_s=1.0)
    cache.add(100.0, ["a", "b"], [0.1, 0.2], receipt_time=100.0)
    with pytest.raises(ObservationRejected) as err:
        cache.add(200.0, ["a", "b"], [9.0, 9.0], receipt_time=100.01)
    assert err.value.reason == "future_stamp"
    cache.add(100.02, ["a", "b"], [0.3, 0.4], receipt_time=100.02)
    assert np.allclose(cache.lookup(100.03, 0.1), [0.3, 0.4])


def test_truncated_jpeg_is_refused_although_libjpeg_would_decode_it():
    import cv2

    from pi0_ttnn_node.image_conversion import ImageRejected, check_compressed_image

    frame = np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    assert check_compressed_image("jpeg", jpeg + bytes(7)) == (64, 48)  # zero padding is fine
    assert cv2.imdecode(np.frombuffer(jpeg[: len(jpeg) // 2], np.uint8), cv2.IMREAD_COLOR) \
        is not None
    with pytest.raises(ImageRejected, match="end-of-image") as err:
        check_compressed_image("jpeg", jpeg[: len(jpeg) // 2])
    assert err.value.reason == "corrupt_data"
