"""RTC through the ROS-free policy (Pi0Policy.sample(guidance=...)) and the overhead benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pi0_ttnn_node import rtc
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig
from pi0_ttnn_node.preprocessing import Observation


@pytest.fixture(scope="module")
def policy():
    p = Pi0Policy.load(PolicyConfig(str(ensure_embedded_checkpoint("pi0")), noise_seed=0))
    yield p
    p.close()


def _observation(cfg, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(images={name: rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
                               for name in cfg.features.camera_names},
                       state=rng.normal(size=cfg.features.state_dim).astype(np.float32),
                       instruction="pick up the block")


def test_policy_sample_continues_the_previous_chunk(policy):
    cfg = policy.config
    obs = _observation(cfg)
    prev = policy.sample([obs])
    noise = torch.randn(policy.noise_shape(1), generator=torch.Generator().manual_seed(3))
    plain = policy.sample([obs], noise=noise)
    for method in ("forward", "vjp"):
        g = rtc.build_guidance(prev.normalized, consumed=10, delay=4, execution_horizon=10,
                               config=rtc.RtcConfig("exp", 5.0, method))
        guided = policy.sample([obs], noise=noise, guidance=g)
        assert guided.actions.shape == plain.actions.shape
        # the frozen prefix now follows the committed actions, in robot units too
        committed = prev.actions[:, 10:14]
        assert (np.abs(guided.actions[:, :4] - committed).max()
                < 0.25 * np.abs(plain.actions[:, :4] - committed).max())
        off = rtc.RtcGuidance(g.target, g.weights, 0.0, method)
        assert np.array_equal(policy.sample([obs], noise=noise, guidance=off).normalized,
                              plain.normalized)


def test_bench_rtc_prints_all_modes_side_by_side(capsys):
    from pi0_ttnn_node.tools import bench_rtc

    assert bench_rtc.main(["--models", "pi05", "--backends", "torch", "--repeats", "1",
                           "--warmup", "0", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    assert [r["mode"] for r in rows] == ["plain", "rtc-forward", "rtc-vjp"]
    assert rows[0]["ratio_vs_plain"] == 1.0
    assert rows[1]["rel_l2_forward_vs_vjp"] > 0
    assert rows[1]["frozen_prefix_err"] < rows[0]["frozen_prefix_err"]
