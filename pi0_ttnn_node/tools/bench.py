"""Per-stage latency and peak memory of the Torch backend; optional side-by-side lerobot peer.

Stages: preprocess (3 raw 640x480 cameras + state + prompt), vision (SigLIP + projector), prefix
(language embedding + VLM prefill, K/V cached once), each denoise step, postprocess. Figures are
medians over --repeats after --warmup runs. With --peer VENV, lerobot's own model runs on the same
directory (config, weights, inputs, noise) in the same invocation and the latency ratio is printed.
This is a benchmark script, not a test: absolute times on a shared machine are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.torch_backend.torch_pi0_model import PI0Model

MODELS = ("embedded-pi0", "embedded-pi05", "full-pi0", "full-pi05")
PEER_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "lerobot_peer" / "peer_bench.py"


@dataclass
class BenchArgs:
    model: str
    dir: Optional[Path]
    device: str
    dtype: str
    repeats: int
    warmup: int
    threads: int
    peer: Optional[Path]
    rounds: int
    json_out: bool


def parse_args(argv: Optional[List[str]] = None) -> BenchArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default="embedded-pi0",
                   help="embedded tiny checkpoint, or published size with random weights")
    p.add_argument("--dir", type=Path, help="a lerobot-peer fixture dir (config.json, "
                   "model.safetensors, io.safetensors); overrides --model")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--peer", type=Path, help="path of a venv with lerobot[pi]==0.6.1 installed")
    p.add_argument("--rounds", type=int, default=3,
                   help="with --peer: alternate ours/lerobot this many times (shared-machine noise)")
    p.add_argument("--json", dest="json_out", action="store_true", help="print one JSON line")
    a = p.parse_args(argv)
    return BenchArgs(a.model, a.dir, a.device, a.dtype, a.repeats, a.warmup, a.threads, a.peer,
                     max(1, a.rounds), a.json_out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, (time.perf_counter() - t0) * 1e3


def random_full_size_model(cfg: PI0Config, device: torch.device, dtype: torch.dtype) -> PI0Model:
    """Published-size model with random weights, built without a default init pass (fast)."""
    with torch.device("meta"):
        model = PI0Model(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                fan_in = int(np.prod(param.shape[1:]))
                param.normal_(0.0, fan_in ** -0.5, generator=gen)
            elif "layernorm" in name or "layer_norm" in name:
                param.fill_(0.0 if "bias" in name else 1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    return model.to(dtype=dtype).eval()


def synthetic_inputs(cfg: PI0Config, device: torch.device, dtype: torch.dtype, batch: int = 1):
    gen = torch.Generator().manual_seed(1)
    size = cfg.vision.image_size
    images = [(torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device, dtype)
              for _ in range(cfg.num_image_slots)]
    img_masks = [torch.ones(batch, dtype=torch.bool, device=device) for _ in images]
    length = cfg.tokenizer_max_length
    tokens = torch.randint(3, min(cfg.vlm.vocab_size, 30000), (batch, length), generator=gen)
    lang_masks = torch.zeros(batch, length, dtype=torch.bool)
    lang_masks[:, : max(1, length // 3)] = True
    tokens = tokens * lang_masks
    state = torch.rand(batch, cfg.max_state_dim, generator=gen) * 2 - 1
    noise = torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=gen)
    return {"images": images, "img_masks": img_masks, "lang_tokens": tokens.to(device),
            "lang_masks": lang_masks.to(device), "state": state.to(device, dtype),
            "noise": noise.to(device)}


def fixture_inputs(directory: Path, device: torch.device, dtype: torch.dtype):
    """Inputs saved by tools/lerobot_peer/make_fixtures.py (uint8 images -> x/255*2-1)."""
    from safetensors.torch import load_file

    io = load_file(str(directory / "io.safetensors"))
    images = [(io["images_uint8"][i].float() / 255.0 * 2.0 - 1.0).to(device, dtype)
              for i in range(io["images_uint8"].shape[0])]
    masks = [io["image_masks"][i].to(device) for i in range(io["image_masks"].shape[0])]
    return {"images": images, "img_masks": masks, "lang_tokens": io["lang_tokens"].to(device),
            "lang_masks": io["lang_masks"].to(device),
            "state": io["state"].to(device, dtype) if "state" in io else None,
            "noise": io["noise"].to(device)}


def stage_times(model: PI0Model, x: Dict, device: torch.device) -> Dict[str, float]:
    """One inference, split into the stages of the denoise pipeline (same maths as sample_actions)."""
    cfg = model.config
    times: Dict[str, float] = {}
    with torch.inference_mode():
        _, times["vision"] = _timed(lambda: model.prefix.embed_images(x["images"], x["img_masks"]),
                                    device)

        def prefix():
            embs, pad, att = model.embed_prefix(x["images"], x["img_masks"], x["lang_tokens"],
                                                x["lang_masks"])
            return model.prefill(embs, pad, att)

        cache, prefix_ms = _timed(prefix, device)
        times["prefix"] = prefix_ms - times["vision"]  # vision measured on its own above
        state = None if cfg.is_pi05 else x["state"]
        x_t = x["noise"].clone()
        n = cfg.num_inference_steps
        dt = -1.0 / n
        batch = x_t.shape[0]
        for k in range(n):
            t = torch.full((batch,), 1.0 + k * dt, device=device, dtype=torch.float32)
            v, times[f"denoise_step_{k}"] = _timed(lambda: model.denoise_step(cache, state, x_t, t),
                                                   device)
            x_t = x_t + dt * v
    return times


def preprocess_times(model_type: str, repeats: int) -> Dict[str, float]:
    """Preprocess/postprocess of the embedded policy on 3 raw 640x480 cameras."""
    from pi0_ttnn_node.checkpoint import load_checkpoint
    from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
    from pi0_ttnn_node.normalization import Normalizer
    from pi0_ttnn_node.policy import find_tokenizer
    from pi0_ttnn_node.preprocessing import Observation, Postprocessor, Preprocessor
    from pi0_ttnn_node.tokenizer import PromptTokenizer

    ckpt = load_checkpoint(ensure_embedded_checkpoint(model_type), strict=True, progress=False)
    cfg = ckpt.config
    norm = Normalizer(ckpt.norm_stats)
    tok = PromptTokenizer(find_tokenizer(ckpt.path), cfg.tokenizer_max_length, cfg.model_type)
    pre, post = Preprocessor(cfg, norm, tok), Postprocessor(cfg, norm)
    rng = np.random.default_rng(0)
    obs = Observation(images={name: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
                              for name in cfg.features.camera_names},
                      state=rng.normal(size=cfg.features.state_dim).astype(np.float32),
                      instruction="pick up the red block and put it in the bowl")
    chunk = rng.normal(size=(1, cfg.chunk_size, cfg.max_action_dim)).astype(np.float32)
    pre_ms, post_ms = [], []
    for _ in range(max(repeats, 20)):
        _, ms = _timed(lambda: pre([obs]), torch.device("cpu"))
        pre_ms.append(ms)
        _, ms = _timed(lambda: post(chunk), torch.device("cpu"))
        post_ms.append(ms)
    return {"preprocess": statistics.median(pre_ms), "postprocess": statistics.median(post_ms)}


def build(args: BenchArgs, device: torch.device, dtype: torch.dtype):
    if args.dir is not None:
        from pi0_ttnn_node.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.dir, strict=True, progress=False)
        model = PI0Model(ckpt.config)
        model.load_state_dict(ckpt.state_dict, strict=True)
        return model.to(device=device, dtype=dtype).eval(), fixture_inputs(args.dir, device, dtype)
    if args.model.startswith("embedded"):
        from pi0_ttnn_node.checkpoint import load_checkpoint
        from pi0_ttnn_node.embedded import ensure_embedded_checkpoint

        ckpt = load_checkpoint(ensure_embedded_checkpoint(args.model.split("-")[1]), strict=True,
                               progress=False)
        model = PI0Model(ckpt.config)
        model.load_state_dict(ckpt.state_dict, strict=True)
        model = model.to(device=device, dtype=dtype).eval()
    else:
        cfg = PI0Config.pi0() if args.model == "full-pi0" else PI0Config.pi05()
        model = random_full_size_model(cfg, device, dtype)
    return model, synthetic_inputs(model.config, device, dtype)


def run_peer(args: BenchArgs) -> Dict:
    python = args.peer / "bin" / "python"
    cmd = [str(python), str(PEER_SCRIPT), "--dir", str(args.dir), "--repeats", str(args.repeats),
           "--threads", str(args.threads or torch.get_num_threads())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.peer is not None and args.dir is None:
        raise SystemExit("--peer needs --dir (a fixture directory both implementations can load)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    model, x = build(args, device, dtype)
    build_s = time.perf_counter() - t0
    state = None if model.config.is_pi05 else x["state"]

    def end_to_end():
        return model.sample_actions(x["images"], x["img_masks"], x["lang_tokens"],
                                    x["lang_masks"], state, noise=x["noise"])

    for _ in range(args.warmup):
        end_to_end()
    e2e: List[float] = []
    peer_medians: List[float] = []
    peer: Dict = {}
    for _ in range(args.rounds if args.peer is not None else 1):
        e2e += [_timed(end_to_end, device)[1] for _ in range(args.repeats)]
        if args.peer is not None:  # alternate so both see the same machine load
            peer = run_peer(args)
            peer_medians.append(peer["median_ms"])
    stages: Dict[str, List[float]] = {}
    for _ in range(args.repeats):
        for name, ms in stage_times(model, x, device).items():
            stages.setdefault(name, []).append(ms)
    report = {
        "impl": "pi0_ttnn_node-torch", "model": str(args.dir or args.model),
        "model_type": model.config.model_type, "device": str(device), "dtype": args.dtype,
        "threads": torch.get_num_threads(), "repeats": args.repeats, "build_s": round(build_s, 2),
        "median_ms": round(statistics.median(e2e), 3),
        "p95_ms": round(float(np.percentile(e2e, 95)), 3),
        "stages_median_ms": {k: round(statistics.median(v), 3) for k, v in stages.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if device.type == "cuda":
        report["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if args.dir is None and args.model.startswith("embedded"):
        report["stages_median_ms"].update(preprocess_times(args.model.split("-")[1], args.repeats))
    if args.peer is not None:
        peer["median_ms_per_round"] = peer_medians
        peer["median_ms"] = round(statistics.median(peer_medians), 3)
        report["peer"] = peer
        report["ratio_ours_over_lerobot"] = round(report["median_ms"] / peer["median_ms"], 3)
    print_report(report, args.json_out)
    return 0


def print_report(report: Dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    print(f"model {report['model']} ({report['model_type']}) on {report['device']} "
          f"{report['dtype']}, {report['threads']} threads, built in {report['build_s']} s")
    print(f"end-to-end sample_actions: median {report['median_ms']} ms, p95 {report['p95_ms']} ms")
    for name, ms in report["stages_median_ms"].items():
        print(f"  {name:<16} {ms:10.3f} ms")
    print(f"peak RSS {report['peak_rss_mb']} MB"
          + (f", peak CUDA {report['peak_cuda_mb']} MB" if "peak_cuda_mb" in report else ""))
    if "peer" in report:
        print(f"lerobot 0.6.1 same config/weights/inputs/noise: median {report['peer']['median_ms']}"
              f" ms -> ours/lerobot = {report['ratio_ours_over_lerobot']}")


if __name__ == "__main__":
    sys.exit(main())
