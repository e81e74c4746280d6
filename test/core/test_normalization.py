"""normalization.py: lerobot vs openpi formulas against hand-computed values, and file loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from pi0_ttnn_node.checkpoint import save_checkpoint
from pi0_ttnn_node.config import FeaturesConfig
from pi0_ttnn_node.embedded import random_state_dict, tiny_config, tiny_norm_stats
from pi0_ttnn_node.errors import CheckpointError, ObservationError
from pi0_ttnn_node.normalization import FeatureStats, Normalizer, NormStats, load_norm_stats

F = np.float32


def stats_of(mode: str, convention: str, **feature) -> NormStats:
    fs = FeatureStats(**{k: np.asarray(v, F) for k, v in feature.items()})
    return NormStats(fs, fs, mode, mode, convention)


def test_lerobot_mean_std_matches_hand_values_and_inverts_without_eps():
    norm = Normalizer(stats_of("MEAN_STD", "lerobot", mean=[1.0, -2.0, 0.5], std=[2.0, 0.5, 4.0]))
    np.testing.assert_allclose(norm.normalize_state(np.array([3.0, -1.0, 0.5])),
                               [2.0 / (2 + 1e-8), 1.0 / (0.5 + 1e-8), 0.0], rtol=1e-7)
    # lerobot's inverse is y*std + mean (no eps): exact on these values.
    assert norm.unnormalize_actions(np.array([1.0, 2.0, 0.0])).tolist() == [3.0, -1.0, 0.5]


def test_mean_std_eps_differs_between_conventions():
    x = np.array([2e-6], F)
    lerobot = Normalizer(stats_of("MEAN_STD", "lerobot", mean=[0.0], std=[1e-6]))
    openpi = Normalizer(stats_of("MEAN_STD", "openpi", mean=[0.0], std=[1e-6]))
    np.testing.assert_allclose(lerobot.normalize_state(x), [2e-6 / (1e-6 + 1e-8)], rtol=1e-5)
    np.testing.assert_allclose(openpi.normalize_state(x), [2e-6 / 2e-6], rtol=1e-5)
    # lerobot's inverse multiplies by std alone, openpi's by (std + 1e-6): y=1 -> 1e-6 vs 2e-6.
    np.testing.assert_allclose(lerobot.unnormalize_actions(np.array([1.0])), [1e-6], rtol=1e-5)
    np.testing.assert_allclose(openpi.unnormalize_actions(np.array([1.0])), [2e-6], rtol=1e-5)


def test_lerobot_quantiles_match_hand_values_with_eps_only_for_equal_quantiles():
    norm = Normalizer(stats_of("QUANTILES", "lerobot", q01=[0.0, -1.0, 3.0], q99=[2.0, 1.0, 3.0]))
    out = norm.normalize_state(np.array([1.0, 0.5, 3.0]))
    assert out.tolist() == [0.0, 0.5, -1.0]
    assert norm.normalize_state(np.array([2.0, 1.0, 3.0]))[:2].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(norm.unnormalize_actions(np.array([-1.0, 0.0, 1.0])),
                               [0.0, 0.0, 3.0 + 1e-8], rtol=0, atol=1e-7)


def test_openpi_quantiles_match_hand_values():
    norm = Normalizer(stats_of("QUANTILES", "openpi", q01=[0.0, -1.0], q99=[2.0, 1.0]))
    out = norm.normalize_state(np.array([2.0, 0.0]))
    np.testing.assert_allclose(out, [2.0 / (2.0 + 1e-6) * 2 - 1, 1.0 / (2.0 + 1e-6) * 2 - 1],
                               rtol=0, atol=1e-7)
    np.testing.assert_allclose(norm.unnormalize_actions(np.array([1.0, -1.0])),
                               [2.0 + 1e-6, -1.0], rtol=0, atol=1e-7)


def test_lerobot_min_max_maps_the_range_to_minus_one_one():
    norm = Normalizer(stats_of("MIN_MAX", "lerobot", min=[-4.0, 10.0], max=[4.0, 20.0]))
    assert norm.normalize_state(np.array([0.0, 20.0])).tolist() == [0.0, 1.0]
    assert norm.unnormalize_actions(np.array([-1.0, 0.0])).tolist() == [-4.0, 15.0]


@pytest.mark.parametrize("convention", ["lerobot", "openpi"])
@pytest.mark.parametrize("mode", ["MEAN_STD", "QUANTILES"])
def test_normalize_then_unnormalize_round_trips(mode, convention):
    rng = np.random.default_rng(0)
    stats = stats_of(mode, convention, mean=rng.normal(size=7), std=rng.uniform(0.1, 2, 7),
                     q01=-rng.uniform(1, 2, 7), q99=rng.uniform(1, 2, 7))
    norm = Normalizer(stats)
    x = rng.normal(size=(4, 50, 7)).astype(F)
    y = norm.normalize_actions(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert not np.allclose(y, x)
    np.testing.assert_allclose(norm.unnormalize_actions(y), x, rtol=1e-5, atol=1e-5)


def test_identity_passes_values_through():
    norm = Normalizer(NormStats(FeatureStats(), FeatureStats(), "IDENTITY", "IDENTITY", "lerobot"))
    x = np.array([[1.5, -2.0]], np.float64)
    out = norm.unnormalize_actions(x)
    assert out.dtype == np.float32 and out.tolist() == [[1.5, -2.0]]


def test_wrong_state_size_raises_observation_error():
    norm = Normalizer(stats_of("MEAN_STD", "lerobot", mean=[0.0, 0.0], std=[1.0, 1.0]))
    with pytest.raises(ObservationError, match=r"shape \(3,\); expected last dimension 2"):
        norm.normalize_state(np.zeros(3))


def _openpi_dir(tmp_path, state, actions):
    (tmp_path / "assets" / "droid").mkdir(parents=True)
    (tmp_path / "assets" / "droid" / "norm_stats.json").write_text(
        json.dumps({"norm_stats": {"state": state, "actions": actions}}))
    return tmp_path


def test_openpi_stats_longer_are_truncated_and_shorter_pass_extra_dims_through(tmp_path):
    root = _openpi_dir(tmp_path, {"q01": [0.0] * 10, "q99": [2.0] * 10},
                       {"q01": [0.0] * 3, "q99": [4.0] * 3})
    feats = FeaturesConfig(state_dim=8, action_dim=5, state_norm="QUANTILES",
                           action_norm="QUANTILES")
    stats = load_norm_stats(root, feats)
    assert stats.convention == "openpi" and len(stats.state.q01) == 8
    norm = Normalizer(stats, state_dim=8, action_dim=5)
    out = norm.unnormalize_actions(np.array([1.0, 1.0, 1.0, 0.25, -0.5]))
    np.testing.assert_allclose(out, [4 + 1e-6] * 3 + [0.25, -0.5], rtol=0, atol=1e-6)


def test_openpi_stats_missing_a_needed_statistic_raise(tmp_path):
    root = _openpi_dir(tmp_path, {"mean": [0.0]}, {"mean": [0.0]})
    with pytest.raises(CheckpointError, match=r"norm_stats.json has no key 'observation.state.std'"):
        load_norm_stats(root, FeaturesConfig(state_dim=1, action_dim=1))


@pytest.fixture
def lerobot_dir(tmp_path):
    cfg = tiny_config("pi0")
    stats = tiny_norm_stats(cfg)
    save_checkpoint(tmp_path, cfg, random_state_dict(cfg), stats)
    return tmp_path, cfg, stats


def test_lerobot_stats_load_back_exactly(lerobot_dir):
    root, cfg, stats = lerobot_dir
    loaded = load_norm_stats(root, cfg.features)
    assert (loaded.state_mode, loaded.action_mode, loaded.convention) == (
        "MEAN_STD", "MEAN_STD", "lerobot")
    for name in ("mean", "std", "q01", "q99", "min", "max"):
        np.testing.assert_array_equal(getattr(loaded.state, name), getattr(stats.state, name))
        np.testing.assert_array_equal(getattr(loaded.action, name), getattr(stats.action, name))


def test_lerobot_normalizer_file_is_found_through_the_pipeline_json(lerobot_dir):
    root, cfg, _ = lerobot_dir
    old = "policy_preprocessor_step_6_normalizer_processor.safetensors"
    new = "policy_preprocessor_step_5_normalizer_processor.safetensors"  # older lerobot saves
    (root / old).rename(root / new)
    pipeline = json.loads((root / "policy_preprocessor.json").read_text())
    pipeline["steps"] = [s for s in pipeline["steps"]
                         if s["registry_name"] != "relative_actions_processor"]
    pipeline["steps"][-1]["state_file"] = new
    (root / "policy_preprocessor.json").write_text(json.dumps(pipeline))
    assert load_norm_stats(root, cfg.features).state.mean is not None


def test_lerobot_missing_statistic_raises_naming_file_and_key(lerobot_dir):
    root, cfg, _ = lerobot_dir
    path = root / "policy_preprocessor_step_6_normalizer_processor.safetensors"
    tensors = load_file(str(path))
    del tensors["observation.state.std"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError,
                       match=r"step_6_normalizer_processor.safetensors has no key "
                             r"'observation.state.std'"):
        load_norm_stats(root, cfg.features)


def test_lerobot_stats_of_the_wrong_length_raise(lerobot_dir):
    root, cfg, _ = lerobot_dir
    feats = FeaturesConfig(state_dim=9, action_dim=cfg.features.action_dim)
    with pytest.raises(CheckpointError, match="observation.state.mean has length 8 .* dimension 9"):
        load_norm_stats(root, feats)


def test_directory_without_statistics_raises(tmp_path):
    with pytest.raises(CheckpointError, match="normalisation statistics"):
        load_norm_stats(tmp_path, FeaturesConfig())


def test_identity_modes_need_no_statistics_file(lerobot_dir):
    root, cfg, _ = lerobot_dir
    for json_name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        pipeline = json.loads((root / json_name).read_text())
        for step in pipeline["steps"]:
            step.pop("state_file", None)
            if "norm_map" in step["config"]:
                step["config"]["norm_map"] = {"STATE": "IDENTITY", "ACTION": "IDENTITY"}
        (root / json_name).write_text(json.dumps(pipeline))
    stats = load_norm_stats(root, FeaturesConfig(state_dim=8, action_dim=7, state_norm="IDENTITY",
                                                 action_norm="IDENTITY"))
    assert (stats.state_mode, stats.action_mode) == ("IDENTITY", "IDENTITY")
    assert Normalizer(stats).normalize_state(np.ones(8)).tolist() == [1.0] * 8
