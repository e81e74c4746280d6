"""Resize-with-pad geometry and accuracy, observation batching, and action post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pi0_ttnn_node.config import FeaturesConfig, PI0Config
from pi0_ttnn_node.errors import ConfigError, InferenceError, ObservationError
from pi0_ttnn_node.preprocessing import (ModelInputs, Observation, Postprocessor, Preprocessor,
                                         pad_vector, resize_with_pad, resized_size,
                                         to_model_image)
from pi0_ttnn_node.tokenizer import PromptTokenizer, format_prompt, train_tiny_tokenizer

STEP = 1 / 127.5  # one uint8 step after scaling to [-1, 1]
FEATURES = FeaturesConfig(state_dim=6, action_dim=7)


class FakeNormalizer:
    """Affine stand-in for normalization.Normalizer with known statistics."""

    def normalize_state(self, x):
        return (x - 1.0) / 4.0

    def unnormalize_actions(self, x):
        return x * 3.0 + 0.5


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny.model")


def make_pre(tok_path, pi05=False):
    cfg = PI0Config.pi05(features=FEATURES) if pi05 else PI0Config.pi0(features=FEATURES)
    tok = PromptTokenizer(tok_path, cfg.tokenizer_max_length, cfg.model_type)
    return cfg, tok, Preprocessor(cfg, FakeNormalizer(), tok)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def torch_reference(image, size=224):
    """lerobot's float path: [0, 1] bilinear (align_corners=False), clamp, centred 0-pad, x*2-1."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    rh, rw = resized_size(image.shape[0], image.shape[1], size, size)
    y = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False).clamp(0, 1)
    top, left = (size - rh) // 2, (size - rw) // 2
    y = F.pad(y, (left, size - rw - left, top, size - rh - top))
    return (y * 2 - 1)[0].numpy()


@pytest.mark.parametrize("hw, content, top, left", [
    ((480, 640), (168, 224), 28, 0),  # wide
    ((640, 480), (224, 168), 0, 28),  # tall
    ((300, 640), (105, 224), 59, 0),  # odd remainder: 59 above, 60 below
    ((100, 100), (224, 224), 0, 0),  # square, upscaled
    ((5, 3), (224, 134), 0, 45),  # tiny
    ((1, 500), (1, 224), 111, 0),  # degenerate strip keeps one row
])
def test_resize_with_pad_geometry_matches_lerobot(hw, content, top, left):
    assert resized_size(*hw, 224, 224) == content
    out = resize_with_pad(np.full(hw + (3,), 255, np.uint8))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    rows, cols = np.nonzero(out[..., 0])
    assert (rows.min(), cols.min()) == (top, left)
    assert (rows.max() + 1 - top, cols.max() + 1 - left) == content
    assert (out[top:top + content[0], left:left + content[1]] == 255).all()
    assert out.sum() == 255 * 3 * content[0] * content[1]


def test_image_of_the_target_size_is_passed_through():
    image = rgb(224, 224)
    assert resize_with_pad(image) is image


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (100, 100), (37, 53), (448, 448),
                                (720, 1280), (5, 3)])
def test_opencv_resize_stays_within_one_uint8_step_of_the_float_reference(hw):
    image = rgb(*hw, seed=hw[0])
    diff = np.abs(to_model_image(resize_with_pad(image)) - torch_reference(image))
    # Measured: max 0.80 step (uint8 rounding plus OpenCV's fixed-point weights), mean 0.15-0.27.
    assert diff.max() < STEP
    assert diff.mean() < 0.35 * STEP


def test_padding_becomes_minus_one_and_pixels_scale_to_unit_range():
    image = np.zeros((2, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 128, 0
    model = to_model_image(resize_with_pad(image, 8, 8))
    assert model.shape == (3, 8, 8) and model.dtype == np.float32
    assert (model[:, :2] == -1).all() and (model[:, 6:] == -1).all()  # 4x8 content, rows 2..5
    assert np.allclose(model[:, 2:6], np.array([1.0, 128 / 255 * 2 - 1, -1.0])[:, None, None],
                       atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)])
def test_non_rgb_uint8_images_are_rejected(bad):
    with pytest.raises(ObservationError, match="RGB uint8"):
        resize_with_pad(bad)


def test_pad_vector_zero_pads_the_last_axis_and_rejects_longer_vectors():
    out = pad_vector(np.ones((2, 3), np.float32), 5)
    assert out.tolist() == [[1, 1, 1, 0, 0]] * 2 and out.dtype == np.float32
    with pytest.raises(ObservationError):
        pad_vector(np.ones(6), 5)


def test_absent_cameras_keep_their_slot_as_minus_one_with_mask_false(tok_path):
    cfg, _, pre = make_pre(tok_path)
    wrist = rgb(480, 640, seed=1)
    obs = Observation({"base_0_rgb": None, "left_wrist_0_rgb": wrist},
                      np.arange(6.0), "open the drawer")
    inputs = pre([obs])
    assert [m.tolist() for m in inputs.img_masks] == [[False], [True], [False]]
    assert all(im.shape == (1, 3, 224, 224) and im.dtype == torch.float32 for im in inputs.images)
    assert (inputs.images[0] == -1).all() and (inputs.images[2] == -1).all()
    assert np.array_equal(inputs.images[1][0].numpy(), to_model_image(resize_with_pad(wrist)))


def test_masks_differ_per_sample_and_full_feature_keys_are_accepted(tok_path):
    _, _, pre = make_pre(tok_path)
    a = Observation({"observation.images.base_0_rgb": rgb(224, 224)}, np.zeros(6), "a")
    b = Observation({"right_wrist_0_rgb": rgb(224, 224)}, np.zeros(6), "b")
    inputs = pre([a, b])
    assert [m.tolist() for m in inputs.img_masks] == [[True, False], [False, False],
                                                      [False, True]]


def test_observation_without_any_camera_is_rejected(tok_path):
    _, _, pre = make_pre(tok_path)
    with pytest.raises(ObservationError, match="no camera image"):
        pre([Observation({"base_0_rgb": None}, np.zeros(6), "open")])
    with pytest.raises(ObservationError, match="empty batch"):
        pre([])


def test_unknown_camera_name_is_rejected(tok_path):
    _, _, pre = make_pre(tok_path)
    with pytest.raises(ObservationError, match="'front'.*base_0_rgb"):
        pre([Observation({"front": rgb(8, 8)}, np.zeros(6), "open")])


@pytest.mark.parametrize("state, match", [
    (np.zeros(5), r"shape \(5,\)"), (np.array([0, 1, 2, np.inf, 4, 5.0]), "inf"),
    (["a"] * 6, "numeric"),
])
def test_bad_states_are_rejected_naming_the_value(tok_path, state, match):
    _, _, pre = make_pre(tok_path)
    with pytest.raises(ObservationError, match=match):
        pre([Observation({"base_0_rgb": rgb(8, 8)}, state, "open")])


def test_state_is_normalised_then_zero_padded(tok_path):
    cfg, _, pre = make_pre(tok_path)
    inputs = pre([Observation({"base_0_rgb": rgb(8, 8)}, np.arange(6.0), "open the drawer")])
    assert inputs.state.shape == (1, cfg.max_state_dim) and inputs.state.dtype == torch.float32
    assert np.allclose(inputs.state[0, :6].numpy(), (np.arange(6.0) - 1) / 4)
    assert (inputs.state[0, 6:] == 0).all()


def test_pi0_tokens_come_from_the_instruction_only(tok_path):
    _, tok, pre = make_pre(tok_path)
    inputs = pre([Observation({"base_0_rgb": rgb(8, 8)}, np.arange(6.0), "open the drawer")])
    expected = tok.tokenize(["open the drawer"])
    assert np.array_equal(inputs.lang_tokens.numpy(), expected.tokens)
    assert np.array_equal(inputs.lang_masks.numpy(), expected.masks)
    assert inputs.lang_tokens.dtype == torch.int64 and inputs.lang_masks.dtype == torch.bool


def test_pi05_prompt_carries_the_normalised_unpadded_state(tok_path):
    cfg, tok, pre = make_pre(tok_path, pi05=True)
    state = np.array([1.0, 5.0, -3.0, -10.0, 1.5, 4.96])  # -> 0, 1, -1, -2.75, 0.125, 0.99
    inputs = pre([Observation({"base_0_rgb": rgb(8, 8)}, state, "pick_up the cube")])
    text = format_prompt("pick_up the cube", "pi05", (state - 1) / 4)
    assert text == "Task: pick up the cube, State: 128 255 0 -1 144 254;\nAction: "
    n = int(inputs.lang_masks[0].sum())
    assert inputs.lang_tokens[0, :n].tolist() == tok.encode(text)
    assert inputs.lang_tokens.shape == (1, 200)


def test_model_inputs_move_to_dtype_keeping_token_types(tok_path):
    _, _, pre = make_pre(tok_path)
    inputs = pre([Observation({"base_0_rgb": rgb(8, 8)}, np.zeros(6), "open")])
    half = inputs.to("cpu", torch.bfloat16)
    assert isinstance(half, ModelInputs) and half.images[0].dtype == torch.bfloat16
    assert half.state.dtype == torch.bfloat16 and half.lang_tokens.dtype == torch.int64
    assert half.img_masks[0].dtype == torch.bool and inputs.images[0].dtype == torch.float32


def test_tokenizer_for_another_model_type_is_a_config_error(tok_path):
    cfg = PI0Config.pi0(features=FEATURES)
    with pytest.raises(ConfigError, match="pi05"):
        Preprocessor(cfg, FakeNormalizer(), PromptTokenizer(tok_path, 200, "pi05"))


def test_postprocessor_truncates_to_action_dim_then_unnormalises():
    cfg = PI0Config.pi0(features=FEATURES)
    chunk = np.random.default_rng(0).standard_normal((2, 5, 32)).astype(np.float32)
    out = Postprocessor(cfg, FakeNormalizer())(torch.from_numpy(chunk).to(torch.bfloat16))
    assert out.shape == (2, 5, 7) and out.dtype == np.float32
    bf16 = torch.from_numpy(chunk).to(torch.bfloat16).float().numpy()
    assert np.allclose(out, bf16[..., :7] * 3.0 + 0.5)


@pytest.mark.parametrize("chunk, match", [
    (np.zeros((2, 5, 7), np.float32), "shape"), (np.zeros((5, 32), np.float32), "shape"),
    (np.full((1, 5, 32), np.nan, np.float32), "non-finite"),
])
def test_postprocessor_rejects_wrong_shapes_and_non_finite_chunks(chunk, match):
    with pytest.raises(InferenceError, match=match):
        Postprocessor(PI0Config.pi0(features=FEATURES), FakeNormalizer())(chunk)
