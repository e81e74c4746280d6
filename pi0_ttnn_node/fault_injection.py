"""Test-only fault injection around a policy backend: errors, NaN/Inf, wrong shapes, slow calls.

Selected by the node's `policy.fault_injection` parameter (a string such as
"mode=device_lost,first_call=3,active_file=/tmp/fault"); never active otherwise, and applied in one
place only: the node's policy loader wraps the primary backend (`inject_faults`). A fault with
`active_file` applies only while that file exists, so a test clears it by deleting the file; a
parameter change clears it too (the node rebuilds the backend without it). Counterpart:
ros/policy_loader.py (the one place that wraps a backend).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import torch

from pi0_ttnn_node.errors import BackendUnavailableError, ConfigError, InferenceError

LOG = logging.getLogger(__name__)

FAULT_MODES = ("raise", "nan", "inf", "wrong_shape", "slow", "device_lost",
               "unavailable_at_init")


@dataclass(frozen=True)
class FaultPlan:
    """What goes wrong and when. Calls are counted from 1 per backend instance."""

    mode: str
    first_call: int = 1  # first faulty sample_actions call
    num_calls: int = 0  # faulty calls in a row; 0 = until cleared
    delay_s: float = 0.5  # mode "slow": seconds added to each faulty call
    active_file: str = ""  # set: the fault applies only while this file exists

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ConfigError(f"fault_injection mode {self.mode!r} unknown; expected one of "
                              f"{FAULT_MODES}")
        if self.first_call < 1 or self.num_calls < 0:
            raise ConfigError(f"fault_injection first_call must be >= 1 and num_calls >= 0; got "
                              f"{self.first_call}, {self.num_calls}")
        if not (math.isfinite(self.delay_s) and 0.0 <= self.delay_s <= 600.0):
            raise ConfigError(f"fault_injection delay_s must lie in [0, 600]; got {self.delay_s}")

    @classmethod
    def parse(cls, spec: Union[str, Mapping[str, Any]]) -> "FaultPlan":
        """Build from "key=value,key=value" or a mapping; raise ConfigError naming a bad key."""
        if isinstance(spec, str):
            items: Dict[str, str] = {}
            for part in filter(None, (p.strip() for p in spec.split(","))):
                key, sep, value = part.partition("=")
                if not sep:
                    raise ConfigError(f"fault_injection entry {part!r} is not key=value")
                items[key.strip()] = value.strip()
            spec = items
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(spec) - set(types))
        if unknown or "mode" not in spec:
            raise ConfigError(f"fault_injection needs 'mode' and accepts {sorted(types)}; got "
                              f"{dict(spec)}")
        try:
            kwargs = {k: (int(v) if types[k] == "int" else float(v) if types[k] == "float"
                          else str(v)) for k, v in spec.items()}
        except ValueError as err:
            raise ConfigError(f"fault_injection {dict(spec)}: {err}") from err
        return cls(**kwargs)

    def file_allows(self) -> bool:
        return not self.active_file or os.path.exists(self.active_file)


def plan_from_text(text: str) -> Optional[FaultPlan]:
    """The plan a `policy.fault_injection` value asks for, or None (empty: the normal case)."""
    return FaultPlan.parse(text) if text else None


class FaultInjectingBackend:
    """Wraps a PolicyBackend and corrupts the calls the plan selects; otherwise a pass-through."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.name = inner.name
        self.calls = 0
        self.faults = 0
        self._cleared = threading.Event()
        LOG.warning("FAULT INJECTION active on backend %s: %s (test only)", inner.name, plan)

    def clear(self) -> None:
        """End the fault now (the programmatic twin of deleting `active_file`)."""
        self._cleared.set()

    def is_faulty(self, call: int) -> bool:
        plan = self.plan
        if self._cleared.is_set() or not plan.file_allows() or call < plan.first_call:
            return False
        return plan.num_calls == 0 or call < plan.first_call + plan.num_calls

    def describe(self) -> Dict[str, Any]:
        return dict(self.inner.describe(), fault_injection=self.plan.mode)

    def sample_actions(self, inputs: Any, noise: torch.Tensor, num_steps: Optional[int] = None,
                       guidance: Any = None) -> np.ndarray:
        self.calls += 1
        kwargs = {"num_steps": num_steps} if guidance is None else \
            {"num_steps": num_steps, "guidance": guidance}
        if not self.is_faulty(self.calls):
            return self.inner.sample_actions(inputs, noise, **kwargs)
        self.faults += 1
        mode = self.plan.mode
        if mode == "raise":
            raise InferenceError(f"injected fault: backend raised on call {self.calls}")
        if mode == "device_lost":
            raise BackendUnavailableError(f"injected fault: {self.name} device stopped responding "
                                          f"on call {self.calls}; reset the device")
        if mode == "slow":
            time.sleep(self.plan.delay_s)
            return self.inner.sample_actions(inputs, noise, **kwargs)
        chunk = np.array(self.inner.sample_actions(inputs, noise, **kwargs))
        if mode == "wrong_shape":
            return chunk[:, :-1]
        chunk[0, chunk.shape[1] // 2, 0] = np.nan if mode == "nan" else np.inf
        return chunk

    def close(self) -> None:
        self.inner.close()


def wrap_backend(build: Callable[[], Any], plan: FaultPlan) -> FaultInjectingBackend:
    """Build the real backend (or fail as an absent device would) and wrap it."""
    if plan.mode == "unavailable_at_init" and plan.file_allows():
        raise BackendUnavailableError("injected fault: the device is not available (no card "
                                      "found, or it is held by another process)")
    return FaultInjectingBackend(build(), plan)


def inject_faults(policy: Any, text: str) -> Any:
    """Wrap `policy.backend` as `text` (a `policy.fault_injection` value) asks; "" = unchanged.
    On an `unavailable_at_init` fault the policy is closed and BackendUnavailableError raised."""
    plan = plan_from_text(text)
    if plan is None:
        return policy
    try:
        policy.backend = wrap_backend(lambda: policy.backend, plan)
    except BaseException:
        policy.close()
        raise
    return policy
