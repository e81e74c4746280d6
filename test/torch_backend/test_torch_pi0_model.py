"""PI0Model behaviour on tiny random weights: key layout, determinism, cache reuse and masking."""

from __future__ import annotations

import pytest
import torch

from pi0_ttnn_node.checkpoint_keys import expected_shapes
from pi0_ttnn_node.config import FeaturesConfig, GemmaConfig, PI0Config, SiglipConfig
from pi0_ttnn_node.torch_backend import PI0Model, PrefixKVCache

BATCH, LANG = 2, 12


def _config(pi05: bool, **extra) -> PI0Config:
    kw = dict(**extra,
              vision=SiglipConfig(hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4),
              vlm=GemmaConfig(width=64, depth=2, mlp_dim=96, head_dim=16, vocab_size=300),
              expert=GemmaConfig(width=40, depth=2, mlp_dim=72, head_dim=16, use_adarms=pi05),
              tokenizer_max_length=LANG)
    return PI0Config.pi05(**kw) if pi05 else PI0Config.pi0(**kw)


def _model(pi05: bool) -> PI0Model:
    """Random weights, including norm gains and adaRMS dense layers (zero-init would hide bugs)."""
    model = PI0Model(_config(pi05)).eval()
    gen = torch.Generator().manual_seed(7)
    for _, param in model.named_parameters():
        if param.ndim >= 2:
            param.copy_(torch.randn(param.shape, generator=gen) / param[0].numel() ** 0.5)
        else:
            param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def _inputs(pi05: bool, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(BATCH, 3, 224, 224, generator=gen) * 2 - 1 for _ in range(3)]
    # row 0 masks the middle camera, row 1 uses all three
    img_masks = [torch.tensor([True, True]), torch.tensor([False, True]),
                 torch.tensor([True, True])]
    lang_masks = torch.zeros(BATCH, LANG, dtype=torch.bool)
    lang_masks[0, :5] = True
    lang_masks[1, :9] = True
    tokens = torch.randint(1, 300, (BATCH, LANG), generator=gen) * lang_masks
    state = None if pi05 else torch.randn(BATCH, 32, generator=gen)
    return dict(images=images, img_masks=img_masks, lang_tokens=tokens, lang_masks=lang_masks,
                state=state)


def _noise(seed: int = 3) -> torch.Tensor:
    return torch.randn(BATCH, 50, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=[False, True], ids=["pi0", "pi05"])
def pi05(request) -> bool:
    return request.param


@pytest.fixture(scope="module")
def model(pi05) -> PI0Model:
    return _model(pi05)


def _cache(model: PI0Model, inputs: dict) -> PrefixKVCache:
    with torch.inference_mode():
        embs = model.embed_prefix(inputs["images"], inputs["img_masks"], inputs["lang_tokens"],
                                  inputs["lang_masks"])
        return model.prefill(*embs)


def test_state_dict_matches_the_checkpoint_key_table(model, pi05):
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_shapes(_config(pi05))


def test_sample_actions_returns_a_finite_fp32_chunk(model, pi05):
    actions = model.sample_actions(**_inputs(pi05), noise=_noise())
    assert actions.shape == (BATCH, 50, 32) and actions.dtype == torch.float32
    assert torch.isfinite(actions).all()


def test_same_generator_seed_gives_identical_actions_and_no_noise_gives_fresh_draws(model, pi05):
    inputs = _inputs(pi05)
    a = model.sample_actions(**inputs, generator=torch.Generator().manual_seed(11))
    b = model.sample_actions(**inputs, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    assert not torch.equal(model.sample_actions(**inputs), model.sample_actions(**inputs))


def test_denoise_step_neither_mutates_nor_grows_the_cache(model, pi05):
    inputs = _inputs(pi05)
    cache = _cache(model, inputs)
    before = [t.clone() for t in cache.k + cache.v]
    t = torch.full((BATCH,), 0.6)
    with torch.inference_mode():
        v1 = model.denoise_step(cache, inputs["state"], _noise(), t)
        v2 = model.denoise_step(cache, inputs["state"], _noise(), t)
    assert torch.equal(v1, v2) and v1.shape == (BATCH, 50, 32)
    assert len(cache.k) == len(cache.v) == model.config.vlm.depth
    prefix_len = 3 * 256 + LANG
    assert all(t.shape == (BATCH, 1, prefix_len, 16) for t in cache.k + cache.v)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.k + cache.v))


def test_pi0_state_token_output_does_not_depend_on_action_tokens():
    model = _model(pi05=False)
    inputs = _inputs(pi05=False)
    cache = _cache(model, inputs)
    t = torch.full((BATCH,), 0.3)
    with torch.inference_mode():
        h1 = model.expert_hidden(cache, inputs["state"], _noise(3), t)
        h2 = model.expert_hidden(cache, inputs["state"], _noise(4), t)
    assert torch.equal(h1[:, 0], h2[:, 0])
    assert (h1[:, 1:] - h2[:, 1:]).abs().max() > 1e-3


def test_pixels_of_a_masked_camera_do_not_change_actions(model, pi05):
    inputs = _inputs(pi05)
    ref = model.sample_actions(**inputs, noise=_noise())
    images = [img.clone() for img in inputs["images"]]
    images[1][0] = torch.rand(3, 224, 224) * 2 - 1  # row 0 masks camera 1
    changed = model.sample_actions(**{**inputs, "images": images}, noise=_noise())
    torch.testing.assert_close(changed, ref, rtol=0, atol=1e-6)
    images[1][1] = -images[1][1]  # row 1 has camera 1 valid: now actions must move
    moved = model.sample_actions(**{**inputs, "images": images}, noise=_noise())
    assert (moved[1] - ref[1]).abs().max() > 1e-4


def test_a_masked_middle_camera_acts_as_if_its_slot_were_absent(model, pi05):
    inputs = _inputs(pi05)
    row0 = {k: (v[:1] if torch.is_tensor(v) else [t[:1] for t in v]) for k, v in inputs.items()
            if v is not None}
    row0["state"] = None if pi05 else inputs["state"][:1]
    noise = _noise()[:1]
    ref = model.sample_actions(**row0, noise=noise)  # camera 1 of row 0 is masked
    two_slots = FeaturesConfig(image_keys=("observation.images.a", "observation.images.c"))
    small = PI0Model(_config(pi05, features=two_slots)).eval()
    small.load_state_dict(model.state_dict(), strict=True)
    kept = {**row0, "images": [row0["images"][0], row0["images"][2]],
            "img_masks": [row0["img_masks"][0], row0["img_masks"][2]]}
    torch.testing.assert_close(small.sample_actions(**kept, noise=noise), ref, rtol=0, atol=1e-5)


def test_token_ids_at_padded_language_positions_do_not_change_actions(model, pi05):
    inputs = _inputs(pi05)
    ref = model.sample_actions(**inputs, noise=_noise())
    tokens = inputs["lang_tokens"].clone()
    tokens[~inputs["lang_masks"]] = 123
    changed = model.sample_actions(**{**inputs, "lang_tokens": tokens}, noise=_noise())
    torch.testing.assert_close(changed, ref, rtol=0, atol=1e-6)


def test_sdpa_attention_matches_the_eager_reference(model, pi05):
    inputs = _inputs(pi05)
    velocities = {}
    for eager in (False, True):
        model.use_eager_attention = eager
        steps = []
        try:
            actions = model.sample_actions(**inputs, noise=_noise(),
                                           step_callback=lambda k, t, x, v: steps.append(v))
        finally:
            model.use_eager_attention = False
        velocities[eager] = (actions, torch.stack(steps))
    torch.testing.assert_close(velocities[False][1], velocities[True][1], rtol=0, atol=1e-5)
    torch.testing.assert_close(velocities[False][0], velocities[True][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("lerobot_layout", [False, True], ids=["all_bf16", "lerobot_mixed"])
def test_bfloat16_model_runs_and_stays_close_to_fp32(pi05, lerobot_layout):
    ref = _model(pi05).sample_actions(**_inputs(pi05), noise=_noise())
    low = _model(pi05)
    if lerobot_layout:
        low.cast_like_lerobot(torch.bfloat16)
        assert low.vision_tower.post_layernorm.weight.dtype == torch.float32
        assert low.action_out_proj.weight.dtype == torch.float32
    else:
        low.to(torch.bfloat16)
    assert low.language_model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    actions = low.sample_actions(**_inputs(pi05), noise=_noise())
    assert actions.dtype == torch.float32 and torch.isfinite(actions).all()
    rel_l2 = (actions - ref).norm() / ref.norm()
    assert rel_l2 < 0.05, f"bf16 vs fp32 relative L2 {rel_l2:.4f}"
