"""checkpoint.py: lerobot/openpi layouts, key rules, strictness and refusal of unsafe files."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pi0_ttnn_node import checkpoint as ckpt
from pi0_ttnn_node import checkpoint_keys as ck
from pi0_ttnn_node.checkpoint import load_checkpoint, load_model_state_dict, save_checkpoint
from pi0_ttnn_node.config import DIMS_KEY, PI0Config
from pi0_ttnn_node.embedded import random_state_dict, tiny_config, tiny_norm_stats
from pi0_ttnn_node.errors import CheckpointError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def tiny(request):
    cfg = tiny_config(request.param)
    return cfg, random_state_dict(cfg, seed=3), tiny_norm_stats(cfg, seed=3)


@pytest.fixture
def saved(tmp_path, tiny):
    cfg, sd, stats = tiny
    return save_checkpoint(tmp_path / "ckpt", cfg, sd, stats), cfg, sd


def rewrite_weights(path: Path, edit) -> None:
    """Load model.safetensors as plain tensors, let `edit` change the dict, write it back."""
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_save_then_load_returns_identical_tensors(saved):
    path, cfg, sd = saved
    loaded = load_checkpoint(path)
    assert loaded.source_format == "lerobot"
    assert loaded.config == cfg
    assert set(loaded.state_dict) == set(ck.expected_shapes(cfg)) == set(sd)
    for name, tensor in sd.items():
        assert torch.equal(loaded.state_dict[name], tensor), name
    assert loaded.ignored_keys == []


def test_loader_accepts_keys_without_model_prefix(tmp_path, tiny):
    cfg, sd, stats = tiny
    path = save_checkpoint(tmp_path, cfg, sd, stats, with_model_prefix=False)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.state_dict["action_out_proj.weight"], sd["action_out_proj.weight"])


def test_lm_heads_are_ignored_named_and_logged_once(tmp_path, tiny, caplog):
    cfg, sd, stats = tiny
    path = save_checkpoint(tmp_path, cfg, sd, stats, include_lm_head=True)
    with caplog.at_level(logging.INFO, logger="pi0_ttnn_node.checkpoint"):
        loaded = load_checkpoint(path)
    assert sorted(loaded.ignored_keys) == sorted("model." + k for k in ck.UNUSED_KEYS)
    assert not any("lm_head" in k for k in loaded.state_dict)
    lines = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(lines) == 1 and "paligemma.lm_head.weight" in lines[0]


def test_embed_tokens_is_copied_from_lm_head_when_absent(saved):
    path, cfg, sd = saved

    def drop_embed(t):
        embed = t.pop("model." + ck.to_checkpoint_key(ck.EMBED_TOKENS_KEY, False))
        t["model." + ck.LM_HEAD_KEY] = embed.clone()

    rewrite_weights(path, drop_embed)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.state_dict[ck.EMBED_TOKENS_KEY], sd[ck.EMBED_TOKENS_KEY])
    assert loaded.ignored_keys == []  # the lm_head was used, not ignored


def test_missing_tensor_raises_naming_it(saved):
    path, _, _ = saved
    rewrite_weights(path, lambda t: t.pop("model.action_in_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors 1: \['model.action_in_proj.weight'"):
        load_checkpoint(path)


def test_unexpected_tensor_raises_naming_it(saved):
    path, _, _ = saved
    rewrite_weights(path, lambda t: t.update({"model.some_adapter.lora_A.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors 1: \['model.some_adapter"):
        load_checkpoint(path)


def test_wrong_shape_raises_naming_key_and_both_shapes(saved):
    path, cfg, _ = saved
    bad = (cfg.expert.width, cfg.max_action_dim + 1)
    rewrite_weights(path, lambda t: t.update({"model.action_in_proj.weight": torch.zeros(bad)}))
    want = (f"model.action_in_proj.weight expected {(cfg.expert.width, cfg.max_action_dim)} "
            f"got {bad}")
    with pytest.raises(CheckpointError, match=want.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(path)


def test_non_strict_load_keeps_the_good_tensors(saved):
    path, cfg, _ = saved
    rewrite_weights(path, lambda t: t.pop("model.action_in_proj.bias"))
    sd, _ = load_model_state_dict(path, cfg, strict=False)
    assert "action_in_proj.bias" not in sd and "action_in_proj.weight" in sd


@pytest.mark.parametrize("saved_as,loaded_as,hint", [("pi05", "pi0", "a PI0.5 checkpoint"),
                                                     ("pi0", "pi05", "a PI0 checkpoint")])
def test_wrong_model_type_hints_at_the_right_one(tmp_path, saved_as, loaded_as, hint):
    cfg = tiny_config(saved_as)
    path = save_checkpoint(tmp_path, cfg, random_state_dict(cfg), tiny_norm_stats(cfg))
    with pytest.raises(CheckpointError, match=f"time_mlp_in.weight.*is this {hint}"):
        load_model_state_dict(path, tiny_config(loaded_as))


def test_pi05_drops_state_proj_and_plain_expert_norms_like_lerobot(tmp_path):
    cfg = tiny_config("pi05")
    path = save_checkpoint(tmp_path, cfg, random_state_dict(cfg), tiny_norm_stats(cfg))
    extra = {"model.state_proj.weight": torch.zeros(40, 32),
             "model.paligemma_with_expert.gemma_expert.model.norm.weight": torch.zeros(40),
             "model.paligemma_with_expert.gemma_expert.model.layers.1.input_layernorm.weight":
                 torch.zeros(40)}
    rewrite_weights(path, lambda t: t.update(extra))
    loaded = load_checkpoint(path)
    assert sorted(loaded.ignored_keys) == sorted(extra)


@pytest.mark.parametrize("model_type,ours,theirs", [("pi05", "time_mlp", "action_time_mlp"),
                                                    ("pi0", "action_time_mlp", "time_mlp")])
def test_time_mlp_names_are_read_as_the_model_types_own(tmp_path, model_type, ours, theirs):
    cfg = tiny_config(model_type)
    sd = random_state_dict(cfg)
    path = save_checkpoint(tmp_path, cfg, sd, tiny_norm_stats(cfg))
    rewrite_weights(path, lambda t: t.update(
        {k.replace(f"model.{ours}", f"model.{theirs}"): t.pop(k)
         for k in [k for k in t if k.startswith(f"model.{ours}")]}))
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.state_dict[f"{ours}_in.weight"], sd[f"{ours}_in.weight"])


def test_sharded_checkpoint_loads_through_its_index(saved):
    path, _, sd = saved
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: tensors[k] for k in names}, str(path / name))
    weight_map = {k: name for name, names in shards.items() for k in names}
    (path / ckpt.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in sd.items())


def test_dtype_argument_casts_every_tensor(saved):
    path, _, sd = saved
    loaded = load_checkpoint(path, dtype=torch.bfloat16)
    assert {t.dtype for t in loaded.state_dict.values()} == {torch.bfloat16}
    assert torch.equal(loaded.state_dict["action_in_proj.bias"],
                       sd["action_in_proj.bias"].to(torch.bfloat16))


def test_progress_bar_goes_to_stderr_for_big_checkpoints(saved, monkeypatch, capsys):
    path, _, _ = saved
    monkeypatch.setattr(ckpt, "PROGRESS_MIN_BYTES", 0)
    load_checkpoint(path, progress=True)
    assert "loading weights" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "model.ckpt"])
def test_pickle_file_names_are_refused(tmp_path, name):
    (tmp_path / name).write_bytes(pickle.dumps({"weight": [1.0]}))
    with pytest.raises(CheckpointError, match="pickle.*executes code.*save_file"):
        load_model_state_dict(tmp_path, tiny_config())


@pytest.mark.parametrize("payload", [pickle.dumps({"weight": [1.0]}, protocol=4),
                                     b"PK\x03\x04" + b"\0" * 64])
def test_pickle_or_zip_renamed_to_model_safetensors_is_refused(saved, payload):
    path, _, _ = saved
    (path / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"refusing .*model.safetensors.*execute code"):
        load_checkpoint(path)


def test_truncated_safetensors_raises_naming_the_file(saved):
    path, _, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*(truncated|damaged)"):
        load_checkpoint(path)


def test_corrupt_safetensors_header_raises_naming_the_file(saved):
    path, _, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[8:20] = b"\xff" * 12
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors has a corrupt safetensors header"):
        load_checkpoint(path)


def test_empty_weight_file_raises(saved):
    path, _, _ = saved
    (path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load_checkpoint(path)


def test_empty_or_missing_directory_raises(tmp_path):
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_openpi_converted_layout_loads_with_stats_and_tied_embeddings(tmp_path):
    cfg = tiny_config("pi0")
    sd = random_state_dict(cfg, seed=5)
    tensors = {ck.to_checkpoint_key(k, with_model_prefix=False): v for k, v in sd.items()}
    tensors[ck.LM_HEAD_KEY] = tensors.pop(ck.to_checkpoint_key(ck.EMBED_TOKENS_KEY, False))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    raw = {"action_dim": 32, "action_horizon": 50, "paligemma_variant": "gemma_2b",
           "action_expert_variant": "gemma_300m", "precision": "float32",
           DIMS_KEY: cfg.to_dims_dict()}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    stats = {"mean": [0.5] * 8, "std": [2.0] * 8, "q01": [-1.0] * 8, "q99": [1.0] * 8}
    action_stats = {k: v[:7] for k, v in stats.items()}
    (tmp_path / "assets" / "trossen").mkdir(parents=True)
    (tmp_path / "assets" / "trossen" / "norm_stats.json").write_text(
        json.dumps({"norm_stats": {"state": stats, "actions": action_stats}}))
    loaded = load_checkpoint(tmp_path)
    assert loaded.source_format == "openpi"
    assert loaded.norm_stats.convention == "openpi"
    assert (loaded.config.features.state_dim, loaded.config.features.action_dim) == (8, 7)
    assert torch.equal(loaded.state_dict[ck.EMBED_TOKENS_KEY], sd[ck.EMBED_TOKENS_KEY])
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in sd.items())


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_state_dicts_saved_by_lerobot_load_strictly(model_type):
    root = FIXTURES / f"lerobot_{model_type}"
    cfg = PI0Config.from_checkpoint(root)
    sd, ignored = load_model_state_dict(root, cfg)
    assert set(sd) == set(ck.expected_shapes(cfg))
    assert sorted(ignored) == sorted("model." + k for k in ck.UNUSED_KEYS)
