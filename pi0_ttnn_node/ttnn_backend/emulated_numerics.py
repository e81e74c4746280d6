"""What the Tensix matrix engine does to the numbers (CPU EMULATION of its arithmetic, not a card).

Model, from public Tenstorrent sources:
- Source registers: SrcA / SrcB hold 19-bit values (sign, 8-bit exponent, 10-bit mantissa: TF32).
  bfloat16 and bfloat8_b unpack losslessly (bf8's shared-exponent block becomes normalised bf16);
  float32 inputs lose their 13 low mantissa bits (jasondavies/tt-isa-documentation
  WormholeB0/TensixTile/TensixCoprocessor/SrcASrcB.md; tt-llk SrcFormatModel._fp32_to_tf32).
  Denormal flushing is not modelled.
- Multipliers are 5 x 7 bits: SrcA contributes 1 hidden + 4 mantissa bits per phase, SrcB 1 hidden
  + 6 (tt-metal tech_reports/matrix_engine/matrix_engine.md, "Math Fidelity"). Each fidelity phase
  multiplies one mantissa slice of each operand; LoFi runs phase 0, HiFi2 phases 0-1, HiFi3 0-2,
  HiFi4 the full product. The slices are the masks of tenstorrent/tt-llk
  tests/python_tests/helpers/golden_generators.py `FidelityMasking._apply_fidelity_masking`
  (FP_FIDELITY_ITER_MASK, non-Quasar branch; stored copy of the tt-llk main branch whose crawled
  listing is at commit e320a8b3f0e2768ac3ac929ed3f5be97c377d825), applied to the 11-bit mantissa
  with its hidden bit (bit 10). Its MatmulGolden._prepare_fidelity_operands puts the matmul lhs
  (in0, activations) in SrcB and the rhs (in1, weights) in SrcA, as tt-llk's
  llk_unpack_AB_matmul does ("In0/InA -> srcB, In1/InB -> srcA"); HiFi4 is the unmasked product.
- Destination accumulation: fp32_dest_acc_en=True keeps the running sum in fp32. Otherwise Dest
  holds bfloat16 (Float16_b): every addition into Dest is rounded to bf16 (round to nearest even:
  an assumption, the hardware rounding mode is not documented publicly). The matmul adds into Dest
  once per fidelity phase per 32-wide K tile (tt-llk MatmulGolden._matmul_mx: "HW's apparent
  per-KT-tile rounding"); the 16-wide MVMUL granularity inside a tile is not modelled.
- Eltwise multiply (in0 -> SrcA, in1 -> SrcB) and reduce sum/mean (input -> SrcA, scaler -> SrcB)
  use fidelity; add/sub do not (matrix_engine.md, "Eltwise" and "Reduction").
Everything is vectorised torch on fp32 tensors; masks are applied on int32 views.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch

FIDELITY_PHASES = {"LoFi": 1, "HiFi2": 2, "HiFi3": 3, "HiFi4": 4}
# (SrcA mask, SrcB mask) per phase, on the 11-bit mantissa with the hidden bit at bit 10.
PHASE_MASKS: Tuple[Tuple[int, int], ...] = (
    (0b11111000000, 0b11111110000),
    (0b00000111110, 0b11111110000),
    (0b11111000000, 0b00000001111),
    (0b00000111110, 0b00000001111),
)
HIDDEN_BIT = 1 << 10
TF32_DROP = 13  # fp32 mantissa bits below the TF32 mantissa
DEST_K_TILE = 32  # K elements per Dest accumulation step (one K tile)
_SIGN_EXP = -0x800000  # 0xFF800000 as int32
_MANT = 0x7FFFFF


def fidelity_name(config: Any, default: str) -> str:
    """'LoFi' .. 'HiFi4' from a compute kernel config (None -> `default`)."""
    if config is None:
        return default
    name = str(getattr(config, "math_fidelity", default)).split(".")[-1]
    if name not in FIDELITY_PHASES:
        raise ValueError(f"unknown math fidelity {name!r}; expected one of {list(FIDELITY_PHASES)}")
    return name


def fp32_acc(config: Any, default: bool = False) -> bool:
    """fp32_dest_acc_en of a compute kernel config (None -> `default`)."""
    return default if config is None else bool(getattr(config, "fp32_dest_acc_en", default))


def to_source_register(x: torch.Tensor, stored_fp32: bool) -> torch.Tensor:
    """Value as SrcA/SrcB hold it: fp32 storage truncated to TF32; bf16 / bf8 values are unchanged.

    (Denormals, which the hardware flushes, are left alone: not modelled.)
    """
    x = x.to(torch.float32).contiguous()
    if not stored_fp32:
        return x
    return (x.view(torch.int32) & ~((1 << TF32_DROP) - 1)).view(torch.float32)


def mantissa_slice(x: torch.Tensor, mask: int) -> torch.Tensor:
    """The part of x (already in source-register form) whose 11-bit mantissa is `mask`-ed.

    With the hidden bit in the mask the result is sign * 2^e * (1.f & mask), one AND on the int32
    view; without it the hidden 1 is subtracted (exact: both values share the exponent).
    """
    bits = x.contiguous().view(torch.int32)
    value = (bits & (_SIGN_EXP | ((mask & (HIDDEN_BIT - 1)) << TF32_DROP))).view(torch.float32)
    if not mask & HIDDEN_BIT:
        value = value - (bits & _SIGN_EXP).view(torch.float32)
    return value


def _phase_operands(a: torch.Tensor, b: torch.Tensor, fidelity: str) -> Sequence[Tuple[torch.Tensor, torch.Tensor]]:
    """[(SrcA slice, SrcB slice)] per phase; HiFi4 is the unmasked pair (tt-llk golden)."""
    if fidelity == "HiFi4":
        return [(a, b)]
    phases = FIDELITY_PHASES[fidelity]
    a_hi = mantissa_slice(a, PHASE_MASKS[0][0])
    b_hi = mantissa_slice(b, PHASE_MASKS[0][1])
    pairs = [(a_hi, b_hi)]
    if phases >= 2:  # SrcA's low slice: (hidden + both slices) - high slice
        a_lo = mantissa_slice(a, PHASE_MASKS[0][0] | PHASE_MASKS[1][0]) - a_hi
        pairs.append((a_lo, b_hi))
    if phases >= 3:  # SrcB's two slices cover all 11 bits, so its low slice is b - high slice
        pairs.append((a_hi, b - b_hi))
    return pairs


def round_dest(x: torch.Tensor, fp32: bool) -> torch.Tensor:
    """A Dest register write: fp32 unchanged, else rounded to bfloat16."""
    return x if fp32 else x.to(torch.bfloat16).to(torch.float32)


def card_matmul(x: torch.Tensor, w: torch.Tensor, *, fidelity: str, fp32_dest: bool,
                x_fp32: bool = False, w_fp32: bool = False) -> torch.Tensor:
    """x [..., M, K] @ w [..., K, N] as the matrix engine computes it (x -> SrcB, w -> SrcA).

    `x_fp32` / `w_fp32`: the operand is stored as float32 (truncated to TF32 in the source
    registers). Returns the Dest contents in fp32 (bf16-valued when `fp32_dest` is False).
    """
    if fidelity not in FIDELITY_PHASES:
        raise ValueError(f"unknown math fidelity {fidelity!r}; expected one of {list(FIDELITY_PHASES)}")
    src_b, src_a = to_source_register(x, x_fp32), to_source_register(w, w_fp32)
    phases = [(sb, sa) for sa, sb in _phase_operands(src_a, src_b, fidelity)]
    if fp32_dest:  # an fp32 sum: phases sharing a SrcB slice fold into one product
        out = phases[0][0] @ (phases[0][1] if len(phases) == 1 else phases[0][1] + phases[1][1])
        for sb, sa in phases[2:]:
            out = out + sb @ sa
        return out
    k = x.shape[-1]
    tiles = -(-k // DEST_K_TILE)
    pad = tiles * DEST_K_TILE - k
    partials = []
    for sb, sa in phases:
        sb = torch.nn.functional.pad(sb, (0, pad)).unflatten(-1, (tiles, DEST_K_TILE)).movedim(-2, 0)
        sa = torch.nn.functional.pad(sa, (0, 0, 0, pad)).unflatten(-2, (tiles, DEST_K_TILE)).movedim(-3, 0)
        while sa.dim() < sb.dim():  # line w's batch dims up behind the tile dim
            sa = sa.unsqueeze(1)
        while sb.dim() < sa.dim():
            sb = sb.unsqueeze(1)
        partials.append(sb @ sa)  # [tiles, ..., M, N]
    acc = partials[0][0].to(torch.bfloat16)
    for tile in range(tiles):
        for index, partial in enumerate(partials):
            if tile or index:
                acc = torch.add(partial[tile], acc).to(torch.bfloat16)  # fp32 sum, one bf16 rounding
    return acc.to(torch.float32)


def card_multiply(a: torch.Tensor, b: torch.Tensor, *, fidelity: str, fp32_dest: bool,
                  a_fp32: bool = False, b_fp32: bool = False) -> torch.Tensor:
    """Eltwise a * b on the FPU (a -> SrcA, b -> SrcB), phases accumulated in Dest."""
    src_a, src_b = to_source_register(a, a_fp32), to_source_register(b, b_fp32)
    out: Optional[torch.Tensor] = None
    for sa, sb in _phase_operands(src_a, src_b, fidelity):
        out = round_dest(sa * sb if out is None else out + sa * sb, fp32_dest)
    assert out is not None
    return out


def card_reduce_sum(x: torch.Tensor, dim: Any, keepdim: bool, *, scaler: float, fidelity: str,
                    fp32_dest: bool, x_fp32: bool = False) -> torch.Tensor:
    """sum(x * scaler) over `dim` as the reduce kernel does it (x -> SrcA, bf16 scaler -> SrcB).

    ttnn's mean passes 1/N as the scaler, so it is rounded to bf16 like the card's scaler tile.
    """
    scale = torch.tensor(float(scaler)).to(torch.bfloat16).to(torch.float32)
    src_a = to_source_register(x, x_fp32)
    out: Optional[torch.Tensor] = None
    for sa, sb in _phase_operands(src_a, scale.expand_as(src_a).contiguous(), fidelity):
        part = (sa * sb).sum(dim=dim, keepdim=keepdim)
        out = round_dest(part if out is None else out + part, fp32_dest)
    assert out is not None
    return out


def card_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], *,
              scale: float, is_causal: bool, fidelity: str, fp32_dest: bool,
              fp32_inputs: Tuple[bool, bool, bool] = (False, False, False)) -> torch.Tensor:
    """Attention with both matmuls on the matrix engine: S = Q K^T and O = P V.

    q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] (grouped heads). Scores and probabilities pass through
    bfloat16 intermediate buffers (tt-metal's SDPA keeps its intermediates in Float16_b); the
    softmax itself runs in fp32 (SFPU approximations and the chunked online softmax are not modelled).
    """
    groups = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
    scores = card_matmul(q, k.transpose(-1, -2), fidelity=fidelity, fp32_dest=fp32_dest,
                         x_fp32=fp32_inputs[0], w_fp32=fp32_inputs[1])
    scores = round_dest(scores, False) * scale
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores + mask
    probs = round_dest(torch.softmax(scores, dim=-1), False)
    return card_matmul(probs, v, fidelity=fidelity, fp32_dest=fp32_dest, w_fp32=fp32_inputs[2])
