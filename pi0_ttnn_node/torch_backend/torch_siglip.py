"""SigLIP vision tower (So400m/14 by default: 1152 wide, 27 layers, 16 heads, MLP 4304).

Patch conv (kernel = stride = 14, 224x224 -> 256 tokens) plus a learned position table,
pre-LayerNorm blocks with biased full attention and a gelu-tanh MLP, then `post_layernorm`;
no pooling head.
Parameter names follow HF `SiglipVisionTransformer` (`vision_tower.*` internal keys).
Counterpart: ttnn_backend/ttnn_siglip.py.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pi0_ttnn_node.config import SiglipConfig


class SiglipEmbeddings(nn.Module):
    """Patchify with a strided conv and add the learned position embedding."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)

    def forward(self, pixel_values: Tensor) -> Tensor:
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype))  # [N, D, 16, 16]
        return patches.flatten(2).transpose(1, 2) + self.position_embedding.weight


class SiglipAttention(nn.Module):
    """Bidirectional multi-head attention with biased projections (no mask)."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        n, s, d = x.shape
        shape = (n, s, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim ** -0.5)
        return self.out_proj(out.transpose(1, 2).reshape(n, s, d))


class SiglipMLP(nn.Module):
    """fc1 -> gelu(tanh) -> fc2."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    """The stack of encoder layers (keeps HF's `encoder.layers.{i}` key names)."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipVisionTower(nn.Module):
    """Images [N, 3, H, W] in [-1, 1] -> patch features [N, num_patches, hidden_size]."""

    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.config = config
        self.embeddings = SiglipEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))
