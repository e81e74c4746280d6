"""One set of instruction rules for the topic, the parameter and the launch argument."""

import pytest

from pi0_ttnn_node.errors import ConfigError, ObservationRejected
from pi0_ttnn_node.instruction_rules import (MAX_INSTRUCTION_CHARS, clean_instruction,
                                             instruction_refusal)
from pi0_ttnn_node.joint_mapping import JointStateCache
from pi0_ttnn_node.observation_sync import ObservationAssembler, SyncConfig

# the example: newlines, tabs and bidi controls, 100,800 characters
HOSTILE = ("pick up\n\tthe \u202ered\u202c cube " * 4200)[:100_800]


def _assembler(default: str = "") -> ObservationAssembler:
    return ObservationAssembler(["base"], [True], "base", JointStateCache(["j"]),
                                SyncConfig(default_instruction=default))


def test_cleaning_removes_controls_bidi_and_collapses_whitespace():
    assert clean_instruction(" pick\n\tup \u202ethe\u2066 cube\u200b ") == "pick up the cube"


def test_limit_is_checked_on_the_raw_text():
    assert clean_instruction("a" * MAX_INSTRUCTION_CHARS) == "a" * MAX_INSTRUCTION_CHARS
    with pytest.raises(ObservationRejected) as err:
        clean_instruction("a" * (MAX_INSTRUCTION_CHARS + 1))
    assert err.value.reason == "instruction_too_long"
    assert "2001 characters" in str(err.value) and "2000" in str(err.value)


def test_non_text_is_refused_with_a_reason():
    assert instruction_refusal(42).startswith("instruction_not_text")


@pytest.mark.parametrize("text", ["  fold\n the\ttowel \u202e", HOSTILE])
def test_topic_and_default_give_the_same_result(text):
    """~/instruction (set_instruction) and instruction.default (SyncConfig) clean and refuse
    alike; the parameter validator refuses exactly what the topic refuses."""
    try:
        expected = clean_instruction(text)
    except ObservationRejected as err:
        expected = err
    topic = _assembler()
    if isinstance(expected, ObservationRejected):
        with pytest.raises(ObservationRejected, match=expected.reason):
            topic.set_instruction(text)
        with pytest.raises(ConfigError, match=expected.reason):
            _assembler(default=text)
        assert instruction_refusal(text) == str(expected)
    else:
        topic.set_instruction(text)
        assert topic.instruction == expected == _assembler(default=text).instruction
        assert instruction_refusal(text) is None


def test_parameter_validator_refuses_the_hostile_default_with_the_reason():
    from pi0_ttnn_node.control import parameters as params  # the node's parameter table

    spec = params.SPECS["instruction.default"]
    reason = params.check_value(spec, HOSTILE)
    assert reason and "instruction_too_long" in reason and "100800 characters" in reason
    assert params.check_value(spec, "  fold\n\tthe towel ") is None
    assert params.check_value(spec, "") is None
