"""Every TTNN runtime knob in one table: device, precision per tensor group, performance techniques.

`TtRuntimeConfig` is the resolved configuration the device and PI0ModelTTNN read. Its fields are
declared with `knob(...)`, whose metadata (help, choices, range, whether a preset sets it) is the one
source for the node parameters (`policy.ttnn_<field>`, generated in control/parameters.py), the
tools' CLI flags (`add_ttnn_arguments`) and the docs. A preset ("accurate", "fast") fills every
preset-driven knob; an explicit parameter or flag overrides just that knob. Unset means: "" for
text knobs and preset-driven booleans (which are "true" / "false" when set), -1 for preset-driven
integers.
Counterpart: runtime.py (opens the device this config describes).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from pi0_ttnn_node.errors import ConfigError

EMULATED_BOARDS = {"wormhole_n150": "wormhole_n150.yaml", "wormhole_n300": "wormhole_n300.yaml",
                   "blackhole_p150": "blackhole_p150.yaml"}
DTYPES = ("bfloat16", "bfloat8_b", "float32")
WEIGHT_DTYPES = ("bfloat16", "bfloat8_b")
FIDELITIES = ("LoFi", "HiFi2", "HiFi3", "HiFi4")
TRACE_SCOPES = ("off", "denoise", "whole")
MESH_SHAPES = ("1x1", "1x2", "1x4", "1x8", "2x4")
PARAM_PREFIX = "policy.ttnn_"
DEFAULT_PRESET = "accurate"


def knob(default: Any, help: str, *, choices: Tuple[Any, ...] = (), low: Optional[int] = None,
         high: Optional[int] = None, preset: bool = False) -> Any:
    """A TtRuntimeConfig field with the metadata the parameter table and CLI are generated from."""
    meta = {"help": help, "choices": tuple(choices), "low": low, "high": high, "preset": preset}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TtRuntimeConfig:
    """How to open the device, which number formats each tensor group uses, which techniques run."""

    # -- device (never set by a preset) --------------------------------------------------------
    device_id: int = knob(0, "Tenstorrent device id.", low=0, high=1023)
    emulate: bool = knob(False, "Run on the CPU EMULATION of a card (tests, machines without a "
                                "card); never chosen silently.")
    emulated_board: str = knob("wormhole_n150", "Board the emulation models (core grid, L1, "
                                                "DRAM from its cluster descriptor).",
                               choices=tuple(EMULATED_BOARDS))
    mesh_shape: str = knob("1x1", "ttnn.MeshShape ROWSxCOLS of chips for data parallelism: "
                                  "weights on every chip, batch rows sharded evenly (1x1 = one "
                                  "device; n300: 1x2; T3K: 1x8). The emulation has 2 chips "
                                  "(wormhole_n300).", choices=MESH_SHAPES)
    l1_small_size: int = knob(24576, "ttnn.open_device l1_small_size in bytes (tt-metal's PI0 "
                                     "value).", low=0, high=1 << 30)
    trace_region_size: int = knob(0, "ttnn.open_device trace_region_size in bytes; 0 = none "
                                     "(required > 0 when trace is not off).", low=0, high=1 << 34)
    # -- preset-driven ----------------------------------------------------------------------------
    num_command_queues: int = knob(1, "Command queues: 2 uploads the next observation on CQ1 "
                                      "while CQ0 computes.", choices=(1, 2), preset=True)
    trace: str = knob("off", "What is captured as a TTNN trace and replayed: off, the denoise "
                             "loop, or the whole inference.", choices=TRACE_SCOPES, preset=True)
    weight_dtype_vision: str = knob("bfloat16", "SigLIP weight dtype.", choices=WEIGHT_DTYPES,
                                    preset=True)
    weight_dtype_vlm: str = knob("bfloat16", "PaliGemma (prefix) Gemma weight dtype.",
                                 choices=WEIGHT_DTYPES, preset=True)
    weight_dtype_expert: str = knob("bfloat16", "Action-expert Gemma weight dtype.",
                                    choices=WEIGHT_DTYPES, preset=True)
    weight_dtype_heads: str = knob("bfloat16", "Projection heads (state, action in/out, time "
                                   "MLP) weight dtype.", choices=WEIGHT_DTYPES, preset=True)
    activation_dtype: str = knob("bfloat16", "Matmul activation dtype.", choices=DTYPES,
                                 preset=True)
    kv_cache_dtype: str = knob("bfloat16", "Prefix K/V cache dtype.", choices=DTYPES,
                               preset=True)
    fidelity_vision: str = knob("HiFi4", "Math fidelity of SigLIP matmuls.", choices=FIDELITIES,
                                preset=True)
    fidelity_prefill: str = knob("HiFi4", "Math fidelity of the VLM prefill matmuls.",
                                 choices=FIDELITIES, preset=True)
    fidelity_denoise: str = knob("HiFi4", "Math fidelity of the action-expert matmuls in the "
                                 "denoise loop.", choices=FIDELITIES, preset=True)
    fidelity_sdpa: str = knob("HiFi4", "Math fidelity of attention (SDPA).", choices=FIDELITIES,
                              preset=True)
    fp32_acc_vision: bool = knob(True, "fp32 destination accumulation in SigLIP.", preset=True)
    fp32_acc_prefill: bool = knob(True, "fp32 destination accumulation in prefill matmuls.",
                                  preset=True)
    fp32_acc_denoise: bool = knob(True, "fp32 destination accumulation in denoise matmuls.",
                                  preset=True)
    fp32_acc_sdpa: bool = knob(True, "fp32 destination accumulation in SDPA.", preset=True)
    # -- performance techniques (preset-driven; each one switchable) ------------------------------
    precompute_conditioning: bool = knob(
        True, "Before the denoise loop, compute every step's timestep embedding, the PI0 time "
        "half of action_time_mlp_in and state token, and the PI0.5 adaRMS modulations (one "
        "matmul over all steps instead of one per step); adaRMS then runs as one rms_norm with "
        "weight = 1 + scale and bias = shift, the gated residual as one ttnn.mac.", preset=True)
    fused_mlp: bool = knob(
        True, "Gemma MLP with gate and up fused into one weight and one matmul, then ttnn.geglu "
        "(tanh GELU) and the down matmul: 3 ops instead of 5.", preset=True)
    fused_rope: bool = knob(
        True, "RoPE with ttnn.experimental.rotary_embedding (one op per q / k) when head_dim is "
        "a multiple of 64; otherwise (tiny test models) the rotate-half matmul form.", preset=True)
    kv_in_place: bool = knob(
        True, "Prefix and suffix K/V in one resident buffer per layer: prefill writes the prefix "
        "rows, each denoise step writes only its suffix rows with ttnn.fill_cache; the prefix "
        "K/V is never concatenated or copied per step.", preset=True)
    l1_activations: bool = knob(
        False, "SigLIP activations in L1 (MLP hidden block-sharded over the core grid), the RoPE "
        "tables, the per-call RoPE rows and the denoise-step activations in L1; L1 tensors are "
        "deallocated as soon as they are consumed.", preset=True)
    matmul_program_configs: bool = knob(
        False, "Explicit matmul program configs: 2-D multicast for prefix shapes (SigLIP, "
        "prefill: M = prefix length), 1-D multicast for denoise shapes (M = suffix length); "
        "off lets ttnn choose.", preset=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            reason = check_knob(f.name, getattr(self, f.name))
            if reason:
                raise ConfigError(reason)
        if self.trace != "off" and self.trace_region_size == 0:
            raise ConfigError(f"trace={self.trace!r} needs a trace region; set trace_region_size "
                              "> 0 (e.g. 80_000_000 bytes) or trace='off'")

    @property
    def use_trace(self) -> bool:
        return self.trace != "off"


TTNN_PRESETS: Dict[str, Dict[str, Any]] = {
    # bf16 everywhere, HiFi4, fp32 accumulation: the numerics closest to the Torch reference. The
    # exact techniques (precompute, fused MLP / RoPE, in-place K/V) are on; no trace, 1 CQ, DRAM.
    "accurate": {},
    # tt-metal's production choices for PI0 / PI0.5 (shared/reference/ttnn_performance.md):
    # whole-inference trace + 2 CQs; bfloat8_b weights (heads bf16), matmul activations (QKV and
    # MLP hidden; o-proj / MLP-down outputs stay bf16) and K/V cache; HiFi2, LoFi
    # for the expert matmuls in the loop; fp32 accumulation for SigLIP and SDPA only; SigLIP in
    # L1 and per-shape program configs; every "do less per step" technique.
    "fast": {
        "num_command_queues": 2, "trace": "whole",
        "weight_dtype_vision": "bfloat8_b", "weight_dtype_vlm": "bfloat8_b",
        "weight_dtype_expert": "bfloat8_b", "weight_dtype_heads": "bfloat16",
        "activation_dtype": "bfloat8_b", "kv_cache_dtype": "bfloat8_b",
        "fidelity_vision": "HiFi2", "fidelity_prefill": "HiFi2", "fidelity_denoise": "LoFi",
        "fidelity_sdpa": "HiFi2",
        "fp32_acc_vision": True, "fp32_acc_prefill": False, "fp32_acc_denoise": False,
        "fp32_acc_sdpa": True,
        "precompute_conditioning": True, "fused_mlp": True, "fused_rope": True,
        "kv_in_place": True, "l1_activations": True, "matmul_program_configs": True,
    },
}
# Presets that trace need a trace region; this is what they get unless one is given.
PRESET_TRACE_REGION = 80_000_000


def _field(name: str) -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(TtRuntimeConfig)}
    if name not in fields:
        raise ConfigError(f"unknown TTNN knob {name!r}; expected one of {sorted(fields)}")
    return fields[name]


def check_knob(name: str, value: Any) -> Optional[str]:
    """Why `value` is not valid for knob `name`, or None."""
    meta = _field(name).metadata
    if meta["choices"] and value not in meta["choices"]:
        return f"ttnn knob {name}={value!r}; expected one of {list(meta['choices'])}"
    if meta["low"] is not None and not meta["low"] <= value <= meta["high"]:
        return f"ttnn knob {name}={value!r}; expected a value in [{meta['low']}, {meta['high']}]"
    return None


def resolve_runtime_config(preset: str = DEFAULT_PRESET,
                           overrides: Optional[Mapping[str, Any]] = None) -> TtRuntimeConfig:
    """The preset's values with `overrides` (knob name -> value, already typed) on top."""
    if preset not in TTNN_PRESETS:
        raise ConfigError(f"unknown TTNN preset {preset!r}; expected one of {list(TTNN_PRESETS)}")
    values: Dict[str, Any] = dict(TTNN_PRESETS[preset])
    values.update(overrides or {})
    for name in values:
        _field(name)
    if values.get("trace", "off") != "off" and not values.get("trace_region_size"):
        values["trace_region_size"] = PRESET_TRACE_REGION
    return TtRuntimeConfig(**values)


# -- node parameters and CLI flags, generated from the knob table --------------------------------
class KnobParam(NamedTuple):
    """One knob as a parameter: `kind` is 'bool', 'int' or 'str'; `unset` is the preset marker."""

    name: str  # full parameter name, e.g. policy.ttnn_fidelity_denoise
    knob: str  # TtRuntimeConfig field
    kind: str
    default: Any
    help: str
    choices: Tuple[Any, ...]
    low: Optional[int]
    high: Optional[int]


def knob_params(prefix: str = PARAM_PREFIX) -> List[KnobParam]:
    """`policy.ttnn_preset` plus one parameter per knob; preset-driven ones default to unset."""
    rows = [KnobParam(prefix + "preset", "preset", "str", DEFAULT_PRESET,
                      "TTNN preset: accurate (bf16 weights and K/V, HiFi4, fp32 accumulation, "
                      "no trace, 1 CQ, DRAM; the exact techniques on) or fast (tt-metal's "
                      "production choices: bfloat8_b weights (heads bf16) and K/V, HiFi2 / LoFi "
                      "for denoise matmuls, fp32 accumulation for SigLIP and SDPA only, "
                      "whole-inference trace, 2 CQs, SigLIP in L1, matmul program configs); "
                      "policy.ttnn_* knobs override single values. See docs/ttnn_backend.md.",
                      tuple(TTNN_PRESETS), None, None)]
    for f in dataclasses.fields(TtRuntimeConfig):
        meta = f.metadata
        kind = {bool: "bool", int: "int", str: "str"}[type(f.default)]
        if not meta["preset"]:
            rows.append(KnobParam(prefix + f.name, f.name, kind, f.default, meta["help"],
                                  meta["choices"], meta["low"], meta["high"]))
        elif kind == "int":
            choices = (-1,) + meta["choices"] if meta["choices"] else ()
            rows.append(KnobParam(prefix + f.name, f.name, "int", -1,
                                  meta["help"] + " -1 = the preset's value.", choices,
                                  -1 if meta["low"] is not None else None, meta["high"]))
        else:
            choices = ("",) + (("true", "false") if kind == "bool" else meta["choices"])
            rows.append(KnobParam(prefix + f.name, f.name, "str", "",
                                  meta["help"] + " Empty = the preset's value.", choices,
                                  None, None))
    return rows


def _typed(row: KnobParam, raw: Any) -> Any:
    """Parameter value -> knob value, or None when unset (preset decides)."""
    if row.knob == "preset":
        return raw
    f = _field(row.knob)
    if not f.metadata["preset"]:
        return raw
    if raw in ("", -1, None):
        return None
    if isinstance(f.default, bool):
        return {"true": True, "false": False}[str(raw).lower()]
    return type(f.default)(raw)


def runtime_config_from_params(values: Mapping[str, Any],
                               prefix: str = PARAM_PREFIX) -> TtRuntimeConfig:
    """Build the config from parameter values named `<prefix><knob>` (missing ones: defaults)."""
    preset = values.get(prefix + "preset", DEFAULT_PRESET)
    overrides = {}
    for row in knob_params(prefix)[1:]:
        if row.name in values:
            value = _typed(row, values[row.name])
            if value is not None:
                overrides[row.knob] = value
    return resolve_runtime_config(preset, overrides)


def add_ttnn_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --ttnn-preset and one --ttnn-<knob> flag per knob (same names as the parameters)."""
    group = parser.add_argument_group("TTNN backend knobs (same as the node's policy.ttnn_*)")
    for row in knob_params(prefix=""):
        flag = "--ttnn-" + row.name.replace("_", "-")
        kwargs: Dict[str, Any] = {"dest": "ttnn_" + row.name, "help": row.help}
        if row.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = row.default
        else:
            kwargs["type"] = int if row.kind == "int" else str
            kwargs["default"] = row.default
            if row.choices:
                kwargs["choices"] = row.choices
        group.add_argument(flag, **kwargs)


def runtime_config_from_args(args: argparse.Namespace) -> TtRuntimeConfig:
    """The config the --ttnn-* flags describe."""
    values = {row.name: getattr(args, "ttnn_" + row.name) for row in knob_params(prefix="")}
    return runtime_config_from_params(values, prefix="")
