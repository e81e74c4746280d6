"""Fixtures for the TTNN backend tests: device (emulated, or a real card under `tt_device`),
tiny and mid-size configs, torch reference models on the same random weights, adversarial inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/pcc.py, the shared helper

from pi0_ttnn_node.embedded import random_state_dict, sized_config  # noqa: E402
from pi0_ttnn_node.torch_backend import PI0Model  # noqa: E402
from pi0_ttnn_node.ttnn_backend.runtime import (TtRuntimeConfig, card_present,  # noqa: E402
                                                import_ttnn, open_tt_device)

ttnn = import_ttnn(emulate=not card_present())
from pi0_ttnn_node.ttnn_backend.ttnn_config import resolve_runtime_config  # noqa: E402

BATCH = 2
TRACE_REGION = 80_000_000
WEIGHT_GROUPS = ("vision", "vlm", "expert", "heads")


@functools.lru_cache(maxsize=None)
def reference(model_type: str, size: str):
    """(config, internal state dict, fp32 torch PI0Model) shared by every test of one config."""
    cfg = sized_config(model_type, size)
    sd = random_state_dict(cfg, seed=11)
    model = PI0Model(cfg)
    model.load_state_dict(sd, strict=True)
    return cfg, sd, model.eval()


@pytest.fixture(scope="module",
                params=["emulated", pytest.param("card", marks=pytest.mark.tt_device)])
def tt(request):
    """An open TtDevice: the CPU emulation, or (tt_device variant) a real card."""
    if request.param == "card":
        if not card_present():
            pytest.skip("no Tenstorrent card")
        handle = open_tt_device(TtRuntimeConfig(trace_region_size=TRACE_REGION,
                                                num_command_queues=2))
    else:
        handle = open_tt_device(TtRuntimeConfig(emulate=True, trace_region_size=TRACE_REGION,
                                                num_command_queues=2))
    yield handle
    handle.close()


def runtime_config(handle, weight_dtype: str = "bfloat16", use_trace: bool = False,
                   preset: str = "", **knobs) -> TtRuntimeConfig:
    """The open device's config with every weight group in `weight_dtype` (or a preset's
    precision and techniques) and the denoise trace on/off; `knobs` override single values."""
    base = handle.cfg
    if preset:
        base = resolve_runtime_config(preset, {f.name: getattr(handle.cfg, f.name) for f in
                                               dataclasses.fields(handle.cfg)
                                               if not f.metadata["preset"]})
    else:
        base = dataclasses.replace(base, trace="denoise" if use_trace else "off",
                                   **{f"weight_dtype_{g}": weight_dtype for g in WEIGHT_GROUPS})
    return dataclasses.replace(base, **knobs)


def upload(handle, tensor: torch.Tensor, dtype=None, layout=None):
    """Host tensor -> the test's device (bf16 TILE unless told otherwise)."""
    return ttnn.from_torch(tensor, dtype=dtype or ttnn.bfloat16,
                           layout=layout or ttnn.TILE_LAYOUT, device=handle.device)


def download(tensor) -> torch.Tensor:
    return ttnn.to_torch(tensor).to(torch.float32)
