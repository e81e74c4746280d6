"""PromptTokenizer against the lerobot 0.6.1 prompt conventions, on a tiny SentencePiece model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import sentencepiece as spm

from pi0_ttnn_node.errors import ObservationError, TokenizerError
from pi0_ttnn_node.tokenizer import (BOS_ID, PAD_ID, PromptTokenizer, discretize_state,
                                     format_prompt, train_tiny_tokenizer)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny.model")


@pytest.fixture(scope="module")
def sp(model_path):
    return spm.SentencePieceProcessor(model_file=str(model_path))


def real_ids(prompt, b=0):
    return prompt.tokens[b, :prompt.num_tokens[b]].tolist()


def test_tiny_tokenizer_has_paligemma_special_ids(sp):
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.id_to_piece(0) == "<pad>" and sp.id_to_piece(2) == "<bos>"
    assert sp.get_piece_size() == 384


def test_training_twice_gives_identical_bytes(tmp_path, model_path):
    again = train_tiny_tokenizer(tmp_path / "sub" / "again.model")
    assert again.read_bytes() == model_path.read_bytes()


def test_byte_fallback_round_trips_any_text(sp):
    text = "zqx Ω € 机器人 grasp"
    ids = sp.encode(text)
    assert sp.unk_id() not in ids
    assert sp.decode(ids) == text


def test_pi0_prompt_gets_bos_and_one_trailing_newline(model_path, sp):
    tok = PromptTokenizer(model_path, 48, "pi0")
    out = tok.tokenize(["pick up the red cube", "pick up the red cube\n"])
    newline = sp.piece_to_id("\n")
    assert real_ids(out, 0) == real_ids(out, 1)
    ids = real_ids(out, 0)
    assert ids[0] == BOS_ID and ids[-1] == newline and ids.count(newline) == 1
    assert ids == [BOS_ID] + sp.encode("pick up the red cube\n")


def test_pi0_prompt_is_not_cleaned(model_path, sp):
    # lerobot's Pi0NewLineProcessor keeps underscores and case (openpi would clean them).
    assert format_prompt("Pick_Up ", "pi0") == "Pick_Up \n"
    tok = PromptTokenizer(model_path, 48, "pi0")
    assert real_ids(tok.tokenize(["pick_up"])) == [BOS_ID] + sp.encode("pick_up\n")


def test_padding_is_on_the_right_with_zero_and_mask_marks_real_tokens(model_path):
    tok = PromptTokenizer(model_path, 48, "pi0")
    out = tok.tokenize(["open the drawer", "close the microwave door now please"])
    assert out.tokens.shape == out.masks.shape == (2, 48)
    assert out.tokens.dtype == np.int64 and out.masks.dtype == bool
    for b in range(2):
        n = out.num_tokens[b]
        assert out.masks[b, :n].all() and not out.masks[b, n:].any()
        assert (out.tokens[b, n:] == PAD_ID).all() and (out.tokens[b, :n] != PAD_ID).all()
    assert out.num_tokens[0] < out.num_tokens[1]
    assert out.truncated == [False, False]


def test_long_prompt_is_truncated_flagged_and_warned_once(model_path, caplog):
    tok = PromptTokenizer(model_path, 8, "pi0")
    text = "put the black bowl in the bottom drawer of the cabinet"
    full = tok.encode(text + "\n")
    with caplog.at_level(logging.WARNING, logger="pi0_ttnn_node.tokenizer"):
        out = tok.tokenize([text, "up"])
        tok.tokenize([text])
    assert out.truncated == [True, False]
    assert out.num_tokens[0] == 8 and out.masks[0].all()
    assert out.tokens[0].tolist() == full[:8]  # BOS kept, the end (and newline) cut
    warnings = [r for r in caplog.records if "truncating" in r.getMessage()]
    assert len(warnings) == 1 and str(len(full)) in warnings[0].getMessage()


def test_pi0_cache_follows_a_changed_instruction(model_path):
    tok = PromptTokenizer(model_path, 48, "pi0")
    a1, b, a2 = (real_ids(tok.tokenize([t])) for t in ("open the drawer", "turn on the stove",
                                                       "open the drawer"))
    assert a1 == a2 and a1 != b


def test_state_bins_at_edges_and_outside_the_range():
    state = np.array([-1.0, 0.9921875, -1.5, 1.5, 0.0, 0.99, -0.9921875, 1.0, 0.9921874])
    assert discretize_state(state).tolist() == [0, 255, -1, 255, 128, 254, 1, 255, 254]


def test_pi05_prompt_format_matches_lerobot(model_path, sp):
    state = np.array([[-1.0, 0.9921875, -1.5, 1.5, 0.0]])
    text = format_prompt("  pick_up\nthe Cube ", "pi05", state[0])
    assert text == "Task: pick up the Cube, State: 0 255 -1 255 128;\nAction: "
    tok = PromptTokenizer(model_path, 200, "pi05")
    out = tok.tokenize(["  pick_up\nthe Cube "], state)
    assert real_ids(out) == [BOS_ID] + sp.encode(text)
    assert out.tokens.shape == (1, 200)


def test_pi05_prompt_changes_with_the_state(model_path):
    tok = PromptTokenizer(model_path, 200, "pi05")
    out = tok.tokenize(["open the drawer"] * 2, np.array([[0.0, 0.5], [0.0, 0.51]]))
    assert real_ids(out, 0) != real_ids(out, 1)


@pytest.mark.parametrize("states, match", [
    (None, "no state"), (np.zeros(3), "shape"), (np.zeros((2, 3)), "shape"),
    (np.array([[0.1, np.nan]]), "non-finite"),
])
def test_pi05_rejects_missing_or_bad_states(model_path, states, match):
    tok = PromptTokenizer(model_path, 200, "pi05")
    with pytest.raises(ObservationError, match=match):
        tok.tokenize(["open the drawer"], states)


def test_instructions_must_be_a_sequence_of_strings(model_path):
    tok = PromptTokenizer(model_path, 48, "pi0")
    with pytest.raises(ObservationError):
        tok.tokenize("open the drawer")
    with pytest.raises(ObservationError):
        tok.tokenize([None])


def test_missing_directory_and_garbage_files_raise_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist.*paligemma_tokenizer.model"):
        PromptTokenizer(tmp_path / "nope.model", 48, "pi0")
    with pytest.raises(TokenizerError, match="not a regular file"):
        PromptTokenizer(tmp_path, 48, "pi0")
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(TokenizerError, match="0 bytes"):
        PromptTokenizer(empty, 48, "pi0")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(TokenizerError, match="cannot load"):
        PromptTokenizer(garbage, 48, "pi0")


def test_tokenizer_with_other_special_ids_is_rejected(tmp_path):
    path = tmp_path / "llama_style.model"
    with open(path, "wb") as f:  # sentencepiece defaults: unk=0, bos=1, eos=2
        spm.SentencePieceTrainer.train(sentence_iterator=iter(["open the drawer"] * 5),
                                       model_writer=f, vocab_size=20, minloglevel=2,
                                       hard_vocab_limit=False)
    with pytest.raises(TokenizerError, match="special ids"):
        PromptTokenizer(path, 48, "pi0")


@pytest.mark.parametrize("max_length, model_type", [(1, "pi0"), (48, "pi0fast"), (True, "pi0")])
def test_bad_arguments_raise_tokenizer_error(model_path, max_length, model_type):
    with pytest.raises(TokenizerError):
        PromptTokenizer(model_path, max_length, model_type)
