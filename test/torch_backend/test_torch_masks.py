"""Mask and position-id rules of masks.py (prefix-LM, masked cameras, suffix blocks)."""

from __future__ import annotations

import torch

from pi0_ttnn_node import masks
from pi0_ttnn_node.config import GemmaConfig, PI0Config, SiglipConfig

T, F = True, False


def _config(pi05: bool, chunk: int = 4) -> PI0Config:
    kw = dict(vision=SiglipConfig(hidden_size=48, intermediate_size=80, num_layers=1, num_heads=4),
              vlm=GemmaConfig(width=64, depth=1, mlp_dim=96, head_dim=16, vocab_size=300),
              expert=GemmaConfig(width=40, depth=1, mlp_dim=72, head_dim=16, use_adarms=pi05),
              chunk_size=chunk)
    return PI0Config.pi05(**kw) if pi05 else PI0Config.pi0(**kw)


def test_make_att_2d_masks_follows_the_cumsum_rule_and_pads_queries_and_keys():
    pad = torch.tensor([[T, T, T, T, F]])
    ar = torch.tensor([[0, 0, 1, 1, 0]])
    expected = torch.tensor([[
        [T, T, F, F, F],
        [T, T, F, F, F],
        [T, T, T, F, F],
        [T, T, T, T, F],
        [F, F, F, F, F],  # a padded query sees nothing
    ]])
    assert torch.equal(masks.make_att_2d_masks(pad, ar), expected)


def test_make_att_2d_masks_accepts_boolean_ar_masks():
    pad = torch.ones(2, 3, dtype=torch.bool)
    ar = torch.tensor([[T, T, T], [F, F, F]])
    out = masks.make_att_2d_masks(pad, ar)
    assert torch.equal(out[0], torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    assert bool(out[1].all())


def test_masked_middle_camera_shifts_later_positions_down():
    # 3 cameras of 2 tokens, the middle one masked, then 3 language tokens with 1 pad.
    pad = torch.tensor([[T, T, F, F, T, T, T, T, F]])
    positions = masks.prefix_position_ids(pad)
    assert positions[0, [0, 1, 4, 5, 6, 7]].tolist() == [0, 1, 2, 3, 4, 5]


def test_padded_language_does_not_advance_positions_per_row():
    pad = torch.tensor([[T, T, T, F, F], [T, T, T, T, T]])
    positions = masks.prefix_position_ids(pad)
    assert positions[0, :3].tolist() == [0, 1, 2]
    assert positions[1].tolist() == [0, 1, 2, 3, 4]


def test_suffix_positions_start_at_the_number_of_valid_prefix_tokens():
    prefix_pad = torch.tensor([[T, F, T, T, F], [T, T, T, T, T]])
    suffix_pad = torch.ones(2, 3, dtype=torch.bool)
    positions = masks.suffix_position_ids(prefix_pad, suffix_pad)
    assert positions.tolist() == [[3, 4, 5], [5, 6, 7]]


def test_pi0_suffix_pattern_puts_the_state_token_in_its_own_block():
    pad, ar = masks.suffix_pattern(_config(pi05=False, chunk=4), batch_size=2)
    assert pad.shape == (2, 5) and bool(pad.all())
    assert ar[0].tolist() == [T, T, F, F, F]


def test_pi05_suffix_pattern_has_only_action_tokens():
    pad, ar = masks.suffix_pattern(_config(pi05=True, chunk=4), batch_size=1)
    assert pad.shape == (1, 4)
    assert ar[0].tolist() == [T, F, F, F]


def test_pi0_state_token_cannot_see_actions_but_actions_see_the_state():
    cfg = _config(pi05=False, chunk=3)
    prefix_pad = torch.tensor([[T, T, F]])
    pad, ar = masks.suffix_pattern(cfg)
    full = masks.suffix_attention_mask(prefix_pad, pad, ar)[0]  # [S=4, P+S=7]
    assert full.shape == (4, 7)
    assert full[:, :3].tolist() == [[T, T, F]] * 4  # every suffix query sees valid prefix keys
    assert full[0, 3:].tolist() == [T, F, F, F]  # state token: itself only
    assert full[1:, 3:].tolist() == [[T, T, T, T]] * 3  # actions: state and all actions


def test_additive_mask_is_zero_where_allowed_and_finite_neg_inf_where_blocked():
    bool_mask = torch.tensor([[[T, F], [F, T]]])
    for dtype in (torch.float32, torch.bfloat16):
        add = masks.to_additive_mask(bool_mask, dtype)
        assert add.shape == (1, 1, 2, 2) and add.dtype == dtype
        assert add[0, 0, 0, 0].item() == 0.0 and add[0, 0, 1, 1].item() == 0.0
        assert torch.isfinite(add).all()
        assert add[0, 0, 0, 1].item() < -2e38
    assert masks.to_additive_mask(bool_mask)[0, 0, 0, 1].item() == torch.tensor(
        masks.NEG_INF, dtype=torch.float32).item()
