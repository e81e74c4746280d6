"""TtnnBackend through backends.create_backend: emulation only on request, same chunk as torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference
from pi0_ttnn_node.embedded import adversarial_inputs
from pcc import assert_pcc

from pi0_ttnn_node.backends import BackendSpec, create_backend
from pi0_ttnn_node.checkpoint import LoadedCheckpoint
from pi0_ttnn_node.embedded import tiny_norm_stats
from pi0_ttnn_node.errors import BackendUnavailableError
from pi0_ttnn_node.preprocessing import ModelInputs
from pi0_ttnn_node.ttnn_backend.runtime import card_present
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig, resolve_runtime_config


def _checkpoint(model_type: str) -> LoadedCheckpoint:
    cfg, sd, _ = reference(model_type, "tiny")
    return LoadedCheckpoint(path=Path("/nonexistent"), config=cfg, state_dict=sd,
                            norm_stats=tiny_norm_stats(cfg), ignored_keys=[],
                            source_format="lerobot")


def _model_inputs(cfg) -> tuple:
    raw = adversarial_inputs(cfg)
    state = raw["state"] if raw["state"] is not None else torch.zeros(2, cfg.max_state_dim)
    inputs = ModelInputs(images=raw["images"], img_masks=raw["img_masks"],
                         lang_tokens=raw["lang_tokens"], lang_masks=raw["lang_masks"], state=state)
    return inputs, raw["noise"]


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
@pytest.mark.parametrize("preset,trace", [("accurate", "off"), ("accurate", "denoise"),
                                          ("fast", "whole")], ids=["eager", "trace", "fast"])
def test_emulated_ttnn_backend_says_so_and_matches_the_torch_backend(model_type, preset, trace):
    ckpt = _checkpoint(model_type)
    inputs, noise = _model_inputs(ckpt.config)
    ref = create_backend(BackendSpec("torch"), ckpt).sample_actions(inputs, noise)
    rc = resolve_runtime_config(preset, {"emulate": True, "trace": trace})
    backend = create_backend(BackendSpec("ttnn", ttnn=rc), ckpt)
    try:
        info = backend.describe()
        assert info["emulated"] is True and "EMULATED" in info["device"]
        assert info["trace"] == trace and info["weight_dtypes"]["vlm"] == rc.weight_dtype_vlm
        for _ in range(2):  # with trace: warm-up/capture, then replay
            out = backend.sample_actions(inputs, noise)
            assert isinstance(out, np.ndarray) and out.dtype == np.float32
            assert out.shape == ref.shape
            assert_pcc(torch.from_numpy(out), torch.from_numpy(ref), "actions",
                       "bfloat16" if preset == "accurate" else "bfloat8_b",
                       f"backend-{model_type}-{preset}")
    finally:
        backend.close()
    backend.close()  # closing twice is harmless
    with pytest.raises(BackendUnavailableError, match="closed"):
        backend.sample_actions(inputs, noise)


def test_ttnn_backend_takes_only_a_typed_runtime_config():
    from pi0_ttnn_node.ttnn_backend.backend import TtnnBackend

    with pytest.raises(TypeError, match="TtRuntimeConfig"):
        TtnnBackend(_checkpoint("pi0"), {"emulate": True})


@pytest.mark.skipif(card_present(), reason="a Tenstorrent card is present: the backend opens it")
def test_ttnn_backend_without_a_card_fails_and_names_the_emulation_switch():
    with pytest.raises(BackendUnavailableError, match="ttnn_emulate"):
        create_backend(BackendSpec("ttnn", ttnn=TtRuntimeConfig(emulate=False)),
                       _checkpoint("pi0"))
