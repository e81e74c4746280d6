"""SigLIP vision tower on the device (So400m/14: 1152 wide, 27 layers, 16 heads of 72 -> 96).

The patch conv runs as one matmul: images [N, 3, H, W] (bf16 ROW_MAJOR) are cut into patches by a
reshape + 6-D permute on the device, K = 588 is zero-padded to 608, then `ttnn.linear`. Attention
heads are padded to a tile multiple in the weights (ttnn_weights.py), so the softmax scale is set
from the real head_dim. Counterpart: torch_backend/torch_siglip.py.
"""

from __future__ import annotations

from typing import Any, Dict

import ttnn

from pi0_ttnn_node.config import SiglipConfig
from pi0_ttnn_node.ttnn_backend.ttnn_common import LightweightModule
from pi0_ttnn_node.ttnn_backend.ttnn_weights import padded_head_dim, patch_k

Weights = Dict[str, "ttnn.Tensor"]


class SiglipEmbeddingsTTNN(LightweightModule):
    """Patchify with reshape/permute, one matmul, plus the learned position table."""

    # mirrors torch_siglip.SiglipEmbeddings
    def __init__(self, config: SiglipConfig, weights: Weights, kernel: Any = None):
        p = "vision_tower.embeddings."
        self.config = config
        self.weight = weights[f"{p}patch_embedding.weight"]  # [K_pad, D]
        self.bias = weights[f"{p}patch_embedding.bias"]  # [1, D]
        self.position = weights[f"{p}position_embedding.weight"]  # [1, num_patches, D]
        self.kernel = kernel

    def forward(self, pixel_values: "ttnn.Tensor") -> "ttnn.Tensor":
        c = self.config
        n = pixel_values.shape[0]
        grid, p = c.image_size // c.patch_size, c.patch_size
        k = 3 * p * p
        x = ttnn.reshape(pixel_values, (n, 3, grid, p, grid, p))
        x = ttnn.permute(x, (0, 2, 4, 3, 5, 1))  # [N, gh, gw, ph, pw, C]
        x = ttnn.reshape(x, (n, grid * grid, k))
        x = ttnn.pad(x, padding=((0, 0), (0, 0), (0, patch_k(c) - k)), value=0.0)
        x = ttnn.to_layout(x, ttnn.TILE_LAYOUT)
        x = ttnn.linear(x, self.weight, bias=self.bias, compute_kernel_config=self.kernel)
        return ttnn.add(x, self.position)


class SiglipAttentionTTNN(LightweightModule):
    """Fused biased QKV, heads split by nlp_create_qkv_heads, SDPA without mask, out_proj."""

    # mirrors torch_siglip.SiglipAttention
    def __init__(self, config: SiglipConfig, weights: Weights, prefix: str, kernel: Any = None):
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.wqkv, self.bqkv = weights[f"{prefix}wqkv"], weights[f"{prefix}bqkv"]
        self.wo, self.bo = weights[f"{prefix}out_proj.weight"], weights[f"{prefix}out_proj.bias"]
        self.kernel = kernel

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        n, s = x.shape[0], x.shape[1]
        qkv = ttnn.linear(x, self.wqkv, bias=self.bqkv, compute_kernel_config=self.kernel)
        qkv = ttnn.reshape(qkv, (n, 1, s, qkv.shape[-1]))
        q, k, v = ttnn.experimental.nlp_create_qkv_heads(
            qkv, num_heads=self.num_heads, num_kv_heads=self.num_heads, transpose_k_heads=False)
        out = ttnn.transformer.scaled_dot_product_attention(
            q, k, v, is_causal=False, scale=self.head_dim ** -0.5,
            compute_kernel_config=self.kernel)
        out = ttnn.experimental.nlp_concat_heads(out)  # [N, 1, S, H * hdp]
        out = ttnn.reshape(out, (n, s, self.num_heads * padded_head_dim(self.head_dim)))
        return ttnn.linear(out, self.wo, bias=self.bo, compute_kernel_config=self.kernel)


class SiglipMLPTTNN(LightweightModule):
    """fc1 -> gelu(tanh) -> fc2."""

    # mirrors torch_siglip.SiglipMLP
    def __init__(self, weights: Weights, prefix: str, kernel: Any = None):
        self.fc1_w, self.fc1_b = weights[f"{prefix}fc1.weight"], weights[f"{prefix}fc1.bias"]
        self.fc2_w, self.fc2_b = weights[f"{prefix}fc2.weight"], weights[f"{prefix}fc2.bias"]
        self.kernel = kernel

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        h = ttnn.linear(x, self.fc1_w, bias=self.fc1_b, compute_kernel_config=self.kernel)
        h = ttnn.gelu(h, variant=ttnn.GeluVariant.Tanh)
        return ttnn.linear(h, self.fc2_w, bias=self.fc2_b, compute_kernel_config=self.kernel)


class SiglipEncoderLayerTTNN(LightweightModule):
    """Pre-LayerNorm transformer block."""

    # mirrors torch_siglip.SiglipEncoderLayer
    def __init__(self, config: SiglipConfig, weights: Weights, prefix: str, kernel: Any = None):
        self.eps = config.layer_norm_eps
        self.ln1 = (weights[f"{prefix}layer_norm1.weight"], weights[f"{prefix}layer_norm1.bias"])
        self.ln2 = (weights[f"{prefix}layer_norm2.weight"], weights[f"{prefix}layer_norm2.bias"])
        self.self_attn = SiglipAttentionTTNN(config, weights, f"{prefix}self_attn.", kernel)
        self.mlp = SiglipMLPTTNN(weights, f"{prefix}mlp.", kernel)

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        h = ttnn.layer_norm(x, weight=self.ln1[0], bias=self.ln1[1], epsilon=self.eps)
        x = ttnn.add(x, self.self_attn(h))
        h = ttnn.layer_norm(x, weight=self.ln2[0], bias=self.ln2[1], epsilon=self.eps)
        return ttnn.add(x, self.mlp(h))


class SiglipEncoderTTNN(LightweightModule):
    """The stack of encoder layers."""

    # mirrors torch_siglip.SiglipEncoder
    def __init__(self, config: SiglipConfig, weights: Weights, kernel: Any = None):
        self.layers = [SiglipEncoderLayerTTNN(config, weights, f"vision_tower.encoder.layers.{i}.",
                                              kernel) for i in range(config.num_layers)]

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipVisionTowerTTNN(LightweightModule):
    """Images [N, 3, H, W] (device, bf16 ROW_MAJOR) -> features [N, num_patches, hidden_size]."""

    # mirrors torch_siglip.SiglipVisionTower
    def __init__(self, config: SiglipConfig, weights: Weights, kernel: Any = None):
        self.config = config
        self.embeddings = SiglipEmbeddingsTTNN(config, weights, kernel)
        self.encoder = SiglipEncoderTTNN(config, weights, kernel)
        self.post_ln = (weights["vision_tower.post_layernorm.weight"],
                        weights["vision_tower.post_layernorm.bias"])

    def forward(self, pixel_values: "ttnn.Tensor") -> "ttnn.Tensor":
        x = self.encoder(self.embeddings(pixel_values))
        return ttnn.layer_norm(x, weight=self.post_ln[0], bias=self.post_ln[1],
                               epsilon=self.config.layer_norm_eps)
