"""Latency cost model: roofline arithmetic on hand cases, depth extrapolation, and the CLI output."""

from __future__ import annotations

import collections
import dataclasses
import functools

import pytest

from pi0_ttnn_node.embedded import tiny_config
from pi0_ttnn_node.ttnn_backend import cost_model as cm
from pi0_ttnn_node.ttnn_backend import latency_prediction as lp
from pi0_ttnn_node.ttnn_backend.emulation import OpRecord, Operand
from pi0_ttnn_node.ttnn_backend.op_stream import record_config
from pi0_ttnn_node.ttnn_backend.ttnn_config import resolve_runtime_config
from pi0_ttnn_node.tools import predict_ttnn

BOARD = cm.BoardPerf("test", (2, 2), 1.0, 100.0, 32, 10.0, "none")


def linear_record(fidelity="HiFi2"):
    x = Operand((1, 32, 1024), "BFLOAT16", "DRAM", 32 * 1024 * 2)
    w = Operand((1024, 1024), "BFLOAT8_B", "DRAM", 1024 * 1088)
    out = Operand((1, 32, 1024), "BFLOAT16", "L1", 32 * 1024 * 2)
    return OpRecord("linear", "prefill", (x, w), (out,), 2 * 32 * 1024 * 1024, fidelity, False, False, False)


def test_derived_peak_is_cores_times_clock_times_4096_over_phases():
    assert cm.BOARDS["p150"].matmul_tflops("LoFi") == pytest.approx(130 * 1.35 * 4096 / 1e3)
    assert cm.BOARDS["n150"].matmul_tflops("HiFi4") == pytest.approx(64 * 4096 / 4 / 1e3)
    assert cm.TILE_MATMUL_CYCLES == 16


def test_matmul_cycles_spread_output_tiles_over_cores_and_multiply_by_phases():
    assert cm.matmul_cycles(64, 64, 64, 1, "LoFi", 4) == 1 * 2 * 16  # 4 tiles on 4 cores, 2 K tiles
    assert cm.matmul_cycles(64, 64, 64, 1, "HiFi4", 4) == 4 * 32
    assert cm.matmul_cycles(51, 64, 64, 1, "LoFi", 1) == 2 * 2 * 2 * 16  # M=51 pads to 2 tiles


def test_linear_roofline_by_hand():
    cost = cm.op_cost(linear_record(), BOARD, traced=True)
    # 32 output tiles on 4 cores = 8 each, 32 K tiles, 16 cycles, 2 phases (HiFi2): 8192 cycles at 1 GHz
    assert cost.compute_s == pytest.approx(8192e-9)
    # x and w from DRAM at 100 GB/s, out to L1 at 2 NoCs x 32 B x 4 cores x 1 GHz = 256 GB/s
    memory = (65536 + 1024 * 1088) / 100e9 + 65536 / 256e9
    assert cost.memory_s == pytest.approx(memory)
    assert cost.overhead_s == pytest.approx(4e-6) and cost.bound == "memory"
    assert cost.total_s == pytest.approx(memory + 4e-6)
    untraced = cm.op_cost(linear_record(), BOARD, traced=False)
    assert untraced.total_s == pytest.approx(memory + cm.HOST_DISPATCH_US * 1e-6)
    lofi = cm.op_cost(linear_record("LoFi"), BOARD, traced=True)
    assert lofi.compute_s == pytest.approx(cost.compute_s / 2)


def test_transfers_cost_pcie_bytes_and_two_cqs_hide_the_upload():
    up = OpRecord("upload", "upload", (), (Operand((1000,), "FLOAT32", "DRAM", 10_000),), 0, None, None, False, False)
    assert cm.op_cost(up, BOARD, traced=False).total_s == pytest.approx(10_000 / 10e9)
    stages = {"upload": cm.stage_cost([up], BOARD, False), "prefill": cm.stage_cost([linear_record()], BOARD, True)}
    assert cm.total_latency(stages, two_cqs=False) == pytest.approx(stages["upload"].seconds + stages["prefill"].seconds)
    assert cm.total_latency(stages, two_cqs=True) == pytest.approx(stages["prefill"].seconds)


def test_extrapolation_is_linear_in_depth():
    one = cm.stage_cost([linear_record()], BOARD, True)
    two = cm.stage_cost([linear_record()] * 3, BOARD, True)
    eighteen = cm.extrapolate(one, two, 1, 2, 18)
    assert eighteen.ops == 1 + 17 * 2 and eighteen.seconds == pytest.approx(one.seconds * 35)
    assert eighteen.ops_by_name["linear"] == 35


@functools.lru_cache(maxsize=None)
def tiny_recordings(model_type: str, depth: int):
    """Op records per stage of the embedded model with `depth` layers per tower, 2 denoise steps."""
    base = tiny_config(model_type)
    cfg = base.replace(vision=dataclasses.replace(base.vision, num_layers=depth),
                       vlm=dataclasses.replace(base.vlm, depth=depth),
                       expert=dataclasses.replace(base.expert, depth=depth))
    return record_config(cfg, resolve_runtime_config("fast", {"emulate": True}), steps=2)


@pytest.mark.parametrize("model_type", ["pi0", pytest.param("pi05", marks=pytest.mark.slow)])
def test_depth_extrapolation_reproduces_a_full_depth_recording(model_type):
    shallow, deeper, full = (tiny_recordings(model_type, d) for d in (1, 2, 3))
    assert set(full) >= {"upload", "vision", "prefill", "denoise_pre", "step_0", "step_1", "download"}
    for stage, records in full.items():
        counts = [collections.Counter(r.name for r in rec.get(stage, [])) for rec in (shallow, deeper)]
        target = 3 if lp._tower(stage) else 1
        predicted = lp.extrapolated_op_counts(counts[0], counts[1], 1, 2, target)
        actual = collections.Counter(r.name for r in records)
        assert {k: v for k, v in predicted.items() if v} == dict(actual), stage


def test_cli_prints_every_stage_and_labels_predictions(monkeypatch, capsys):
    recorded = {d: tiny_recordings("pi0", d) for d in lp.DEPTHS}
    monkeypatch.setattr(lp, "recordings", lambda scenario: recorded)
    scenario = dataclasses.replace(lp.CALIBRATION[1], published_ms=10.0)
    monkeypatch.setattr(lp, "CALIBRATION", (scenario,))
    assert predict_ttnn.main(["--board", "n150", "--model", "pi0", "--preset", "fast", "--steps-detail"]) == 0
    out = capsys.readouterr().out
    for stage in ("upload", "vision", "prefill", "denoise_pre", "step_0", "step_1", "steps x2", "download"):
        assert f"  {stage} " in out, stage
    assert "PREDICTED latency per inference" in out and "DERIVED" in out
    row = [line for line in out.splitlines() if line.strip().startswith(scenario.label)][0]
    predicted = lp.predict(scenario).latency_s * 1e3
    assert f"{predicted:.1f}" in row and f"{(predicted - 10.0) / 10.0 * 100:+.0f}%" in row
