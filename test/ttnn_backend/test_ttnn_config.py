"""The TTNN knob table: presets, validation with clear refusals, CLI flags, and documentation."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.ttnn_backend.ttnn_config import (TTNN_PRESETS, TtRuntimeConfig,
                                                    add_ttnn_arguments, knob_params,
                                                    resolve_runtime_config,
                                                    runtime_config_from_args,
                                                    runtime_config_from_params)

REPO = Path(__file__).resolve().parents[2]
KNOBS = [f.name for f in dataclasses.fields(TtRuntimeConfig)]


def test_fast_preset_is_tt_metals_production_choice():
    fast = resolve_runtime_config("fast")
    assert (fast.trace, fast.num_command_queues) == ("whole", 2)
    assert fast.trace_region_size > 0  # a tracing preset gets a trace region
    assert {fast.weight_dtype_vision, fast.weight_dtype_vlm, fast.weight_dtype_expert,
            fast.activation_dtype, fast.kv_cache_dtype} == {"bfloat8_b"}
    assert fast.weight_dtype_heads == "bfloat16"
    assert (fast.fidelity_prefill, fast.fidelity_denoise, fast.fidelity_sdpa) == \
        ("HiFi2", "LoFi", "HiFi2")
    assert fast.fp32_acc_vision and fast.fp32_acc_sdpa and not fast.fp32_acc_denoise
    assert fast.l1_activations and fast.matmul_program_configs


def test_accurate_preset_is_bf16_hifi4_without_trace():
    acc = resolve_runtime_config("accurate")
    assert acc.trace == "off" and acc.num_command_queues == 1
    assert acc.weight_dtype_vlm == "bfloat16" and acc.fidelity_denoise == "HiFi4"
    assert acc.fp32_acc_denoise


@pytest.mark.parametrize("knob,value", [("fidelity_sdpa", "HiFi5"), ("trace", "always"),
                                        ("weight_dtype_expert", "float32"),
                                        ("num_command_queues", 3)])
def test_bad_knob_values_are_refused_with_what_is_allowed(knob, value):
    with pytest.raises(ConfigError, match=rf"{knob}=.*expected one of"):
        resolve_runtime_config("fast", {knob: value})


def test_unknown_knob_and_preset_are_refused():
    with pytest.raises(ConfigError, match="unknown TTNN knob 'fidelity'"):
        resolve_runtime_config("fast", {"fidelity": "LoFi"})
    with pytest.raises(ConfigError, match="unknown TTNN preset 'turbo'"):
        resolve_runtime_config("turbo")


def test_node_parameters_override_single_knobs_of_the_preset():
    rc = runtime_config_from_params({"policy.ttnn_preset": "fast",
                                     "policy.ttnn_fidelity_denoise": "HiFi2",
                                     "policy.ttnn_kv_in_place": "false",
                                     "policy.ttnn_num_command_queues": -1,
                                     "policy.ttnn_trace": ""})
    assert rc.fidelity_denoise == "HiFi2" and not rc.kv_in_place
    assert rc.num_command_queues == 2 and rc.trace == "whole"  # unset: the preset's


def test_cli_flags_are_the_same_knobs():
    parser = argparse.ArgumentParser()
    add_ttnn_arguments(parser)
    args = parser.parse_args(["--ttnn-preset", "fast", "--ttnn-emulate", "--ttnn-trace", "denoise",
                              "--ttnn-fused-mlp", "false"])
    rc = runtime_config_from_args(args)
    assert rc.emulate and rc.trace == "denoise" and not rc.fused_mlp
    assert rc.weight_dtype_vlm == "bfloat8_b"


def test_every_knob_is_documented_and_a_parameter():
    doc = (REPO / "docs" / "ttnn_backend.md").read_text()
    params = yaml.safe_load((REPO / "config" / "pi0_ttnn_node.yaml").read_text())
    policy = params["pi0_ttnn_node"]["ros__parameters"]["policy"]
    for knob in KNOBS:
        assert f"`{knob}`" in doc, f"docs/ttnn_backend.md does not document {knob}"
        assert f"ttnn_{knob}" in policy, f"config/pi0_ttnn_node.yaml lacks policy.ttnn_{knob}"
    assert {row.knob for row in knob_params()} == set(KNOBS) | {"preset"}
    for preset in TTNN_PRESETS:
        assert f"**{preset}**" in doc
