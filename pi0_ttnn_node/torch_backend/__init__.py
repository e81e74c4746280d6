"""PyTorch backend: the reference PI0 / PI0.5 model (CPU or CUDA), mirrored by ttnn_backend."""

from pi0_ttnn_node.torch_backend.torch_paligemma import PrefixKVCache
from pi0_ttnn_node.torch_backend.torch_pi0_model import PI0Model

__all__ = ["PI0Model", "PrefixKVCache"]
