"""Suffix embedding (state, noisy actions, time) and the velocity head on the device.

PI0: [state_proj(state)] + action_time_mlp_out(silu(action_time_mlp_in([action_in_proj(x_t),
sincos(t)]))); PI0.5: action_in_proj(x_t) tokens, and
silu(time_mlp_out(silu(time_mlp_in(sincos(t))))) as the adaRMS condition. The sinusoid is computed
on the device in float32. With precomputed conditioning everything that does not depend on x_t (the
time half of action_time_mlp_in, the state token, the adaRMS modulations) is computed for all steps
before the loop. Action rows may be padded past chunk_size (tile-aligned suffix); padded rows are
masked and dropped after download.
Counterpart: torch_backend/torch_suffix.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import ttnn

from pi0_ttnn_node import masks
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import ObservationError
from pi0_ttnn_node.ttnn_backend.ttnn_common import create_sinusoidal_pos_embedding_ttnn
from pi0_ttnn_node.ttnn_backend.ttnn_gemma import Modulation

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


@dataclass
class StepConditioning:
    """What one denoise step reads besides x_t.

    Per step (precompute_conditioning off): `time_emb` [1, D], the rest is computed in the step.
    Precomputed before the loop: PI0 `time_row` (time half of action_time_mlp_in plus its bias,
    [1, D]) and `state_token` [B, 1, 1, D]; PI0.5 `adarms` (one Modulation per adaRMS norm of the
    expert, final norm last).
    """

    time_emb: Optional["ttnn.Tensor"] = None
    time_row: Optional["ttnn.Tensor"] = None
    state_token: Optional["ttnn.Tensor"] = None
    adarms: Optional[List[Modulation]] = None


class SuffixEmbeddingTTNN:
    """Builds suffix tokens and projects expert outputs to velocities, all with ttnn ops.

    Suffix activations are 4-D [B, 1, rows, D] (the expert's layout); x_t is [B, 1, Tp, A].
    """

    # mirrors torch_suffix.SuffixEmbedding
    def __init__(self, config: PI0Config, weights: Weights, plan: Any):
        self.config = config
        self.plan = plan
        self.action_in_proj = (weights["action_in_proj.weight"], weights["action_in_proj.bias"])
        self.action_out_proj = (weights["action_out_proj.weight"], weights["action_out_proj.bias"])
        self.split_time_mlp = "action_time_mlp_in.action.weight" in weights
        if config.is_pi05:
            self.time_mlp_in = (weights["time_mlp_in.weight"], weights["time_mlp_in.bias"])
            self.time_mlp_out = (weights["time_mlp_out.weight"], weights["time_mlp_out.bias"])
        elif self.split_time_mlp:
            self.time_mlp_in_action = weights["action_time_mlp_in.action.weight"]
            self.time_mlp_in = (weights["action_time_mlp_in.time.weight"],
                                weights["action_time_mlp_in.bias"])
            self.time_mlp_out = (weights["action_time_mlp_out.weight"],
                                 weights["action_time_mlp_out.bias"])
        else:
            self.time_mlp_in = (weights["action_time_mlp_in.weight"],
                                weights["action_time_mlp_in.bias"])
            self.time_mlp_out = (weights["action_time_mlp_out.weight"],
                                 weights["action_time_mlp_out.bias"])
        self.state_proj = None if config.is_pi05 else (weights["state_proj.weight"],
                                                       weights["state_proj.bias"])
        self.inv_period = weights["time.inv_period"]

    def _linear(self, layer: Tuple["ttnn.Tensor", "ttnn.Tensor"], x: "ttnn.Tensor",
                **kwargs: Any) -> "ttnn.Tensor":
        return self.plan.linear(x, layer[0], "denoise", bias=layer[1], **kwargs)

    def embed_actions(self, x_t: "ttnn.Tensor") -> "ttnn.Tensor":
        """Noisy actions [B, (1,) T, max_action_dim] (float32 or bf16) -> [B, (1,) T, D] bf16."""
        if x_t.dtype != ttnn.bfloat16:
            x_t = ttnn.typecast(x_t, ttnn.bfloat16, memory_config=self.plan.memory("denoise"))
        return self._linear(self.action_in_proj, x_t)

    def embed_state(self, state: Optional["ttnn.Tensor"]) -> "ttnn.Tensor":
        """PI0 state [B, max_state_dim] -> one token [B, 1, 1, D]."""
        if state is None or self.state_proj is None:
            raise ObservationError("PI0 needs a state vector [B, max_state_dim]; got None")
        if state.shape[-1] != self.config.max_state_dim:
            msg = (f"state has {state.shape[-1]} dims; expected {self.config.max_state_dim} "
                   "(normalise, then zero-pad to max_state_dim)")
            raise ObservationError(msg)
        out = self._linear(self.state_proj, state, memory_config=ttnn.DRAM_MEMORY_CONFIG)
        return ttnn.reshape(out, (out.shape[0], 1, 1, out.shape[1]))

    def embed_timestep(self, timestep: Union[float, "ttnn.Tensor"]) -> "ttnn.Tensor":
        """Sin/cos embedding of t (float, or float32 [B, 1] on the device) -> [B, D] bf16."""
        emb = create_sinusoidal_pos_embedding_ttnn(timestep, self.inv_period)
        return ttnn.typecast(emb, ttnn.bfloat16)

    def time_condition(self, time_emb: "ttnn.Tensor") -> "ttnn.Tensor":
        """PI0.5 adaRMS condition silu(time_mlp_out(silu(time_mlp_in(emb)))) for rows of emb."""
        dram = ttnn.DRAM_MEMORY_CONFIG
        hidden = self._linear(self.time_mlp_in, time_emb, activation="silu", memory_config=dram)
        return self._linear(self.time_mlp_out, hidden, activation="silu", memory_config=dram)

    def precompute(self, time_embs: "ttnn.Tensor", state: Optional["ttnn.Tensor"], steps: int,
                   adarms_norms: Sequence[Any]) -> List[StepConditioning]:
        """Everything of every step that does not depend on x_t, before the loop: one matmul per
        weight over all steps' rows instead of one per step."""
        width = time_embs.shape[-1]
        if self.config.is_pi05:
            cond_all = self.time_condition(time_embs)  # [steps, D]
            per_norm = [norm.precompute(cond_all, steps) for norm in adarms_norms]
            return [StepConditioning(adarms=[mods[k] for mods in per_norm]) for k in range(steps)]
        if not self.split_time_mlp:
            raise ValueError("precomputed PI0 conditioning needs action_time_mlp_in split into "
                             "action and time rows (ttnn_weights.WeightLayout "
                             "precompute_conditioning=True)")
        rows = self._linear(self.time_mlp_in, time_embs, memory_config=ttnn.DRAM_MEMORY_CONFIG)
        state_token = self.embed_state(state)
        return [StepConditioning(time_row=ttnn.slice(rows, [k, 0], [k + 1, width]),
                                 state_token=state_token) for k in range(steps)]

    def fuse_action_time(self, action_emb: "ttnn.Tensor", time_emb: "ttnn.Tensor"
                         ) -> Tuple["ttnn.Tensor", Optional["ttnn.Tensor"]]:
        """Return (action tokens, adarms_cond): PI0 mixes time into the tokens, PI0.5 into adaRMS.

        `time_emb` may have one row for the whole batch ([1, D]); it is repeated to B rows.
        """
        b, horizon, width = action_emb.shape[0], action_emb.shape[-2], action_emb.shape[-1]
        if time_emb.shape[0] != b:
            time_emb = ttnn.repeat(time_emb, (b, 1))
        if self.config.is_pi05:
            return action_emb, self.time_condition(time_emb)
        time_tokens = ttnn.repeat(ttnn.reshape(time_emb, (b, 1, 1, width)), (1, 1, horizon, 1))
        if len(action_emb.shape) == 3:
            action_emb = ttnn.reshape(action_emb, (b, 1, horizon, width))
        x = ttnn.concat([action_emb, time_tokens], dim=3)
        x = self._linear(self.time_mlp_in, x, activation="silu")
        return self._linear(self.time_mlp_out, x), None

    def embed_suffix_tokens(self, state: Optional["ttnn.Tensor"], x_t: "ttnn.Tensor",
                            timestep: Union[float, "ttnn.Tensor", None],
                            time_emb: Optional["ttnn.Tensor"] = None,
                            step: Optional[StepConditioning] = None
                            ) -> Tuple["ttnn.Tensor", Any]:
        """Return (suffix embs [B, 1, S, D], adarms condition or per-norm Modulations).

        `time_emb` (a precomputed embed_timestep row) skips the sinusoid; `step` (precomputed
        conditioning) also skips the time MLP, the state projection and the adaRMS matmuls.
        """
        if len(x_t.shape) == 3:
            x_t = ttnn.reshape(x_t, (x_t.shape[0], 1, x_t.shape[1], x_t.shape[2]))
        memory = self.plan.memory("denoise")
        if step is not None and (step.adarms is not None or step.time_row is not None):
            tokens = self.embed_actions(x_t)
            if self.config.is_pi05:
                return tokens, step.adarms
            h = self.plan.linear(tokens, self.time_mlp_in_action, "denoise")
            self.plan.release("denoise", tokens)
            h2 = ttnn.silu(ttnn.add(h, step.time_row, memory_config=memory),
                           memory_config=memory)
            self.plan.release("denoise", h)
            tokens = self._linear(self.time_mlp_out, h2)
            self.plan.release("denoise", h2)
            out = ttnn.concat([step.state_token, tokens], dim=2, memory_config=memory)
            self.plan.release("denoise", tokens)
            return out, None
        if step is not None:
            time_emb = step.time_emb
        if time_emb is None:
            time_emb = self.embed_timestep(timestep)
        tokens, cond = self.fuse_action_time(self.embed_actions(x_t), time_emb)
        if not self.config.is_pi05:
            tokens = ttnn.concat([self.embed_state(state), tokens], dim=2)
        return tokens, cond

    def embed_suffix(self, state: Optional["ttnn.Tensor"], x_t: "ttnn.Tensor",
                     timestep: Union[float, "ttnn.Tensor"]
                     ) -> Tuple["ttnn.Tensor", torch.Tensor, torch.Tensor, Optional["ttnn.Tensor"]]:
        """Return (embs [B, S, D], pad_masks [B, S], att_masks [B, S], adarms_cond).

        The masks are the static host pattern (masks.py); attention uses the uploaded additive
        suffix mask, so nothing here round-trips through the host.
        """
        embs, cond = self.embed_suffix_tokens(state, x_t, timestep)
        b, s, d = embs.shape[0], embs.shape[2], embs.shape[3]
        embs = ttnn.reshape(embs, (b, s, d))
        pad, att = suffix_masks(self.config, b, s)
        return embs, pad, att, cond

    def project_output(self, suffix_out: "ttnn.Tensor") -> "ttnn.Tensor":
        """Expert output [B, (1,) S, D] -> velocity [B, (1,) S - state tokens, max_action_dim]
        in float32.

        Drops the PI0 state token (the torch file keeps the last chunk_size tokens: the same rows
        when the suffix is not padded).
        """
        if not self.config.is_pi05:
            shape = list(suffix_out.shape)
            start = [0] * len(shape)
            start[-2] = 1
            suffix_out = ttnn.slice(suffix_out, start, shape,
                                    memory_config=self.plan.memory("denoise"))
        return self._linear(self.action_out_proj, suffix_out, dtype=ttnn.float32)
