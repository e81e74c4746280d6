"""pi0-predict-ttnn: PREDICTED latency of the full-size PI0 / PI0.5 on a Tenstorrent board, per stage.

A roofline per op over the op stream the CPU emulation records (cost_model.py, op_stream.py), with
tt-metal's published configurations priced by the same code next to their published latencies.
Every figure printed is a PREDICTION, not a measurement. Usage:
    python -m pi0_ttnn_node.tools.predict_ttnn --board p150 [--model pi0|pi05|both] [--no-calibration]
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from pi0_ttnn_node.ttnn_backend import cost_model as cm
from pi0_ttnn_node.ttnn_backend import latency_prediction as lp


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--board", choices=sorted(cm.BOARDS), default="p150")
    p.add_argument("--model", choices=("pi0", "pi05", "both"), default="both")
    p.add_argument("--preset", choices=("fast", "accurate", "both"), default="both")
    p.add_argument("--no-calibration", action="store_true", help="skip tt-metal's published configurations")
    p.add_argument("--steps-detail", action="store_true", help="one line per denoise step (default: step 0 and the sum)")
    return p.parse_args(argv)


def board_header(board: str) -> List[str]:
    perf = cm.BOARDS[board]
    peaks = ", ".join(f"{f} {perf.matmul_tflops(f):.0f}" for f in ("LoFi", "HiFi2", "HiFi4"))
    return [
        f"board {board}: {perf.grid[0]}x{perf.grid[1]} worker cores at {perf.clock_ghz} GHz, DRAM {perf.dram_gbps:.0f} GB/s, "
        f"L1 (NoC) {perf.l1_gbps / 1e3:.1f} TB/s, PCIe {perf.pcie_gbps} GB/s",
        f"  matrix-engine peak used (DERIVED cores x clock x 4096 FLOP/cycle / phases), TFLOPS: {peaks}",
        f"  vendor figure (not used): {perf.vendor_tflops}",
        f"  per-op overhead: traced {cm.TRACED_DISPATCH_CYCLES} cycles (tt-metal #12074), untraced host dispatch "
        f"{cm.HOST_DISPATCH_US:.0f} us (assumption)",
    ]


def stage_lines(pred: lp.Prediction, steps_detail: bool) -> List[str]:
    lines = [f"  {'stage':<12} {'ops':>7} {'PREDICTED ms':>13} {'compute':>8} {'memory':>8} {'dispatch':>9}  bound by"]
    steps = [(n, c) for n, c in pred.stage_rows() if n.startswith("step_")]
    for name, cost in pred.stage_rows():
        if name.startswith("step_") and not steps_detail and name != "step_0":
            continue
        lines.append(_row(name, cost))
    if steps:
        total = steps[0][1]
        for _, cost in steps[1:]:
            total = total.scaled_sum(cost, 1.0)
        lines.append(_row(f"steps x{len(steps)}", total))
    hidden = " (upload hidden behind compute by CQ1)" if pred.upload_hidden else ""
    lines.append(f"  PREDICTED latency per inference: {pred.latency_s * 1e3:.2f} ms{hidden}")
    return lines


def _row(name: str, cost: cm.StageCost) -> str:
    bound = max(cost.bound_s.items(), key=lambda kv: kv[1])[0] if cost.bound_s else "-"
    return (f"  {name:<12} {cost.ops:>7.0f} {cost.seconds * 1e3:>13.3f} {cost.compute_s * 1e3:>8.2f} "
            f"{cost.memory_s * 1e3:>8.2f} {cost.overhead_s * 1e3:>9.2f}  {bound}")


def calibration_lines() -> List[str]:
    lines = ["Calibration: tt-metal's published configurations priced by the same predictor (no per-case factor)",
             f"  {'configuration':<46} {'board':<5} {'published ms':>12} {'PREDICTED ms':>13} {'error':>7}  source; assumptions"]
    for scenario in lp.CALIBRATION:
        pred = lp.predict(scenario)
        ms = pred.latency_s * 1e3
        error = (ms - scenario.published_ms) / scenario.published_ms * 100
        lines.append(f"  {scenario.label:<46} {scenario.board:<5} {scenario.published_ms:>12.1f} {ms:>13.1f} "
                     f"{error:>+6.0f}%  {scenario.source}; {scenario.assumptions}")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    out = [f"PREDICTED latency (roofline over the emulated op stream; NOT a measurement), board {args.board}"]
    out += board_header(args.board)
    for scenario in lp.our_scenarios(args.board):
        if args.model != "both" and scenario.workload.model_type != args.model:
            continue
        if args.preset != "both" and scenario.preset != args.preset:
            continue
        out.append(f"{scenario.label} on {args.board}:")
        out += stage_lines(lp.predict(scenario), args.steps_detail)
        print("\n".join(out), flush=True)
        out = []
    if not args.no_calibration:
        out += calibration_lines()
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
