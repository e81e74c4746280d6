"""Every node parameter in one table, without rclpy: the node, offline replay and the soak read it.

`PARAMETERS` holds name, kind, default, description, whether it may change while the node runs,
and its range or choices. The `policy.ttnn_*` rows are generated from the TTNN knob table
(ttnn_backend/ttnn_config.py knob_params()), never written by hand. config/pi0_ttnn_node.yaml
lists exactly these names (a test checks). Empty-list defaults are typed arrays without a value
(ROS YAML cannot type `[]`) and read as []. `node_values` gives defaults + params YAML + overrides
the way the node would see them. Counterparts: ros/params.py (rclpy descriptors, declare, on-set
validator), control/node_config.py (typed NodeConfig built from these values).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

from pi0_ttnn_node.backends import BACKENDS, TORCH_DTYPES
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.fault_injection import FaultPlan
from pi0_ttnn_node.instruction_rules import instruction_refusal
from pi0_ttnn_node.ttnn_backend.ttnn_config import knob_params

NODE_NAME = "pi0_ttnn_node"
IMAGE_TRANSPORTS = ("raw", "compressed")
ACTION_SPACES = ("absolute_position", "delta_position", "velocity")
JTC_TOPIC = "/joint_trajectory_controller/joint_trajectory"
INT_MAX = 2**31 - 1
KINDS = ("bool", "double", "integer", "string", "bool_array", "double_array", "integer_array",
         "string_array")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: `kind` names the ROS parameter type; `default` None = empty typed array."""

    name: str
    kind: str
    default: Any
    description: str
    runtime: bool = False  # may change while configured; everything else is read_only
    choices: Tuple[Any, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None


def _p(name, kind, default, description, **kw) -> ParamSpec:
    assert kind in KINDS, kind
    return ParamSpec(name, kind, default, description, **kw)


_HAND_WRITTEN: Tuple[ParamSpec, ...] = (
    _p("autostart", "bool", True, "Configure and activate on start-up, so a plain run is active."),
    _p("control_rate_hz", "double", 50.0, "Control tick rate; must match the checkpoint's data "
       "rate (one action per tick).", low=0.1, high=1000.0),
    _p("policy.backend", "string", "torch", "Backend serving the controller; changing it while "
       "running loads and warms the new one, swaps between ticks and releases the old one.",
       runtime=True, choices=BACKENDS),
    _p("policy.shadow_backend", "string", "", "Second backend run on the same observations and "
       "noise; divergence is reported on /diagnostics, never published. Empty = off.",
       runtime=True, choices=("",) + BACKENDS),
    _p("policy.fallback_backend", "string", "", "Backend configure falls back to when "
       "policy.backend cannot open its device (e.g. no Tenstorrent card). Empty = fail "
       "configure instead.", choices=("",) + BACKENDS),
    _p("policy.fault_injection", "string", "", "TEST ONLY: inject backend faults into "
       "policy.backend, e.g. 'mode=device_lost,first_call=3,active_file=/tmp/f' (see "
       "fault_injection.py). Keep empty on a robot.", runtime=True),
    _p("policy.model_type", "string", "auto", "Expected model type; auto takes it from the "
       "checkpoint (and picks pi0 for the embedded demo).", choices=("auto", "pi0", "pi05")),
    _p("policy.checkpoint_dir", "string", "", "lerobot-layout checkpoint directory. Empty = the "
       "embedded tiny random-weight demo model (not a trained policy)."),
    _p("policy.tokenizer_path", "string", "", "SentencePiece file; empty = tokenizer.model in the "
       "checkpoint directory."),
    _p("policy.torch_device", "string", "cpu", "Torch device (cpu, cuda, cuda:N).", runtime=True),
    _p("policy.torch_dtype", "string", "float32", "Torch compute dtype.", runtime=True,
       choices=TORCH_DTYPES),
    _p("policy.torch_threads", "integer", 0, "torch.set_num_threads; 0 = CPUs - 1 "
       "(one CPU stays for the control loop; ros/process_tuning.py).",
       low=0, high=1024),
    _p("policy.num_steps", "integer", 0, "Euler steps; 0 = the checkpoint's num_inference_steps.",
       low=0, high=1000),
    _p("policy.noise_seed", "integer", -1, "-1 = fresh noise per inference; >= 0 = seeded, for "
       "reproducible A/B runs.", low=-1, high=INT_MAX),
    _p("policy.warmup_iterations", "integer", 2, "Inferences run in configure to keep first-call "
       "costs out of control and seed the latency estimate.", low=0, high=100),
    _p("cameras.names", "string_array", ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"],
       "Model image slots, one per camera (the checkpoint's camera names)."),
    _p("cameras.topics", "string_array", ["cam_high/image_raw", "cam_left_wrist/image_raw",
                                          "cam_right_wrist/image_raw"],
       "Image topic per camera, same order as cameras.names."),
    _p("cameras.required", "bool_array", [True, False, False], "Per camera: true blocks inference "
       "while missing or stale; false sends a masked image instead."),
    _p("cameras.transports", "string_array", ["raw"], "raw (sensor_msgs/Image) or compressed "
       "(sensor_msgs/CompressedImage); one value for all cameras or one per camera."),
    _p("cameras.primary", "string", "", "Camera whose stamp is the observation time; empty = "
       "first of cameras.names."),
    _p("cameras.expected_sizes", "integer_array", None, "Optional [w, h] per camera; a mismatch "
       "warns once (usually a wrong remap). Empty = no check."),
    _p("qos.image_reliability", "string", "auto", "Image subscription reliability. auto: per "
       "camera, what its publishers offer (reliable when all are reliable, else best_effort; "
       "re-checked as publishers come and go), like rosbag2. best_effort loses large raw "
       "frames under load; reliable does not match best-effort publishers.",
       choices=("auto", "best_effort", "reliable")),
    _p("qos.image_depth", "integer", 1, "Image queue depth; 1 keeps only the newest frame.",
       low=1, high=100),
    _p("qos.instruction_durability", "string", "transient_local", "~/instruction durability; a "
       "volatile publisher does not match transient_local.",
       choices=("transient_local", "volatile")),
    _p("joint_states.topics", "string_array", ["joint_states"], "sensor_msgs/JointState topics, "
       "merged by joint name."),
    _p("joint_states.max_abs_position", "double", 1000.0, "A used joint position beyond +-this "
       "(or not finite) is refused at input with a counted reason; the message's other joints "
       "still update. Raise it for continuous joints that wind up.", low=1e-6, high=1e12),
    _p("state.joint_names", "string_array", None, "Required: joints forming the model's state "
       "vector, in order; looked up by name, never zero-filled."),
    _p("action.joint_names", "string_array", None, "Required: controller joints for model action "
       "dims, in order."),
    _p("action.dims", "integer_array", None, "Model action dims per action joint; empty = the "
       "first len(action.joint_names)."),
    _p("action.space", "string", "absolute_position", "What the model outputs.",
       choices=ACTION_SPACES),
    _p("instruction.default", "string", "", "Instruction used until one arrives on "
       "~/instruction; empty = wait for one.", runtime=True),
    _p("schedule.mode", "string", "async", "async: infer ahead with latency compensation; sync: "
       "play execute_steps, hold, infer.", choices=("async", "sync")),
    _p("schedule.execute_steps", "integer", 25, "Actions of a chunk played before switching "
       "(1 = replan every tick).", low=1, high=10000),
    _p("schedule.margin_steps", "integer", 2, "Extra steps on top of the p95 latency when "
       "deciding to start the next inference.", low=0, high=10000),
    _p("schedule.max_delay_steps", "integer", 20, "Latency (in steps) beyond which async falls "
       "back to sync.", low=1, high=10000),
    _p("schedule.min_latency_s", "double", 0.0, "Use each chunk no earlier than this long "
       "after its request (0 = as soon as it arrives). Above the real latency it makes the "
       "timing deterministic: offline replay with the same value predicts the node.",
       low=0.0, high=60.0),
    _p("merge.mode", "string", "replace", "How a new chunk meets the queue: replace, blend "
       "(cross-fade over merge.blend_steps) or rtc (real-time chunking: the new chunk is guided "
       "to continue the committed actions; see docs/control.md).",
       choices=("replace", "blend", "rtc")),
    _p("merge.blend_steps", "integer", 5, "Cross-fade length for merge.mode blend.",
       low=1, high=10000),
    _p("rtc.method", "string", "forward", "RTC guidance: forward (Jacobian taken as identity, "
       "no backward pass; both backends) or vjp (the paper's vector-Jacobian product; torch "
       "only).", choices=("forward", "vjp")),
    _p("rtc.schedule", "string", "exp", "RTC prefix weights between the frozen part and the "
       "execution horizon: exp or linear.", choices=("exp", "linear")),
    _p("rtc.max_guidance", "double", 5.0, "RTC max guidance weight beta (0 = plain sampler; "
       "the paper's code uses 5, lerobot 10).", low=0.0, high=1000.0),
    _p("output.topic", "string", JTC_TOPIC, "trajectory_msgs/JointTrajectory command topic."),
    _p("output.stamp_mode", "string", "zero", "zero: controller starts at once; observation: "
       "stamp = observation time (needs one clock, can step the setpoint).",
       choices=("zero", "observation")),
    _p("output.send_velocities", "bool", True, "Send finite-difference velocities (last point 0) "
       "so the controller interpolates with splines."),
    _p("sync.max_image_age_s", "double", 0.25, "Skip inference when the primary image is older "
       "than this (header stamp vs node clock).", low=1e-3, high=3600.0),
    _p("sync.max_state_age_s", "double", 0.1, "Largest gap between the joint state and the "
       "observation time.", low=1e-3, high=3600.0),
    _p("sync.max_camera_skew_s", "double", 0.05, "Largest stamp difference between a camera and "
       "the primary camera.", low=1e-4, high=3600.0),
    _p("sync.startup_timeout_s", "double", 10.0, "After this long without a full observation the "
       "missing inputs are reported as an ERROR.", low=0.1, high=3600.0),
    _p("limits.position_lower", "double_array", None, "Required: lower position limit per "
       "action joint."),
    _p("limits.position_upper", "double_array", None, "Required: upper position limit per "
       "action joint."),
    _p("limits.max_velocity", "double_array", None, "Required: velocity limit per action joint "
       "(units/s); each step moves at most max_velocity / control_rate_hz."),
    _p("limits.max_start_jump", "double", 0.3, "Largest allowed distance between the current "
       "command and a new chunk's first action.", low=1e-6, high=1e6),
    _p("safety.dry_run", "bool", True, "Compute and publish ~/action_chunk but no controller "
       "command; ~/enable (SetBool) arms the output.", runtime=True),
    _p("safety.max_consecutive_failures", "integer", 3, "Failed inferences in a row before the "
       "node holds.", low=1, high=1000),
    _p("safety.watchdog_timeout_s", "double", 1.0, "Steady-clock time without a new input or "
       "chunk after which the node holds (works while /clock is paused).", low=0.01, high=3600.0),
    _p("diagnostics.period_s", "double", 1.0, "Period of /diagnostics.", low=0.01, high=3600.0),
    _p("robots", "string_array", None, "Robot names served by one node, pi0_ttnn_multi_node "
       "(docs/multi_robot.md); empty = one robot with today's topics (pi0_ttnn_node). Each name "
       "gets its own namespace, control core and `<name>.<param>` overrides of the shared "
       "values."),
    _p("batch.window_s", "double", 0.005, "Multi-robot: how long the inference worker waits "
       "after the first due request for other robots' requests to run them as one batched call "
       "(default a quarter of a 50 Hz period; 0 = take what is pending).", low=0.0, high=1.0),
    _p("batch.align_steps", "integer", 5, "Multi-robot: when one robot's inference starts, "
       "another robot whose next request is due within this many ticks asks now too, so their "
       "requests meet in one call and stay in phase (0 = off).", low=0, high=10000),
)


def _ttnn_rows() -> Tuple[ParamSpec, ...]:
    """`policy.ttnn_preset` and one row per TTNN knob; all runtime (a change = backend switch)."""
    kinds = {"bool": "bool", "int": "integer", "str": "string"}
    return tuple(ParamSpec(r.name, kinds[r.kind], r.default, r.help, runtime=True,
                           choices=tuple(r.choices), low=r.low, high=r.high)
                 for r in knob_params())


def _with_ttnn_rows(rows: Tuple[ParamSpec, ...]) -> Tuple[ParamSpec, ...]:
    at = [s.name for s in rows].index("policy.torch_threads") + 1
    return rows[:at] + _ttnn_rows() + rows[at:]


PARAMETERS: Tuple[ParamSpec, ...] = _with_ttnn_rows(_HAND_WRITTEN)
SPECS: Dict[str, ParamSpec] = {s.name: s for s in PARAMETERS}
TTNN_PARAMS = tuple(s.name for s in _ttnn_rows())
# a change of any of these means a different primary backend (switch while running)
BACKEND_PARAMS = ("policy.backend", "policy.torch_device", "policy.torch_dtype",
                  "policy.fault_injection") + TTNN_PARAMS


def default_values() -> Dict[str, Any]:
    """Every parameter at its default (typed empty arrays as [])."""
    return {s.name: ([] if s.default is None else
                     list(s.default) if isinstance(s.default, list) else s.default)
            for s in PARAMETERS}


def shipped_params_file() -> Path:
    """config/pi0_ttnn_node.yaml: in the source checkout, else the installed share/ copy
    (pip: <prefix>/share/pi0_ttnn_node/config; colcon: found through the ament index)."""
    checkout = Path(__file__).resolve().parents[2] / "config" / "pi0_ttnn_node.yaml"
    prefixed = Path(sys.prefix) / "share" / NODE_NAME / "config" / "pi0_ttnn_node.yaml"
    for candidate in (checkout, prefixed):
        if candidate.is_file():
            return candidate
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(NODE_NAME)) / "config" / "pi0_ttnn_node.yaml"
    except (ImportError, LookupError, ValueError, OSError) as err:
        raise ConfigError(f"cannot find the shipped params file ({checkout} is missing and the "
                          f"package share directory is unknown: {err}); pass --params-file") \
            from err
    if not installed.is_file():
        raise ConfigError(f"the shipped params file {installed} is missing; pass --params-file")
    return installed


def backend_available(name: str) -> Optional[str]:
    """Return why `name` cannot be used here, or None; cheap (no import of the backend)."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; expected one of {list(BACKENDS)}"
    if name == "ttnn":
        for module in ("ttnn", "pi0_ttnn_node.ttnn_backend.backend"):
            if importlib.util.find_spec(module) is None:
                return f"backend 'ttnn' needs module {module}, which is not installed"
    return None


def check_value(spec: ParamSpec, value: Any) -> Optional[str]:
    """Return why `value` is invalid for `spec`, or None. Pure; no side effects."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if spec.kind in ("double", "double_array"):
        bad = [v for v in values if not math.isfinite(float(v))]
        if bad:
            return f"{spec.name} must be finite, got {value!r}"
    if spec.low is not None and not all(spec.low <= v <= spec.high for v in values):
        return f"{spec.name} must lie in [{spec.low}, {spec.high}], got {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name} must be one of {list(spec.choices)}, got {value!r}"
    if spec.name in ("policy.backend", "policy.shadow_backend", "policy.fallback_backend") \
            and value:
        return backend_available(value)
    if spec.name == "instruction.default":  # the same rules as ~/instruction
        reason = instruction_refusal(value)
        if reason:
            return f"instruction.default refused: {reason}"
    if spec.name == "policy.fault_injection" and value:
        try:
            FaultPlan.parse(value)
        except ConfigError as err:
            return str(err)
    return None


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_params_file(path: "str | Path", node_name: str = NODE_NAME) -> Dict[str, Any]:
    """`<node>: ros__parameters:` (or `/**:`) of a node params YAML, flattened to dotted names."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read params file {path}: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"params file {path} is not a YAML mapping")
    for key in (node_name, "/" + node_name, "/**"):
        section = doc.get(key)
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            return _flatten(section["ros__parameters"])
    raise ConfigError(f"params file {path} has no '{node_name}: ros__parameters:' section; "
                      f"top-level keys: {list(doc)}")


def is_robot_param(name: str, robots: "list | Tuple[str, ...]") -> bool:
    """True for `<robot>.<param>`: a per-robot override (control/robots.py reads them)."""
    head, _, rest = name.partition(".")
    return head in robots and rest in SPECS


def node_values(params_files: "Tuple[str, ...] | list", node_name: str = NODE_NAME,
                overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """What the node would read: defaults, then each params file in order, then overrides
    (None = not given). Unknown names in a file are refused, like the node refuses them."""
    values = default_values()
    for path in params_files:
        loaded = load_params_file(path, node_name)
        robots = loaded.get("robots", values["robots"]) or []
        unknown = sorted(k for k in set(loaded) - set(SPECS) - {"use_sim_time"}
                         if not is_robot_param(k, robots))
        if unknown:
            raise ConfigError(f"params file {path} sets unknown parameters {unknown}")
        values.update({k: v for k, v in loaded.items() if k in SPECS})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return values
