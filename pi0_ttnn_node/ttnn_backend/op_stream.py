"""Record PI0ModelTTNN's op stream per stage on the emulated device, at full width and reduced depth.

Full-size weights are too heavy to run through the CPU emulation, so `record_stages` builds the
model at its real widths with `depth` layers per tower (SigLIP, VLM, expert), zero weights and a
small vocabulary (the embedding op's cost does not depend on it), and runs the public stage
methods with matmul maths skipped (`EmulatedDevice.skip_matmul_math`: shapes, dtypes, memory kinds,
fidelities and FLOPs are recorded, outputs are zeros). Stages: upload, vision (SigLIP + language
embedding), prefill, denoise_pre (suffix RoPE rows, timestep embeddings, precomputed conditioning),
step_0 .. step_{n-1}, download. Costs are linear in depth, so two depths extrapolate to the real
layer counts (cost_model.extrapolate). Counterpart: cost_model.py (prices the records).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from pi0_ttnn_node.checkpoint_keys import expected_shapes
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig

RECORD_VOCAB = 1024
# Which tower's depth each stage scales with.
STAGE_TOWER = {"vision": "vision", "prefill": "vlm", "denoise_pre": "expert", "step": "expert"}


@dataclass(frozen=True)
class Workload:
    """What one inference computes: model, cameras, prompt tokens, horizon, denoise steps."""

    model_type: str  # "pi0" | "pi05"
    cameras: int = 3
    prompt_tokens: int = 0  # 0: the model's tokenizer_max_length (PI0 48, PI0.5 200)
    horizon: int = 50
    steps: int = 10

    def config(self, depth: Optional[int] = None, vocab: Optional[int] = None) -> PI0Config:
        """The full-size config (real widths) with `depth` layers per tower when given."""
        base = PI0Config.pi05() if self.model_type == "pi05" else PI0Config.pi0()
        keys = tuple(f"observation.images.cam{i}" for i in range(self.cameras))
        cfg = base.replace(features=dataclasses.replace(base.features, image_keys=keys),
                           chunk_size=self.horizon, num_inference_steps=self.steps)
        if self.prompt_tokens:
            cfg = cfg.replace(tokenizer_max_length=self.prompt_tokens)
        if depth is not None:
            cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, num_layers=depth),
                              vlm=dataclasses.replace(cfg.vlm, depth=depth),
                              expert=dataclasses.replace(cfg.expert, depth=depth))
        if vocab is not None:
            cfg = cfg.replace(vlm=dataclasses.replace(cfg.vlm, vocab_size=vocab))
        return cfg


def tower_depths(cfg: PI0Config) -> Dict[str, int]:
    return {"vision": cfg.vision.num_layers, "vlm": cfg.vlm.depth, "expert": cfg.expert.depth}


def zero_state_dict(cfg: PI0Config) -> Dict[str, torch.Tensor]:
    """Every tensor of `cfg` as zeros (shape-only recording; values never matter)."""
    return {name: torch.zeros(shape) for name, shape in expected_shapes(cfg).items()}


def host_inputs(cfg: PI0Config, batch: int = 1, seed: int = 0) -> Dict[str, Any]:
    """One observation with every camera and prompt token valid."""
    gen = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    images = [torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for _ in range(cfg.num_image_slots)]
    img_masks = [torch.ones(batch, dtype=torch.bool) for _ in range(cfg.num_image_slots)]
    tokens = torch.randint(1, max(2, cfg.vlm.vocab_size), (batch, cfg.tokenizer_max_length), generator=gen)
    lang_masks = torch.ones(batch, cfg.tokenizer_max_length, dtype=torch.bool)
    state = None if cfg.is_pi05 else torch.randn(batch, cfg.max_state_dim, generator=gen)
    noise = torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=gen)
    return dict(images=images, img_masks=img_masks, lang_tokens=tokens, lang_masks=lang_masks, state=state,
                noise=noise)


def record_stages(model: Any, device: Any, inputs: Dict[str, Any], steps: int) -> Dict[str, List[Any]]:
    """Run one inference stage by stage through the model's public methods; OpRecords per stage."""
    import ttnn

    from pi0_ttnn_node.ttnn_backend.cost_model import by_stage

    stats = device.stats
    stats.start_recording()
    start = len(stats.records)
    try:
        stats.stage = "upload"
        args = {k: v for k, v in inputs.items() if k != "noise"}
        obs = model.upload(**args, noise=inputs["noise"], num_steps=steps)
        stats.stage = "vision"
        embs, _, _ = model.embed_prefix(obs.images, obs.img_masks, obs.lang_tokens, obs.lang_masks)
        stats.stage = "prefill"
        prefill = getattr(model.backbone, "prefill_kv", None) or model.prefill
        cache = prefill(embs, obs.attention())
        stats.stage = "denoise_pre"
        counter = {"step": 0}
        original_step = model.denoise_step

        def labelled_step(*args: Any, **kwargs: Any) -> Any:
            stats.stage = f"step_{counter['step']}"
            counter["step"] += 1
            return original_step(*args, **kwargs)

        model.denoise_step = labelled_step
        try:
            x_0 = model.denoise(cache, obs, steps)
        finally:
            del model.denoise_step
        stats.stage = "download"
        ttnn.to_torch(x_0)
    finally:
        stats.stage = ""
    return by_stage(stats.records[start:])


def record_config(cfg: PI0Config, runtime_config: TtRuntimeConfig, steps: int,
                  shapes_only: bool = True) -> Dict[str, List[Any]]:
    """Open an emulated device for `runtime_config`'s board, build `cfg` with zero weights, record.

    Recorded eagerly (no trace, one CQ): the cost model applies the trace scope and CQs itself.
    """
    from pi0_ttnn_node.ttnn_backend.runtime import open_tt_device
    from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

    rc = dataclasses.replace(runtime_config, emulate=True, trace="off", num_command_queues=1)
    handle = open_tt_device(rc)
    try:
        handle.device.skip_matmul_math = shapes_only
        model = PI0ModelTTNN(cfg, zero_state_dict(cfg), handle.device, rc)
        return record_stages(model, handle.device, host_inputs(cfg), steps)
    finally:
        handle.close()


def record_workload(workload: Workload, runtime_config: TtRuntimeConfig, depth: int,
                    shapes_only: bool = True) -> Dict[str, List[Any]]:
    """The full-width workload with `depth` layers per tower (see record_config)."""
    cfg = workload.config(depth=depth, vocab=RECORD_VOCAB)
    return record_config(cfg, runtime_config, workload.steps, shapes_only)
