"""pi0-bench-ttnn: latency of PI0ModelTTNN.sample_actions under any TTNN knob setting.

Every knob of ttnn_config.TtRuntimeConfig is a flag (--ttnn-preset, --ttnn-<knob>; the same names
as the node's policy.ttnn_* parameters); --trace / --cqs / --emulate are short aliases of
--ttnn-trace / --ttnn-num-command-queues / --ttnn-emulate. On a Tenstorrent card the figures are
hardware latencies (host inputs to host actions, one upload and one download included); with 2
command queues a second, pipelined figure stages the next observation on CQ1 while CQ0 computes.
With --ttnn-emulate the same code runs on the CPU emulation and the numbers are emulation timings,
NOT hardware timings; every result line says so.
--counts prints, per performance technique, what the emulation counts (ops per inference and per
denoise step, host dispatches, bytes per memory kind, transfers) and the end-to-end PCC against the
Torch backend, for PI0 and PI0.5 at the embedded and the mid size (tools/ttnn_counts.py).
--memory-report prints the resident device memory of the full-size PI0 and PI0.5 (bf16 and bf8
weights) computed from shapes, against N150 / P150 DRAM, and allocates nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import Pi0Error
from pi0_ttnn_node.ttnn_backend.ttnn_config import (TtRuntimeConfig, add_ttnn_arguments,
                                                    runtime_config_from_args)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="", help="checkpoint dir (default: random weights of "
                   "the embedded model, or of the mid size with --size mid)")
    p.add_argument("--model-type", choices=("pi0", "pi05"), default="pi0")
    p.add_argument("--size", choices=("tiny", "mid", "full"), default="tiny",
                   help="random-weight model when no --checkpoint is given: the embedded tiny "
                   "model, the mid size, or the published PI0 / PI0.5 size (a card, not the "
                   "emulation)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-steps", type=int, default=0, help="0: the checkpoint's steps")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--memory-report", action="store_true")
    p.add_argument("--predict", choices=("n150", "n300", "p150"), default="",
                   help="print the PREDICTED per-stage latency of the full-size models on this "
                        "board with its calibration table (runs tools.predict_ttnn)")
    p.add_argument("--counts", action="store_true",
                   help="per-technique emulation counts and PCC (always emulated)")
    p.add_argument("--counts-sizes", default="tiny,mid", help="sizes for --counts")
    p.add_argument("--counts-models", default="pi0,pi05", help="models for --counts")
    p.add_argument("--json", action="store_true", help="--counts: also print the rows as JSON")
    p.add_argument("--counts-only", default="", help="--counts: rows whose label contains this")
    p.add_argument("--counts-short", action="store_true",
                   help="--counts: merge the rows that change no op count (faster)")
    add_ttnn_arguments(p)
    p.add_argument("--trace", dest="ttnn_trace", choices=("off", "denoise", "whole"),
                   default=argparse.SUPPRESS, help="alias of --ttnn-trace")
    p.add_argument("--cqs", dest="ttnn_num_command_queues", type=int, choices=(1, 2),
                   default=argparse.SUPPRESS, help="alias of --ttnn-num-command-queues")
    p.add_argument("--emulate", dest="ttnn_emulate", action="store_true",
                   default=argparse.SUPPRESS, help="alias of --ttnn-emulate")
    return p.parse_args(argv)


def print_memory_report() -> None:
    from pi0_ttnn_node.ttnn_backend.ttnn_accounting import format_memory_report

    for cfg in (PI0Config.pi0(), PI0Config.pi05()):
        for dtype in ("bfloat16", "bfloat8_b"):
            print(format_memory_report(cfg, dtype), end="\n\n")


def load_model(args: argparse.Namespace):
    """(PI0Config, internal state dict) from a checkpoint dir or random weights."""
    if args.checkpoint:
        from pi0_ttnn_node.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        return ckpt.config, ckpt.state_dict
    from pi0_ttnn_node.embedded import mid_config, random_state_dict, tiny_config

    if args.size == "full":
        model_cfg = PI0Config.pi05() if args.model_type == "pi05" else PI0Config.pi0()
    elif args.size == "mid":
        model_cfg = mid_config(args.model_type)
    else:
        model_cfg = tiny_config(args.model_type)
    return model_cfg, random_state_dict(model_cfg, 0)


def random_inputs(model_cfg: PI0Config, batch: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    size, lang = model_cfg.vision.image_size, model_cfg.tokenizer_max_length
    return dict(
        images=[torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
                for _ in range(model_cfg.num_image_slots)],
        img_masks=[torch.ones(batch, dtype=torch.bool)] * model_cfg.num_image_slots,
        lang_tokens=torch.randint(1, model_cfg.vlm.vocab_size, (batch, lang), generator=gen),
        lang_masks=torch.ones(batch, lang, dtype=torch.bool),
        state=None if model_cfg.is_pi05 else torch.randn(batch, model_cfg.max_state_dim))


def time_calls(rc: TtRuntimeConfig, model_cfg: PI0Config, state_dict, args: argparse.Namespace
               ) -> Dict[str, List[float]]:
    """Open the device, build the model, warm up, time `iterations` calls (ms): one call after
    another, and with 2 CQs also pipelined (next observation staged before the current result is
    read)."""
    from pi0_ttnn_node.ttnn_backend.runtime import open_tt_device

    inputs = random_inputs(model_cfg, args.batch)
    shape = (args.batch, model_cfg.chunk_size, model_cfg.max_action_dim)
    steps = args.num_steps or None
    out: Dict[str, List[float]] = {"sequential": []}
    with open_tt_device(rc) as handle:
        # imported after the device is open: the emulation must point ttnn at its mock cluster first
        from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

        model = PI0ModelTTNN(model_cfg, state_dict, handle.device, rc)
        try:
            for _ in range(args.warmup):
                model.sample_actions(**inputs, noise=torch.randn(shape), num_steps=steps)
            for _ in range(args.iterations):
                noise = torch.randn(shape)  # fresh noise every call, as in the node
                start = time.perf_counter()
                model.sample_actions(**inputs, noise=noise, num_steps=steps)
                out["sequential"].append((time.perf_counter() - start) * 1e3)
            if rc.num_command_queues == 2 and args.iterations > 1:
                out["pipelined (2 CQ)"] = _pipelined(model, inputs, shape, steps, args)
        finally:
            model.release_trace()
    return out


def _pipelined(model: Any, inputs: dict, shape: tuple, steps: Optional[int],
               args: argparse.Namespace) -> List[float]:
    """Per-call time when observation i+1 is uploaded (CQ1) while CQ0 computes observation i."""
    staged = model.stage(**inputs, noise=torch.randn(shape), num_steps=steps)
    x_0 = model.launch(staged)
    times, start = [], time.perf_counter()
    for _ in range(args.iterations):
        nxt = model.stage(**inputs, noise=torch.randn(shape), num_steps=steps)  # CQ1
        model.collect(x_0, staged.batch)  # CQ0 result of the previous observation
        x_0, staged = model.launch(nxt), nxt
        now = time.perf_counter()
        times.append((now - start) * 1e3)
        start = now
    model.collect(x_0, staged.batch)
    return times


def run_bench(args: argparse.Namespace, rc: TtRuntimeConfig) -> int:
    model_cfg, state_dict = load_model(args)
    where = "EMULATION (CPU), NOT hardware timing" if rc.emulate else "Tenstorrent hardware"
    for mode, t in time_calls(rc, model_cfg, state_dict, args).items():
        t = sorted(t)
        p90 = t[min(len(t) - 1, int(0.9 * len(t)))]
        print(f"{model_cfg.model_type} trace={rc.trace} cqs={rc.num_command_queues} weights "
              f"{rc.weight_dtype_vlm}/{rc.weight_dtype_expert} fidelity {rc.fidelity_prefill}/"
              f"{rc.fidelity_denoise} batch={args.batch} {mode}: mean {statistics.mean(t):.1f} "
              f"ms, p50 {statistics.median(t):.1f} ms, p90 {p90:.1f} ms over {len(t)} calls "
              f"[{where}]")
    return 0


def run_counts(args: argparse.Namespace, rc: TtRuntimeConfig) -> int:
    from pi0_ttnn_node.tools.ttnn_counts import dump, format_table, technique_table

    base = dataclasses.replace(rc, emulate=True, trace="off",
                               trace_region_size=rc.trace_region_size or 80_000_000)
    rows = []
    for size in args.counts_sizes.split(","):
        for model_type in args.counts_models.split(","):
            rows += technique_table(model_type, size, base, args.counts_short, args.counts_only)
            print(format_table([r for r in rows if r["model"] == model_type
                                and r["size"] == size]), flush=True)
    print("EMULATION counts (CPU), batch 1, one steady-state call; bytes = tensor sizes read + "
          "written per memory kind; PCC = end-to-end vs the Torch backend (fp32). NOT hardware "
          "timing.")
    print(format_table(rows))
    if args.json:
        print(dump(rows))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.predict:
        from pi0_ttnn_node.tools import predict_ttnn

        return predict_ttnn.main(["--board", args.predict])
    if args.memory_report:
        print_memory_report()
        return 0
    try:
        rc = runtime_config_from_args(args)
        return run_counts(args, rc) if args.counts else run_bench(args, rc)
    except Pi0Error as err:
        print(f"pi0-bench-ttnn: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
