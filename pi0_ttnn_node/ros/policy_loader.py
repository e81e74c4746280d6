"""Checkpoint resolution and policy construction for the node (policies built on the worker).

The checkpoint is read once per configure and shared by every backend built from it (switch and
shadow), so a backend change only builds and warms the model. An empty `policy.checkpoint_dir`
means the embedded tiny random-weight model: a demo and test fixture, not a trained policy.
`build_scheduler` turns the node's schedule and limit parameters into the core's action queue.
Counterparts: policy.py (Pi0Policy), embedded.py, action_queue.py, ros/params.py (NodeConfig).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import numpy as np

from pi0_ttnn_node.action_queue import ActionScheduler, LatencyTracker, ScheduleConfig
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig
from pi0_ttnn_node.preprocessing import Observation
from pi0_ttnn_node.ros.params import BackendSpec, NodeConfig
from pi0_ttnn_node.safety import Limits, TrajectoryLimiter

LOG = logging.getLogger(__name__)
WARMUP_INSTRUCTION = "warm up"


class PolicyLoader:
    """Resolve and load the checkpoint, check it against the node's joints and cameras."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.embedded = not cfg["policy.checkpoint_dir"]
        if self.embedded:
            model_type = cfg["policy.model_type"]
            self.path = ensure_embedded_checkpoint("pi0" if model_type == "auto" else model_type)
        else:
            self.path = Path(cfg["policy.checkpoint_dir"]).expanduser()
        self.checkpoint = load_checkpoint(self.path, strict=True)
        self.config: PI0Config = self.checkpoint.config
        self.action_state_index = check_compatible(cfg, self.config)

    def describe_source(self) -> str:
        if self.embedded:
            return ("policy.checkpoint_dir is empty: using the EMBEDDED TINY RANDOM-WEIGHT DEMO "
                    f"MODEL ({self.config.model_type}, {self.path}); its actions are meaningless. "
                    "Set policy.checkpoint_dir to a trained checkpoint for a robot.")
        return f"checkpoint {self.path} ({self.config.model_type}, {self.checkpoint.source_format})"

    def make_policy(self, spec: BackendSpec) -> Pi0Policy:
        cfg = self.cfg
        policy_cfg = PolicyConfig(checkpoint_dir=str(self.path), backend=spec.backend,
                                  tokenizer_path=cfg["policy.tokenizer_path"],
                                  num_steps=cfg["policy.num_steps"],
                                  noise_seed=cfg["policy.noise_seed"], options=spec.options())
        return Pi0Policy.load(policy_cfg, checkpoint=self.checkpoint)

    def warmup_observation(self) -> Observation:
        size = self.config.vision.image_size
        images = {c.name: np.full((size, size, 3), 127, dtype=np.uint8) for c in self.cfg.cameras}
        return Observation(images=images, state=np.zeros(self.config.features.state_dim),
                           instruction=WARMUP_INSTRUCTION)

    def warmup(self, policy: Pi0Policy) -> List[float]:
        """Run policy.warmup_iterations inferences; return their latencies in seconds."""
        n = self.cfg["policy.warmup_iterations"]
        return [ms * 1e-3 for ms in policy.warmup(n, self.warmup_observation())]


def check_compatible(cfg: NodeConfig, model: PI0Config) -> np.ndarray:
    """Check joints and cameras against the checkpoint; return state indices of action joints."""
    features = model.features
    if model.model_type != cfg["policy.model_type"] and cfg["policy.model_type"] != "auto":
        raise ConfigError(f"policy.model_type is {cfg['policy.model_type']!r} but the checkpoint "
                          f"is {model.model_type!r}; set policy.model_type: auto")
    if len(cfg.state_joint_names) != features.state_dim:
        raise ConfigError(f"state.joint_names has {len(cfg.state_joint_names)} joints, the "
                          f"checkpoint's state has {features.state_dim} dims; list exactly "
                          "the joints the model was trained on, in its order")
    if max(cfg.action_dims) >= features.action_dim:
        raise ConfigError(f"action.dims {list(cfg.action_dims)} exceed the checkpoint's "
                          f"{features.action_dim} action dims")
    unknown = [c.name for c in cfg.cameras if c.name not in features.camera_names]
    if unknown:
        raise ConfigError(f"cameras {unknown} are not image slots of this checkpoint; "
                          f"expected names from {list(features.camera_names)}")
    unused = [n for n in features.camera_names if n not in [c.name for c in cfg.cameras]]
    if unused:
        LOG.warning("checkpoint cameras %s have no topic; they are sent as masked images", unused)
    missing = [j for j in cfg.action_joint_names if j not in cfg.state_joint_names]
    if missing:
        raise ConfigError(f"action joints {missing} are not in state.joint_names; the node needs "
                          "their measured positions as the start of each trajectory")
    return np.array([cfg.state_joint_names.index(j) for j in cfg.action_joint_names])


def build_scheduler(cfg: NodeConfig, chunk_size: int) -> ActionScheduler:
    """Action queue with the safety limiter, from `schedule.*`, `merge.*` and `limits.*`."""
    schedule = ScheduleConfig(
        mode=cfg["schedule.mode"], execute_steps=min(cfg["schedule.execute_steps"], chunk_size),
        margin_steps=cfg["schedule.margin_steps"], max_delay_steps=cfg["schedule.max_delay_steps"],
        merge=cfg["merge.mode"], blend_steps=cfg["merge.blend_steps"],
        control_rate_hz=cfg["control_rate_hz"])
    limits = Limits.create(cfg.position_lower, cfg.position_upper, cfg.max_velocity,
                           cfg["limits.max_start_jump"])
    return ActionScheduler(schedule, len(cfg.action_joint_names), TrajectoryLimiter(limits),
                           LatencyTracker())
