"""Checkpoint resolution and policy construction for the node (policies built on the worker).

The checkpoint is read once per configure and shared by every backend built from it (switch and
shadow), so a backend change only builds and warms the model. An empty `policy.checkpoint_dir`
means the embedded tiny random-weight model: a demo and test fixture, not a trained policy. This
is the one place where test-only fault injection wraps a backend (`policy.fault_injection`).
Counterparts: policy.py (Pi0Policy), embedded.py, fault_injection.py, control/node_config.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, List, Mapping, Optional, Tuple

import numpy as np

from pi0_ttnn_node.backends import BackendSpec
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.config import PI0Config
from pi0_ttnn_node.control.node_config import NodeConfig, backend_spec
from pi0_ttnn_node.control.parameters import BACKEND_PARAMS
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.errors import ConfigError
from pi0_ttnn_node.fault_injection import inject_faults
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig
from pi0_ttnn_node.preprocessing import Observation

LOG = logging.getLogger(__name__)
WARMUP_INSTRUCTION = "warm up"


@dataclass(frozen=True)
class PolicyChoice:
    """What the worker loads: a backend spec plus (tests only) a fault-injection plan."""

    spec: BackendSpec
    fault_injection: str = ""

    @property
    def backend(self) -> str:
        return self.spec.backend

    def label(self) -> str:
        return self.spec.label() + (" (FAULT INJECTION)" if self.fault_injection else "")

    def __str__(self) -> str:  # log lines name the backend, not every TTNN knob
        return self.label()


def primary_choice(cfg_values: Mapping[str, Any]) -> PolicyChoice:
    """policy.backend with policy.fault_injection (the only backend faults ever apply to)."""
    return PolicyChoice(backend_spec(cfg_values), cfg_values["policy.fault_injection"])


def backend_changes(names: Collection[str], values: Mapping[str, Any]
                    ) -> Tuple[Optional[PolicyChoice], bool, Optional[PolicyChoice]]:
    """What changed parameters ask of the worker: (new primary or None, whether the shadow is to
    be (re)set, the shadow or None). Raises ConfigError for knobs that do not fit together."""
    backend_changed = bool(set(names) & set(BACKEND_PARAMS))
    primary = primary_choice(values) if backend_changed else None
    shadow_name = values["policy.shadow_backend"]
    shadow_changed = "policy.shadow_backend" in names or (backend_changed and bool(shadow_name))
    shadow = PolicyChoice(backend_spec(values, shadow_name)) if shadow_name else None
    return primary, shadow_changed, shadow


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
        check_compatible(cfg, self.config)

    def describe_source(self) -> str:
        if self.embedded:
            return ("policy.checkpoint_dir is empty: using the EMBEDDED TINY RANDOM-WEIGHT DEMO "
                    f"MODEL ({self.config.model_type}, {self.path}); its actions are meaningless. "
                    "Set policy.checkpoint_dir to a trained checkpoint for a robot.")
        return f"checkpoint {self.path} ({self.config.model_type}, {self.checkpoint.source_format})"

    def make_policy(self, choice: PolicyChoice) -> Pi0Policy:
        cfg = self.cfg
        policy_cfg = PolicyConfig(checkpoint_dir=str(self.path), spec=choice.spec,
                                  tokenizer_path=cfg["policy.tokenizer_path"],
                                  num_steps=cfg["policy.num_steps"],
                                  noise_seed=cfg["policy.noise_seed"])
        policy = Pi0Policy.load(policy_cfg, checkpoint=self.checkpoint)
        return inject_faults(policy, choice.fault_injection)  # tests only; "" on a robot

    def warmup_observation(self) -> Observation:
        size = self.config.vision.image_size
        images = {c.name: np.full((size, size, 3), 127, dtype=np.uint8) for c in self.cfg.cameras}
        return Observation(images=images, state=np.zeros(self.config.features.state_dim),
                           instruction=WARMUP_INSTRUCTION)

    def warmup(self, policy: Pi0Policy) -> List[float]:
        """Run policy.warmup_iterations inferences; return their latencies in seconds."""
        n = self.cfg["policy.warmup_iterations"]
        return [ms * 1e-3 for ms in policy.warmup(n, self.warmup_observation())]


def check_compatible(cfg: NodeConfig, model: PI0Config) -> None:
    """Check joints and cameras against the checkpoint (NodeConfig checked the rest)."""
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
