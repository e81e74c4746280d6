"""The benchmark scripts run end to end and print their figures (they are not timed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 300) -> str:
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_torch_bench_reports_every_stage_and_peak_memory_on_the_embedded_model():
    out = _run("pi0_ttnn_node.tools.bench", "--model", "embedded-pi05", "--repeats", "1",
               "--warmup", "0", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    stages = report["stages_median_ms"]
    for name in ["preprocess", "vision", "prefix", "postprocess"] + [
            f"denoise_step_{k}" for k in range(10)]:
        assert stages[name] >= 0.0, name
    assert report["median_ms"] > 0 and report["peak_rss_mb"] > 0
    assert report["model_type"] == "pi05"


def test_torch_bench_runs_a_lerobot_fixture_directory():
    out = _run("pi0_ttnn_node.tools.bench", "--dir", "test/fixtures/lerobot_pi0", "--repeats",
               "1", "--warmup", "0", "--json")
    assert json.loads(out.strip().splitlines()[-1])["model_type"] == "pi0"


def test_ttnn_bench_labels_emulated_numbers_as_not_hardware():
    out = _run("pi0_ttnn_node.tools.bench_ttnn", "--emulate", "--trace", "off", "--iterations",
               "1", "--warmup", "0", "--num-steps", "2", timeout=600)
    assert "EMULATION (CPU), NOT hardware timing" in out


def test_ttnn_bench_memory_report_compares_resident_weights_with_card_dram():
    out = _run("pi0_ttnn_node.tools.bench_ttnn", "--memory-report")
    assert "n150" in out and "p150" in out and "bfloat8_b" in out
