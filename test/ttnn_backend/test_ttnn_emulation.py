"""The emulated ttnn device: real signatures, golden maths, real bf16/bf8 storage, counters, traces."""

from __future__ import annotations

import logging

import pytest
import torch

from pi0_ttnn_node.ttnn_backend.runtime import TtRuntimeConfig, import_ttnn, open_tt_device

ttnn = import_ttnn(emulate=True)


@pytest.fixture
def dev():
    handle = open_tt_device(TtRuntimeConfig(emulate=True, trace_region_size=1_000_000))
    yield handle.device
    handle.close()


def up(dev, t, dtype=None, layout=None):
    return ttnn.from_torch(t, dtype=dtype or ttnn.bfloat16, layout=layout or ttnn.TILE_LAYOUT, device=dev)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def kernel(fidelity="HiFi4", fp32=True):
    return ttnn.WormholeComputeKernelConfig(math_fidelity=getattr(ttnn.MathFidelity, fidelity), fp32_dest_acc_en=fp32)


def test_emulated_linear_matches_torch_within_bf16_tolerance(dev):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 40, 64), torch.randn(64, 96) / 8, torch.randn(96)
    args = (up(dev, x), up(dev, w))
    y = ttnn.linear(*args, bias=up(dev, b.reshape(1, -1)), activation="silu", compute_kernel_config=kernel())
    assert list(y.shape) == [2, 40, 96] and y.dtype == ttnn.bfloat16
    assert rel_err(ttnn.to_torch(y), torch.nn.functional.silu(x @ w + b)) < 1e-2
    # without a kernel config ttnn runs LoFi with a bf16 Dest: visibly coarser, as on a card
    lofi = rel_err(ttnn.to_torch(ttnn.linear(*args)), x @ w)
    assert 1e-2 < lofi < 6e-2


def test_emulated_linear_with_bfloat8_weights_stays_within_bf8_tolerance(dev):
    torch.manual_seed(1)
    x, w = torch.randn(1, 64, 128), torch.randn(128, 64) / 11
    y = ttnn.linear(up(dev, x), up(dev, w, ttnn.bfloat8_b))
    err = rel_err(ttnn.to_torch(y), x @ w)
    assert 1e-4 < err < 3e-2  # bf8 weights are really quantised, and still close


def test_linear_output_dtype_bfloat8_equals_a_from_torch_round_trip(dev):
    torch.manual_seed(2)
    x, w = up(dev, torch.randn(1, 32, 64)), up(dev, torch.randn(64, 64))
    y8 = ttnn.to_torch(ttnn.linear(x, w, dtype=ttnn.bfloat8_b, compute_kernel_config=kernel())).float()
    exact = ttnn.to_torch(x).float() @ ttnn.to_torch(w).float()
    host = ttnn.from_torch(exact, dtype=ttnn.bfloat8_b, layout=ttnn.TILE_LAYOUT)  # host round trip, no device
    assert torch.equal(y8, ttnn.to_torch(host).float())
    assert not torch.equal(y8, exact.to(torch.bfloat16).float())


def test_unknown_keyword_raises_type_error_naming_the_op_and_its_keywords(dev):
    x = up(dev, torch.randn(32, 32))
    with pytest.raises(TypeError, match=r"ttnn\.linear .*biass.*Keywords accepted.*bias"):
        ttnn.linear(x, x, biass=x)
    with pytest.raises(TypeError, match=r"ttnn\.transformer\.scaled_dot_product_attention"):
        ttnn.transformer.scaled_dot_product_attention(x, x, x, mask=x)


def test_calls_are_bound_to_the_real_signatures_and_defaults(dev):
    x = up(dev, torch.randn(1, 1, 32, 3 * 64))
    with pytest.raises(TypeError, match="ttnn.pad"):
        ttnn.pad(x, padding=((0, 0), (0, 0), (0, 0), (0, 32)))  # the real pad has no default value
    _, k, _ = ttnn.experimental.nlp_create_qkv_heads(x, num_heads=1, num_kv_heads=1)
    assert list(k.shape) == [1, 1, 64, 32]  # real default transpose_k_heads=True


def test_counters_count_transfers_and_see_none_inside_a_device_only_region(dev):
    dev.stats.reset()
    x = up(dev, torch.randn(1, 32, 64))
    w = up(dev, torch.randn(64, 64))
    assert dev.stats.uploads == 2 and dev.stats.downloads == 0
    with dev.stats.measure() as region:
        for _ in range(3):
            x = ttnn.add(ttnn.linear(x, w), x)
    assert region.uploads == 0 and region.downloads == 0
    assert region.ops["linear"] == 3 and region.ops["add"] == 3
    assert region.flops_by_op["linear"] == 3 * 2 * 32 * 64 * 64 and region.matmul_flops == 3 * 2 * 32 * 64 * 64
    ttnn.to_torch(x)
    host = ttnn.from_device(x)
    assert dev.stats.downloads == 2 and not isinstance(host, dev.tensor_type)
    ttnn.to_torch(host)  # a host tensor is not a download
    assert dev.stats.downloads == 2


def test_sdpa_with_an_additive_mask_matches_torch_for_8_query_heads_and_1_kv_head(dev):
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 8, 40, 64), torch.randn(1, 1, 50, 64), torch.randn(1, 1, 50, 64)
    mask = torch.zeros(1, 1, 40, 50)
    mask[..., 30:] = -1e9  # padded keys
    tq, tk, tv, tm = (up(dev, t) for t in (q, k, v, mask))
    out = ttnn.transformer.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, is_causal=False, scale=0.125)
    qq, kk, vv = (ttnn.to_torch(t).float() for t in (tq, tk, tv))
    ref = torch.softmax(qq @ kk.transpose(-1, -2) * 0.125 + mask, dim=-1) @ vv
    assert list(out.shape) == [1, 8, 40, 64]
    assert rel_err(ttnn.to_torch(out), ref) < 1e-2
    assert dev.stats.flops_by_op["transformer.scaled_dot_product_attention"] == 4 * 8 * 40 * 50 * 64


def test_rotary_embedding_is_split_half_rope_with_rows_padded_to_a_tile(dev):
    torch.manual_seed(4)
    x, angles = torch.randn(1, 8, 40, 64), torch.randn(1, 1, 40, 32)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    tx, tc, ts = up(dev, x, ttnn.float32), up(dev, cos, ttnn.float32), up(dev, sin, ttnn.float32)
    out = ttnn.experimental.rotary_embedding(tx, tc, ts)
    assert list(out.shape) == [1, 8, 64, 64]  # the card pads the sequence to 64 rows
    rotated = torch.cat([-x[..., 32:], x[..., :32]], -1)
    got = ttnn.to_torch(ttnn.slice(out, [0, 0, 0, 0], [1, 8, 40, 64]))
    assert torch.allclose(got, x * cos + rotated * sin, atol=1e-5)


def test_nlp_create_qkv_heads_splits_8_query_heads_and_1_kv_head(dev):
    fused = torch.randn(2, 1, 40, (8 + 2) * 64)
    q, k, v = ttnn.experimental.nlp_create_qkv_heads(up(dev, fused), num_heads=8, num_kv_heads=1,
                                                     transpose_k_heads=False)
    assert [list(t.shape) for t in (q, k, v)] == [[2, 8, 40, 64], [2, 1, 40, 64], [2, 1, 40, 64]]
    fused_bf16 = fused.to(torch.bfloat16).float()
    assert torch.equal(ttnn.to_torch(q)[:, 3].float(), fused_bf16[:, 0, :, 3 * 64:4 * 64])
    assert torch.equal(ttnn.to_torch(v)[:, 0].float(), fused_bf16[:, 0, :, 9 * 64:])
    merged = ttnn.experimental.nlp_concat_heads(q)
    assert torch.equal(ttnn.to_torch(merged).float(), fused_bf16[..., :8 * 64])


def test_trace_replay_gives_the_eager_result_for_refreshed_inputs(dev):
    w = up(dev, torch.randn(64, 64) / 8)
    x_in = up(dev, torch.zeros(1, 32, 64))

    def step(x):
        return ttnn.add(ttnn.gelu(ttnn.linear(x, w)), x)

    ttnn.copy(up(dev, torch.randn(1, 32, 64)), x_in)
    trace_id = ttnn.begin_trace_capture(dev, cq_id=0)
    y = step(x_in)
    ttnn.end_trace_capture(dev, trace_id, cq_id=0)
    with pytest.raises(RuntimeError, match="trace capture"):
        ttnn.to_torch(y)  # undefined on a card until the trace runs
    fresh = up(dev, torch.randn(1, 32, 64))
    ttnn.copy(fresh, x_in)
    with dev.stats.measure() as region:
        ttnn.execute_trace(dev, trace_id, cq_id=0, blocking=True)
    assert region.ops["linear"] == 1 and region.uploads == 0 and region.trace_replays == 1
    assert torch.equal(ttnn.to_torch(y), ttnn.to_torch(step(fresh)))
    ttnn.release_trace(dev, trace_id)
    with pytest.raises(RuntimeError, match="not a captured"):
        ttnn.execute_trace(dev, trace_id, cq_id=0)


def test_uploads_inside_a_trace_capture_raise(dev):
    trace_id = ttnn.begin_trace_capture(dev, cq_id=0)
    with pytest.raises(RuntimeError, match="not allowed inside"):
        up(dev, torch.randn(32, 32))
    ttnn.end_trace_capture(dev, trace_id, cq_id=0)


def test_closing_restores_every_original_ttnn_op():
    originals = (ttnn.linear, ttnn.from_torch, ttnn.experimental.rotary_embedding, ttnn.moreh_cumsum)
    handle = open_tt_device(TtRuntimeConfig(emulate=True))
    assert ttnn.linear is not originals[0] and ttnn.moreh_cumsum is not originals[3]
    handle.close()
    handle.close()
    assert (ttnn.linear, ttnn.from_torch, ttnn.experimental.rotary_embedding, ttnn.moreh_cumsum) == originals


def test_opening_the_emulation_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        open_tt_device(TtRuntimeConfig(emulate=True)).close()
    assert any("EMULATION" in r.message and "not a Tenstorrent card" in r.message for r in caplog.records)


def test_bfloat8_needs_tile_layout(dev):
    x = up(dev, torch.randn(32, 32), ttnn.bfloat8_b)
    with pytest.raises(RuntimeError, match="TILE"):
        ttnn.to_layout(x, ttnn.ROW_MAJOR_LAYOUT)


def test_device_ops_reject_host_tensors_and_unemulated_ops_fail_loudly(dev):
    host = ttnn.from_torch(torch.randn(32, 32), dtype=ttnn.bfloat16, layout=ttnn.TILE_LAYOUT)
    with pytest.raises(RuntimeError, match="on the device"):
        ttnn.linear(host, host)
    with pytest.raises(RuntimeError, match="on the host"):
        ttnn.linear(up(dev, torch.randn(32, 32)), host)
    with pytest.raises(NotImplementedError, match="moreh_cumsum is not emulated"):
        ttnn.moreh_cumsum(up(dev, torch.randn(1, 32, 32, 32)), dim=1)


def test_device_reports_the_descriptor_grid_and_tracks_program_cache_entries(dev):
    grid = dev.compute_with_storage_grid_size()
    assert (grid.x, grid.y) == (8, 8) and dev.arch() == ttnn.device.Arch.WORMHOLE_B0
    x = up(dev, torch.randn(32, 32))
    ttnn.add(x, x)
    ttnn.add(x, x)
    ttnn.synchronize_device(dev)
    assert dev.num_program_cache_entries() == 1
