"""RTC guidance on the Torch backend.

1. Reference check written from the paper's equations (tau runs 0 -> 1, A_{tau+1/N} = A + u_g / N)
   on a linear velocity field with a known Jacobian, against the project's guided step in PI0's
   convention (t runs 1 -> 0), for `vjp` and `forward`.
2. The sign: a guided step moves x0_hat toward Y.
3. On the embedded PI0 / PI0.5: W = 0 or beta = 0 is bit-identical to the plain sampler, guidance
   pulls the chunk toward Y, and `vjp` really differentiates through the expert (finite
   differences).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pi0_ttnn_node import rtc
from pi0_ttnn_node.backends import BackendSpec, create_backend
from pi0_ttnn_node.checkpoint import LoadedCheckpoint
from pi0_ttnn_node.embedded import random_state_dict, tiny_config, tiny_norm_stats
from pi0_ttnn_node.preprocessing import ModelInputs
from pi0_ttnn_node.torch_backend import PI0Model
from pi0_ttnn_node.torch_backend.torch_denoise import rtc_guided_velocity

H, A, N = 6, 3, 10  # toy chunk, action dims, Euler steps


# -- 1 & 2: the toy field ------------------------------------------------------------------------
def _toy(seed: int = 0, scale: float = 0.3):
    """v(x) = M x + b on flattened [1, H, A] chunks, float64; plus Y and W."""
    gen = torch.Generator().manual_seed(seed)
    n = H * A
    m = scale * torch.randn(n, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    y = torch.randn(1, H, A, generator=gen, dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0, 0.7, 0.3, 0.0, 0.0]], dtype=torch.float64)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x.reshape(1, n) @ m.T + b).reshape(1, H, A)

    return m, b, y, w, velocity


def _paper_step(m, b, y, w, a_tau, tau, beta, n_steps, method):
    """One guided Euler step written from the paper, in its own convention (no project code).

    The paper's velocity field is dA/dtau = -v (PI0's v is dx/dt with t = 1 - tau).
    """
    n = m.shape[0]
    flat = a_tau.reshape(n)
    u = -(m @ flat + b)
    a1_hat = flat + (1 - tau) * u
    e = ((y.reshape(n) - a1_hat) * w.reshape(H, 1).expand(H, A).reshape(n))
    jac = torch.eye(n, dtype=torch.float64) - (1 - tau) * m  # d A1_hat / d A_tau
    g = jac.T @ e if method == "vjp" else e
    if tau == 0:
        weight = beta
    else:
        r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
        weight = min(beta, ((1 - tau) / tau) / r2)
    u_guided = u + weight * g
    return (flat + u_guided / n_steps).reshape(1, H, A)


def _project_step(velocity, y, w, x_t, t, beta, n_steps, method):
    tt = torch.full((1,), t, dtype=torch.float64)
    v = rtc_guided_velocity(velocity, x_t, tt, y, w, rtc.guidance_weight(t, beta), method)
    return x_t + (-1.0 / n_steps) * v


@pytest.mark.parametrize("method", ["vjp", "forward"])
@pytest.mark.parametrize("k", [0, 3, 7])
def test_guided_step_matches_the_papers_equations(method, k):
    m, b, y, w, velocity = _toy()
    x_t = torch.randn(1, H, A, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = 1.0 - k / N
    ours = _project_step(velocity, y, w, x_t, t, 5.0, N, method)
    paper = _paper_step(m, b, y, w, x_t, 1.0 - t, 5.0, N, method)
    torch.testing.assert_close(ours, paper, rtol=0, atol=1e-6)
    if method == "vjp":  # with a non-trivial Jacobian the two methods really differ
        fwd = _project_step(velocity, y, w, x_t, t, 5.0, N, "forward")
        assert float((fwd - ours).abs().max()) > 1e-3


def _x0_hat(velocity, x, t):
    return x - t * velocity(x, torch.full((1,), t, dtype=x.dtype))


@pytest.mark.parametrize("method", ["vjp", "forward"])
def test_a_guided_step_moves_x0_hat_toward_the_target(method):
    """PI0's t runs 1 -> 0: with the wrong sign (v + w g), x0_hat would move away from Y.

    |(Y - x0_hat) * W| after the guided step at t_next vs after the plain step, every step; the
    field's Jacobian is mild (|M| ~ 0.5) so one step of size w / N cannot overshoot.
    """
    m, b, y, w, velocity = _toy(1, scale=0.25)
    x_t = torch.randn(1, H, A, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for k in range(N - 1):
        t, t_next = 1.0 - k / N, 1.0 - (k + 1) / N
        tt = torch.full((1,), t, dtype=torch.float64)
        v = velocity(x_t, tt)
        plain = x_t + (-1.0 / N) * v
        guided = _project_step(velocity, y, w, x_t, t, 5.0, N, method)
        wrong_sign = x_t + (-1.0 / N) * (2 * v - rtc_guided_velocity(
            velocity, x_t, tt, y, w, rtc.guidance_weight(t, 5.0), method))
        errors = [float(((y - _x0_hat(velocity, x, t_next)) * w[..., None]).abs().sum())
                  for x in (guided, plain, wrong_sign)]
        assert errors[0] < errors[1] < errors[2], (k, errors)


def test_inactive_guidance_arithmetic_is_exact():
    """Even without the skip in the sampler, W = 0 or beta = 0 leaves v bit for bit."""
    _, _, y, w, velocity = _toy()
    x_t = torch.randn(1, H, A, dtype=torch.float64)
    t = torch.full((1,), 0.6, dtype=torch.float64)
    v = velocity(x_t, t)
    for method in ("forward", "vjp"):
        assert torch.equal(rtc_guided_velocity(velocity, x_t, t, y, torch.zeros_like(w), 5.0,
                                               method), v)
        assert torch.equal(rtc_guided_velocity(velocity, x_t, t, y, w,
                                               rtc.guidance_weight(0.6, 0.0), method), v)


# -- 3: the embedded models ----------------------------------------------------------------------
BATCH = 2


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def setup(request):
    cfg = tiny_config(request.param)
    model = PI0Model(cfg)
    model.load_state_dict(random_state_dict(cfg, seed=11), strict=True)
    model.eval()
    gen = torch.Generator().manual_seed(1)
    size, lang = cfg.vision.image_size, cfg.tokenizer_max_length
    lang_masks = torch.zeros(BATCH, lang, dtype=torch.bool)
    lang_masks[0, :5] = True
    lang_masks[1, :9] = True
    args = dict(
        images=[torch.rand(BATCH, 3, size, size, generator=gen) * 2 - 1
                for _ in range(cfg.num_image_slots)],
        img_masks=[torch.tensor([True, i != 1]) for i in range(cfg.num_image_slots)],
        lang_tokens=torch.randint(1, cfg.vlm.vocab_size, (BATCH, lang), generator=gen) * lang_masks,
        lang_masks=lang_masks,
        state=None if cfg.is_pi05 else torch.randn(BATCH, cfg.max_state_dim, generator=gen))
    shape = (BATCH, cfg.chunk_size, cfg.max_action_dim)
    prev = model.sample_actions(**args, noise=torch.randn(shape, generator=gen))
    noise = torch.randn(shape, generator=gen)
    plain = model.sample_actions(**args, noise=noise)
    return cfg, model, args, noise, prev, plain


def _guidance(prev, method, beta=5.0, delay=3, horizon=10):
    return rtc.build_guidance(prev, consumed=horizon, delay=delay, execution_horizon=horizon,
                              config=rtc.RtcConfig("exp", beta, method))


@pytest.mark.parametrize("method", ["forward", "vjp"])
def test_zero_weights_or_zero_beta_is_bit_identical_to_the_plain_sampler(setup, method):
    _, model, args, noise, prev, plain = setup
    g = _guidance(prev, method)
    for inactive in (rtc.RtcGuidance(g.target, torch.zeros_like(g.weights), 5.0, method),
                     rtc.RtcGuidance(g.target, g.weights, 0.0, method)):
        assert torch.equal(model.sample_actions(**args, noise=noise, guidance=inactive), plain)
    assert torch.equal(model.sample_actions(**args, noise=noise, guidance=None), plain)


@pytest.mark.parametrize("method", ["forward", "vjp"])
def test_guidance_pulls_the_chunk_toward_the_previous_one(setup, method):
    _, model, args, noise, prev, plain = setup
    g = _guidance(prev, method)
    guided = model.sample_actions(**args, noise=noise, guidance=g)
    assert guided.shape == plain.shape and bool(torch.isfinite(guided).all())
    assert bool((rtc.weighted_error(guided, g) < 0.5 * rtc.weighted_error(plain, g)).all())
    assert rtc.frozen_prefix_error(guided, g.target, 3) < 0.5 * rtc.frozen_prefix_error(
        plain, g.target, 3)
    # actions past H - s are not guided at all beyond what the velocity field carries over
    assert not torch.equal(guided, plain)


def test_vjp_differentiates_through_the_expert(setup):
    """<g, u> = <e, J u> for a random direction u, J by central differences of x0_hat."""
    cfg, model, args, noise, prev, _ = setup
    g = _guidance(prev, "vjp")
    prefix = model.embed_prefix(args["images"], args["img_masks"], args["lang_tokens"],
                                args["lang_masks"])
    with torch.no_grad():
        cache = model.prefill(*prefix)
    state = args["state"]
    t = torch.full((BATCH,), 0.7)

    def velocity(x, tt):
        return model.denoise_step(cache, state, x, tt)

    def x0_hat(x):
        with torch.no_grad():
            return x - 0.7 * velocity(x, t)

    x = noise.clone()
    w_b = g.weights[..., None]
    e = (g.target - x0_hat(x)) * w_b
    v = velocity(x, t)
    grad = (v - rtc_guided_velocity(velocity, x, t, g.target, g.weights, 1.0, "vjp"))
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    h = 1e-2
    jvp = (x0_hat(x + h * u) - x0_hat(x - h * u)) / (2 * h)
    lhs, rhs = float((grad * u).sum()), float((e * jvp).sum())
    assert lhs == pytest.approx(rhs, rel=2e-3)
    assert not math.isclose(lhs, float((e * u).sum()), rel_tol=1e-2)  # not the identity


def test_torch_backend_passes_guidance_through(setup):
    """create_backend(BackendSpec('torch')).sample_actions(guidance=...) = the model's chunk."""
    cfg, model, args, noise, prev, plain = setup
    checkpoint = LoadedCheckpoint(path=Path("/nonexistent"), config=cfg,
                                  state_dict=random_state_dict(cfg, seed=11),
                                  norm_stats=tiny_norm_stats(cfg), ignored_keys=[],
                                  source_format="lerobot")
    backend = create_backend(BackendSpec(backend="torch"), checkpoint)
    state = args["state"] if args["state"] is not None else torch.zeros(BATCH, cfg.max_state_dim)
    inputs = ModelInputs(images=args["images"], img_masks=args["img_masks"],
                         lang_tokens=args["lang_tokens"], lang_masks=args["lang_masks"],
                         state=state)
    g = _guidance(prev, "forward")
    out = backend.sample_actions(inputs, noise, guidance=g)
    assert isinstance(out, np.ndarray)
    assert np.array_equal(out, model.sample_actions(**args, noise=noise, guidance=g).numpy())
    assert np.array_equal(backend.sample_actions(inputs, noise), plain.numpy())
    backend.close()
