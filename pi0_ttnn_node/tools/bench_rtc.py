"""RTC guidance overhead per inference: plain vs rtc-forward vs rtc-vjp, side by side in one run.

For each embedded model (PI0, PI0.5) and backend (torch on CPU; ttnn on the CPU EMULATION unless a
card is configured), one observation, one previous chunk and one guidance (delay d, execution
horizon s, beta, schedule) are fixed, then the modes run interleaved round by round so machine
noise hits them alike. Prints the median and the best latency per mode (the best is the steadier
figure on a shared machine) with their ratios to plain, how far forward is
from vjp on the same inputs (rel-L2 of the chunks), and the frozen-prefix error (max |chunk[:d] -
Y[:d]|). `vjp` needs autograd and is Torch-only. Emulated TTNN times are CPU times of the
emulation, never hardware times; they are labelled EMULATED. A benchmark, not a test.

    python -m pi0_ttnn_node.tools.bench_rtc --backends torch ttnn --ttnn-emulate
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from pi0_ttnn_node import rtc
from pi0_ttnn_node.backends import BackendSpec, TorchSpec, create_backend
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.preprocessing import ModelInputs
from pi0_ttnn_node.ttnn_backend.ttnn_config import add_ttnn_arguments, runtime_config_from_args

MODES = ("plain", "rtc-forward", "rtc-vjp")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["pi0", "pi05"], choices=("pi0", "pi05"))
    p.add_argument("--backends", nargs="+", default=["torch"], choices=("torch", "ttnn"))
    p.add_argument("--repeats", type=int, default=5, help="rounds per mode (torch)")
    p.add_argument("--ttnn-repeats", type=int, default=2, help="rounds per mode (ttnn)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--delay", type=int, default=3, help="d: inference delay in ticks")
    p.add_argument("--execution-horizon", type=int, default=10, help="s: actions per chunk")
    p.add_argument("--beta", type=float, default=5.0, help="max guidance weight")
    p.add_argument("--schedule", default="exp", choices=rtc.SCHEDULES)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", dest="json_out", action="store_true", help="one JSON line per row")
    add_ttnn_arguments(p)
    return p.parse_args(argv)


def _inputs(cfg: Any, seed: int = 1) -> ModelInputs:
    gen = torch.Generator().manual_seed(seed)
    size, length = cfg.vision.image_size, cfg.tokenizer_max_length
    lang_masks = torch.zeros(1, length, dtype=torch.bool)
    lang_masks[:, :max(1, length // 3)] = True
    tokens = torch.randint(3, cfg.vlm.vocab_size, (1, length), generator=gen) * lang_masks
    return ModelInputs(
        images=[torch.rand(1, 3, size, size, generator=gen) * 2 - 1
                for _ in range(cfg.num_image_slots)],
        img_masks=[torch.ones(1, dtype=torch.bool) for _ in range(cfg.num_image_slots)],
        lang_tokens=tokens, lang_masks=lang_masks,
        state=torch.rand(1, cfg.max_state_dim, generator=gen) * 2 - 1)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _device_counts(backend: Any, inputs: ModelInputs, noise: torch.Tensor,
                   guidance: Dict[str, Any], modes: Any) -> Dict[str, Dict[str, int]]:
    """Emulation counters of one call per mode: device ops, uploads and bytes, downloads (what
    carries over to a card, unlike emulated times)."""
    stats = backend.handle.device.stats
    out = {}
    for m in modes:
        with stats.measure() as region:
            backend.sample_actions(inputs, noise, guidance=guidance[m])
        out[m] = {"device_ops": sum(region.ops.values()), "uploads": region.uploads,
                  "upload_bytes": region.upload_bytes, "downloads": region.downloads,
                  "trace_replays": region.trace_replays}
    return out


def bench_model(model_type: str, backend_name: str, args: argparse.Namespace) -> List[Dict]:
    ckpt = load_checkpoint(ensure_embedded_checkpoint(model_type), strict=True, progress=False)
    cfg = ckpt.config
    if backend_name == "torch":
        spec = BackendSpec(backend="torch", torch=TorchSpec(threads=args.threads))
        modes, repeats = MODES, args.repeats
    else:
        spec = BackendSpec(backend="ttnn", ttnn=runtime_config_from_args(args))
        modes, repeats = MODES[:2], args.ttnn_repeats  # no autograd in TTNN: no vjp
    backend = create_backend(spec, ckpt)
    try:
        info = backend.describe()
        emulated = bool(info.get("emulated"))
        inputs = _inputs(cfg)
        gen = torch.Generator().manual_seed(2)
        shape = (1, cfg.chunk_size, cfg.max_action_dim)
        prev = backend.sample_actions(inputs, torch.randn(shape, generator=gen))
        noise = torch.randn(shape, generator=gen)
        guidance = {m: rtc.build_guidance(prev, consumed=args.execution_horizon, delay=args.delay,
                                          execution_horizon=args.execution_horizon,
                                          config=rtc.RtcConfig(args.schedule, args.beta, m[4:]))
                    for m in modes if m != "plain"}
        guidance["plain"] = None
        for _ in range(args.warmup):
            for m in modes:
                backend.sample_actions(inputs, noise, guidance=guidance[m])
        counts = _device_counts(backend, inputs, noise, guidance, modes) if emulated else {}
        times: Dict[str, List[float]] = {m: [] for m in modes}
        chunks: Dict[str, np.ndarray] = {}
        for _ in range(max(1, repeats)):
            for m in modes:  # interleaved: the modes see the same machine state
                t0 = time.perf_counter()
                chunks[m] = backend.sample_actions(inputs, noise, guidance=guidance[m])
                times[m].append((time.perf_counter() - t0) * 1e3)
    finally:
        backend.close()
    target = rtc.build_target(prev, args.execution_horizon, cfg.chunk_size).numpy()
    base, base_min = statistics.median(times["plain"]), min(times["plain"])
    rows = []
    for m in modes:
        med, best = statistics.median(times[m]), min(times[m])
        row = {"model": model_type, "backend": backend_name, "emulated": emulated, "mode": m,
               "median_ms": round(med, 3), "ratio_vs_plain": round(med / base, 3),
               "min_ms": round(best, 3), "min_ratio_vs_plain": round(best / base_min, 3),
               "frozen_prefix_err": round(rtc.frozen_prefix_error(chunks[m], target,
                                                                  args.delay), 5)}
        row.update(counts.get(m, {}))
        if "rtc-vjp" in chunks and m == "rtc-forward":
            row["rel_l2_forward_vs_vjp"] = round(_rel(chunks[m], chunks["rtc-vjp"]), 5)
        rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"RTC guidance overhead: d={args.delay} s={args.execution_horizon} beta={args.beta} "
          f"schedule={args.schedule}, batch 1, embedded checkpoints (random weights)")
    for backend_name in args.backends:
        for model_type in args.models:
            for row in bench_model(model_type, backend_name, args):
                if args.json_out:
                    print(json.dumps(row))
                    continue
                label = f"{row['backend']}{' EMULATED' if row['emulated'] else ''}"
                extra = (f"  forward-vs-vjp rel-L2 {row['rel_l2_forward_vs_vjp']:.4f}"
                         if "rel_l2_forward_vs_vjp" in row else "")
                if "device_ops" in row:
                    extra += (f"  [{row['device_ops']} device ops, {row['uploads']} uploads "
                              f"({row['upload_bytes']} B), {row['downloads']} download]")
                print(f"{label:<14} {row['model']:<5} {row['mode']:<12} median "
                      f"{row['median_ms']:8.1f} ms (x{row['ratio_vs_plain']:.2f})  min "
                      f"{row['min_ms']:8.1f} ms (x{row['min_ratio_vs_plain']:.2f})  "
                      f"frozen-prefix err {row['frozen_prefix_err']:.4f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
