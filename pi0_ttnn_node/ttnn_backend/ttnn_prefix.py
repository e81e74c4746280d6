"""Prefix embedding on the device: SigLIP + projector for all cameras at once, scaled language.

Layout [img0 256, img1 256, ..., language L]; images arrive stacked row-major as [B * C, 3, H, W]
(row b, camera c at index b * C + c), so the tower output reshapes to [B, C * 256, D] as a view.
Masked cameras still run through SigLIP (static shapes) and their tokens are zeroed, as in the
torch file. Pad masks are built with ttnn ops (repeat + concat), no host round trip.
Counterpart: torch_backend/torch_prefix.py.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import ttnn

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.ttnn_backend.ttnn_gemma import GemmaModelTTNN
from pi0_ttnn_node.ttnn_backend.ttnn_siglip import SiglipVisionTowerTTNN

Weights = Dict[str, "ttnn.Tensor"]


class PrefixEmbeddingTTNN:
    """Builds prefix tokens on the device; holds references to modules owned by PI0ModelTTNN."""

    # mirrors torch_prefix.PrefixEmbedding
    def __init__(self, config: PI0Config, vision_tower: SiglipVisionTowerTTNN, weights: Weights,
                 language_model: GemmaModelTTNN, plan: Any):
        self.config = config
        self.vision_tower = vision_tower
        self.projector = (weights["multi_modal_projector.weight"],
                          weights["multi_modal_projector.bias"])
        self.language_model = language_model
        self.plan = plan

    def _token_mask(self, img_masks: "ttnn.Tensor") -> "ttnn.Tensor":
        """Camera masks [B, C] (1.0 / 0.0) -> per-token masks [B, C * num_patches]."""
        b, cams = img_masks.shape[0], img_masks.shape[1]
        n = self.config.vision.num_patches
        per_token = ttnn.repeat(ttnn.reshape(img_masks, (b, cams, 1)), (1, 1, n))
        return ttnn.reshape(per_token, (b, cams * n))

    def embed_images(self, images: "ttnn.Tensor", img_masks: "ttnn.Tensor") -> "ttnn.Tensor":
        """Return image tokens [B, C * num_patches, vlm width]; masked cameras give zeros.

        Args:
            images: [B * C, 3, H, W] bf16 ROW_MAJOR in [-1, 1], row-major over (row, camera).
            img_masks: [B, C] bf16 TILE, 1.0 for a valid camera.
        """
        b, cams = img_masks.shape[0], img_masks.shape[1]
        features = self.vision_tower(images)  # [B * C, 1, n, Dv]
        tokens = self.plan.linear(features, self.projector[0], "vision", bias=self.projector[1],
                                  memory_config=ttnn.DRAM_MEMORY_CONFIG)
        self.plan.release("vision", features)
        n, width = tokens.shape[-2], tokens.shape[-1]
        tokens = ttnn.reshape(tokens, (b, cams * n, width))
        keep = ttnn.reshape(self._token_mask(img_masks), (b, cams * n, 1))
        return ttnn.multiply(tokens, keep)

    def embed_language(self, lang_tokens: "ttnn.Tensor") -> "ttnn.Tensor":
        """Return language tokens [B, L, vlm width] scaled by sqrt(width); ids uint32 [B, L]."""
        return self.language_model.embed(lang_tokens)

    def embed_prefix(self, images: "ttnn.Tensor", img_masks: "ttnn.Tensor",
                     lang_tokens: "ttnn.Tensor", lang_masks: "ttnn.Tensor"
                     ) -> Tuple["ttnn.Tensor", "ttnn.Tensor", "ttnn.Tensor"]:
        """Return (embs [B, P, D], pad_masks [B, P], att_masks [B, P]) as bf16 1.0 / 0.0."""
        img_embs = self.embed_images(images, img_masks)
        lang_embs = self.embed_language(lang_tokens)
        embs = ttnn.concat([img_embs, lang_embs], dim=1)
        pad_masks = ttnn.concat([self._token_mask(img_masks), lang_masks], dim=1)
        att_masks = ttnn.zeros_like(pad_masks)  # ar = 0: the whole prefix is one block
        return embs, pad_masks, att_masks
