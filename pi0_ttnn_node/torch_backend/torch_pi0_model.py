"""PI0 / PI0.5 policy network in PyTorch (inference only): prefix prefill plus Euler denoising.

Mirrors lerobot 0.6.1 `PI0Pytorch` / `PI05Pytorch.sample_actions` numerically (fp32 within ~1e-6).
`state_dict()` keys are the internal names of checkpoint_keys.expected_shapes(config), so a loaded
internal-name dict goes in with `load_state_dict(sd, strict=True)`.
Counterpart: ttnn_backend/ttnn_pi0_model.py.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import ObservationError
from pi0_ttnn_node.rtc import RtcGuidance
from pi0_ttnn_node.torch_backend.torch_denoise import StepCallback, euler_integrate, sample_noise
from pi0_ttnn_node.torch_backend.torch_gemma import GemmaModel
from pi0_ttnn_node.torch_backend.torch_paligemma import PaliGemmaWithExpert, PrefixKVCache
from pi0_ttnn_node.torch_backend.torch_prefix import PrefixEmbedding
from pi0_ttnn_node.torch_backend.torch_siglip import SiglipVisionTower
from pi0_ttnn_node.torch_backend.torch_suffix import SuffixEmbedding

# Parameter name fragments kept in fp32 by `cast_like_lerobot` (lerobot's params_to_keep_float32
# plus the action/time heads, which lerobot builds outside the cast module).
_FP32_NAMES = ("vision_tower.", "multi_modal_projector.", "input_layernorm",
               "post_attention_layernorm", "language_model.norm.", "gemma_expert.norm.",
               "action_in_proj.", "action_out_proj.",
               "state_proj.", "time_mlp_in.", "time_mlp_out.")


class PI0Model(nn.Module):
    """SigLIP + PaliGemma VLM + Gemma action expert + flow-matching heads."""

    def __init__(self, config: PI0Config):
        super().__init__()
        self.config = config
        width = config.expert.width
        self.vision_tower = SiglipVisionTower(config.vision)
        self.multi_modal_projector = nn.Linear(config.vision.hidden_size, config.vlm.width)
        self.language_model = GemmaModel(config.vlm)
        self.gemma_expert = GemmaModel(config.expert)
        self.action_in_proj = nn.Linear(config.max_action_dim, width)
        self.action_out_proj = nn.Linear(width, config.max_action_dim)
        if config.is_pi05:
            self.time_mlp_in = nn.Linear(width, width)
            self.time_mlp_out = nn.Linear(width, width)
            state_proj, time_in, time_out = None, self.time_mlp_in, self.time_mlp_out
        else:
            self.state_proj = nn.Linear(config.max_state_dim, width)
            self.action_time_mlp_in = nn.Linear(2 * width, width)
            self.action_time_mlp_out = nn.Linear(width, width)
            state_proj, time_in, time_out = (self.state_proj, self.action_time_mlp_in,
                                             self.action_time_mlp_out)
        self.requires_grad_(False)  # inference only: never build autograd graphs
        self.prefix = PrefixEmbedding(config, self.vision_tower, self.multi_modal_projector,
                                      self.language_model)
        self.suffix = SuffixEmbedding(config, self.action_in_proj, self.action_out_proj,
                                      state_proj, time_in, time_out)
        self.backbone = PaliGemmaWithExpert(config, self.language_model, self.gemma_expert)
        # Test hook: route both Gemma stacks through the explicit eager attention.
        self.use_eager_attention = False

    def cast_like_lerobot(self, dtype: torch.dtype) -> "PI0Model":
        """Cast like lerobot's `dtype="bfloat16"`: Gemma linears and embeddings in `dtype`; vision
        tower, projector, every norm and the action/time heads stay fp32."""
        self.to(dtype)
        for name, param in self.named_parameters():
            if any(fragment in name for fragment in _FP32_NAMES):
                param.data = param.data.to(torch.float32)
        return self

    def embed_prefix(self, images: Sequence[Tensor], img_masks: Sequence[Tensor],
                     lang_tokens: Tensor, lang_masks: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Return (prefix embs [B, P, D], pad masks [B, P], ar masks [B, P])."""
        return self.prefix.embed_prefix(images, img_masks, lang_tokens, lang_masks)

    def prefill(self, prefix_embs: Tensor, prefix_pad_masks: Tensor,
                prefix_att_masks: Tensor) -> PrefixKVCache:
        """Run the VLM once over the prefix and return the per-layer K/V cache."""
        return self.backbone.prefill(prefix_embs, prefix_pad_masks, prefix_att_masks,
                                     eager=self.use_eager_attention)

    def expert_hidden(self, cache: PrefixKVCache, state: Optional[Tensor], x_t: Tensor,
                      timestep: Tensor) -> Tensor:
        """Final-normed expert output for every suffix token [B, S, D_expert]."""
        embs, cond = self.suffix.embed_suffix_tokens(state, x_t, timestep)
        return self.backbone.forward_expert(cache, embs, cond, eager=self.use_eager_attention)

    def denoise_step(self, cache: PrefixKVCache, state: Optional[Tensor], x_t: Tensor,
                     timestep: Tensor) -> Tensor:
        """Velocity v_t [B, chunk_size, max_action_dim] (fp32) at x_t and t [B]."""
        return self.suffix.project_output(self.expert_hidden(cache, state, x_t, timestep))

    def sample_actions(self, images: Sequence[Tensor], img_masks: Sequence[Tensor],
                       lang_tokens: Tensor, lang_masks: Tensor, state: Optional[Tensor], *,
                       noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                       num_steps: Optional[int] = None,
                       step_callback: Optional[StepCallback] = None,
                       guidance: Optional[RtcGuidance] = None) -> Tensor:
        """Return the normalised, padded action chunk [B, chunk_size, max_action_dim] (fp32).

        `state` is ignored by PI0.5 (its state is in the prompt). Without `noise`, fresh noise is
        drawn on every call (from `generator` when given). `guidance` (rtc.RtcGuidance) runs the
        RTC-guided loop; an inactive one (beta = 0 or W = 0) runs the plain one, bit for bit.
        Runs under inference_mode, except RTC `vjp`, which needs autograd through the expert
        (no_grad then, with gradients enabled per step for x_t only; the prefix K/V stay fixed).
        """
        if guidance is not None:
            guidance.check_shape(lang_tokens.shape[0], self.config.chunk_size,
                                 self.config.max_action_dim)
        needs_grad = guidance is not None and guidance.active and guidance.method == "vjp"
        with torch.no_grad() if needs_grad else torch.inference_mode():
            return self._sample(images, img_masks, lang_tokens, lang_masks, state, noise,
                                generator, num_steps, step_callback, guidance)

    def _sample(self, images: Sequence[Tensor], img_masks: Sequence[Tensor], lang_tokens: Tensor,
                lang_masks: Tensor, state: Optional[Tensor], noise: Optional[Tensor],
                generator: Optional[torch.Generator], num_steps: Optional[int],
                step_callback: Optional[StepCallback],
                guidance: Optional[RtcGuidance]) -> Tensor:
        cfg = self.config
        batch = lang_tokens.shape[0]
        shape = (batch, cfg.chunk_size, cfg.max_action_dim)
        if noise is None:
            noise = sample_noise(shape, generator, lang_tokens.device, torch.float32)
        elif tuple(noise.shape) != shape:
            raise ObservationError(f"noise has shape {tuple(noise.shape)}; expected {shape}")
        if not cfg.is_pi05 and state is None:
            raise ObservationError("PI0 needs a state vector [B, max_state_dim]; got None")
        prefix_embs, prefix_pad, prefix_att = self.embed_prefix(images, img_masks, lang_tokens,
                                                                lang_masks)
        cache = self.prefill(prefix_embs, prefix_pad, prefix_att)
        return euler_integrate(lambda x_t, t: self.denoise_step(cache, state, x_t, t), noise,
                               cfg.num_inference_steps if num_steps is None else num_steps,
                               step_callback, guidance)
