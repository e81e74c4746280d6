"""ObservationAssembler: stamps, skew, staleness, optional cameras, lazy decoding, instructions."""
import numpy as np
import pytest

from pi0_ttnn_node.errors import ConfigError, ObservationRejected
from pi0_ttnn_node.image_conversion import ImageRejected, raw_image_decoder
from pi0_ttnn_node.joint_mapping import JointStateCache
from pi0_ttnn_node.observation_sync import ObservationAssembler, SyncConfig, clean_instruction

CAMS = ["base", "left", "right"]
T = 100.0


def _img(value: int = 1) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def _assembler(required=(True, False, False), **cfg):
    joints = JointStateCache(["j1", "j2"])
    changes = []
    asm = ObservationAssembler(CAMS, list(required), "base", joints, SyncConfig(**cfg),
                               on_instruction_change=changes.append)
    asm.changes = changes
    return asm


def _ready(asm, t=T):
    for i, cam in enumerate(CAMS):
        asm.add_image(cam, t, _img(i))
    asm.joints.add(t, ["j1", "j2"], [0.1, 0.2])
    asm.set_instruction("pick up the cube")


def _rejected(asm, now) -> ObservationRejected:
    with pytest.raises(ObservationRejected) as err:
        asm.build(now)
    return err.value


def test_build_returns_observation_at_primary_stamp_with_state_in_joint_order():
    asm = _assembler()
    _ready(asm)
    obs = asm.build(T + 0.02)
    assert obs.timestamp == T and obs.instruction == "pick up the cube"
    np.testing.assert_array_equal(obs.state, [0.1, 0.2])
    assert [int(obs.images[c][0, 0, 0]) for c in CAMS] == [0, 1, 2]


def test_frames_are_decoded_lazily_and_only_once():
    asm = _assembler()
    _ready(asm)
    calls = []

    def decode():
        calls.append(1)
        return _img(9)

    asm.add_image("base", T + 0.01, decode)
    assert calls == []
    asm.build(T + 0.02)
    asm.set_instruction("now place it on the shelf")  # same frame, new task: built again
    asm.build(T + 0.03)
    assert calls == [1]


def test_a_primary_frame_already_used_is_not_built_twice_until_the_task_changes():
    asm = _assembler()
    _ready(asm)
    asm.add_image("base", T + 0.01, _img(1))
    assert asm.build(T + 0.02).timestamp == pytest.approx(T + 0.01)
    assert _rejected(asm, T + 0.03).reason == "no_new_frame"
    asm.add_image("base", T + 0.04, _img(2))
    assert asm.build(T + 0.05).timestamp == pytest.approx(T + 0.04)
    asm.set_instruction("stack the cups")
    assert asm.build(T + 0.06).timestamp == pytest.approx(T + 0.04)
    assert asm.counters["no_new_frame"] == 1


def test_stale_primary_image_is_rejected_by_stamp_not_receipt_time():
    asm = _assembler()
    _ready(asm)
    assert _rejected(asm, T + 0.3).reason == "stale_image"
    assert asm.counters["stale_image"] == 1


def test_future_stamp_beyond_tolerance_is_rejected():
    asm = _assembler()
    _ready(asm)
    assert _rejected(asm, T - 0.1).reason == "future_stamp"
    asm.reset()
    _ready(asm)
    assert asm.build(T - 0.04).timestamp == T


def test_required_camera_outside_skew_is_rejected():
    asm = _assembler(required=(True, True, False))
    _ready(asm)
    asm.add_image("left", T + 0.08, _img())
    assert _rejected(asm, T + 0.09).reason == "camera_skew"


def test_optional_camera_outside_skew_or_absent_is_masked():
    asm = _assembler()
    _ready(asm)
    asm.add_image("left", T + 0.08, _img())
    asm2 = _assembler()
    asm2.add_image("base", T, _img())
    asm2.joints.add(T, ["j1", "j2"], [0.0, 0.0])
    asm2.set_instruction("go")
    obs = asm.build(T + 0.09)
    assert obs.images["left"] is None and obs.images["right"] is not None
    assert asm.masked == {"left": "camera_skew"}
    obs2 = asm2.build(T)
    assert obs2.images["left"] is None and obs2.images["right"] is None
    assert asm2.masked == {"left": "camera_missing", "right": "camera_missing"}


def test_missing_required_camera_is_rejected():
    asm = _assembler(required=(True, True, False))
    asm.add_image("base", T, _img())
    asm.joints.add(T, ["j1", "j2"], [0.0, 0.0])
    asm.set_instruction("go")
    assert _rejected(asm, T).reason == "camera_missing"
    asm2 = _assembler()
    asm2.set_instruction("go")
    assert _rejected(asm2, T).reason == "camera_missing"


def test_state_older_than_max_state_age_relative_to_t_obs_is_rejected():
    asm = _assembler()
    _ready(asm)
    asm.add_image("base", T + 0.2, _img())
    assert _rejected(asm, T + 0.2).reason == "stale_state"


def test_missing_joint_state_is_rejected():
    asm = _assembler()
    asm.add_image("base", T, _img())
    asm.set_instruction("go")
    assert _rejected(asm, T).reason == "missing_joints"


def test_zero_stamp_falls_back_to_receipt_time_and_needs_one():
    asm = _assembler()
    _ready(asm)
    assert asm.add_image("base", 0.0, _img(5), receipt_time=T + 0.01)
    assert asm.build(T + 0.02).timestamp == T + 0.01
    with pytest.raises(ObservationRejected) as err:
        asm.add_image("base", 0.0, _img())
    assert err.value.reason == "zero_stamp"


@pytest.mark.parametrize("stamp", [-100.0, -1e-9, float("nan"), float("inf")])
def test_negative_or_non_finite_stamps_are_refused_not_taken_as_zero(stamp):
    asm = _assembler()
    with pytest.raises(ObservationRejected) as err:
        asm.add_image("base", stamp, _img(), receipt_time=T)
    assert err.value.reason == "invalid_stamp"
    assert asm.frame_stamps() == {} and asm.zero_stamps == 0


def test_zero_stamps_are_counted():
    asm = _assembler()
    asm.add_image("base", 0.0, _img(), receipt_time=T)
    asm.add_image("base", 0.0, _img(), receipt_time=T + 0.1)
    assert asm.zero_stamps == 2


def test_default_instruction_follows_the_topic_rules():
    asm = _assembler(default_instruction=" tidy\n\tup \u202e")
    assert asm.instruction == "tidy up"
    with pytest.raises(ConfigError, match="instruction_too_long"):
        SyncConfig(default_instruction="x" * 2001)


def test_older_frame_does_not_replace_a_newer_one():
    asm = _assembler()
    _ready(asm)
    assert not asm.add_image("base", T - 0.01, _img(7))
    assert asm.counters["out_of_order"] == 1
    assert asm.build(T).timestamp == T


def test_clock_jump_back_resets_and_rejects_once():
    asm = _assembler()
    _ready(asm)
    asm.build(T)
    assert _rejected(asm, T - 5.0).reason == "clock_jump_back"
    assert asm.instruction == "pick up the cube"
    assert _rejected(asm, T - 5.0).reason == "camera_missing"
    _ready(asm, T - 5.0)
    assert asm.build(T - 5.0).timestamp == T - 5.0


def test_corrupt_frame_rejects_the_observation_once_then_is_dropped():
    asm = _assembler(required=(True, False, False))
    _ready(asm)
    asm.add_image("right", T, raw_image_decoder("bgr8", 2, 2, 6, bytes(12)))
    asm.add_image("left", T, lambda: (_ for _ in ()).throw(ImageRejected("corrupt_data", "x")))
    assert _rejected(asm, T).reason == "corrupt_data"
    obs = asm.build(T)
    assert obs.images["left"] is None and obs.images["right"].shape == (2, 2, 3)


def test_decoder_crash_becomes_decode_failed():
    asm = _assembler()
    _ready(asm)
    asm.add_image("base", T, lambda: 1 / 0)
    assert _rejected(asm, T).reason == "decode_failed"


# ---- instructions -----------------------------------------------------------------------------
def test_no_instruction_and_no_default_is_rejected():
    asm = _assembler()
    _ready(asm)
    asm.set_instruction("   \t\n ")
    assert _rejected(asm, T).reason == "no_instruction"


def test_whitespace_instruction_falls_back_to_default():
    asm = _assembler(default_instruction="tidy up")
    assert asm.instruction == "tidy up"
    asm.set_instruction("fold")
    asm.set_instruction("   ")
    assert asm.instruction == "tidy up"


def test_instruction_is_stripped_and_control_characters_become_single_spaces():
    assert clean_instruction("  pick\x00up\n\tthe\x1b[31m cube\u200b\x7f ", 100) == \
        "pick up the [31m cube"
    assert clean_instruction("caf\u00e9 \udcff ok", 100) == "caf\u00e9 ok"


def test_100kb_instruction_is_rejected_and_the_previous_one_stays():
    asm = _assembler()
    asm.set_instruction("fold the towel")
    with pytest.raises(ObservationRejected) as err:
        asm.set_instruction("x" * 100_000)
    assert err.value.reason == "instruction_too_long"
    assert asm.instruction == "fold the towel"
    assert asm.counters["instruction_too_long"] == 1


def test_only_a_different_instruction_counts_as_a_change():
    asm = _assembler()
    assert asm.set_instruction("fold")
    assert not asm.set_instruction("  fold  ")
    assert asm.set_instruction("unfold")
    assert asm.instruction_version == 2 and asm.changes == ["fold", "unfold"]


def test_invalid_configuration_is_refused():
    joints = JointStateCache(["j1"])
    with pytest.raises(ConfigError):
        ObservationAssembler(CAMS, [False, True, True], "base", joints)
    with pytest.raises(ConfigError):
        ObservationAssembler(CAMS, [True], "base", joints)
    with pytest.raises(ConfigError):
        SyncConfig(max_image_age_s=float("nan"))
    asm = ObservationAssembler(CAMS, [True, False, False], "base", joints)
    with pytest.raises(ConfigError):
        asm.add_image("nope", T, _img())
