"""Time embedding, suffix token construction and the Euler time grid of the torch backend."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pi0_ttnn_node.config import FeaturesConfig, GemmaConfig, PI0Config, SiglipConfig
from pi0_ttnn_node.torch_backend.torch_denoise import euler_integrate, sample_noise
from pi0_ttnn_node.torch_backend.torch_suffix import (SuffixEmbedding,
                                                      create_sinusoidal_pos_embedding)

WIDTH = 40


def _config(pi05: bool) -> PI0Config:
    kw = dict(vision=SiglipConfig(hidden_size=48, intermediate_size=80, num_layers=1, num_heads=4),
              vlm=GemmaConfig(width=64, depth=1, mlp_dim=96, head_dim=16, vocab_size=300),
              expert=GemmaConfig(width=WIDTH, depth=1, mlp_dim=72, head_dim=16, use_adarms=pi05),
              chunk_size=6, max_state_dim=10, max_action_dim=12,
              features=FeaturesConfig(state_dim=7, action_dim=5))
    return PI0Config.pi05(**kw) if pi05 else PI0Config.pi0(**kw)


def _suffix(pi05: bool) -> SuffixEmbedding:
    torch.manual_seed(0)
    cfg = _config(pi05)
    time_in = nn.Linear(WIDTH if pi05 else 2 * WIDTH, WIDTH)
    state_proj = None if pi05 else nn.Linear(cfg.max_state_dim, WIDTH)
    return SuffixEmbedding(cfg, nn.Linear(cfg.max_action_dim, WIDTH),
                           nn.Linear(WIDTH, cfg.max_action_dim), state_proj, time_in,
                           nn.Linear(WIDTH, WIDTH))


def test_sinusoidal_embedding_matches_the_float64_formula_with_sin_half_first():
    times = [1.0, 0.9, 0.35, 0.0]
    dim, lo, hi = 8, 4e-3, 4.0
    emb = create_sinusoidal_pos_embedding(torch.tensor(times, dtype=torch.float32), dim, lo, hi)
    assert emb.dtype == torch.float64 and emb.shape == (4, dim)
    for row, t in enumerate(times):
        t64 = float(torch.tensor(t, dtype=torch.float32))
        for i in range(dim // 2):
            period = lo * (hi / lo) ** (i / (dim // 2 - 1))
            angle = 2 * math.pi * t64 / period
            assert abs(emb[row, i].item() - math.sin(angle)) < 1e-9
            assert abs(emb[row, dim // 2 + i].item() - math.cos(angle)) < 1e-9


def test_embed_timestep_returns_the_timestep_dtype():
    emb = _suffix(pi05=False).embed_timestep(torch.full((3,), 0.7))
    assert emb.dtype == torch.float32 and emb.shape == (3, WIDTH)


def test_pi0_suffix_is_state_token_then_action_time_mlp_tokens():
    sfx = _suffix(pi05=False)
    state, x_t, t = torch.randn(2, 10), torch.randn(2, 6, 12), torch.full((2,), 0.4)
    embs, pad, att, cond = sfx.embed_suffix(state, x_t, t)
    assert embs.shape == (2, 7, WIDTH) and cond is None
    assert pad.shape == att.shape == (2, 7) and att[0, :3].tolist() == [True, True, False]
    time_emb = create_sinusoidal_pos_embedding(t, WIDTH, 4e-3, 4.0).float()
    fused = torch.cat([sfx.action_in_proj(x_t), time_emb[:, None].expand(2, 6, WIDTH)], dim=2)
    expected = sfx.time_mlp_out(F.silu(sfx.time_mlp_in(fused)))
    torch.testing.assert_close(embs[:, 0], sfx.state_proj(state), rtol=0, atol=1e-6)
    torch.testing.assert_close(embs[:, 1:], expected, rtol=0, atol=1e-6)


def test_pi05_suffix_has_no_state_token_and_a_silu_time_condition():
    sfx = _suffix(pi05=True)
    x_t, t = torch.randn(2, 6, 12), torch.full((2,), 0.4)
    embs, pad, att, cond = sfx.embed_suffix(None, x_t, t)
    assert embs.shape == (2, 6, WIDTH) and att[0, :2].tolist() == [True, False]
    time_emb = create_sinusoidal_pos_embedding(t, WIDTH, 4e-3, 4.0).float()
    expected = F.silu(sfx.time_mlp_out(F.silu(sfx.time_mlp_in(time_emb))))
    torch.testing.assert_close(cond, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(embs, sfx.action_in_proj(x_t), rtol=0, atol=1e-6)


def test_project_output_uses_the_last_chunk_tokens_in_fp32():
    sfx = _suffix(pi05=False)
    hidden = torch.randn(2, 7, WIDTH)
    v = sfx.project_output(hidden)
    assert v.dtype == torch.float32 and v.shape == (2, 6, 12)
    torch.testing.assert_close(v, sfx.action_out_proj(hidden[:, 1:]), rtol=0, atol=0)


def test_euler_uses_exact_time_grid_and_steps_from_noise_to_data():
    seen = []
    velocity = torch.full((1, 2, 3), 2.0)

    def fn(x_t, t):
        return velocity

    out = euler_integrate(fn, torch.zeros(1, 2, 3), 10,
                          step_callback=lambda k, t, x, v: seen.append((k, t.clone())))
    assert [k for k, _ in seen] == list(range(10))
    expected = [torch.tensor(1.0 + k * (-1.0 / 10), dtype=torch.float32) for k in range(10)]
    assert all(torch.equal(t, e.expand(1)) for (_, t), e in zip(seen, expected))
    torch.testing.assert_close(out, torch.full((1, 2, 3), -2.0), rtol=0, atol=1e-6)


def test_sample_noise_is_reproducible_with_a_generator_and_fresh_without():
    a = sample_noise((2, 3), torch.Generator().manual_seed(5))
    b = sample_noise((2, 3), torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(sample_noise((2, 3)), sample_noise((2, 3)))
