"""NodeConfig: the parameter values checked once and turned into the typed configs the core uses.

Built from `control/parameters.py` values (the node reads them from rclpy, replay and the soak
from the same table plus the same params YAML), so every driver of the control core sees the same
schedule, limits, sync rules, RTC settings and backend spec. Counterparts: control/parameters.py,
control/pipeline.py (consumes it), ros/params.py (rclpy glue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

from pi0_ttnn_node.backends import BackendSpec, TorchSpec
from pi0_ttnn_node.control.action_queue import ScheduleConfig
from pi0_ttnn_node.control.parameters import IMAGE_TRANSPORTS, SPECS, check_value
from pi0_ttnn_node.control.safety import Limits
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.observation_sync import SyncConfig
from pi0_ttnn_node.rtc import RtcConfig
from pi0_ttnn_node.ttnn_backend.ttnn_config import runtime_config_from_params


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
    schedule: ScheduleConfig
    sync: SyncConfig
    rtc: RtcConfig

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def dt(self) -> float:
        return 1.0 / self.values["control_rate_hz"]

    @property
    def limits(self) -> Limits:
        return Limits.create(self.position_lower, self.position_upper, self.max_velocity,
                             self.values["limits.max_start_jump"])

    @property
    def action_state_index(self) -> Tuple[int, ...]:
        """Index into the state vector of each action joint (start of each trajectory)."""
        return tuple(self.state_joint_names.index(j) for j in self.action_joint_names)


def backend_spec(values: Mapping[str, Any], backend: Optional[str] = None) -> BackendSpec:
    """The primary backend's spec, or (named `backend`) a shadow / fallback one."""
    return BackendSpec(backend=backend or values["policy.backend"],
                       torch=TorchSpec(device=values["policy.torch_device"],
                                       dtype=values["policy.torch_dtype"],
                                       threads=int(values["policy.torch_threads"])),
                       ttnn=runtime_config_from_params(values))


def schedule_config(v: Mapping[str, Any]) -> ScheduleConfig:
    return ScheduleConfig(
        mode=v["schedule.mode"], execute_steps=int(v["schedule.execute_steps"]),
        margin_steps=int(v["schedule.margin_steps"]),
        max_delay_steps=int(v["schedule.max_delay_steps"]), merge=v["merge.mode"],
        blend_steps=int(v["merge.blend_steps"]), control_rate_hz=float(v["control_rate_hz"]),
        min_latency_s=float(v["schedule.min_latency_s"]))


def sync_config(v: Mapping[str, Any]) -> SyncConfig:
    return SyncConfig(max_image_age_s=v["sync.max_image_age_s"],
                      max_state_age_s=v["sync.max_state_age_s"],
                      max_camera_skew_s=v["sync.max_camera_skew_s"],
                      default_instruction=v["instruction.default"])


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
    dims = tuple(int(d) for d in v["action.dims"]) or tuple(range(n))
    _require_len("action.dims", dims, n, "one per action.joint_names")
    if min(dims) < 0 or len(set(dims)) != n:
        raise ConfigError(f"action.dims must be unique non-negative indices, got {list(dims)}")
    missing_joints = [j for j in action_names if j not in state_names]
    if missing_joints:
        raise ConfigError(f"action joints {missing_joints} are not in state.joint_names; the "
                          "node needs their measured positions as the start of each trajectory")
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
        max_velocity=limits["limits.max_velocity"], schedule=schedule_config(v),
        sync=sync_config(v),
        rtc=RtcConfig(method=v["rtc.method"], schedule=v["rtc.schedule"],
                        max_guidance=float(v["rtc.max_guidance"])))
