"""Prefix embedding: camera images through SigLIP + projector, then scaled language embeddings.

Layout [img0 256, img1 256, ..., language L] with pad mask = image mask per camera token and the
language mask; ar = 0 everywhere (bidirectional prefix). Image tokens are not scaled, language
tokens are multiplied by sqrt(vlm width). Counterpart: ttnn_backend/ttnn_prefix.py.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.errors import ObservationError
from pi0_ttnn_node.torch_backend.torch_gemma import GemmaModel
from pi0_ttnn_node.torch_backend.torch_siglip import SiglipVisionTower


class PrefixEmbedding:
    """Builds prefix tokens; holds references to modules owned by PI0Model."""

    def __init__(self, config: PI0Config, vision_tower: SiglipVisionTower,
                 multi_modal_projector: nn.Linear, language_model: GemmaModel):
        self.config = config
        self.vision_tower = vision_tower
        self.multi_modal_projector = multi_modal_projector
        self.language_model = language_model

    def embed_images(self, images: Sequence[Tensor], img_masks: Sequence[Tensor]) -> Tensor:
        """Return image tokens [B, cams * num_patches, vlm width].

        All cameras go through SigLIP in one batch. (row, camera) pairs whose mask is False are
        skipped and left as zeros: their tokens are masked as keys and as queries, so no valid
        token depends on them.
        """
        self._check_images(images, img_masks)
        pixels = torch.stack(list(images), dim=1)  # [B, C, 3, H, W]
        batch, cams = pixels.shape[:2]
        flat = pixels.flatten(0, 1)
        valid = torch.stack(list(img_masks), dim=1).flatten().to(torch.bool)  # [B * C]
        n_patches = self.config.vision.num_patches
        width = self.multi_modal_projector.out_features
        if bool(valid.all()):
            tokens = self._encode(flat)
        else:
            index = valid.nonzero().flatten()
            tokens = flat.new_zeros(batch * cams, n_patches, width,
                                    dtype=self.multi_modal_projector.weight.dtype)
            if index.numel():
                tokens.index_copy_(0, index, self._encode(flat.index_select(0, index)))
        return tokens.reshape(batch, cams * n_patches, width)

    def _encode(self, pixels: Tensor) -> Tensor:
        features = self.vision_tower(pixels)
        weight = self.multi_modal_projector.weight
        return self.multi_modal_projector(features.to(weight.dtype))

    def _check_images(self, images: Sequence[Tensor], img_masks: Sequence[Tensor]) -> None:
        slots = self.config.num_image_slots
        if len(images) != slots or len(img_masks) != slots:
            msg = (f"got {len(images)} images and {len(img_masks)} image masks; the model has "
                   f"{slots} camera slots {list(self.config.features.image_keys)}; pass one "
                   "image (or a masked placeholder) per slot")
            raise ObservationError(msg)
        size = self.config.vision.image_size
        for i, img in enumerate(images):
            if img.ndim != 4 or tuple(img.shape[1:]) != (3, size, size):
                msg = (f"image {i} has shape {tuple(img.shape)}; expected [B, 3, {size}, {size}] "
                       "in [-1, 1]; resize with pad first")
                raise ObservationError(msg)

    def embed_language(self, lang_tokens: Tensor) -> Tensor:
        """Return language tokens [B, L, vlm width], scaled by sqrt(width)."""
        return self.language_model.embed(lang_tokens)

    def embed_prefix(self, images: Sequence[Tensor], img_masks: Sequence[Tensor],
                     lang_tokens: Tensor, lang_masks: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Return (embs [B, P, D], pad_masks [B, P] bool, att_masks [B, P] bool)."""
        img_embs = self.embed_images(images, img_masks)
        lang_embs = self.embed_language(lang_tokens)
        batch = lang_embs.shape[0]
        n_img = img_embs.shape[1] // len(images)
        img_pad = torch.stack([m.to(torch.bool) for m in img_masks], dim=1)  # [B, C]
        img_pad = img_pad[:, :, None].expand(batch, len(images), n_img).reshape(batch, -1)
        dtype = torch.promote_types(img_embs.dtype, lang_embs.dtype)
        embs = torch.cat([img_embs.to(dtype), lang_embs.to(dtype)], dim=1)
        pad_masks = torch.cat([img_pad, lang_masks.to(torch.bool)], dim=1)
        att_masks = torch.zeros_like(pad_masks)
        return embs, pad_masks, att_masks
