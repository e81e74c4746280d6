"""pi0-pcc-ttnn: end-to-end PCC of the TTNN backend on the CPU EMULATION vs the torch model, per preset.

The emulation applies the matrix engine's numerics (math-fidelity phases, bf16 or fp32 Dest, TF32
source registers, bf16 / bfloat8_b storage), so the presets' precision choices show here as they
would on a card (up to what docs/ttnn_emulation.md lists as not modelled). Sizes: `tiny` is the
embedded model; `mid` has widths >= 256 and 3 Gemma layers. Figures are EMULATED numerics, not
hardware measurements. Usage:
    python -m pi0_ttnn_node.tools.pcc_ttnn [--models pi0 pi05] [--sizes tiny mid] [--presets accurate fast]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from pi0_ttnn_node.config import GemmaConfig, PI0Config, SiglipConfig
from pi0_ttnn_node.embedded import random_state_dict, tiny_config


def mid_config(model_type: str) -> PI0Config:
    """Widths >= 256, 2 SigLIP and 3 Gemma layers, 32-wide heads (8 query heads, 1 K/V head)."""
    cfg = tiny_config(model_type)
    return dataclasses.replace(
        cfg,
        vision=SiglipConfig(hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4),
        vlm=GemmaConfig(width=256, depth=3, mlp_dim=512, num_heads=8, num_kv_heads=1, head_dim=32,
                        vocab_size=cfg.vlm.vocab_size),
        expert=GemmaConfig(width=256, depth=3, mlp_dim=512, num_heads=8, num_kv_heads=1, head_dim=32,
                           use_adarms=cfg.is_pi05))


def inputs_for(cfg: PI0Config, seed: int = 1) -> Dict[str, object]:
    """Batch of 2 with a masked camera and short prompts (the PCC tests' adversarial inputs)."""
    gen = torch.Generator().manual_seed(seed)
    batch, size, lang = 2, cfg.vision.image_size, cfg.tokenizer_max_length
    images = [torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for _ in range(cfg.num_image_slots)]
    img_masks = [torch.tensor([True, True]) for _ in range(cfg.num_image_slots)]
    if cfg.num_image_slots > 1:
        img_masks[1] = torch.tensor([False, True])
    lang_masks = torch.zeros(batch, lang, dtype=torch.bool)
    lang_masks[0, :5] = True
    lang_masks[1, :min(lang, 17)] = True
    tokens = torch.randint(1, cfg.vlm.vocab_size, (batch, lang), generator=gen) * lang_masks
    state = None if cfg.is_pi05 else torch.randn(batch, cfg.max_state_dim, generator=gen)
    noise = torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=gen)
    return dict(images=images, img_masks=img_masks, lang_tokens=tokens, lang_masks=lang_masks, state=state,
                noise=noise)


def pcc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def measure(model_type: str, size: str, preset: str, board: str = "wormhole_n150") -> Dict[str, float]:
    """Actions PCC and rel-L2 of PI0ModelTTNN (emulated, `preset`) vs the fp32 torch model."""
    from pi0_ttnn_node.torch_backend import PI0Model
    from pi0_ttnn_node.ttnn_backend.runtime import open_tt_device
    from pi0_ttnn_node.ttnn_backend.ttnn_config import resolve_runtime_config
    from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

    cfg = tiny_config(model_type) if size == "tiny" else mid_config(model_type)
    sd = random_state_dict(cfg, seed=11)
    ref = PI0Model(cfg)
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    inputs = inputs_for(cfg)
    args = {k: v for k, v in inputs.items() if k != "noise"}
    with torch.no_grad():
        expected = ref.sample_actions(**args, noise=inputs["noise"])
    rc = resolve_runtime_config(preset, {"emulate": True, "emulated_board": board})
    handle = open_tt_device(rc)
    try:
        model = PI0ModelTTNN(cfg, sd, handle.device, rc)
        actual = model.sample_actions(**args, noise=inputs["noise"])
        if rc.trace != "off":  # the first call captures; the second replays the trace
            actual = model.sample_actions(**args, noise=inputs["noise"])
            model.release_trace()
    finally:
        handle.close()
    rel = float((actual - expected).norm() / expected.norm())
    return {"pcc": pcc(actual, expected), "rel_l2": rel}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["pi0", "pi05"], choices=["pi0", "pi05"])
    p.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    p.add_argument("--presets", nargs="+", default=["accurate", "fast"], choices=["accurate", "fast"])
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    rows: List[str] = [f"{'model':<6} {'size':<5} {'preset':<9} {'actions PCC':>12} {'rel-L2':>9}  (EMULATED numerics)"]
    print(rows[0], flush=True)
    for model_type in args.models:
        for size in args.sizes:
            for preset in args.presets:
                start = time.monotonic()
                m = measure(model_type, size, preset)
                print(f"{model_type:<6} {size:<5} {preset:<9} {m['pcc']:>12.6f} {m['rel_l2']:>9.2e}  "
                      f"({time.monotonic() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
