"""Every node parameter, declared once with a descriptor, validated, and frozen into NodeConfig.

`PARAMETERS` is the single table: name, default, description, whether it may change while the node
runs, and its range or choices. config/pi0_ttnn_node.yaml lists exactly these names (a test checks).
Empty-list defaults are declared typed without a value (ROS YAML cannot type `[]`) and read as [].
Counterpart: ros/node.py (applies runtime changes), the core configs it builds.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from pi0_ttnn_node.backends import BACKENDS, BackendOptions
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.fault_injection import FaultPlan

T = Parameter.Type
IMAGE_TRANSPORTS = ("raw", "compressed")
ACTION_SPACES = ("absolute_position", "delta_position", "velocity")
TORCH_DTYPES = ("float32", "bfloat16", "float16")
JTC_TOPIC = "/joint_trajectory_controller/joint_trajectory"
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: `default` None means a typed array whose default is empty."""

    name: str
    ptype: Parameter.Type
    default: Any
    description: str
    runtime: bool = False  # may change while configured; everything else is read_only
    choices: Tuple[str, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None

    def descriptor(self) -> ParameterDescriptor:
        text = self.description + (f" One of {list(self.choices)}." if self.choices else "")
        desc = ParameterDescriptor(name=self.name, type=self.ptype.value, description=text,
                                   read_only=not self.runtime)
        if self.low is not None and self.ptype == T.INTEGER:
            desc.integer_range = [IntegerRange(from_value=int(self.low), to_value=int(self.high),
                                               step=0)]
        elif self.low is not None and self.ptype == T.DOUBLE:
            desc.floating_point_range = [FloatingPointRange(from_value=float(self.low),
                                                            to_value=float(self.high), step=0.0)]
        return desc


def _p(name, ptype, default, description, **kw) -> ParamSpec:
    return ParamSpec(name, ptype, default, description, **kw)


PARAMETERS: Tuple[ParamSpec, ...] = (
    _p("autostart", T.BOOL, True, "Configure and activate on start-up, so a plain run is active."),
    _p("control_rate_hz", T.DOUBLE, 50.0, "Control tick rate; must match the checkpoint's data "
       "rate (one action per tick).", low=0.1, high=1000.0),
    _p("policy.backend", T.STRING, "torch", "Backend serving the controller; changing it while "
       "running loads and warms the new one, swaps between ticks and releases the old one.",
       runtime=True, choices=BACKENDS),
    _p("policy.shadow_backend", T.STRING, "", "Second backend run on the same observations and "
       "noise; divergence is reported on /diagnostics, never published. Empty = off.",
       runtime=True, choices=("",) + BACKENDS),
    _p("policy.fallback_backend", T.STRING, "", "Backend configure falls back to when "
       "policy.backend cannot open its device (e.g. no Tenstorrent card). Empty = fail "
       "configure instead.", choices=("",) + BACKENDS),
    _p("policy.fault_injection", T.STRING, "", "TEST ONLY: inject backend faults into "
       "policy.backend, e.g. 'mode=device_lost,first_call=3,active_file=/tmp/f' (see "
       "fault_injection.py). Keep empty on a robot.", runtime=True),
    _p("policy.model_type", T.STRING, "auto", "Expected model type; auto takes it from the "
       "checkpoint (and picks pi0 for the embedded demo).", choices=("auto", "pi0", "pi05")),
    _p("policy.checkpoint_dir", T.STRING, "", "lerobot-layout checkpoint directory. Empty = the "
       "embedded tiny random-weight demo model (not a trained policy)."),
    _p("policy.tokenizer_path", T.STRING, "", "SentencePiece file; empty = tokenizer.model in the "
       "checkpoint directory."),
    _p("policy.torch_device", T.STRING, "cpu", "Torch device (cpu, cuda, cuda:N).", runtime=True),
    _p("policy.torch_dtype", T.STRING, "float32", "Torch compute dtype.", runtime=True,
       choices=TORCH_DTYPES),
    _p("policy.torch_threads", T.INTEGER, 0, "torch.set_num_threads; 0 = torch default.",
       low=0, high=1024),
    _p("policy.ttnn_device_id", T.INTEGER, 0, "Tenstorrent device id.", runtime=True,
       low=0, high=1023),
    _p("policy.ttnn_emulate", T.BOOL, False, "Run the TTNN backend on its CPU emulation (tests, "
       "machines without a card).", runtime=True),
    _p("policy.ttnn_use_trace", T.BOOL, False, "Capture the denoise loop as a TTNN trace.",
       runtime=True),
    _p("policy.num_steps", T.INTEGER, 0, "Euler steps; 0 = the checkpoint's num_inference_steps.",
       low=0, high=1000),
    _p("policy.noise_seed", T.INTEGER, -1, "-1 = fresh noise per inference; >= 0 = seeded, for "
       "reproducible A/B runs.", low=-1, high=INT_MAX),
    _p("policy.warmup_iterations", T.INTEGER, 2, "Inferences run in configure to keep first-call "
       "costs out of control and seed the latency estimate.", low=0, high=100),
    _p("cameras.names", T.STRING_ARRAY, ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"],
       "Model image slots, one per camera (the checkpoint's camera names)."),
    _p("cameras.topics", T.STRING_ARRAY, ["cam_high/image_raw", "cam_left_wrist/image_raw",
                                          "cam_right_wrist/image_raw"],
       "Image topic per camera, same order as cameras.names."),
    _p("cameras.required", T.BOOL_ARRAY, [True, False, False], "Per camera: true blocks inference "
       "while missing or stale; false sends a masked image instead."),
    _p("cameras.transports", T.STRING_ARRAY, ["raw"], "raw (sensor_msgs/Image) or compressed "
       "(sensor_msgs/CompressedImage); one value for all cameras or one per camera."),
    _p("cameras.primary", T.STRING, "", "Camera whose stamp is the observation time; empty = "
       "first of cameras.names."),
    _p("cameras.expected_sizes", T.INTEGER_ARRAY, None, "Optional [w, h] per camera; a mismatch "
       "warns once (usually a wrong remap). Empty = no check."),
    _p("qos.image_reliability", T.STRING, "best_effort", "Image subscription reliability; "
       "best_effort also matches reliable publishers.", choices=("best_effort", "reliable")),
    _p("qos.image_depth", T.INTEGER, 1, "Image queue depth; 1 keeps only the newest frame.",
       low=1, high=100),
    _p("qos.instruction_durability", T.STRING, "transient_local", "~/instruction durability; a "
       "volatile publisher does not match transient_local.",
       choices=("transient_local", "volatile")),
    _p("joint_states.topics", T.STRING_ARRAY, ["joint_states"], "sensor_msgs/JointState topics, "
       "merged by joint name."),
    _p("state.joint_names", T.STRING_ARRAY, None, "Required: joints forming the model's state "
       "vector, in order; looked up by name, never zero-filled."),
    _p("action.joint_names", T.STRING_ARRAY, None, "Required: controller joints for model action "
       "dims, in order."),
    _p("action.dims", T.INTEGER_ARRAY, None, "Model action dims per action joint; empty = the "
       "first len(action.joint_names)."),
    _p("action.space", T.STRING, "absolute_position", "What the model outputs.",
       choices=ACTION_SPACES),
    _p("instruction.default", T.STRING, "", "Instruction used until one arrives on "
       "~/instruction; empty = wait for one.", runtime=True),
    _p("schedule.mode", T.STRING, "async", "async: infer ahead with latency compensation; sync: "
       "play execute_steps, hold, infer.", choices=("async", "sync")),
    _p("schedule.execute_steps", T.INTEGER, 25, "Actions of a chunk played before switching "
       "(1 = replan every tick).", low=1, high=10000),
    _p("schedule.margin_steps", T.INTEGER, 2, "Extra steps on top of the p95 latency when "
       "deciding to start the next inference.", low=0, high=10000),
    _p("schedule.max_delay_steps", T.INTEGER, 20, "Latency (in steps) beyond which async falls "
       "back to sync.", low=1, high=10000),
    _p("merge.mode", T.STRING, "replace", "How a new chunk meets the queue.",
       choices=("replace", "blend")),
    _p("merge.blend_steps", T.INTEGER, 5, "Cross-fade length for merge.mode blend.",
       low=1, high=10000),
    _p("output.topic", T.STRING, JTC_TOPIC, "trajectory_msgs/JointTrajectory command topic."),
    _p("output.stamp_mode", T.STRING, "zero", "zero: controller starts at once; observation: "
       "stamp = observation time (needs one clock, can step the setpoint).",
       choices=("zero", "observation")),
    _p("output.send_velocities", T.BOOL, True, "Send finite-difference velocities (last point 0) "
       "so the controller interpolates with splines."),
    _p("sync.max_image_age_s", T.DOUBLE, 0.25, "Skip inference when the primary image is older "
       "than this (header stamp vs node clock).", low=1e-3, high=3600.0),
    _p("sync.max_state_age_s", T.DOUBLE, 0.1, "Largest gap between the joint state and the "
       "observation time.", low=1e-3, high=3600.0),
    _p("sync.max_camera_skew_s", T.DOUBLE, 0.05, "Largest stamp difference between a camera and "
       "the primary camera.", low=1e-4, high=3600.0),
    _p("sync.startup_timeout_s", T.DOUBLE, 10.0, "After this long without a full observation the "
       "missing inputs are reported as an ERROR.", low=0.1, high=3600.0),
    _p("limits.position_lower", T.DOUBLE_ARRAY, None, "Required: lower position limit per "
       "action joint."),
    _p("limits.position_upper", T.DOUBLE_ARRAY, None, "Required: upper position limit per "
       "action joint."),
    _p("limits.max_velocity", T.DOUBLE_ARRAY, None, "Required: velocity limit per action joint "
       "(units/s); each step moves at most max_velocity / control_rate_hz."),
    _p("limits.max_start_jump", T.DOUBLE, 0.3, "Largest allowed distance between the current "
       "command and a new chunk's first action.", low=1e-6, high=1e6),
    _p("safety.dry_run", T.BOOL, True, "Compute and publish ~/action_chunk but no controller "
       "command; ~/enable (SetBool) arms the output.", runtime=True),
    _p("safety.max_consecutive_failures", T.INTEGER, 3, "Failed inferences in a row before the "
       "node holds.", low=1, high=1000),
    _p("safety.watchdog_timeout_s", T.DOUBLE, 1.0, "Steady-clock time without a new input or "
       "chunk after which the node holds (works while /clock is paused).", low=0.01, high=3600.0),
    _p("diagnostics.period_s", T.DOUBLE, 1.0, "Period of /diagnostics.", low=0.01, high=3600.0),
)
SPECS: Dict[str, ParamSpec] = {s.name: s for s in PARAMETERS}
BACKEND_PARAMS = ("policy.backend", "policy.torch_device", "policy.torch_dtype",
                  "policy.ttnn_device_id", "policy.ttnn_emulate", "policy.ttnn_use_trace",
                  "policy.fault_injection")


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
    if spec.ptype in (T.DOUBLE, T.DOUBLE_ARRAY):
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
    if spec.name == "policy.fault_injection" and value:
        try:
            FaultPlan.parse(value)
        except ConfigError as err:
            return str(err)
    return None


# --------------------------------------------------------------------------------------------
# NodeConfig
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendSpec:
    """What identifies one loaded backend; a change of any field means a new backend."""

    backend: str = "torch"
    torch_device: str = "cpu"
    torch_dtype: str = "float32"
    torch_threads: int = 0
    ttnn_device_id: int = 0
    ttnn_emulate: bool = False
    ttnn_use_trace: bool = False
    fault_injection: str = ""  # tests only (policy.fault_injection)

    def options(self) -> BackendOptions:
        extra = {"fault_injection": self.fault_injection} if self.fault_injection else {}
        return BackendOptions(torch_device=self.torch_device, torch_dtype=self.torch_dtype,
                              torch_threads=self.torch_threads,
                              ttnn_device_id=self.ttnn_device_id,
                              ttnn_emulate=self.ttnn_emulate, ttnn_use_trace=self.ttnn_use_trace,
                              extra=extra)

    def label(self) -> str:
        fault = " (FAULT INJECTION)" if self.fault_injection else ""
        if self.backend == "torch":
            return f"torch/{self.torch_device}/{self.torch_dtype}{fault}"
        return f"ttnn/{self.ttnn_device_id}" + ("/emulated" if self.ttnn_emulate else "") + fault


@dataclass(frozen=True)
class CameraSpec:
    name: str
    topic: str
    required: bool
    transport: str
    expected_size: Optional[Tuple[int, int]]  # (w, h)


@dataclass(frozen=True)
class NodeConfig:
    """Validated parameters; built once per configure. Runtime-changeable ones are copied later."""

    values: Mapping[str, Any]
    backend: BackendSpec
    shadow: Optional[BackendSpec]
    cameras: Tuple[CameraSpec, ...]
    primary_camera: str
    state_joint_names: Tuple[str, ...]
    action_joint_names: Tuple[str, ...]
    action_dims: Tuple[int, ...]
    position_lower: Tuple[float, ...]
    position_upper: Tuple[float, ...]
    max_velocity: Tuple[float, ...]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def dt(self) -> float:
        return 1.0 / self.values["control_rate_hz"]


def backend_spec(values: Mapping[str, Any], backend: Optional[str] = None) -> BackendSpec:
    """The primary backend's spec, or (named `backend`) a shadow/fallback one without faults."""
    return BackendSpec(backend=backend or values["policy.backend"],
                       fault_injection="" if backend else values["policy.fault_injection"],
                       torch_device=values["policy.torch_device"],
                       torch_dtype=values["policy.torch_dtype"],
                       torch_threads=values["policy.torch_threads"],
                       ttnn_device_id=values["policy.ttnn_device_id"],
                       ttnn_emulate=values["policy.ttnn_emulate"],
                       ttnn_use_trace=values["policy.ttnn_use_trace"])


def _require_len(name: str, seq: Sequence[Any], n: int, what: str) -> None:
    if len(seq) != n:
        raise ConfigError(f"{name} has {len(seq)} entries, expected {n} ({what})")


def _cameras(v: Mapping[str, Any]) -> Tuple[CameraSpec, ...]:
    names, topics, required = v["cameras.names"], v["cameras.topics"], v["cameras.required"]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"cameras.names must be non-empty and unique, got {names}")
    _require_len("cameras.topics", topics, len(names), "one per cameras.names")
    _require_len("cameras.required", required, len(names), "one per cameras.names")
    transports = list(v["cameras.transports"])
    if len(transports) == 1:
        transports *= len(names)
    _require_len("cameras.transports", transports, len(names), "one, or one per camera")
    for t in transports:
        if t not in IMAGE_TRANSPORTS:
            raise ConfigError(f"cameras.transports has {t!r}; expected {list(IMAGE_TRANSPORTS)}")
    sizes = list(v["cameras.expected_sizes"])
    if sizes:
        _require_len("cameras.expected_sizes", sizes, 2 * len(names), "[w, h] per camera")
        if min(sizes) <= 0:
            raise ConfigError(f"cameras.expected_sizes must be positive, got {sizes}")
    return tuple(CameraSpec(n, t, bool(r), tr,
                            (sizes[2 * i], sizes[2 * i + 1]) if sizes else None)
                 for i, (n, t, r, tr) in enumerate(zip(names, topics, required, transports)))


def build_node_config(values: Mapping[str, Any]) -> NodeConfig:
    """Check every value and how they relate; raise ConfigError naming the first fault."""
    unknown = sorted(set(values) - set(SPECS))
    missing = sorted(set(SPECS) - set(values))
    if unknown or missing:
        raise ConfigError(f"parameter set mismatch: unknown {unknown}, missing {missing}")
    for name, value in values.items():
        reason = check_value(SPECS[name], value)
        if reason:
            raise ConfigError(reason)
    v = dict(values)
    cameras = _cameras(v)
    primary = v["cameras.primary"] or cameras[0].name
    if primary not in [c.name for c in cameras]:
        raise ConfigError(f"cameras.primary {primary!r} is not in cameras.names")
    if not next(c for c in cameras if c.name == primary).required:
        raise ConfigError(f"cameras.primary {primary!r} must be required: its stamp is the "
                          "observation time")
    state_names, action_names = tuple(v["state.joint_names"]), tuple(v["action.joint_names"])
    for name, names in (("state.joint_names", state_names),
                        ("action.joint_names", action_names)):
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"{name} must list unique joint names, got {list(names)}; set it "
                              "in the parameter file")
    n = len(action_names)
    dims = tuple(v["action.dims"]) or tuple(range(n))
    _require_len("action.dims", dims, n, "one per action.joint_names")
    if min(dims) < 0 or len(set(dims)) != n:
        raise ConfigError(f"action.dims must be unique non-negative indices, got {list(dims)}")
    limits = {}
    for name in ("limits.position_lower", "limits.position_upper", "limits.max_velocity"):
        _require_len(name, v[name], n, "one per action.joint_names")
        limits[name] = tuple(float(x) for x in v[name])
    if any(lo >= hi for lo, hi in zip(limits["limits.position_lower"],
                                      limits["limits.position_upper"])):
        raise ConfigError("limits.position_lower must be below limits.position_upper for every "
                          f"joint, got {limits['limits.position_lower']} / "
                          f"{limits['limits.position_upper']}")
    if min(limits["limits.max_velocity"]) <= 0:
        raise ConfigError(f"limits.max_velocity must be positive, got "
                          f"{limits['limits.max_velocity']}")
    shadow_name = v["policy.shadow_backend"]
    return NodeConfig(
        values=v, backend=backend_spec(v),
        shadow=backend_spec(v, shadow_name) if shadow_name else None,
        cameras=cameras, primary_camera=primary, state_joint_names=state_names,
        action_joint_names=action_names, action_dims=dims,
        position_lower=limits["limits.position_lower"],
        position_upper=limits["limits.position_upper"],
        max_velocity=limits["limits.max_velocity"])


# --------------------------------------------------------------------------------------------
# rclpy glue
# --------------------------------------------------------------------------------------------


def declare_parameters(node: Any) -> None:
    """Declare every parameter on `node` with its descriptor (overrides come from --params-file)."""
    for spec in PARAMETERS:
        default = spec.ptype if spec.default is None else spec.default
        node.declare_parameter(spec.name, default, spec.descriptor())


def read_values(node: Any) -> Dict[str, Any]:
    """Current values of every parameter; typed-but-unset arrays read as []."""
    out: Dict[str, Any] = {}
    for spec in PARAMETERS:
        try:
            value = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            value = []
        out[spec.name] = list(value) if isinstance(value, (list, tuple)) or \
            hasattr(value, "tolist") else value
    return out


def make_validator(current: Callable[[], Mapping[str, Any]]
                   ) -> Callable[[List[Parameter]], SetParametersResult]:
    """Build the on-set callback: per-value checks plus shadow != backend. No side effects."""

    def validate(params: List[Parameter]) -> SetParametersResult:
        merged = dict(current())
        for param in params:
            spec = SPECS.get(param.name)
            if spec is None:
                continue  # rclpy's own parameters (use_sim_time, ...)
            reason = check_value(spec, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            merged[param.name] = param.value
        shadow = merged.get("policy.shadow_backend")
        if shadow and shadow == merged.get("policy.backend") and \
                merged.get("policy.backend") != "torch":
            return SetParametersResult(successful=False, reason=(
                f"policy.shadow_backend {shadow!r} equals policy.backend; a second {shadow} "
                "backend would compete for the same device"))
        return SetParametersResult(successful=True)

    return validate
