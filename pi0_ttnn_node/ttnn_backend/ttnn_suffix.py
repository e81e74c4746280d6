"""Suffix embedding (state, noisy actions, time) and the velocity head on the device.

PI0: [state_proj(state)] + action_time_mlp_out(silu(action_time_mlp_in([action_in_proj(x_t),
sincos(t)]))); PI0.5: action_in_proj(x_t) tokens, and
silu(time_mlp_out(silu(time_mlp_in(sincos(t))))) as the adaRMS condition. The sinusoid is computed on the device in float32. Action rows may be
padded past chunk_size (tile-aligned suffix); padded rows are masked and dropped after download.
Counterpart: torch_backend/torch_suffix.py.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
import ttnn

from pi0_ttnn_node import masks
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import ObservationError
from pi0_ttnn_node.ttnn_backend.ttnn_common import create_sinusoidal_pos_embedding_ttnn

Weights = Dict[str, "ttnn.Tensor"]


def suffix_masks(config: PI0Config, batch: int, length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Host (pad, ar) masks [B, length]: masks.suffix_pattern, then invalid padding tokens."""
    pad, att = masks.suffix_pattern(config, batch)
    extra = length - pad.shape[1]
    if extra < 0:
        raise ValueError(f"suffix length {length} is shorter than the model's {pad.shape[1]} "
                         "tokens")
    fill = torch.zeros(batch, extra, dtype=torch.bool)
    return torch.cat([pad, fill], dim=1), torch.cat([att, fill], dim=1)


class SuffixEmbeddingTTNN:
    """Builds suffix tokens and projects expert outputs to velocities, all with ttnn ops."""

    # mirrors torch_suffix.SuffixEmbedding
    def __init__(self, config: PI0Config, weights: Weights, kernel: Any = None):
        self.config = config
        self.kernel = kernel
        self.action_in_proj = (weights["action_in_proj.weight"], weights["action_in_proj.bias"])
        self.action_out_proj = (weights["action_out_proj.weight"], weights["action_out_proj.bias"])
        names = ("time_mlp_in", "time_mlp_out") if config.is_pi05 else (
            "action_time_mlp_in", "action_time_mlp_out")
        self.time_mlp_in = (weights[f"{names[0]}.weight"], weights[f"{names[0]}.bias"])
        self.time_mlp_out = (weights[f"{names[1]}.weight"], weights[f"{names[1]}.bias"])
        self.state_proj = None if config.is_pi05 else (weights["state_proj.weight"],
                                                       weights["state_proj.bias"])
        self.inv_period = weights["time.inv_period"]

    def _linear(self, layer: Tuple["ttnn.Tensor", "ttnn.Tensor"], x: "ttnn.Tensor",
                **kwargs: Any) -> "ttnn.Tensor":
        return ttnn.linear(x, layer[0], bias=layer[1], compute_kernel_config=self.kernel, **kwargs)

    def embed_actions(self, x_t: "ttnn.Tensor") -> "ttnn.Tensor":
        """Noisy actions [B, T, max_action_dim] (float32 or bf16) -> [B, T, D] bf16."""
        if x_t.dtype != ttnn.bfloat16:
            x_t = ttnn.typecast(x_t, ttnn.bfloat16)
        return self._linear(self.action_in_proj, x_t)

    def embed_state(self, state: Optional["ttnn.Tensor"]) -> "ttnn.Tensor":
        """PI0 state [B, max_state_dim] -> one token [B, 1, D]."""
        if state is None or self.state_proj is None:
            raise ObservationError("PI0 needs a state vector [B, max_state_dim]; got None")
        if state.shape[-1] != self.config.max_state_dim:
            msg = (f"state has {state.shape[-1]} dims; expected {self.config.max_state_dim} "
                   "(normalise, then zero-pad to max_state_dim)")
            raise ObservationError(msg)
        out = self._linear(self.state_proj, state)
        return ttnn.reshape(out, (out.shape[0], 1, out.shape[1]))

    def embed_timestep(self, timestep: Union[float, "ttnn.Tensor"]) -> "ttnn.Tensor":
        """Sin/cos embedding of t (float, or float32 [B, 1] on the device) -> [B, D] bf16."""
        emb = create_sinusoidal_pos_embedding_ttnn(timestep, self.inv_period)
        return ttnn.typecast(emb, ttnn.bfloat16)

    def fuse_action_time(self, action_emb: "ttnn.Tensor", time_emb: "ttnn.Tensor"
                         ) -> Tuple["ttnn.Tensor", Optional["ttnn.Tensor"]]:
        """Return (action tokens, adarms_cond): PI0 mixes time into the tokens, PI0.5 into adaRMS.

        `time_emb` may have one row for the whole batch ([1, D]); it is repeated to B rows.
        """
        b, horizon, width = action_emb.shape[0], action_emb.shape[1], action_emb.shape[2]
        if time_emb.shape[0] != b:
            time_emb = ttnn.repeat(time_emb, (b, 1))
        if self.config.is_pi05:
            hidden = self._linear(self.time_mlp_in, time_emb, activation="silu")
            return action_emb, self._linear(self.time_mlp_out, hidden, activation="silu")
        time_tokens = ttnn.repeat(ttnn.reshape(time_emb, (b, 1, width)), (1, horizon, 1))
        x = ttnn.concat([action_emb, time_tokens], dim=2)
        x = self._linear(self.time_mlp_in, x, activation="silu")
        return self._linear(self.time_mlp_out, x), None

    def embed_suffix_tokens(self, state: Optional["ttnn.Tensor"], x_t: "ttnn.Tensor",
                            timestep: Union[float, "ttnn.Tensor", None],
                            time_emb: Optional["ttnn.Tensor"] = None
                            ) -> Tuple["ttnn.Tensor", Optional["ttnn.Tensor"]]:
        """Return (suffix embs [B, S, D], adarms_cond).

        `time_emb` (a precomputed embed_timestep row) skips the sinusoid: the denoise loop embeds
        all its timesteps once before the loop; the torch file has no such argument.
        """
        if time_emb is None:
            time_emb = self.embed_timestep(timestep)
        tokens, cond = self.fuse_action_time(self.embed_actions(x_t), time_emb)
        if not self.config.is_pi05:
            tokens = ttnn.concat([self.embed_state(state), tokens], dim=1)
        return tokens, cond

    def embed_suffix(self, state: Optional["ttnn.Tensor"], x_t: "ttnn.Tensor",
                     timestep: Union[float, "ttnn.Tensor"]
                     ) -> Tuple["ttnn.Tensor", torch.Tensor, torch.Tensor, Optional["ttnn.Tensor"]]:
        """Return (embs [B, S, D], pad_masks [B, S], att_masks [B, S], adarms_cond).

        The masks are the static host pattern (masks.py); attention uses the uploaded additive
        suffix mask, so nothing here round-trips through the host.
        """
        embs, cond = self.embed_suffix_tokens(state, x_t, timestep)
        pad, att = suffix_masks(self.config, embs.shape[0], embs.shape[1])
        return embs, pad, att, cond

    def project_output(self, suffix_out: "ttnn.Tensor") -> "ttnn.Tensor":
        """Expert output [B, S, D] -> velocity [B, S - state tokens, max_action_dim] in float32.

        Drops the PI0 state token (the torch file keeps the last chunk_size tokens: the same rows
        when the suffix is not padded).
        """
        if not self.config.is_pi05:
            b, s, d = suffix_out.shape[0], suffix_out.shape[1], suffix_out.shape[2]
            suffix_out = ttnn.slice(suffix_out, [0, 1, 0], [b, s, d])
        return self._linear(self.action_out_proj, suffix_out, dtype=ttnn.float32)
