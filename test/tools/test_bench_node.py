"""bench_node: the live run measures the real node with inferences running (figures printed by the
tool, never asserted against speed targets here)."""

import math

import pytest

from pi0_ttnn_node.tools import bench_node_live


def test_percentiles_and_period_jitter():
    row = bench_node_live.percentiles([0.001] * 98 + [0.004, 0.010])
    assert row["p50_ms"] == pytest.approx(1.0) and row["max_ms"] == pytest.approx(10.0)
    assert row["n"] == 100 and row["p99_ms"] >= row["p95_ms"] >= row["p50_ms"]
    assert math.isnan(bench_node_live.percentiles([])["p50_ms"])
    jitter = bench_node_live.period_jitter([0.0, 0.02, 0.041, 0.059], 0.02)
    assert jitter == pytest.approx([0.0, 0.001, 0.002])


@pytest.mark.slow
def test_live_run_measures_ticks_while_inferences_run():
    results = bench_node_live.run_live(seconds=6.0, size="320x240", num_steps=2)
    assert results["inference.count"]["n"] >= 3, results
    busy = results["tick.work_while_inferring"]
    assert busy["n"] > 0 and busy["p50_ms"] > 0.0
    assert results["command.period_jitter_subscriber"]["n"] > 20
    assert results["conditions"]["tuning"] == "on"
