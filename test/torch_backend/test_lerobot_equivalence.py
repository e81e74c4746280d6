"""The Torch backend reproduces lerobot 0.6.1 on tiny random PI0 / PI0.5 checkpoints (fp32, CPU).

Fixtures in test/fixtures/lerobot_pi0{,5}/ were written by tools/lerobot_peer/make_fixtures.py with
lerobot's own model code: weights and config.json as `save_pretrained` writes them, the real
normaliser files, and io.safetensors with inputs, prefix embeddings, the 10 per-step velocities and
the actions. lerobot is not needed here. Gate: 1e-4 absolute (observed plain-torch vs lerobot
differences are ~1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors.torch import load_file

from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.checkpoint_keys import UNUSED_KEYS, expected_shapes
from pi0_ttnn_node.config import DIMS_KEY
from pi0_ttnn_node.normalization import Normalizer
from pi0_ttnn_node.torch_backend import PI0Model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = ("lerobot_pi0", "lerobot_pi05")
ATOL = 1e-4


def _images(io: Dict[str, torch.Tensor]):
    """Fixture image convention: float32(uint8) / 255 * 2 - 1, one [B,3,224,224] per camera."""
    u8 = io["images_uint8"]
    return [(u8[i].to(torch.float32) / 255.0) * 2.0 - 1.0 for i in range(u8.shape[0])]


def _masks(io: Dict[str, torch.Tensor]):
    return [io["image_masks"][i] for i in range(io["image_masks"].shape[0])]


def _run(model: PI0Model, io: Dict[str, torch.Tensor], **overrides) -> Dict[str, torch.Tensor]:
    inputs = {"images": _images(io), "img_masks": _masks(io), "lang_tokens": io["lang_tokens"],
              "lang_masks": io["lang_masks"], "state": io.get("state")}
    inputs.update(overrides)
    steps = []

    def on_step(step: int, t: torch.Tensor, x_t: torch.Tensor, v_t: torch.Tensor) -> None:
        steps.append((step, t.clone(), x_t.clone(), v_t.clone()))

    with torch.inference_mode():
        prefix_embs, prefix_pad, _ = model.embed_prefix(inputs["images"], inputs["img_masks"],
                                                        inputs["lang_tokens"], inputs["lang_masks"])
        actions = model.sample_actions(inputs["images"], inputs["img_masks"], inputs["lang_tokens"],
                                       inputs["lang_masks"], inputs["state"], noise=io["noise"],
                                       step_callback=on_step)
    return {
        "prefix_embs": prefix_embs, "prefix_pad_masks": prefix_pad, "actions": actions,
        "step_ids": torch.tensor([s[0] for s in steps]),
        "timesteps": torch.stack([s[1][0] for s in steps]) if steps else torch.empty(0),
        "x_t": torch.stack([s[2] for s in steps]) if steps else torch.empty(0),
        "velocities": torch.stack([s[3] for s in steps]) if steps else torch.empty(0),
    }


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    """Load one fixture through the project's loader, build the model, run it once."""
    root = FIXTURES / request.param
    ckpt = load_checkpoint(root, strict=True)
    model = PI0Model(ckpt.config)
    model.load_state_dict(ckpt.state_dict, strict=True)
    model.eval()
    io = load_file(str(root / "io.safetensors"))
    return {"name": request.param, "root": root, "ckpt": ckpt, "model": model, "io": io,
            "out": _run(model, io)}


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.to(torch.float32) - b.to(torch.float32)).abs().max().item()


def test_checkpoint_loader_reads_the_lerobot_fixture_dims_and_every_tensor(case):
    ckpt, root = case["ckpt"], case["root"]
    raw = json.loads((root / "config.json").read_text())
    assert ckpt.config.model_type == raw["type"]
    assert ckpt.config.to_dims_dict() == raw[DIMS_KEY]
    assert ckpt.config.tokenizer_max_length == raw["tokenizer_max_length"]
    assert (ckpt.config.features.state_dim, ckpt.config.features.action_dim) == (8, 7)
    shapes = expected_shapes(ckpt.config)
    assert {k: tuple(v.shape) for k, v in ckpt.state_dict.items()} == shapes
    saved = load_file(str(root / "model.safetensors"))
    # The lm_heads are in lerobot's real saved layout and must be skipped, not silently required.
    assert all(("model." + k) in saved for k in UNUSED_KEYS)
    assert len(saved) == len(shapes) + len(UNUSED_KEYS)


def test_prefix_embeddings_match_lerobot_on_valid_tokens(case):
    io, out = case["io"], case["out"]
    assert torch.equal(out["prefix_pad_masks"], io["prefix_pad_masks"])
    valid = io["prefix_pad_masks"]
    err = _max_abs(out["prefix_embs"][valid], io["prefix_embs"][valid])
    print(f"{case['name']}: prefix embeddings max|d| {err:.3e}")
    assert err <= ATOL, f"{case['name']}: prefix embeddings differ by {err:.3e} > {ATOL}"


def test_every_denoise_step_velocity_matches_lerobot(case):
    io, out = case["io"], case["out"]
    steps = io["velocities"].shape[0]
    assert out["step_ids"].tolist() == list(range(steps))
    assert torch.equal(out["timesteps"], io["timesteps"])
    errs = [_max_abs(out["velocities"][k], io["velocities"][k]) for k in range(steps)]
    x_errs = [_max_abs(out["x_t"][k], io["x_t"][k]) for k in range(steps)]
    print(f"{case['name']}: velocity max|d| per step " + " ".join(f"{e:.2e}" for e in errs)
          + f"; x_t max|d| {max(x_errs):.2e}")
    first_bad = next((k for k, e in enumerate(errs) if e > ATOL), None)
    assert first_bad is None, (f"{case['name']}: velocity of step {first_bad} (t="
                               f"{io['timesteps'][first_bad].item():.1f}) differs by "
                               f"{errs[first_bad]:.3e} > {ATOL}")
    assert max(x_errs) <= ATOL


def test_final_actions_match_lerobot(case):
    err = _max_abs(case["out"]["actions"], case["io"]["actions"])
    print(f"{case['name']}: actions max|d| {err:.3e}")
    assert err <= ATOL, f"{case['name']}: actions differ by {err:.3e} > {ATOL}"


def test_normaliser_files_reproduce_lerobot_state_and_action_scaling(case):
    io, ckpt = case["io"], case["ckpt"]
    norm = Normalizer(ckpt.norm_stats, ckpt.config.features.state_dim,
                      ckpt.config.features.action_dim)
    state = torch.from_numpy(norm.normalize_state(io["raw_state"].numpy()))
    assert _max_abs(state, io["normalized_state"]) <= 1e-5
    robot = torch.from_numpy(norm.unnormalize_actions(io["actions"][:, :, :7].numpy()))
    assert _max_abs(robot, io["actions_robot"]) <= 1e-5 * max(1.0, io["actions_robot"].abs().max())


def test_fixture_catches_an_ignored_camera_mask(case):
    """Treating the masked cameras as valid must move the actions far beyond the gate."""
    io = case["io"]
    all_valid = [torch.ones_like(m) for m in _masks(io)]
    wrong = _run(case["model"], io, img_masks=all_valid)
    assert _max_abs(wrong["actions"], io["actions"]) > 100 * ATOL
