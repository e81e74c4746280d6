"""Data-parallel PI0 on a ttnn.MeshDevice: weights on every chip, batch rows sharded over chips.

`mesh_shape` (ttnn_config.py) other than "1x1" opens `ttnn.open_mesh_device(mesh_shape=
ttnn.MeshShape(rows, cols), ...)` (a card) or the EmulatedMeshDevice (emulated_mesh.py), splits
it into one 1x1 submesh per chip (`create_submeshes`) and builds the unchanged PI0ModelTTNN on
each: the weights are converted once per chip and stay resident there (what
ReplicateTensorToMesh would give). A call shards the rows evenly (what ShardTensorToMesh(dim=0)
does): every chip's upload first (one upload phase), then every chip's compute, then every
chip's chunk is read and the chunks concatenated (ConcatMeshToTensor(dim=0)): one download
phase. A batch not divisible by the number of chips is padded by repeating its last row (the
padding rows are computed and dropped; `last_padding` says how many), so a call with fewer rows
than chips (one robot due) still runs.
Counterpart: ttnn_pi0_model.py (one chip), backend.py (picks this class when mesh_shape != 1x1).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from pi0_ttnn_node.errors import BackendUnavailableError, ConfigError
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig

LOG = logging.getLogger(__name__)


def open_card_mesh(ttnn: Any, cfg: TtRuntimeConfig) -> Any:
    """ttnn.open_mesh_device with the config's device arguments (a card only)."""
    from pi0_ttnn_node.ttnn_backend.emulated_mesh import parse_mesh_shape

    rows, cols = parse_mesh_shape(cfg.mesh_shape)
    try:
        return ttnn.open_mesh_device(
            mesh_shape=ttnn.MeshShape(rows, cols), l1_small_size=cfg.l1_small_size,
            trace_region_size=cfg.trace_region_size, num_command_queues=cfg.num_command_queues)
    except Exception as err:  # ttnn raises RuntimeError for every topology / driver failure
        raise BackendUnavailableError(
            f"ttnn.open_mesh_device(MeshShape({rows}, {cols})) failed: {err}; check the number of "
            "chips (n300: 1x2, T3K: 1x8 or 2x4) or set policy.ttnn_mesh_shape: 1x1") from err


def pad_rows(value: Any, pad: int) -> Any:
    """A batch-first tensor with its last row repeated `pad` times (None stays None)."""
    if value is None or pad == 0:
        return value
    return torch.cat([value, value[-1:].expand(pad, *value.shape[1:])], dim=0)


def shard_rows(value: Any, index: int, rows: int) -> Any:
    """Rows [index*rows, (index+1)*rows) of a batch-first tensor (None stays None)."""
    if value is None:
        return None
    return value[index * rows:(index + 1) * rows]


class MeshPI0ModelTTNN:
    """One PI0ModelTTNN per chip of the mesh; `sample_actions` has the single-device signature."""

    def __init__(self, config: Any, state_dict: Dict[str, Tensor], mesh: Any,
                 runtime_config: TtRuntimeConfig) -> None:
        import ttnn

        from pi0_ttnn_node.ttnn_backend.ttnn_pi0_model import PI0ModelTTNN

        self.config = config
        self.mesh = mesh
        self.runtime_config = runtime_config
        self.submeshes = list(mesh.create_submeshes(ttnn.MeshShape(1, 1)))
        self.models: List[PI0ModelTTNN] = []
        for index, submesh in enumerate(self.submeshes):
            self._use(index)
            self.models.append(PI0ModelTTNN(config, state_dict, submesh, runtime_config))
        self.phases: List[str] = []  # the last call's host-side sequence, e.g. "upload:0"
        self.last_padding = 0  # rows added to the last call to fill every chip evenly
        LOG.info("PI0 data-parallel on %d chips (%s)", len(self.models), runtime_config.mesh_shape)

    @property
    def num_chips(self) -> int:
        return len(self.models)

    def _use(self, index: int) -> None:
        if hasattr(self.mesh, "activate"):  # the emulation runs one chip's ttnn at a time
            self.mesh.activate(index)

    def sample_actions(self, images: Sequence[Tensor], img_masks: Sequence[Tensor],
                       lang_tokens: Tensor, lang_masks: Tensor, state: Optional[Tensor], *,
                       noise: Tensor, num_steps: Optional[int] = None, guidance: Any = None) -> Tensor:
        """[B, chunk_size, max_action_dim] fp32; B is padded up to a multiple of the chips."""
        batch, chips = int(lang_tokens.shape[0]), self.num_chips
        if batch < 1:
            raise ConfigError("sample_actions got an empty batch; send at least one row")
        pad = (-batch) % chips
        if pad:
            images = [pad_rows(x, pad) for x in images]
            img_masks = [pad_rows(m, pad) for m in img_masks]
            lang_tokens, lang_masks = pad_rows(lang_tokens, pad), pad_rows(lang_masks, pad)
            state, noise = pad_rows(state, pad), pad_rows(noise, pad)
            if guidance is not None and guidance.target.shape[0] == batch:
                guidance = dataclasses.replace(guidance, target=pad_rows(guidance.target, pad),
                                               weights=pad_rows(guidance.weights, pad))
        self.last_padding = pad
        full = batch + pad
        per = full // chips
        self.phases = []
        staged = []
        for i, model in enumerate(self.models):  # upload phase: every chip's shard
            self._use(i)
            shard = lambda value, i=i: shard_rows(value, i, per)  # noqa: E731
            sub_guidance = guidance
            if guidance is not None and guidance.target.shape[0] == full:
                sub_guidance = dataclasses.replace(guidance, target=shard(guidance.target),
                                                   weights=shard(guidance.weights))
            staged.append(model.stage([shard(x) for x in images], [shard(m) for m in img_masks],
                                      shard(lang_tokens), shard(lang_masks), shard(state),
                                      noise=shard(noise), num_steps=num_steps,
                                      guidance=sub_guidance))
            self.phases.append(f"upload:{i}")
        outputs = []
        for i, model in enumerate(self.models):  # compute on every chip
            self._use(i)
            outputs.append(model.launch(staged[i]))
            self.phases.append(f"compute:{i}")
        chunks = []
        for i, model in enumerate(self.models):  # download phase: gather the chunks
            self._use(i)
            chunks.append(model.collect(outputs[i], per))
            self.phases.append(f"download:{i}")
        return torch.cat(chunks, dim=0)[:batch]

    def release_trace(self) -> None:
        for i, model in enumerate(self.models):
            self._use(i)
            model.release_trace()
