"""Data-parallel PI0 on an EMULATED 2-chip mesh (wormhole_n300, mesh_shape 1x2): per-row PCC vs
Torch, one upload phase and one download phase per call, ops and transfers counted per chip,
weights resident on every chip, uneven batches padded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference

from pi0_ttnn_node.backends import BackendSpec, create_backend
from pi0_ttnn_node.checkpoint import LoadedCheckpoint
from pi0_ttnn_node.embedded import adversarial_inputs, tiny_norm_stats
from pi0_ttnn_node.errors import BackendUnavailableError, ConfigError
from pi0_ttnn_node.preprocessing import ModelInputs
from pi0_ttnn_node.ttnn_backend.emulated_mesh import parse_mesh_shape
from pi0_ttnn_node.ttnn_backend.ttnn_config import (TtRuntimeConfig, knob_params,
                                                    resolve_runtime_config)

MIN_ROW_PCC = 0.99


def _checkpoint(model_type: str) -> LoadedCheckpoint:
    cfg, sd, _ = reference(model_type, "tiny")
    return LoadedCheckpoint(path=Path("/nonexistent"), config=cfg, state_dict=sd,
                            norm_stats=tiny_norm_stats(cfg), ignored_keys=[],
                            source_format="lerobot")


def _inputs(cfg, batch: int):
    raw = adversarial_inputs(cfg, seed=3, batch=batch)
    state = raw["state"] if raw["state"] is not None else torch.zeros(batch, cfg.max_state_dim)
    return ModelInputs(images=raw["images"], img_masks=raw["img_masks"],
                       lang_tokens=raw["lang_tokens"], lang_masks=raw["lang_masks"],
                       state=state), raw["noise"]


def _row_pcc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1])


def test_mesh_shape_knob_is_a_parameter_and_validated():
    assert TtRuntimeConfig().mesh_shape == "1x1"
    row = {r.name: r for r in knob_params()}["policy.ttnn_mesh_shape"]
    assert row.default == "1x1" and "1x2" in row.choices and "1x8" in row.choices
    with pytest.raises(ConfigError, match="mesh_shape"):
        TtRuntimeConfig(mesh_shape="3x3")
    assert parse_mesh_shape("2x4") == (2, 4)


def test_a_mesh_larger_than_the_emulated_board_is_refused():
    rc = resolve_runtime_config("accurate", {"emulate": True, "mesh_shape": "1x2"})  # n150: 1 chip
    with pytest.raises(BackendUnavailableError, match="needs 2 chips"):
        create_backend(BackendSpec("ttnn", ttnn=rc), _checkpoint("pi0"))


@pytest.mark.parametrize("model_type,trace", [("pi0", "off"), ("pi05", "denoise")])
def test_two_chip_mesh_matches_torch_per_row_with_per_chip_counters(model_type, trace):
    ckpt = _checkpoint(model_type)
    torch_backend = create_backend(BackendSpec("torch"), ckpt)
    rc = resolve_runtime_config("accurate", {"emulate": True, "emulated_board": "wormhole_n300",
                                             "mesh_shape": "1x2", "trace": trace})
    backend = create_backend(BackendSpec("ttnn", ttnn=rc), ckpt)
    try:
        mesh, model = backend.handle.device, backend.model
        assert backend.describe()["mesh_shape"] == "1x2" and mesh.get_num_devices() == 2
        # weights resident on every chip: the same DRAM bytes on each, within the chip's DRAM
        dram = [chip.budget.dram_bytes for chip in mesh.chips]
        assert dram[0] > 0 and dram[0] == dram[1] <= mesh.chips[0].limits.dram_bytes
        for batch in (2, 4, 4):  # the second batch-4 call replays the trace when traced
            assert model.last_padding == 0
            inputs, noise = _inputs(ckpt.config, batch)
            ref = torch_backend.sample_actions(inputs, noise)
            before = [s.copy() for s in mesh.chip_stats]
            out = backend.sample_actions(inputs, noise)
            delta = [s.minus(b) for s, b in zip(mesh.chip_stats, before)]
            assert out.shape == ref.shape and out.dtype == np.float32
            pccs = [_row_pcc(out[r], ref[r]) for r in range(batch)]
            assert min(pccs) >= MIN_ROW_PCC, f"per-row PCC {pccs} (batch {batch})"
            # host view: every chip's upload, then every chip's compute, then the gather
            assert model.phases == ["upload:0", "upload:1", "compute:0", "compute:1",
                                    "download:0", "download:1"]
            assert [d.downloads for d in delta] == [1, 1]  # one chunk read per chip
            assert delta[0].uploads == delta[1].uploads > 0
            assert delta[0].upload_bytes == delta[1].upload_bytes  # equal row shards
            # ops counted per chip: both chips ran the same program on their shard
            assert sum(delta[0].ops.values()) > 0 and delta[0].ops == delta[1].ops
        if trace != "off":  # the last call replayed each chip's own captured denoise trace
            assert [d.trace_replays for d in delta] == [1, 1]
        for batch in (3, 1):  # padded with the last row up to 4 / 2 rows; padding dropped
            inputs, noise = _inputs(ckpt.config, batch)
            ref = torch_backend.sample_actions(inputs, noise)
            out = backend.sample_actions(inputs, noise)
            assert out.shape == ref.shape and model.last_padding == 1
            pccs = [_row_pcc(out[r], ref[r]) for r in range(batch)]
            assert min(pccs) >= MIN_ROW_PCC, f"per-row PCC {pccs} (padded batch {batch})"
            assert model.phases[-2:] == ["download:0", "download:1"]
    finally:
        backend.close()
    assert not mesh.is_open
