"""Time lerobot 0.6.1's own `sample_actions` on a checkpoint directory: the peer side of the bench.

Runs only inside .venv-lerobot. Called by the project's bench script as
`<venv>/bin/python tools/lerobot_peer/peer_bench.py --dir D --repeats N --threads T`; prints one
JSON line {"impl": "lerobot", "median_ms", "p95_ms", "peak_rss_mb", "max_abs_vs_saved_actions", ...}
on stdout (everything else goes to stderr). D holds config.json (with `pi0_ttnn_node_dims` for
tiny models; without it the published size is built), model.safetensors and optionally
io.safetensors (inputs + noise + reference actions, as make_fixtures.py writes them). With
`--full-size pi0|pi05` and no --dir it builds the published size with lerobot's default init and
synthetic inputs (about 16 GB of fp32 weights for PI0; the unused lm_heads are freed first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

import lerobot_tiny as lt  # sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE before any HF import
import torch
from safetensors.torch import load_file

LM_HEADS = ("model.paligemma_with_expert.paligemma.lm_head.weight",
            "model.paligemma_with_expert.gemma_expert.lm_head.weight")


def _feature_dim(raw: Dict[str, Any], group: str, key: str, default: int) -> int:
    shape = ((raw.get(group) or {}).get(key) or {}).get("shape")
    return int(shape[-1]) if shape else default


def build_from_dir(root: Path, keep_lm_heads: bool):
    """lerobot policy of the directory's type and dims, weights loaded (lm_heads may be absent)."""
    raw = json.loads((root / "config.json").read_text())
    model_type = raw.get("type")
    if model_type not in ("pi0", "pi05"):
        raise SystemExit(f"{root}/config.json: type {model_type!r} is not pi0 or pi05")
    state_dim = _feature_dim(raw, "input_features", "observation.state", 32)
    action_dim = _feature_dim(raw, "output_features", "action", 32)
    cfg = lt.make_lerobot_config(model_type, state_dim, action_dim, raw.get("tokenizer_max_length"))
    policy = lt.build_policy(model_type, cfg, raw.get(lt.DIMS_KEY))
    saved = load_file(str(root / "model.safetensors"))
    # lerobot's own key fixing (hub bases are un-prefixed; PI0 / PI0.5 renames), then the prefix.
    saved = policy._fix_pytorch_state_dict_keys(saved, policy.config)  # noqa: SLF001
    saved = {k if k.startswith("model.") else f"model.{k}": v for k, v in saved.items()}
    missing, unexpected = policy.load_state_dict(saved, strict=False)
    if unexpected or set(missing) - set(LM_HEADS):
        raise SystemExit(f"{root}: weights do not fit lerobot's model: missing "
                         f"{sorted(set(missing) - set(LM_HEADS))[:5]}, unexpected {unexpected[:5]}")
    if not keep_lm_heads:
        _drop_lm_heads(policy)
    return model_type, policy


def build_full_size(model_type: str, keep_lm_heads: bool, tokenizer_max_length: Optional[int]):
    cfg = lt.make_lerobot_config(model_type, 32, 32, tokenizer_max_length)
    policy = lt.build_policy(model_type, cfg, None)
    if not keep_lm_heads:
        _drop_lm_heads(policy)
    return policy


def _drop_lm_heads(policy) -> None:
    """Free the two unused output heads (0.8 B parameters at full size); sample_actions never
    reads them, and the project's loader skips them too, so peak memory compares like for like."""
    pwe = policy.model.paligemma_with_expert
    for owner in (pwe.paligemma, pwe.gemma_expert):
        owner.lm_head = torch.nn.Identity()


def synthetic_inputs(policy, model_type: str, batch: int, seed: int) -> Dict[str, torch.Tensor]:
    """Inputs of the production shapes: 3 cameras (last one masked), half-length prompts."""
    gen = torch.Generator().manual_seed(seed)
    cfg = policy.config
    length = cfg.tokenizer_max_length
    vocab = policy.model.paligemma_with_expert.paligemma.config.text_config.vocab_size
    masks = torch.zeros(batch, length, dtype=torch.bool)
    masks[:, : max(1, length // 2)] = True
    tokens = torch.where(masks, torch.randint(3, vocab, (batch, length), generator=gen),
                         torch.zeros(batch, length, dtype=torch.int64))
    io = {"images_uint8": torch.randint(0, 256, (len(lt.CAMERAS), batch, 3, 224, 224),
                                        generator=gen, dtype=torch.uint8),
          "image_masks": torch.tensor([[True] * batch, [True] * batch, [False] * batch]),
          "lang_tokens": tokens, "lang_masks": masks,
          "noise": torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=gen)}
    if model_type == "pi0":
        io["state"] = torch.rand(batch, cfg.max_state_dim, generator=gen) * 2.0 - 1.0
    return io


def percentile(values: List[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation), so p95 is an observed time."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="checkpoint / fixture directory")
    parser.add_argument("--full-size", choices=("pi0", "pi05"), default=None,
                        help="build the published size with default init instead of --dir")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--batch", type=int, default=1, help="batch for synthetic inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed for synthetic inputs")
    parser.add_argument("--tokenizer-max-length", type=int, default=None,
                        help="--full-size only (default 48 for pi0, 200 for pi05)")
    parser.add_argument("--keep-lm-heads", action="store_true",
                        help="keep the unused lm_head tensors in memory")
    args = parser.parse_args(argv)
    if (args.dir is None) == (args.full_size is None):
        parser.error("give exactly one of --dir and --full-size")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    # lerobot prints banners on stdout; keep stdout for the single JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        if args.dir is not None:
            model_type, policy = build_from_dir(args.dir, args.keep_lm_heads)
        else:
            model_type = args.full_size
            policy = build_full_size(model_type, args.keep_lm_heads, args.tokenizer_max_length)
        build_s = time.perf_counter() - t0
        io_path = args.dir / "io.safetensors" if args.dir is not None else None
        io = (load_file(str(io_path)) if io_path is not None and io_path.is_file()
              else synthetic_inputs(policy, model_type, args.batch, args.seed))
        images = lt.images_from_uint8(io["images_uint8"])
        img_masks = [io["image_masks"][i] for i in range(io["image_masks"].shape[0])]

        def call() -> torch.Tensor:
            return lt.run_sample_actions(policy, model_type, images, img_masks, io["lang_tokens"],
                                         io["lang_masks"], io.get("state"), io["noise"])

        for _ in range(args.warmup):
            call()
        times_ms: List[float] = []
        actions = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            actions = call()
            times_ms.append((time.perf_counter() - start) * 1e3)

    saved = io.get("actions")
    result = {
        "impl": "lerobot",
        "median_ms": round(statistics.median(times_ms), 3),
        "p95_ms": round(percentile(times_ms, 95), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "max_abs_vs_saved_actions": (None if saved is None
                                     else float((actions - saved).abs().max().item())),
        "model_type": model_type,
        "size": "full" if args.dir is None or lt.DIMS_KEY not in json.loads(
            (args.dir / "config.json").read_text()) else "dims",
        "batch": int(io["lang_tokens"].shape[0]),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "build_s": round(build_s, 2),
        "lerobot": metadata.version("lerobot"),
        "torch": torch.__version__,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
