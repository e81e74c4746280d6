"""pi0-pcc-ttnn: end-to-end PCC of the TTNN backend on the CPU EMULATION vs the torch model, per preset.

The emulation applies the matrix engine's numerics (math-fidelity phases, bf16 or fp32 Dest, TF32
source registers, bf16 / bfloat8_b storage), so the presets' precision choices show here as they
would on a card (up to what docs/ttnn_emulation.md lists as not modelled). Sizes: `tiny` is the
embedded model; `mid` is embedded.mid_config (widths >= 256, 4 Gemma layers). Figures are EMULATED numerics, not
hardware measurements. Usage:
    python -m pi0_ttnn_node.tools.pcc_ttnn [--models pi0 pi05] [--sizes tiny mid] [--presets accurate fast]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from pi0_ttnn_node.embedded import adversarial_inputs, random_state_dict, sized_config
from pi0_ttnn_node.tools.ttnn_counts import pcc


def measure(model_type: str, size: str, preset: str, board: str = "wormhole_n150") -> Dict[str, float]:
    """Actions PCC and rel-L2 of PI0ModelTTNN (emulated, `preset`) vs the fp32 torch model."""
    from pi0_ttnn_node.torch_backend import PI0Model
    from pi0_ttnn_node.ttnn_backend.runtime import open_tt_device
    from pi0_ttnn_node.ttnn_backend.ttnn_config import resolve_runtime_config
    from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

    cfg = sized_config(model_type, size)
    sd = random_state_dict(cfg, seed=11)
    ref = PI0Model(cfg)
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    inputs = adversarial_inputs(cfg)
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
