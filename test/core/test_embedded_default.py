"""embedded.py: the tiny default checkpoint is deterministic, complete and loads strictly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from pi0_ttnn_node import checkpoint_keys as ck
from pi0_ttnn_node import embedded
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.embedded import (directory_digest, ensure_embedded_checkpoint,
                                    generate_embedded_checkpoint, random_state_dict, tiny_config,
                                    tiny_norm_stats)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_tiny_config_uses_distinct_sizes_and_production_shapes(model_type):
    cfg = tiny_config(model_type)
    sizes = [cfg.vision.hidden_size, cfg.vision.intermediate_size, cfg.vlm.width, cfg.vlm.mlp_dim,
             cfg.expert.width, cfg.expert.mlp_dim, cfg.vlm.head_dim, cfg.vision.head_dim,
             cfg.vlm.vocab_size, cfg.features.state_dim, cfg.features.action_dim,
             cfg.max_action_dim, cfg.chunk_size]
    assert len(set(sizes)) == len(sizes)
    assert cfg.num_image_slots == 3 and cfg.vision.num_patches == 256
    assert cfg.tokenizer_max_length == (200 if model_type == "pi05" else 48)
    assert cfg.expert.use_adarms == (model_type == "pi05")


def test_random_state_dict_is_bit_identical_for_a_seed_and_differs_across_seeds():
    cfg = tiny_config("pi05")
    a, b, c = random_state_dict(cfg, 7), random_state_dict(cfg, 7), random_state_dict(cfg, 8)
    assert {k: tuple(v.shape) for k, v in a.items()} == ck.expected_shapes(cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["time_mlp_in.weight"], c["time_mlp_in.weight"])


def test_random_weights_exercise_norm_offsets_and_adarms():
    sd = random_state_dict(tiny_config("pi05"), 0)
    rms = sd["language_model.layers.0.input_layernorm.weight"]
    assert 0 < rms.abs().mean() < 0.3  # applied as (1 + w): small but non-zero
    gain = sd["vision_tower.encoder.layers.0.layer_norm1.weight"]
    assert abs(gain.mean() - 1) < 0.1 and gain.std() > 0.01
    dense = sd["gemma_expert.layers.0.input_layernorm.dense.weight"]
    assert 1e-3 < dense.std() < 0.5 / 40 ** 0.5  # much smaller than a plain 1/sqrt(fan_in)
    assert sd["gemma_expert.norm.dense.bias"].abs().mean() > 1e-3
    q = sd["language_model.layers.1.self_attn.q_proj.weight"]  # std ~ 1/sqrt(fan_in = 64)
    assert abs(q.std().item() - 1 / 8) < 0.02


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_generated_checkpoint_is_deterministic_and_loads_strictly(tmp_path, model_type):
    first = generate_embedded_checkpoint(tmp_path / "a", model_type, seed=0)
    second = generate_embedded_checkpoint(tmp_path / "b", model_type, seed=0)
    assert directory_digest(first) == directory_digest(second)
    assert (first / "tokenizer.model").stat().st_size > 0
    loaded = load_checkpoint(first, strict=True)
    cfg = tiny_config(model_type)
    assert loaded.config == cfg and loaded.source_format == "lerobot"
    expected = random_state_dict(cfg, 0)
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in expected.items())
    stats = tiny_norm_stats(cfg, 0)
    np.testing.assert_array_equal(loaded.norm_stats.state.mean, stats.state.mean)
    np.testing.assert_array_equal(loaded.norm_stats.action.q99, stats.action.q99)


def test_ensure_reuses_the_cache_and_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    path = ensure_embedded_checkpoint("pi0")
    assert path == tmp_path / "embedded-pi0-v1" and embedded.is_complete(path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_embedded_checkpoint("pi0") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_ensure_regenerates_an_incomplete_checkpoint(tmp_path):
    path = ensure_embedded_checkpoint("pi05", cache_dir=tmp_path)
    digest = directory_digest(path)
    (path / "model.safetensors").unlink()
    assert ensure_embedded_checkpoint("pi05", cache_dir=tmp_path) == path
    assert directory_digest(path) == digest
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary leftovers


def test_racing_callers_all_get_one_complete_checkpoint(tmp_path):
    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: ensure_embedded_checkpoint("pi0", cache_dir=tmp_path),
                              range(3)))
    assert len(set(paths)) == 1 and embedded.is_complete(paths[0])
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]
    load_checkpoint(paths[0], strict=True)
