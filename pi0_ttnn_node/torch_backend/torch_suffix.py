"""Suffix embedding (state, noisy actions, time) and the velocity head.

PI0: [state_proj(state)] + action_time_mlp_out(silu(action_time_mlp_in([action_in_proj(x_t),
sincos(t)]))) -> 1 + 50 tokens, no adaRMS condition. PI0.5: action_in_proj(x_t) -> 50 tokens, and
silu(time_mlp_out(silu(time_mlp_in(sincos(t))))) is the adaRMS condition. The sin/cos time
embedding is computed in float64 (sin half first), then cast.
Counterpart: ttnn_backend/ttnn_suffix.py.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pi0_ttnn_node import masks
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import ObservationError


def create_sinusoidal_pos_embedding(time: Tensor, dim: int, min_period: float,
                                    max_period: float) -> Tensor:
    """Return [B, dim] float64 [sin(2 pi t / period), cos(2 pi t / period)], log-spaced periods."""
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    if time.ndim != 1:
        raise ValueError(f"time must be [B], got shape {tuple(time.shape)}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    scaling = 1.0 / period * 2 * math.pi  # same operation order as openpi, for identical bits
    angle = scaling[None, :] * time[:, None].to(torch.float64)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return layer(x.to(layer.weight.dtype))


class SuffixEmbedding:
    """Builds suffix tokens and projects expert outputs to velocities.

    Holds references to the head modules owned by PI0Model (their names are checkpoint keys).
    """

    def __init__(self, config: PI0Config, action_in_proj: nn.Linear, action_out_proj: nn.Linear,
                 state_proj: Optional[nn.Linear], time_mlp_in: nn.Linear, time_mlp_out: nn.Linear):
        self.config = config
        self.action_in_proj = action_in_proj
        self.action_out_proj = action_out_proj
        self.state_proj = state_proj
        # PI0: action_time_mlp_in/out (width 2D -> D -> D); PI0.5: time_mlp_in/out (D -> D -> D).
        self.time_mlp_in = time_mlp_in
        self.time_mlp_out = time_mlp_out

    def embed_actions(self, x_t: Tensor) -> Tensor:
        """Noisy actions [B, T, max_action_dim] -> [B, T, D]."""
        return _linear(self.action_in_proj, x_t)

    def embed_state(self, state: Optional[Tensor]) -> Tensor:
        """PI0 state [B, max_state_dim] -> one token [B, 1, D]."""
        if state is None or self.state_proj is None:
            raise ObservationError("PI0 needs a state vector [B, max_state_dim]; got None")
        if state.shape[-1] != self.config.max_state_dim:
            msg = (f"state has {state.shape[-1]} dims; expected {self.config.max_state_dim} "
                   "(normalise, then zero-pad to max_state_dim)")
            raise ObservationError(msg)
        return _linear(self.state_proj, state)[:, None, :]

    def embed_timestep(self, timestep: Tensor) -> Tensor:
        """Sin/cos embedding of t [B] -> [B, D] in the dtype of `timestep` (fp32)."""
        emb = create_sinusoidal_pos_embedding(timestep, self.action_in_proj.out_features,
                                              self.config.min_period, self.config.max_period)
        return emb.to(timestep.dtype)

    def fuse_action_time(self, action_emb: Tensor,
                         time_emb: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Return (action tokens, adarms_cond): PI0 mixes time into tokens, PI0.5 into adaRMS."""
        if self.config.is_pi05:
            cond = F.silu(_linear(self.time_mlp_out, F.silu(_linear(self.time_mlp_in, time_emb))))
            return action_emb, cond
        time_tokens = time_emb[:, None, :].to(action_emb.dtype).expand_as(action_emb)
        x = _linear(self.time_mlp_in, torch.cat([action_emb, time_tokens], dim=2))
        return _linear(self.time_mlp_out, F.silu(x)), None

    def embed_suffix_tokens(self, state: Optional[Tensor], x_t: Tensor,
                            timestep: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Return (suffix embs [B, S, D], adarms_cond); the masks are static and built once."""
        action_emb = self.embed_actions(x_t)
        tokens, cond = self.fuse_action_time(action_emb, self.embed_timestep(timestep))
        if not self.config.is_pi05:
            state_emb = self.embed_state(state)
            tokens = torch.cat([state_emb.to(tokens.dtype), tokens], dim=1)
        return tokens, cond

    def embed_suffix(self, state: Optional[Tensor], x_t: Tensor, timestep: Tensor
                     ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
        """Return (embs [B, S, D], pad_masks [B, S], att_masks [B, S], adarms_cond)."""
        embs, cond = self.embed_suffix_tokens(state, x_t, timestep)
        pad, att = masks.suffix_pattern(self.config, embs.shape[0], embs.device)
        return embs, pad, att, cond

    def project_output(self, suffix_out: Tensor) -> Tensor:
        """Expert output [B, S, D] -> velocity [B, T, max_action_dim] in fp32 (last T tokens)."""
        tokens = suffix_out[:, -self.config.chunk_size:].to(torch.float32)
        return _linear(self.action_out_proj, tokens).to(torch.float32)
