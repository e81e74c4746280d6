"""Every distinct ttnn call pattern PI0ModelTTNN issues, next to where tt-metal runs it on hardware.

A pattern is (op, each tensor operand's layout/dtype/memory, output memory, program-config class,
compute-kernel fidelity), recorded by ttnn_op_log.OpLog while the model runs on the emulated device
under the configurations that matter (accurate, every technique off with the denoise trace, fast).
`python -m pi0_ttnn_node.tools.ttnn_patterns --write docs/ttnn_hardware.md` regenerates the table
between the markers of that document; test_ttnn_hardware_doc.py checks that it covers every pattern
the backend issues. EVIDENCE names, per op (and program-config kind), the tt-metal file and function
that runs the same pattern on a card, or says "not seen on hardware" and why we still use it.
Counterpart: none.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

BEGIN, END = "<!-- patterns:begin -->", "<!-- patterns:end -->"
PI0 = "tt-metal models/experimental/pi0/tt/"
PI05 = "tt-metal models/experimental/pi0_5/"
NOT_SEEN = "NOT SEEN on hardware in tt-metal's PI0 / PI0.5 code"

# op (or "op|ProgramConfigClass") -> where the same call runs on a card, or why it is not proven.
EVIDENCE: Dict[str, str] = {
    "linear": f"{PI0}ttnn_gemma.py GemmaAttentionTTNN.forward, GemmaMLPTTNN.forward; "
              "ttnn_siglip.py (TILE bf16/bf8 activations, bf8 weights, DRAM or L1 output, HiFi2/HiFi4 kernels)",
    "linear|MatmulMultiCoreReuseMultiCastProgramConfig":
        f"{PI0}ttnn_gemma.py build_matmul_pcfg (PR #41431, 2-D multicast per prefill shape; "
        "branch) and tt_transformers' prefill matmul configs (models/tt_transformers/tt/"
        "model_config.py matmul_config)",
    "linear|MatmulMultiCoreReuseMultiCast1DProgramConfig":
        f"{PI05} denoise-path matmuls (1-D multicast for M = 1..64, ttnn_performance.md item 4, "
        "PR #48422 matmul_decode) and tt_transformers decode MLP configs",
    "matmul": f"{NOT_SEEN}: the exact rotate-half matmul RoPE runs only when head_dim is not a "
              "multiple of 64 (the tiny test models); production sizes use rotary_embedding",
    "experimental.rotary_embedding": f"{PI0}ttnn_gemma.py GemmaAttentionTTNN.forward (cos/sin "
                                     "[1, 1, S, hd]); ours gathers per-token rows [B, 1, S, hd] "
                                     "(same shape at batch 1)",
    "experimental.nlp_create_qkv_heads": f"{PI0}ttnn_gemma.py GemmaAttentionTTNN.forward; "
                                         "ttnn_siglip.py attention",
    "experimental.nlp_concat_heads": f"{PI0}ttnn_gemma.py GemmaAttentionTTNN.forward; "
                                     "ttnn_siglip.py attention",
    "transformer.scaled_dot_product_attention":
        f"{PI0}ttnn_gemma.py GemmaAttentionTTNN.forward (is_causal=False, scale, HiFi2 kernel). "
        "tt-metal passes no attn_mask there (a correctness gap, ttnn_pi0.md section 9); the "
        "additive bf16 mask [B, 1, Sq, Sk] is an SDPA argument we must use",
    "transformer.scaled_dot_product_attention|SDPAProgramConfig":
        f"{PI0}ttnn_gemma.py GemmaAttentionTTNN.forward with sdpa_prefill_chunk_sizes "
        "(ttnn_common.py)",
    "rms_norm": f"{PI0}ttnn_gemma.py rms_norm_ttnn (weight with +1 pre-added, L1 output). With "
                "weight = 1 + scale and bias = shift (precomputed adaRMS): seen only in a derived "
                "PI0.5 copy (uncertain); precompute_conditioning=false reverts to rms_norm + "
                "multiply + add",
    "layer_norm": f"{PI0}ttnn_siglip.py SigLIP encoder layer (pre-LN, weight and bias)",
    "add": f"{PI0}ttnn_gemma.py GemmaBlockTTNN.forward (residuals); runner/performant_runner.py "
           "Euler step",
    "multiply": f"{PI0}ttnn_gemma.py GemmaMLPTTNN.forward; runner/performant_runner.py Euler step "
                "(velocity * dt)",
    "subtract": f"{PI0}ttnn_common.py sinusoid helpers; RTC guidance (ours, elementwise)",
    "mac": f"{NOT_SEEN} (a derived PI0.5 copy fuses the gated residual the same way, uncertain): "
           "x + y * gate in one ternary eltwise op; precompute_conditioning=false reverts to "
           "multiply + add",
    "geglu": f"{NOT_SEEN}: ttnn.geglu (a * gelu(b) over the two halves, GeluVariant.Tanh) after "
             "one fused [up | gate] matmul saves two ops per MLP; fused_mlp=false reverts to "
             "tt-metal's gate/up linears + gelu + multiply",
    "gelu": f"{PI0}ttnn_siglip.py SigLIP MLP, ttnn_gemma.py GemmaMLPTTNN (gelu after the gate)",
    "silu": f"{PI0}ttnn_suffix.py embed_suffix_fast_bs1 (fused activation='silu' in the linear); "
            "the standalone silu after the precomputed time half is ours",
    "fill_cache": "tt-metal models/tt_transformers/tt/attention.py Attention.forward_prefill "
                  "(prefill K/V into the cache, batch_idx per user). The update_idx row offset "
                  "(suffix rows after the prefix) is NOT SEEN on hardware; kv_in_place=false "
                  "reverts to PI0's per-step concat",
    "concat": f"{PI0}ttnn_gemma.py GemmaAttentionTTNN.forward (past K/V on dim 2); "
              "ttnn_prefix.py embed_prefix",
    "embedding": f"{PI0}ttnn_paligemma.py embed_language_tokens (ROW_MAJOR table). The per-token "
                 "RoPE row gather is ours (tt-metal slices a contiguous range: wrong positions, "
                 "ttnn_pi0.md section 9)",
    "typecast": f"{PI0}ttnn_gemma.py precompute_freqs_cis_meta_format (fp32 -> bf16); "
                "tt_transformers attention.py (K/V -> bfloat8_b before fill_cache)",
    "slice": f"{PI0}ttnn_gemma.py (RoPE slices), runner/performant_runner.py (drop the state "
             "token, timestep slices)",
    "reshape": f"{PI0}ttnn_siglip.py patch embedding, ttnn_gemma.py 3-D/4-D reshapes",
    "permute": f"{PI0}ttnn_siglip.py patch embedding (6-D permute)",
    "pad": f"{PI0}ttnn_siglip.py patch embedding (K 588 -> 608)",
    "to_layout": f"{PI0}ttnn_siglip.py patch embedding (ROW_MAJOR -> TILE)",
    "repeat": f"{PI0}ttnn_prefix.py image masks expanded with ttnn.repeat",
    "sin": f"{PI0}ttnn_common.py create_sinusoidal_pos_embedding_ttnn",
    "cos": f"{PI0}ttnn_common.py create_sinusoidal_pos_embedding_ttnn",
    "zeros": "tt-metal models/tt_transformers/tt/attention.py (KV caches allocated once, zeroed); "
             "ours: resident [prefix ; suffix] K/V buffers allocated once per shape",
    "clone": "tt-metal PI0.5 branch (changh95/pi05, PR #43559) sample_actions_traced (trace "
             "buffers); ours: trace inputs beside the CQ1 staging buffers, first call only",
    "copy": "PI0.5 branch sample_actions_traced (ttnn.copy of prefix K/V into traced buffers); "
            "ours: staging -> trace inputs on CQ0 (2 CQs), prefix K/V in concat mode",
    "zeros_like": f"{PI0}ttnn_prefix.py embed_prefix (all-zero ar mask)",
}


@dataclasses.dataclass(frozen=True)
class Row:
    op: str
    inputs: str
    output: str
    program_config: str
    kernel: str

    def key(self) -> str:
        """The table cells the doc test looks for (everything except the evidence)."""
        return (f"| `{self.op}` | {self.inputs or '-'} | {self.output or '-'} | "
                f"{self.program_config or '-'} | {self.kernel or '-'} |")


def evidence(row: Row) -> str:
    return EVIDENCE.get(f"{row.op}|{row.program_config}") or EVIDENCE.get(row.op) or \
        f"{NOT_SEEN}: no evidence recorded"


def configs() -> List[Tuple[str, Dict[str, object]]]:
    """(preset, overrides) the patterns are collected under."""
    from pi0_ttnn_node.tools.ttnn_counts import ALL_OFF

    return [("accurate", {}), ("accurate", dict(ALL_OFF, trace="denoise")),
            ("fast", {})]


def collect(models: Iterable[str] = ("pi0", "pi05"), sizes: Iterable[str] = ("tiny",),
            cfgs: Optional[List[Tuple[str, Dict[str, object]]]] = None
            ) -> "collections.Counter[Row]":
    """Run each model / size / config twice on the emulated device; count every pattern."""
    import torch

    from pi0_ttnn_node.embedded import random_state_dict, sized_config
    from pi0_ttnn_node.tools.ttnn_counts import _inputs
    from pi0_ttnn_node.ttnn_backend.runtime import open_tt_device
    from pi0_ttnn_node.ttnn_backend.ttnn_config import resolve_runtime_config
    from pi0_ttnn_node.ttnn_backend.ttnn_op_log import OpLog

    found: "collections.Counter[Row]" = collections.Counter()
    for size in sizes:
        for model_type in models:
            cfg = sized_config(model_type, size)
            sd = random_state_dict(cfg, 11)
            x = _inputs(cfg)
            args = {k: v for k, v in x.items() if k != "noise"}
            for preset, overrides in cfgs or configs():
                rc = resolve_runtime_config(preset, dict(overrides, emulate=True,
                                                         trace_region_size=80_000_000))
                with open_tt_device(rc) as handle:
                    import ttnn

                    from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

                    with OpLog(ttnn) as log:
                        model = PI0ModelTTNN(cfg, sd, handle.device, rc)
                        try:
                            for _ in range(2):
                                model.sample_actions(**args, noise=torch.randn_like(x["noise"]),
                                                     num_steps=2)
                        finally:
                            model.release_trace()
                    for p, n in log.patterns().items():
                        found[Row(p.op, ", ".join(p.inputs), p.output, p.program_config,
                                  p.kernel)] += n
    return found


def render(rows: "collections.Counter[Row]") -> str:
    lines = ["| op | tensor operands (layout/dtype/memory) | output memory | program config | "
             "kernel | where tt-metal runs it on hardware |",
             "|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r.op, r.inputs, r.output, r.program_config, r.kernel)):
        lines.append(f"{row.key()} {evidence(row)} |")
    return "\n".join(lines)


def write(doc: Path, table: str) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,mid")
    p.add_argument("--write", default="", help="markdown file with the pattern markers")
    a = p.parse_args(argv)
    table = render(collect(sizes=a.sizes.split(",")))
    if a.write:
        write(Path(a.write), table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
