"""SuffixEmbeddingTTNN vs torch SuffixEmbedding on identical weights and inputs (seed checklist)."""

from __future__ import annotations

import pytest
import torch
from conftest import BATCH, download, reference, ttnn, upload
from pcc import assert_pcc

from pi0_ttnn_node.ttnn_backend.ttnn_execution import ExecutionPlan
from pi0_ttnn_node.ttnn_backend.ttnn_suffix import SuffixEmbeddingTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_weights import convert_suffix_weights_to_ttnn

COMPONENTS = ("embed_actions", "embed_state", "embed_timestep", "fuse_action_time",
              "embed_suffix", "project_output")
CASES = [pytest.param(mt, size, dt, comp, id=f"{mt}-{size}-{dt}-{comp}")
         for mt in ("pi0", "pi05") for size in ("tiny", "mid")
         for dt in ("bfloat16", "bfloat8_b") for comp in COMPONENTS
         if not (mt == "pi05" and comp == "embed_state")]  # PI0.5 has no state projection


def _suffix(tt, model_type, size, weight_dtype):
    cfg, sd, model = reference(model_type, size)
    weights = convert_suffix_weights_to_ttnn(sd, tt.device, cfg, weight_dtype)
    plan = ExecutionPlan(tt.cfg, tt.device)  # accurate numerics; suffix weights unsplit
    return cfg, model.suffix, SuffixEmbeddingTTNN(cfg, weights, plan)


def _f32(tt, t):
    return upload(tt, t, dtype=ttnn.float32)


def _run(component, tt, cfg, ref, dut):
    """Return (ttnn output, torch output) for one component on fixed random inputs."""
    gen = torch.Generator().manual_seed(5)
    x_t = torch.randn(BATCH, cfg.chunk_size, cfg.max_action_dim, generator=gen)
    state = torch.randn(BATCH, cfg.max_state_dim, generator=gen)
    t = torch.tensor([1.0, 0.35])
    if component == "embed_actions":
        return download(dut.embed_actions(_f32(tt, x_t))), ref.embed_actions(x_t)
    if component == "embed_state":
        return download(dut.embed_state(upload(tt, state))), ref.embed_state(state)
    if component == "embed_timestep":
        return download(dut.embed_timestep(_f32(tt, t[:, None]))), ref.embed_timestep(t)
    if component == "fuse_action_time":
        action_emb, time_emb = ref.embed_actions(x_t), ref.embed_timestep(t)
        tokens, cond = ref.fuse_action_time(action_emb, time_emb)
        out_tokens, out_cond = dut.fuse_action_time(upload(tt, action_emb), upload(tt, time_emb))
        if cfg.is_pi05:
            return download(out_cond), cond
        return download(out_tokens), tokens
    if component == "embed_suffix":
        ref_state = None if cfg.is_pi05 else state
        embs, pad, att, cond = ref.embed_suffix(ref_state, x_t, t)
        d_embs, d_pad, d_att, d_cond = dut.embed_suffix(
            None if cfg.is_pi05 else upload(tt, state), _f32(tt, x_t), _f32(tt, t[:, None]))
        assert torch.equal(d_pad, pad) and torch.equal(d_att, att)
        if cfg.is_pi05:
            return torch.cat([download(d_embs).flatten(), download(d_cond).flatten()]), \
                torch.cat([embs.flatten(), cond.flatten()])
        assert d_cond is None and cond is None
        return download(d_embs), embs
    if component == "project_output":
        hidden = torch.randn(BATCH, cfg.suffix_len, cfg.expert.width, generator=gen)
        return download(dut.project_output(upload(tt, hidden))), ref.project_output(hidden)
    raise AssertionError(component)


@pytest.mark.parametrize("model_type,size,weight_dtype,component", CASES)
def test_suffix_component_matches_torch(tt, model_type, size, weight_dtype, component):
    cfg, ref, dut = _suffix(tt, model_type, size, weight_dtype)
    actual, expected = _run(component, tt, cfg, ref, dut)
    # the device keeps suffix activations 4-D [B, 1, rows, D] (the expert's layout)
    assert actual.numel() == expected.numel()
    actual = actual.reshape(expected.shape)
    assert_pcc(actual, expected.float(), component, weight_dtype, f"{model_type}-{size}")


@pytest.mark.parametrize("t", [1.0, 0.7, 0.1])
def test_scalar_timestep_embedding_matches_torch(tt, t):
    cfg, ref, dut = _suffix(tt, "pi05", "tiny", "bfloat16")
    actual = download(dut.embed_timestep(t))
    expected = ref.embed_timestep(torch.tensor([t]))
    assert actual.shape == (1, cfg.expert.width)
    assert_pcc(actual, expected, "embed_timestep", "bfloat16", f"scalar t={t}")
    assert (actual - expected).abs().max() < 2e-2  # bf16 storage of values in [-1, 1]


def test_time_embedding_sees_short_periods_without_phase_loss(tt):
    """The 4 ms period turns t = 0.999 into ~250 cycles; float32 plus the cycle reduction keeps
    every sin/cos within bf16 rounding of the float64 reference."""
    _, ref, dut = _suffix(tt, "pi0", "tiny", "bfloat16")
    t = torch.tensor([0.999, 0.123])
    actual = download(dut.embed_timestep(_f32(tt, t[:, None])))
    assert (actual - ref.embed_timestep(t)).abs().max() < 2e-2


def test_convert_suffix_weights_rejects_unknown_dtype(tt):
    cfg, sd, _ = reference("pi0", "tiny")
    with pytest.raises(ValueError, match="float16"):
        convert_suffix_weights_to_ttnn(sd, tt.device, cfg, "float16")
