"""rtc.py: the prefix weight schedule, the per-step guidance weight, the target and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pi0_ttnn_node import rtc
from pi0_ttnn_node.errors import ConfigError, ObservationError


@pytest.mark.parametrize("schedule", ["linear", "exp"])
def test_prefix_weights_frozen_decay_and_free_regions(schedule):
    d, s, h = 3, 10, 20
    w = rtc.prefix_weights(d, s, h, schedule)
    assert w.dtype == torch.float32 and w.shape == (h,)
    assert torch.equal(w[:d], torch.ones(d))
    assert torch.equal(w[h - s:], torch.zeros(s))
    ramp = w[d:h - s]
    assert bool((ramp > 0).all() and (ramp < 1).all())
    assert bool((ramp[1:] < ramp[:-1]).all())  # strictly decreasing
    # the linear ramp from the paper's code: c_i = (H - s - i) / (H - s - d + 1)
    c = torch.tensor([(h - s - i) / (h - s - d + 1) for i in range(d, h - s)], dtype=torch.float64)
    expected = c if schedule == "linear" else c * torch.expm1(c) / (math.e - 1)
    torch.testing.assert_close(ramp, expected.float(), rtol=0, atol=1e-7)


def test_prefix_weights_edge_cases():
    assert torch.equal(rtc.prefix_weights(0, 0, 5, "linear"),
                       torch.tensor([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]))
    # d > H - s: the frozen actions keep weight 1, nothing decays
    assert torch.equal(rtc.prefix_weights(4, 8, 10), torch.tensor([1.0] * 4 + [0.0] * 6))
    assert torch.equal(rtc.prefix_weights(10, 0, 10), torch.ones(10))
    for bad in [(-1, 2, 10), (2, 11, 10), (2, 2, 0), (1.5, 2, 10)]:
        with pytest.raises(ConfigError):
            rtc.prefix_weights(*bad)
    with pytest.raises(ConfigError, match="schedule"):
        rtc.prefix_weights(1, 2, 10, "cosine")


def test_guidance_weight_is_the_papers_formula_in_pi0_time():
    beta = 5.0
    assert rtc.guidance_weight(1.0, beta) == beta  # tau = 0: c infinite
    assert rtc.guidance_weight(0.0, beta) == beta
    assert rtc.guidance_weight(0.7, 0.0) == 0.0
    for t in (0.9, 0.7, 0.5, 0.3, 0.1):
        tau = 1 - t
        r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
        expected = min(beta, ((1 - tau) / tau) / r2)
        assert rtc.guidance_weight(t, beta) == pytest.approx(expected, rel=1e-12)
    assert rtc.guidance_weight(0.5, 100.0) == pytest.approx(2.0)  # the minimum of c / r2
    with pytest.raises(ConfigError):
        rtc.guidance_weight(1.5, 1.0)


def test_step_scalars_follow_the_euler_times():
    s = rtc.step_scalars(10, 5.0)
    assert s.shape == (10, 2) and s.dtype == torch.float32
    assert torch.equal(s[:, 0], torch.tensor([1.0 + k * (-0.1) for k in range(10)]))
    assert s[0, 1] == 5.0
    assert float(s[5, 1]) == pytest.approx(2.0, rel=1e-6)  # t = 0.5


def test_build_target_shifts_by_consumed_and_holds_the_last_action():
    prev = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    y = rtc.build_target(prev, consumed=2, horizon=6)
    assert torch.equal(y[:, :4], prev[:, 2:])
    assert torch.equal(y[:, 4:], prev[:, -1:].expand(-1, 2, -1))
    assert torch.equal(rtc.build_target(prev.numpy(), 0, 6), prev)
    assert torch.equal(rtc.build_target(prev, 9, 4), prev[:, -1:].expand(-1, 4, -1))
    with pytest.raises(ConfigError):
        rtc.build_target(prev, -1, 6)


def test_build_guidance_zeroes_weights_where_the_old_chunk_has_no_action():
    prev = np.random.default_rng(0).standard_normal((1, 50, 32)).astype(np.float32)
    cfg = rtc.RtcConfig(schedule="linear", max_guidance=10.0, method="vjp")
    g = rtc.build_guidance(prev, consumed=25, delay=5, execution_horizon=20, config=cfg)
    assert g.method == "vjp" and g.max_guidance == 10.0
    assert g.target.shape == (1, 50, 32) and g.weights.shape == (1, 50)
    expected = rtc.prefix_weights(5, 20, 50, "linear")
    assert bool((expected[25:30] > 0).all())
    expected[25:] = 0.0  # only 25 actions of the old chunk are left
    assert torch.equal(g.weights[0], expected)
    late = rtc.build_guidance(prev, consumed=45, delay=8, execution_horizon=5, config=cfg)
    assert torch.equal(late.weights[0, :5], torch.ones(5))
    assert torch.equal(late.weights[0, 5:], torch.zeros(45))  # only 5 actions were left
    assert torch.equal(late.target[0, :5], torch.from_numpy(prev[0, 45:]))
    assert late.active and not rtc.build_guidance(prev, 50, 3, 10, cfg).active


def test_rtc_guidance_validation():
    y, w = torch.zeros(1, 4, 2), torch.ones(1, 4)
    assert rtc.RtcGuidance(y, w, 5.0).active
    assert not rtc.RtcGuidance(y, w, 0.0).active
    assert not rtc.RtcGuidance(y, torch.zeros(1, 4), 5.0).active
    with pytest.raises(ConfigError, match="method"):
        rtc.RtcGuidance(y, w, 5.0, "adjoint")
    with pytest.raises(ConfigError, match="beta"):
        rtc.RtcGuidance(y, w, -1.0)
    with pytest.raises(ConfigError, match="float32"):
        rtc.RtcGuidance(y.double(), w, 1.0)
    with pytest.raises(ConfigError, match=r"\[B, H\]"):
        rtc.RtcGuidance(y, torch.ones(1, 5), 1.0)
    with pytest.raises(ConfigError, match="non-finite"):
        rtc.RtcGuidance(y, torch.full((1, 4), float("nan")), 1.0)
    with pytest.raises(ConfigError, match=">= 0"):
        rtc.RtcGuidance(y, -w, 1.0)
    with pytest.raises(TypeError):
        rtc.RtcGuidance(y.numpy(), w, 1.0)
    with pytest.raises(ObservationError, match="the model samples"):
        rtc.RtcGuidance(y, w, 1.0).check_shape(1, 50, 32)
    with pytest.raises(ConfigError):
        rtc.RtcConfig(schedule="step")
