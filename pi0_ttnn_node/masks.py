"""Attention masks and position ids for the PI0 prefix-LM, built on the host for both backends.

Rules from big_vision / openpi (`make_att_2d_masks`): a query sees a key when the key's cumulative
`ar` count is not larger than the query's and both tokens are valid. Padded and masked-camera
tokens do not advance position ids. Blocked logits get the finite value -2.3819763e38 (lerobot's
OPENPI_ATTENTION_MASK_VALUE), so fully masked rows give finite values instead of NaN.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from pi0_ttnn_node.config import PI0Config

NEG_INF = -2.3819763e38


def make_att_2d_masks(pad_masks: Tensor, att_masks: Tensor) -> Tensor:
    """Return the [B, N, N] boolean mask (query, key) from pad [B, N] and ar [B, N] masks."""
    if pad_masks.ndim != 2 or att_masks.ndim != 2:
        raise ValueError(f"pad_masks and att_masks must be [B, N], got {tuple(pad_masks.shape)} "
                         f"and {tuple(att_masks.shape)}")
    cumsum = torch.cumsum(att_masks.to(torch.int64), dim=1)
    causal = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = pad_masks[:, None, :] & pad_masks[:, :, None]
    return causal & valid


def prefix_position_ids(prefix_pad: Tensor) -> Tensor:
    """Positions of the prefix tokens [B, P]: invalid tokens do not advance the count."""
    return torch.cumsum(prefix_pad.to(torch.int64), dim=1) - 1


def suffix_position_ids(prefix_pad: Tensor, suffix_pad: Tensor) -> Tensor:
    """Positions of the suffix tokens [B, S], continuing after the valid prefix tokens."""
    offset = prefix_pad.to(torch.int64).sum(dim=-1, keepdim=True)
    return offset + torch.cumsum(suffix_pad.to(torch.int64), dim=1) - 1


def suffix_attention_mask(prefix_pad: Tensor, suffix_pad: Tensor, suffix_att: Tensor) -> Tensor:
    """Return [B, S, P+S]: suffix queries see valid prefix keys plus the suffix prefix-LM block."""
    batch, prefix_len = prefix_pad.shape
    suffix_len = suffix_pad.shape[1]
    prefix_block = prefix_pad[:, None, :].expand(batch, suffix_len, prefix_len)
    suffix_block = make_att_2d_masks(suffix_pad, suffix_att)
    return torch.cat([prefix_block, suffix_block], dim=2)


def to_additive_mask(bool_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Turn a [B, Q, K] boolean mask into an additive [B, 1, Q, K] mask (0 or NEG_INF)."""
    zero = torch.zeros((), dtype=dtype, device=bool_mask.device)
    blocked = torch.full((), NEG_INF, dtype=dtype, device=bool_mask.device)
    return torch.where(bool_mask[:, None, :, :], zero, blocked)


def suffix_pattern(config: PI0Config, batch_size: int = 1,
                   device: "torch.device | str" = "cpu") -> Tuple[Tensor, Tensor]:
    """Return the suffix (pad, ar) masks [B, S]: PI0 ar = [1, 1, 0, ...], PI0.5 ar = [1, 0, ...].

    The PI0 state token opens its own block, so it sees the prefix and itself but no action token;
    the first action token opens the next block, which sees everything before it.
    """
    ar = [1] + [0] * (config.chunk_size - 1)
    if not config.is_pi05:
        ar = [1] + ar
    att = torch.tensor(ar, dtype=torch.bool, device=device)[None, :].expand(batch_size, len(ar))
    pad = torch.ones(batch_size, len(ar), dtype=torch.bool, device=device)
    return pad, att
