"""Matrix-engine numerics of the emulation against hand-computed values and an independent numpy model.

Hand cases use bf16 numbers whose mantissa bits are chosen so each fidelity phase is visible:
  w = 1 + 2^-5 + 2^-7  (SrcA, 1 hidden + 4 bits per phase: phase 0 sees 1.0, phase 1 adds 2^-5 + 2^-7)
  a = 1 + 2^-7         (SrcB, 1 hidden + 6 bits: phases 0/1 see 1.0, phases 2/3 add 2^-7)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pi0_ttnn_node.ttnn_backend import emulated_numerics as numerics
from pi0_ttnn_node.ttnn_backend.runtime import TtRuntimeConfig, import_ttnn, open_tt_device

ttnn = import_ttnn(emulate=True)
W = 1 + 2 ** -5 + 2 ** -7
A = 1 + 2 ** -7
# (SrcA, SrcB) masks per phase: tt-llk golden_generators.py FP_FIDELITY_ITER_MASK, restated here
MASKS = [(0b11111000000, 0b11111110000), (0b00000111110, 0b11111110000),
         (0b11111000000, 0b00000001111), (0b00000111110, 0b00000001111)]
PHASES = {"LoFi": 1, "HiFi2": 2, "HiFi3": 3, "HiFi4": 4}


@pytest.fixture(scope="module")
def dev():
    handle = open_tt_device(TtRuntimeConfig(emulate=True))
    yield handle.device
    handle.close()


def kernel(fidelity, fp32=True):
    return ttnn.WormholeComputeKernelConfig(math_fidelity=getattr(ttnn.MathFidelity, fidelity), fp32_dest_acc_en=fp32)


def up(dev, t, dtype=None):
    return ttnn.from_torch(t, dtype=dtype or ttnn.bfloat16, layout=ttnn.TILE_LAYOUT, device=dev)


def one_product(dev, a, w, fidelity, fp32=True, dtype=None):
    """a * w through ttnn.matmul: [1, 32] @ [32, 32] with one non-zero term."""
    x, y = torch.zeros(1, 32), torch.zeros(32, 32)
    x[0, 0], y[0, 0] = a, w
    out = ttnn.matmul(up(dev, x, dtype), up(dev, y, dtype), compute_kernel_config=kernel(fidelity, fp32),
                      dtype=ttnn.float32)
    return float(ttnn.to_torch(out)[0, 0])


# -- independent numpy model (frexp integer mantissas, float64 sums, explicit bf16 rounding) -------
def np_slice(v, mask):
    m, e = np.frexp(v.astype(np.float64))  # v = m 2^e, 0.5 <= |m| < 1: 11-bit mantissa = |m| 2^11
    mant = np.floor(np.abs(m) * 2 ** 11).astype(np.int64) & mask
    return np.sign(m) * mant * np.exp2(e - 11.0)


def np_bf16(v):
    bits = np.asarray(v, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def np_matmul(x, w, fidelity, fp32_dest):
    if fidelity == "HiFi4":
        pairs = [(x.astype(np.float64), w.astype(np.float64))]
    else:
        pairs = [(np_slice(x, mb), np_slice(w, ma)) for ma, mb in MASKS[:PHASES[fidelity]]]
    if fp32_dest:
        return sum(xs @ ws for xs, ws in pairs)
    acc = np.zeros((x.shape[0], w.shape[1]))
    for k0 in range(0, x.shape[1], 32):
        for xs, ws in pairs:
            acc = np_bf16(acc + xs[:, k0:k0 + 32] @ ws[k0:k0 + 32])
    return acc


# -- hand cases ------------------------------------------------------------------------------------
def test_mantissa_slices_of_one_number_are_the_documented_bits():
    v = torch.tensor([1 + 2 ** -1 + 2 ** -5 + 2 ** -7])  # mantissa 1000101
    assert numerics.mantissa_slice(v, MASKS[0][0]).item() == 1.5  # hidden + 4 MSBs
    assert numerics.mantissa_slice(v, MASKS[1][0]).item() == 2 ** -5 + 2 ** -7  # next 5 bits, no hidden
    assert numerics.mantissa_slice(v, MASKS[0][1]).item() == 1.5 + 2 ** -5  # hidden + 6 MSBs
    assert numerics.mantissa_slice(v, MASKS[2][1]).item() == 2 ** -7  # low 4 bits
    assert numerics.mantissa_slice(-v, MASKS[1][0]).item() == -(2 ** -5 + 2 ** -7)


@pytest.mark.parametrize("fidelity,expected", [
    ("LoFi", 1.0),  # SrcA 1.0000 x SrcB 1.000000
    ("HiFi2", 1 + 2 ** -5 + 2 ** -7),  # + SrcA's low bits x SrcB's high bits
    ("HiFi3", 1 + 2 ** -5 + 2 ** -6),  # + SrcA's high bits x SrcB's low bits (2^-7)
    ("HiFi4", A * W),  # every bit: 1 + 2^-5 + 2^-6 + 2^-12 + 2^-14
])
def test_matmul_fidelity_phases_on_a_hand_computed_product(dev, fidelity, expected):
    assert one_product(dev, A, W, fidelity) == expected


def test_activations_feed_srcb_and_weights_srca(dev):
    # swapping the operands moves 2^-5 into SrcB's 6-bit slice: LoFi now keeps it
    assert one_product(dev, W, A, "LoFi") == 1 + 2 ** -5
    assert one_product(dev, A, W, "LoFi") == 1.0


def test_float32_operands_are_truncated_to_tf32_in_the_source_registers(dev):
    assert one_product(dev, 1 + 2 ** -20, 1.0, "HiFi4", dtype=ttnn.float32) == 1.0
    assert one_product(dev, 1 + 2 ** -10, 1.0, "HiFi4", dtype=ttnn.float32) == 1 + 2 ** -10


def test_bf16_dest_rounds_after_every_32_wide_k_tile(dev):
    x = torch.ones(1, 96)
    w = torch.zeros(96, 32)
    w[:32, 0] = 1 / 32  # tile 0 adds 1.0
    w[32:, 0] = 0.75 * 2 ** -8 / 32  # tiles 1 and 2 each add 0.75 * 2^-8 < half a bf16 ulp at 1.0
    results = {fp32: float(ttnn.to_torch(ttnn.matmul(up(dev, x), up(dev, w), dtype=ttnn.float32,
                                                     compute_kernel_config=kernel("HiFi4", fp32)))[0, 0])
               for fp32 in (False, True)}
    assert results[True] == 1 + 1.5 * 2 ** -8
    assert results[False] == 1.0  # rounded per tile; rounding only the final sum would give 1 + 2^-7
    assert np_matmul(x.numpy(), w.numpy(), "HiFi4", False)[0, 0] == 1.0


def test_eltwise_multiply_and_reduce_sum_use_fidelity_and_add_does_not():
    a, b = torch.tensor([W]), torch.tensor([A])
    assert numerics.card_multiply(a, b, fidelity="LoFi", fp32_dest=True).item() == 1.0
    assert numerics.card_multiply(a, b, fidelity="HiFi2", fp32_dest=True).item() == W
    x = torch.full((1, 64), W)
    assert numerics.card_reduce_sum(x, -1, False, scaler=1.0, fidelity="LoFi", fp32_dest=True).item() == 64
    assert numerics.card_reduce_sum(x, -1, False, scaler=1.0, fidelity="HiFi4", fp32_dest=True).item() == 64 * W


def test_emulated_multiply_and_sum_ops(dev):
    x, y = torch.full((32, 32), W), torch.full((32, 32), A)
    prod = ttnn.to_torch(ttnn.multiply(up(dev, x), up(dev, y))).float()
    assert torch.equal(prod, (x * y).to(torch.bfloat16).float())  # eltwise programs run HiFi4
    total = ttnn.to_torch(ttnn.sum(up(dev, x), dim=-1, keepdim=True, compute_kernel_config=kernel("LoFi")))
    assert total.float()[0, 0].item() == 32.0


# -- against the independent numpy model ------------------------------------------------------------
@pytest.mark.parametrize("fidelity", list(PHASES))
@pytest.mark.parametrize("fp32_dest", [True, False])
def test_random_matmul_matches_the_numpy_model(dev, fidelity, fp32_dest):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 96, generator=gen).to(torch.bfloat16).float()
    w = (torch.randn(96, 64, generator=gen) / 8).to(torch.bfloat16).float()
    got = ttnn.to_torch(ttnn.matmul(up(dev, x), up(dev, w), dtype=ttnn.float32,
                                    compute_kernel_config=kernel(fidelity, fp32_dest))).double().numpy()
    want = np_matmul(x.numpy(), w.numpy(), fidelity, fp32_dest)
    assert np.allclose(got, want, rtol=0, atol=1e-5 if fp32_dest else 1e-12)


def test_lower_fidelity_costs_accuracy_in_order():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 256, generator=gen).to(torch.bfloat16).float()
    w = (torch.randn(256, 64, generator=gen) / 16).to(torch.bfloat16).float()
    exact = x.double() @ w.double()
    errors = [float((numerics.card_matmul(x, w, fidelity=f, fp32_dest=True).double() - exact).norm() / exact.norm())
              for f in PHASES]
    assert errors[0] > errors[1] > errors[2] >= errors[3]
    assert 5e-3 < errors[0] < 3e-2 and errors[3] < 1e-6


def test_sdpa_runs_both_matmuls_at_the_configured_fidelity(dev):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 32, 32, generator=gen).to(torch.bfloat16).float() for _ in range(3))
    outs = {}
    for fidelity in ("LoFi", "HiFi4"):
        out = ttnn.transformer.scaled_dot_product_attention(
            up(dev, q), up(dev, k), up(dev, v), is_causal=False, scale=0.25,
            compute_kernel_config=kernel(fidelity, True))
        outs[fidelity] = ttnn.to_torch(out).double().numpy()[0, 0]
    qn, kn, vn = (t.numpy()[0, 0] for t in (q, k, v))
    for fidelity, got in outs.items():
        scores = np_bf16(np_matmul(qn, kn.T, fidelity, True)) * 0.25
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs = np_bf16(probs / probs.sum(-1, keepdims=True))
        want = np_bf16(np_matmul(probs, vn, fidelity, True))  # bf16 output tensor
        assert np.abs(got - want).max() <= 2 ** -7 * np.abs(want).max()
    assert np.abs(outs["LoFi"] - outs["HiFi4"]).max() > 1e-3
