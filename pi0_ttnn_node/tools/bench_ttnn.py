"""pi0-bench-ttnn: latency of PI0ModelTTNN.sample_actions with the denoise trace off and on.

On a Tenstorrent card these are hardware latencies (host inputs to host actions, one upload and
one download included). With --emulate the same code runs on the CPU emulation and the numbers
are emulation timings, NOT hardware timings; the script says so on every result line.
--memory-report prints the resident device memory of the full-size PI0 and PI0.5 (bf16 and bf8
weights) computed from shapes, against N150 / P150 DRAM, and allocates nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import torch

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import Pi0Error


@dataclass
class BenchConfig:
    checkpoint: str = ""  # empty: the embedded tiny random model
    model_type: str = "pi0"
    emulate: bool = False
    weight_dtype: str = "bfloat16"
    trace: str = "both"  # off | on | both
    iterations: int = 10
    warmup: int = 2
    num_steps: int = 0  # 0: the checkpoint's num_inference_steps
    batch: int = 1
    memory_report: bool = False


def parse_args(argv: Optional[List[str]] = None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="", help="checkpoint dir (default: tiny random model)")
    p.add_argument("--model-type", choices=("pi0", "pi05"), default="pi0")
    p.add_argument("--emulate", action="store_true", help="CPU emulation (not hardware timing)")
    p.add_argument("--weight-dtype", choices=("bfloat16", "bfloat8_b"), default="bfloat16")
    p.add_argument("--trace", choices=("off", "on", "both"), default="both")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-steps", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--memory-report", action="store_true")
    a = p.parse_args(argv)
    return BenchConfig(a.checkpoint, a.model_type, a.emulate, a.weight_dtype, a.trace,
                       a.iterations, a.warmup, a.num_steps, a.batch, a.memory_report)


def print_memory_report() -> None:
    from pi0_ttnn_node.ttnn_backend.ttnn_accounting import format_memory_report

    for cfg in (PI0Config.pi0(), PI0Config.pi05()):
        for dtype in ("bfloat16", "bfloat8_b"):
            print(format_memory_report(cfg, dtype), end="\n\n")


def load_model(cfg: BenchConfig):
    """(PI0Config, internal state dict) from a checkpoint dir or the tiny random model."""
    if cfg.checkpoint:
        from pi0_ttnn_node.checkpoint import load_checkpoint

        ckpt = load_checkpoint(cfg.checkpoint)
        return ckpt.config, ckpt.state_dict
    from pi0_ttnn_node.embedded import random_state_dict, tiny_config

    model_cfg = tiny_config(cfg.model_type)
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


def time_mode(cfg: BenchConfig, model_cfg: PI0Config, state_dict, use_trace: bool) -> List[float]:
    """Open the device, build the model, warm up, and time `iterations` calls (ms)."""
    from pi0_ttnn_node.ttnn_backend.runtime import TtRuntimeConfig, open_tt_device

    rc = TtRuntimeConfig(emulate=cfg.emulate, weight_dtype=cfg.weight_dtype, use_trace=use_trace,
                         trace_region_size=80_000_000 if use_trace else 0)
    inputs = random_inputs(model_cfg, cfg.batch)
    shape = (cfg.batch, model_cfg.chunk_size, model_cfg.max_action_dim)
    steps = cfg.num_steps or None
    with open_tt_device(rc) as handle:
        # imported after the device is open: the emulation must point ttnn at its mock cluster first
        from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

        model = PI0ModelTTNN(model_cfg, state_dict, handle.device, rc)
        try:
            for _ in range(cfg.warmup):
                model.sample_actions(**inputs, noise=torch.randn(shape), num_steps=steps)
            times = []
            for _ in range(cfg.iterations):
                noise = torch.randn(shape)  # fresh noise every call, as in the node
                start = time.perf_counter()
                model.sample_actions(**inputs, noise=noise, num_steps=steps)
                times.append((time.perf_counter() - start) * 1e3)
        finally:
            model.release_trace()
    return times


def main(argv: Optional[List[str]] = None) -> int:
    cfg = parse_args(argv)
    if cfg.memory_report:
        print_memory_report()
        return 0
    try:
        model_cfg, state_dict = load_model(cfg)
        return run_bench(cfg, model_cfg, state_dict)
    except Pi0Error as err:
        print(f"pi0-bench-ttnn: {err}", file=sys.stderr)
        return 2


def run_bench(cfg: BenchConfig, model_cfg: PI0Config, state_dict) -> int:
    where = "EMULATION (CPU), NOT hardware timing" if cfg.emulate else "Tenstorrent hardware"
    modes = {"off": [False], "on": [True], "both": [False, True]}[cfg.trace]
    for use_trace in modes:
        t = sorted(time_mode(cfg, model_cfg, state_dict, use_trace))
        p90 = t[min(len(t) - 1, int(0.9 * len(t)))]
        print(f"{model_cfg.model_type} {cfg.weight_dtype} trace={'on' if use_trace else 'off'} "
              f"batch={cfg.batch}: mean {statistics.mean(t):.1f} ms, p50 "
              f"{statistics.median(t):.1f} ms, p90 {p90:.1f} ms over {len(t)} calls [{where}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
