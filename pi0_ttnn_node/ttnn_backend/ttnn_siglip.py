"""SigLIP vision tower on the device (So400m/14: 1152 wide, 27 layers, 16 heads of 72 -> 96).

The patch conv runs as one matmul: images [N, 3, H, W] (bf16 ROW_MAJOR) are cut into patches by a
reshape + 6-D permute on the device, K = 588 is zero-padded to 608, then `ttnn.linear`. Attention
heads are padded to a tile multiple in the weights (ttnn_weights.py), so the softmax scale is set
from the real head_dim. Activations are 4-D [N, 1, S, D]; with l1_activations they live in L1 (the
MLP hidden block-sharded over the core grid) and are freed as soon as they are consumed.
Counterpart: torch_backend/torch_siglip.py.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import ttnn

from pi0_ttnn_node.config import SiglipConfig
from pi0_ttnn_node.ttnn_backend.ttnn_common import LightweightModule
from pi0_ttnn_node.ttnn_backend.ttnn_weights import patch_k

Weights = Dict[str, "ttnn.Tensor"]


class SiglipEmbeddingsTTNN(LightweightModule):
    """Patchify with reshape/permute, one matmul, plus the learned position table."""

    # mirrors torch_siglip.SiglipEmbeddings
    def __init__(self, config: SiglipConfig, weights: Weights, plan: Any):
        p = "vision_tower.embeddings."
        self.config = config
        self.plan = plan
        self.weight = weights[f"{p}patch_embedding.weight"]  # [K_pad, D]
        self.bias = weights[f"{p}patch_embedding.bias"]  # [1, D]
        self.position = weights[f"{p}position_embedding.weight"]  # [1, 1, num_patches, D]

    def forward(self, pixel_values: "ttnn.Tensor") -> "ttnn.Tensor":
        c = self.config
        n = pixel_values.shape[0]
        grid, p = c.image_size // c.patch_size, c.patch_size
        k = 3 * p * p
        x = ttnn.reshape(pixel_values, (n, 3, grid, p, grid, p))
        x = ttnn.permute(x, (0, 2, 4, 3, 5, 1))  # [N, gh, gw, ph, pw, C]
        x = ttnn.reshape(x, (n, 1, grid * grid, k))
        x = ttnn.pad(x, padding=((0, 0), (0, 0), (0, 0), (0, patch_k(c) - k)), value=0.0)
        x = ttnn.to_layout(x, ttnn.TILE_LAYOUT)
        memory = self.plan.memory("vision")
        h = self.plan.linear(x, self.weight, "vision", bias=self.bias)
        out = ttnn.add(h, self.position, memory_config=memory)
        self.plan.release("vision", h)
        return out


class SiglipAttentionTTNN(LightweightModule):
    """Fused biased QKV, heads split by nlp_create_qkv_heads, SDPA without mask, out_proj."""

    # mirrors torch_siglip.SiglipAttention
    def __init__(self, config: SiglipConfig, weights: Weights, prefix: str, plan: Any):
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.wqkv, self.bqkv = weights[f"{prefix}wqkv"], weights[f"{prefix}bqkv"]
        self.wo, self.bo = weights[f"{prefix}out_proj.weight"], weights[f"{prefix}out_proj.bias"]
        self.plan = plan

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        plan, memory = self.plan, self.plan.memory("vision")
        qkv = plan.linear(x, self.wqkv, "vision", bias=self.bqkv, dtype=plan.activation_dtype)
        q, k, v = ttnn.experimental.nlp_create_qkv_heads(
            qkv, num_heads=self.num_heads, num_kv_heads=self.num_heads, transpose_k_heads=False,
            memory_config=memory)
        plan.release("vision", qkv)
        out = plan.sdpa(q, k, v, mask=None, scale=self.head_dim ** -0.5, group="vision")
        plan.release("vision", q, k, v)
        merged = ttnn.experimental.nlp_concat_heads(out, memory_config=memory)  # [N,1,S,H hdp]
        plan.release("vision", out)
        result = plan.linear(merged, self.wo, "vision", bias=self.bo, dtype=ttnn.bfloat16)
        plan.release("vision", merged)
        return result


class SiglipMLPTTNN(LightweightModule):
    """fc1 -> gelu(tanh) -> fc2; with l1_activations the hidden is block-sharded in L1."""

    # mirrors torch_siglip.SiglipMLP
    def __init__(self, weights: Weights, prefix: str, plan: Any):
        self.fc1_w, self.fc1_b = weights[f"{prefix}fc1.weight"], weights[f"{prefix}fc1.bias"]
        self.fc2_w, self.fc2_b = weights[f"{prefix}fc2.weight"], weights[f"{prefix}fc2.bias"]
        self.plan = plan

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        plan = self.plan
        hidden_memory = None
        if plan.in_l1("vision"):
            rows = math.prod(list(x.shape)[:-1])
            hidden_memory = plan.block_sharded(rows, int(self.fc1_w.shape[-1]))
        h = plan.linear(x, self.fc1_w, "vision", bias=self.fc1_b, dtype=plan.activation_dtype,
                        memory_config=hidden_memory)
        g = ttnn.gelu(h, variant=ttnn.GeluVariant.Tanh,
                      memory_config=hidden_memory or plan.memory("vision"))
        plan.release("vision", h)
        out = plan.linear(g, self.fc2_w, "vision", bias=self.fc2_b, dtype=ttnn.bfloat16)
        plan.release("vision", g)
        return out


class SiglipEncoderLayerTTNN(LightweightModule):
    """Pre-LayerNorm transformer block."""

    # mirrors torch_siglip.SiglipEncoderLayer
    def __init__(self, config: SiglipConfig, weights: Weights, prefix: str, plan: Any):
        self.eps = config.layer_norm_eps
        self.plan = plan
        self.ln1 = (weights[f"{prefix}layer_norm1.weight"], weights[f"{prefix}layer_norm1.bias"])
        self.ln2 = (weights[f"{prefix}layer_norm2.weight"], weights[f"{prefix}layer_norm2.bias"])
        self.self_attn = SiglipAttentionTTNN(config, weights, f"{prefix}self_attn.", plan)
        self.mlp = SiglipMLPTTNN(weights, f"{prefix}mlp.", plan)

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        plan, memory = self.plan, self.plan.memory("vision")
        h = ttnn.layer_norm(x, weight=self.ln1[0], bias=self.ln1[1], epsilon=self.eps,
                            memory_config=memory)
        a = self.self_attn(h)
        x2 = ttnn.add(x, a, memory_config=memory)
        plan.release("vision", h, a)
        h = ttnn.layer_norm(x2, weight=self.ln2[0], bias=self.ln2[1], epsilon=self.eps,
                            memory_config=memory)
        m = self.mlp(h)
        out = ttnn.add(x2, m, memory_config=memory)
        plan.release("vision", h, m, x2)
        return out


class SiglipEncoderTTNN(LightweightModule):
    """The stack of encoder layers."""

    # mirrors torch_siglip.SiglipEncoder
    def __init__(self, config: SiglipConfig, weights: Weights, plan: Any):
        self.plan = plan
        self.layers = [SiglipEncoderLayerTTNN(config, weights, f"vision_tower.encoder.layers.{i}.",
                                              plan) for i in range(config.num_layers)]

    def forward(self, x: "ttnn.Tensor") -> "ttnn.Tensor":
        for i, layer in enumerate(self.layers):
            out = layer(x)
            if i > 0:  # the previous layer's output (never the caller's input)
                self.plan.release("vision", x)
            x = out
        return x


class SiglipVisionTowerTTNN(LightweightModule):
    """Images [N, 3, H, W] (device, bf16 ROW_MAJOR) -> features [N, 1, num_patches, hidden_size]."""

    # mirrors torch_siglip.SiglipVisionTower
    def __init__(self, config: SiglipConfig, weights: Weights, plan: Any):
        self.config = config
        self.plan = plan
        self.embeddings = SiglipEmbeddingsTTNN(config, weights, plan)
        self.encoder = SiglipEncoderTTNN(config, weights, plan)
        self.post_ln = (weights["vision_tower.post_layernorm.weight"],
                        weights["vision_tower.post_layernorm.bias"])

    def forward(self, pixel_values: "ttnn.Tensor") -> "ttnn.Tensor":
        emb = self.embeddings(pixel_values)
        x = self.encoder(emb)
        out = ttnn.layer_norm(x, weight=self.post_ln[0], bias=self.post_ln[1],
                              epsilon=self.config.layer_norm_eps,
                              memory_config=self.plan.memory("vision"))
        self.plan.release("vision", emb, x)
        return out
