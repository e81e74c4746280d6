"""The stricter emulated device: configurations a card cannot run are refused with a clear error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pi0_ttnn_node.ttnn_backend.emulated_limits import (TRACE_BYTES_PER_OP, DeviceBudget, DeviceLimitError,
                                                        board_limits)
from pi0_ttnn_node.ttnn_backend.runtime import (TtRuntimeConfig, import_ttnn, mock_cluster_descriptor,
                                                open_tt_device)

ttnn = import_ttnn(emulate=True)
L1_WH = 1464 * 1024


@pytest.fixture
def open_dev():
    handles = []

    def make(**kwargs):
        handle = open_tt_device(TtRuntimeConfig(emulate=True, **kwargs))
        handles.append(handle)
        return handle.device

    yield make
    for handle in handles:
        handle.close()


def up(dev, t, memory_config=None, dtype=None):
    return ttnn.from_torch(t, dtype=dtype or ttnn.bfloat16, layout=ttnn.TILE_LAYOUT, device=dev,
                           memory_config=memory_config)


def spec(x_end, y_end, shape):
    grid = ttnn.CoreRangeSet({ttnn.CoreRange(ttnn.CoreCoord(0, 0), ttnn.CoreCoord(x_end, y_end))})
    return ttnn.ShardSpec(grid, shape, ttnn.ShardOrientation.ROW_MAJOR)


def sharded(layout, shard_spec):
    return ttnn.MemoryConfig(layout, ttnn.BufferType.L1, shard_spec)


@pytest.mark.parametrize("board,grid,l1,dram", [
    ("wormhole_n150", (8, 8), L1_WH, 12 * 1024 ** 3),
    ("wormhole_n300", (8, 7), L1_WH, 12 * 1024 ** 3),
    ("blackhole_p150", (13, 10), 1536 * 1024, 8 * 4177920 * 1024),
])
def test_board_limits_come_from_the_cluster_descriptor(board, grid, l1, dram):
    limits = board_limits(mock_cluster_descriptor(board))
    assert (limits.grid, limits.l1_bytes_per_core, limits.dram_bytes) == (grid, l1, dram)
    assert limits.chips == (2 if board == "wormhole_n300" else 1)


def test_l1_budget_counts_live_tensors_and_frees_on_deallocate(open_dev):
    # 64 KiB of L1 per core left after l1_small_size; a [1024, 1024] bf16 tensor puts 32 KiB on each of 64 cores
    dev = open_dev(l1_small_size=L1_WH - 64 * 1024)
    a = up(dev, torch.zeros(1024, 1024), ttnn.L1_MEMORY_CONFIG)
    b = up(dev, torch.zeros(1024, 1024), ttnn.L1_MEMORY_CONFIG)
    with pytest.raises(DeviceLimitError, match=r"L1 full on n150 core 0: 65,536 bytes already in L1 \+ 32,768"):
        up(dev, torch.zeros(1024, 1024), ttnn.L1_MEMORY_CONFIG)
    ttnn.deallocate(a)
    c = up(dev, torch.zeros(1024, 1024), ttnn.L1_MEMORY_CONFIG)  # fits again
    del b
    import gc

    gc.collect()
    up(dev, torch.zeros(1024, 1024), ttnn.L1_MEMORY_CONFIG)  # a dropped tensor frees its L1 too
    assert dev.budget.peak_l1_per_core == 64 * 1024 and c.is_allocated()


def test_op_outputs_in_l1_count_against_the_budget(open_dev):
    dev = open_dev(l1_small_size=L1_WH - 64 * 1024)
    x = up(dev, torch.zeros(1024, 1024), ttnn.L1_MEMORY_CONFIG)
    y = ttnn.add(x, x, memory_config=ttnn.L1_MEMORY_CONFIG)
    with pytest.raises(DeviceLimitError, match="ttnn.multiply: L1 full"):
        ttnn.multiply(x, y, memory_config=ttnn.L1_MEMORY_CONFIG)
    ttnn.multiply(x, y, memory_config=ttnn.DRAM_MEMORY_CONFIG)  # DRAM is fine


def test_l1_small_size_larger_than_l1_is_refused_at_open(open_dev):
    with pytest.raises(DeviceLimitError, match="leaves no L1 on n150"):
        open_dev(l1_small_size=L1_WH)


def test_dram_capacity_of_resident_tensors():
    budget = DeviceBudget(board_limits(mock_cluster_descriptor("wormhole_n150")), 24576, 0)
    dram = SimpleNamespace(buffer_type="BufferType.DRAM", memory_layout="TensorMemoryLayout.INTERLEAVED")

    class FakeTensor:  # a [rows, 65536] bf16 TILE tensor: only its shape is read, nothing allocated
        def __init__(self, rows):
            self.shape = self.padded_shape = (rows, 65536)
            self.dtype, self.layout = "DataType.BFLOAT16", "Layout.TILE"

    weights = FakeTensor

    keep = [weights(40960) for _ in range(2)]  # 2 x 5 GiB
    for tensor in keep:
        budget.allocate(tensor, dram, "weights")
    with pytest.raises(DeviceLimitError, match=r"DRAM full on n150: .* the chip has 12,884,901,888; use bfloat8_b"):
        budget.allocate(weights(40960), dram, "weights")
    budget.free(keep[0])
    budget.allocate(weights(40960), dram, "weights")


def test_shard_grid_outside_the_worker_grid_is_refused(open_dev):
    dev = open_dev()
    bad = sharded(ttnn.TensorMemoryLayout.HEIGHT_SHARDED, spec(8, 0, (32, 64)))  # x = 8 on an 8x8 grid
    with pytest.raises(DeviceLimitError, match=r"shard grid reaches core \(8, 0\) but n150 has a 8x8"):
        up(dev, torch.zeros(288, 64), bad)
    up(dev, torch.zeros(288, 64), sharded(ttnn.TensorMemoryLayout.HEIGHT_SHARDED, spec(7, 1, (32, 64))))


def test_shard_shape_must_be_tile_aligned_and_cover_the_tensor(open_dev):
    dev = open_dev()
    with pytest.raises(DeviceLimitError, match=r"shard shape \[48, 64\] of a TILE tensor is not a multiple"):
        up(dev, torch.zeros(96, 64), sharded(ttnn.TensorMemoryLayout.HEIGHT_SHARDED, spec(1, 0, (48, 64))))
    with pytest.raises(DeviceLimitError, match="needs 4 cores but the shard grid has 2"):
        up(dev, torch.zeros(128, 64), sharded(ttnn.TensorMemoryLayout.HEIGHT_SHARDED, spec(1, 0, (32, 64))))
    with pytest.raises(DeviceLimitError, match="must span the whole width"):
        up(dev, torch.zeros(64, 64), sharded(ttnn.TensorMemoryLayout.HEIGHT_SHARDED, spec(1, 0, (32, 32))))


def test_core_grid_and_matmul_program_configs_must_fit_the_board(open_dev):
    dev = open_dev()
    x, w = up(dev, torch.zeros(256, 256)), up(dev, torch.zeros(256, 256))
    with pytest.raises(DeviceLimitError, match="core grid 13x10 does not fit the 8x8 worker grid of n150"):
        ttnn.linear(x, w, core_grid=ttnn.CoreGrid(y=10, x=13))

    def config(grid=(8, 8), block_w=2, sub=(1, 1), per_core=(1, 1)):
        return ttnn.MatmulMultiCoreReuseMultiCastProgramConfig(
            compute_with_storage_grid_size=ttnn.CoreCoord(*grid), in0_block_w=block_w, out_subblock_h=sub[0],
            out_subblock_w=sub[1], per_core_M=per_core[0], per_core_N=per_core[1], transpose_mcast=False,
            fused_activation=None)

    fp32 = ttnn.WormholeComputeKernelConfig(math_fidelity=ttnn.MathFidelity.HiFi4, fp32_dest_acc_en=True)
    ttnn.linear(x, w, program_config=config())  # 8x8 tiles on 8x8 cores: fine
    with pytest.raises(DeviceLimitError, match="core grid 9x8"):
        ttnn.linear(x, w, program_config=config(grid=(9, 8)))
    with pytest.raises(DeviceLimitError, match="in0_block_w=3 does not divide K = 8 tiles"):
        ttnn.linear(x, w, program_config=config(block_w=3))
    with pytest.raises(DeviceLimitError, match=r"subblock 2x4 = 8 tiles > 4 tiles of Dest \(fp32_dest_acc_en=True\)"):
        ttnn.linear(x, w, program_config=config(sub=(2, 4), per_core=(2, 4)), compute_kernel_config=fp32)
    with pytest.raises(DeviceLimitError, match="do not cover the 8x8-tile output"):
        ttnn.linear(x, w, program_config=config(grid=(4, 4)))
    sdpa = ttnn.SDPAProgramConfig(compute_with_storage_grid_size=ttnn.CoreCoord(8, 8), q_chunk_size=48,
                                  k_chunk_size=64)
    q = up(dev, torch.zeros(1, 1, 64, 64))
    with pytest.raises(DeviceLimitError, match="q_chunk_size=48 is not a multiple of 32"):
        ttnn.transformer.scaled_dot_product_attention(q, q, q, is_causal=False, program_config=sdpa)


def test_p150_accepts_its_larger_grid(open_dev):
    dev = open_dev(emulated_board="blackhole_p150")
    x = up(dev, torch.zeros(256, 256))
    assert (dev.compute_with_storage_grid_size().x, dev.compute_with_storage_grid_size().y) == (13, 10)
    ttnn.linear(x, x, core_grid=ttnn.CoreGrid(y=10, x=13))


def test_trace_larger_than_the_trace_region_is_refused(open_dev):
    dev = open_dev(trace_region_size=2 * TRACE_BYTES_PER_OP + 100)
    x = up(dev, torch.zeros(32, 32))
    trace_id = ttnn.begin_trace_capture(dev, cq_id=0)
    y = ttnn.add(x, x)
    y = ttnn.add(y, x)
    with pytest.raises(DeviceLimitError, match="3 ops need about 12,288 bytes of trace region .* trace_region_size=8,292"):
        ttnn.add(y, x)
    ttnn.end_trace_capture(dev, trace_id, cq_id=0)


def test_trace_replay_reuses_the_captured_l1_buffers(open_dev):
    dev = open_dev(l1_small_size=L1_WH - 64 * 1024, trace_region_size=1_000_000)
    x = up(dev, torch.ones(1024, 1024), ttnn.L1_MEMORY_CONFIG)  # 32 KiB per core
    trace_id = ttnn.begin_trace_capture(dev, cq_id=0)
    y = ttnn.add(x, x, memory_config=ttnn.L1_MEMORY_CONFIG)  # the other 32 KiB
    ttnn.end_trace_capture(dev, trace_id, cq_id=0)
    for _ in range(2):
        ttnn.execute_trace(dev, trace_id, cq_id=0, blocking=True)  # no new L1 on replay
    assert ttnn.to_torch(y).float().mean().item() == 2.0
    ttnn.release_trace(dev, trace_id)
