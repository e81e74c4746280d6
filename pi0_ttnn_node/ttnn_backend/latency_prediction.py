"""PREDICTED latency per stage for a workload, a runtime configuration and a board, plus calibration.

`predict(scenario)` records the op stream at full width with 1 and 2 layers per tower
(op_stream.record_workload), prices every op with the roofline (cost_model), extrapolates each stage
to the real layer count and applies the configuration's trace scope (device dispatch per op when
traced, host dispatch when not) and command queues (2 CQs hide the upload). `CALIBRATION` lists
tt-metal's published PI0 / PI0.5 configurations (shared/reference/ttnn_performance.md) in our knob
terms; they are priced by the same code with no per-case factor. Counterpart: tools/predict_ttnn.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from pi0_ttnn_node.ttnn_backend import cost_model as cm
from pi0_ttnn_node.ttnn_backend.op_stream import STAGE_TOWER, Workload, record_workload, tower_depths
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig, resolve_runtime_config

DEPTHS = (1, 2)
BOARD_KEYS = {"n150": "wormhole_n150", "n300": "wormhole_n300", "p150": "blackhole_p150"}
STAGE_ORDER = ("upload", "vision", "prefill", "denoise_pre", "step", "download")


@dataclass(frozen=True)
class Scenario:
    """One configuration to predict: what runs, with which knobs, on which board."""

    label: str
    workload: Workload
    board: str  # n150 | n300 | p150
    preset: str = "fast"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    published_ms: Optional[float] = None
    source: str = ""
    assumptions: str = ""

    def runtime_config(self) -> TtRuntimeConfig:
        values = dict(self.overrides)
        values["emulated_board"] = BOARD_KEYS[self.board]
        values.setdefault("emulate", True)
        return resolve_runtime_config(self.preset, values)


@dataclass
class Prediction:
    scenario: Scenario
    stages: Dict[str, cm.StageCost]  # extrapolated to full depth; step_i separate
    latency_s: float
    upload_hidden: bool

    def stage_rows(self) -> List[Tuple[str, cm.StageCost]]:
        def key(name: str) -> Tuple[int, int]:
            base = name.split("_")[0] if name.startswith("step_") else name
            index = STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER)
            return index, int(name.split("_")[1]) if name.startswith("step_") else 0
        return sorted(self.stages.items(), key=lambda item: key(item[0]))


def _tower(stage: str) -> Optional[str]:
    return STAGE_TOWER.get("step" if stage.startswith("step_") else stage)


def _traced(stage: str, trace: str) -> bool:
    if stage in ("upload", "download"):
        return False
    if trace == "whole":
        return True
    return trace == "denoise" and (stage == "denoise_pre" or stage.startswith("step_"))


_RECORDINGS: Dict[Tuple[Any, ...], Dict[int, Dict[str, list]]] = {}


def recordings(scenario: Scenario) -> Dict[int, Dict[str, list]]:
    """Op records per stage at each of DEPTHS (cached per workload and configuration)."""
    rc = scenario.runtime_config()
    key = (scenario.workload, dataclasses.replace(rc, trace="off", num_command_queues=1, trace_region_size=0))
    if key not in _RECORDINGS:
        _RECORDINGS[key] = {depth: record_workload(scenario.workload, rc, depth) for depth in DEPTHS}
    return _RECORDINGS[key]


def price(recorded: Dict[int, Dict[str, list]], workload: Workload, rc: TtRuntimeConfig, board: str
          ) -> Dict[str, cm.StageCost]:
    """Extrapolate each stage's roofline from DEPTHS to the real layer counts."""
    perf = cm.BOARDS[board]
    full = tower_depths(workload.config())
    shallow, deeper = (recorded[d] for d in DEPTHS)
    out: Dict[str, cm.StageCost] = {}
    for stage in set(shallow) | set(deeper):
        traced = _traced(stage, rc.trace)
        costs = [cm.stage_cost(rec.get(stage, []), perf, traced) for rec in (shallow, deeper)]
        tower = _tower(stage)
        out[stage] = costs[0] if tower is None else cm.extrapolate(costs[0], costs[1], DEPTHS[0], DEPTHS[1],
                                                                    full[tower])
    return out


def predict(scenario: Scenario) -> Prediction:
    rc = scenario.runtime_config()
    stages = price(recordings(scenario), scenario.workload, rc, scenario.board)
    two_cqs = rc.num_command_queues == 2
    return Prediction(scenario, stages, cm.total_latency(stages, two_cqs), two_cqs)


def extrapolated_op_counts(shallow: Mapping[str, int], deeper: Mapping[str, int], d1: int, d2: int,
                           target: int) -> Dict[str, float]:
    """Op counts by name at `target` layers from counts at d1 and d2 layers (linear in depth)."""
    names = set(shallow) | set(deeper)
    return {n: shallow.get(n, 0) + (target - d1) * (deeper.get(n, 0) - shallow.get(n, 0)) / (d2 - d1)
            for n in names}


# -- tt-metal's published configurations, in our knob terms --------------------------------------
_TT_PI0_RUNNER = "PerformantRunner (PI0TraceConfig): 3 images, 512 language tokens, denoise loop traced, 2 CQs"
_PI05_FAST = {"weight_dtype_vision": "bfloat8_b", "weight_dtype_vlm": "bfloat8_b",
              "weight_dtype_expert": "bfloat8_b", "kv_cache_dtype": "bfloat16", "trace": "whole",
              "num_command_queues": 2}
CALIBRATION: Tuple[Scenario, ...] = (
    Scenario("tt-metal PI0, 3 cams, 10 steps", Workload("pi0", 3, 512), "n300",
             overrides={"trace": "denoise", "num_command_queues": 2, "weight_dtype_vision": "bfloat16",
                        "weight_dtype_vlm": "bfloat16", "weight_dtype_expert": "bfloat16",
                        "kv_cache_dtype": "bfloat16", "fidelity_vision": "HiFi4", "fidelity_prefill": "HiFi2",
                        "fidelity_denoise": "HiFi2", "fidelity_sdpa": "HiFi4"},
             published_ms=326.27, source="PR #38174 (N300, trace + 2CQ)",
             assumptions=_TT_PI0_RUNNER + "; Gemma MLP + SigLIP bf16 -> bf16 weights"),
    Scenario("tt-metal PI0, 3 cams, 10 steps", Workload("pi0", 3, 512), "p150",
             overrides={"trace": "denoise", "num_command_queues": 2, "kv_cache_dtype": "bfloat16",
                        "fidelity_denoise": "HiFi2"},
             published_ms=140.6, source="PR #41431 (P150a)",
             assumptions=_TT_PI0_RUNNER + "; Gemma + SigLIP fc weights bf8, HiFi2"),
    Scenario("tt-metal PI0 demo (HiFi4 + bf16)", Workload("pi0", 3, 512), "n150", preset="accurate",
             overrides={"fp32_acc_prefill": False, "fp32_acc_denoise": False},
             published_ms=350.0, source="robotics_demo_n150 README (~350 ms)",
             assumptions="workload not published: assumed the PI0 runner's; untraced, 1 CQ"),
    Scenario("tt-metal PI0.5 pi05_base, 3 cams, 10 steps", Workload("pi05", 3), "p150",
             overrides=_PI05_FAST, published_ms=55.69, source="pi0_5/p150 README (P150a)",
             assumptions="bf8 weights, bf16 K/V, HiFi2 / LoFi denoise, whole trace + 2 CQ; 200 prompt tokens"),
    Scenario("tt-metal PI0.5 pi05_base, 3 cams, 5 steps", Workload("pi05", 3, steps=5), "p150",
             overrides=_PI05_FAST, published_ms=39.43, source="pi0_5/p150 README (P150a)",
             assumptions="as above, 5 Euler steps"),
    Scenario("tt-metal PI0.5 bf16 weights, 10 steps", Workload("pi05", 3), "p150",
             overrides=dict(_PI05_FAST, weight_dtype_vision="bfloat16", weight_dtype_vlm="bfloat16",
                            weight_dtype_expert="bfloat16"),
             published_ms=55.69 * 1.6, source="pi0_5/p150 README ('~1.6x latency' with bf16 weights)",
             assumptions="derived figure: 1.6 x 55.69 ms"),
)


def our_scenarios(board: str) -> Tuple[Scenario, ...]:
    """This project's presets on `board`: PI0 3 cams 10 steps and PI0.5 3 cams 10 steps."""
    return tuple(Scenario(f"ours {model} {preset}, 3 cams, 10 steps", Workload(model, 3), board, preset=preset)
                 for preset in ("fast", "accurate") for model in ("pi0", "pi05"))

