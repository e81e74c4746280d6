"""Joint states from one or more JointState sources, merged by name into the model's joint order.

Keeps a short time-keyed history per joint (default 1 s, at most 1024 samples per joint) so the
state can be read at the observation time (the primary camera stamp). Missing joints are an error,
never zero-filled. ROS counterpart: the node's JointState callbacks feed `add`; observation_sync.py
reads it.
"""
from __future__ import annotations

import bisect
import logging
import math
import threading
from typing import Dict, List, Optional, Sequence

import numpy as np

from pi0_ttnn_node.errors import ConfigError, ObservationRejected

logger = logging.getLogger(__name__)

MAX_SAMPLES_PER_JOINT = 1024
# joint_states.max_abs_position default: far beyond any revolute or prismatic joint in radians or
# metres, still well inside what the normalisation statistics can take (1e300 overflows them)
DEFAULT_MAX_ABS_POSITION = 1000.0


class _History:
    """Stamps and positions of one joint, sorted by stamp."""

    __slots__ = ("stamps", "values")

    def __init__(self) -> None:
        self.stamps: List[float] = []
        self.values: List[float] = []

    def insert(self, stamp: float, value: float) -> None:
        if not self.stamps or stamp > self.stamps[-1]:
            self.stamps.append(stamp)
            self.values.append(value)
            return
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:
            self.values[i] = value  # the same instant from a second source: latest message wins
        else:
            self.stamps.insert(i, stamp)
            self.values.insert(i, value)

    def prune(self, horizon: float) -> None:
        # drop samples older than `horizon`, always keeping the newest one
        cut = min(bisect.bisect_left(self.stamps, horizon), len(self.stamps) - 1)
        cut = max(cut, len(self.stamps) - MAX_SAMPLES_PER_JOINT)
        if cut > 0:
            del self.stamps[:cut]
            del self.values[:cut]


class JointStateCache:
    """Merge JointState messages by name and look the configured joints up at a given time.

    Lookup rule: for each joint the latest sample at or before `t`; when there is none, the earliest
    sample after `t` if it is within `max_age` of `t` (a state message that arrived just after the
    camera frame). A sample older than `t - max_age` is stale.
    """

    def __init__(self, joint_names: Sequence[str], history_s: float = 1.0,
                 future_tolerance_s: float = 0.05,
                 max_abs_position: float = DEFAULT_MAX_ABS_POSITION) -> None:
        names = list(joint_names)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"joint_names must be non-empty and unique; got {names}")
        if not (math.isfinite(history_s) and history_s > 0):
            raise ConfigError(f"history_s must be a positive finite number; got {history_s}")
        if not (math.isfinite(max_abs_position) and max_abs_position > 0):
            raise ConfigError("joint_states.max_abs_position must be a positive finite number; "
                              f"got {max_abs_position}")
        self.joint_names = tuple(names)
        self.history_s = float(history_s)
        self.future_tolerance_s = float(future_tolerance_s)
        self.max_abs_position = float(max_abs_position)
        self._index = {name: i for i, name in enumerate(names)}
        self._hist = [_History() for _ in names]
        self._refused: Dict[int, str] = {}  # joint index -> reason of its newest refused value
        self._lock = threading.Lock()
        self._warned_zero_stamp = False
        self.zero_stamps = 0  # messages whose stamp 0 was replaced by the receipt time

    def add(self, stamp: float, names: Sequence[str], positions: Sequence[float],
            receipt_time: Optional[float] = None) -> int:
        """Store one JointState message; return how many configured joints it updated.

        A zero stamp falls back to `receipt_time` (warned once, counted in `zero_stamps`); a
        negative or non-finite stamp is refused (invalid_stamp): no clock produces one, so it is a
        broken driver, and treating it as "now" would hide that. Whole-message refusals:
        length_mismatch, duplicate_joints, invalid_stamp, zero_stamp (no receipt time),
        future_stamp (more than future_tolerance_s ahead of `receipt_time`).
        Per-joint refusals: a configured joint whose position is not finite (nonfinite_state) or
        beyond +-max_abs_position (position_out_of_range). Its value is not used: a refusal
        marker is stored at the stamp, so observations at or after it are refused until a valid
        sample replaces it; the message's other joints are stored, then ObservationRejected is
        raised naming the refused joints. Joints not configured are ignored whatever they hold.
        """
        if len(names) != len(positions):
            msg = f"JointState has {len(names)} names but {len(positions)} positions"
            raise ObservationRejected("length_mismatch", msg)
        if len(set(names)) != len(names):
            dups = sorted({n for n in names if list(names).count(n) > 1})
            raise ObservationRejected("duplicate_joints", f"JointState repeats joints {dups}")
        stamp = self._effective_stamp(stamp, receipt_time)
        if receipt_time is not None and stamp - receipt_time > self.future_tolerance_s:
            # a future sample would prune the real history and hide newer samples until then
            msg = (f"JointState stamp {stamp:.3f} is {stamp - receipt_time:.3f} s ahead of the "
                   f"clock; limit {self.future_tolerance_s} s")
            raise ObservationRejected("future_stamp", msg)
        picked = [(self._index[n], float(p)) for n, p in zip(names, positions) if n in self._index]
        refused: Dict[str, List[str]] = {}
        stored = []
        for i, p in picked:
            if not math.isfinite(p):
                reason = "nonfinite_state"
            elif abs(p) > self.max_abs_position:
                reason = "position_out_of_range"
            else:
                stored.append((i, p))
                continue
            refused.setdefault(reason, []).append(f"{self.joint_names[i]}={p:.6g}")
            stored.append((i, math.nan))  # refusal marker: never used as a value
            self._refused[i] = reason
        with self._lock:
            for i, p in stored:
                hist = self._hist[i]
                hist.insert(stamp, p)
                hist.prune(hist.stamps[-1] - self.history_s)
        if refused:
            reason = next(iter(refused))
            detail = "; ".join(f"{r}: {', '.join(js)}" for r, js in refused.items())
            raise ObservationRejected(reason, f"refused joint values ({detail}); bound "
                                      f"+-{self.max_abs_position:g} (joint_states."
                                      "max_abs_position); the other joints were updated")
        return len(picked)

    def _effective_stamp(self, stamp: float, receipt_time: Optional[float]) -> float:
        if stamp > 0.0 and math.isfinite(stamp):
            return float(stamp)
        if not math.isfinite(stamp) or stamp < 0.0:
            raise ObservationRejected("invalid_stamp", f"JointState stamp is {stamp}; header "
                                      "stamps must be >= 0 (0 = use the receipt time)")
        if receipt_time is None:
            msg = f"JointState stamp is {stamp} and no receipt time was given; stamp the messages"
            raise ObservationRejected("zero_stamp", msg)
        if not self._warned_zero_stamp:
            logger.warning("JointState header.stamp is 0; using receipt time instead "
                           "(fix the publisher: sync with cameras is approximate)")
            self._warned_zero_stamp = True
        self.zero_stamps += 1
        return float(receipt_time)

    def lookup(self, t: float, max_age: float) -> np.ndarray:
        """Return positions [n] in configured order at time `t` (see class docstring).

        Raises ObservationRejected: missing_joints (never seen, listed), stale_state, and the
        per-joint refusal reason (nonfinite_state, position_out_of_range) while a refused value
        is the newest sample at `t`.
        """
        out = np.empty(len(self.joint_names), dtype=np.float64)
        missing: List[str] = []
        stale: Dict[str, float] = {}
        with self._lock:
            for i, hist in enumerate(self._hist):
                if not hist.stamps:
                    missing.append(self.joint_names[i])
                    continue
                j = bisect.bisect_right(hist.stamps, t) - 1
                if j < 0:
                    j = 0  # only samples after t: the earliest one, if close enough
                age = abs(t - hist.stamps[j])
                if age > max_age:
                    stale[self.joint_names[i]] = round(age, 4)
                out[i] = hist.values[j]
        if missing:
            msg = f"no JointState received for joints {missing}; check joint_states.topics"
            raise ObservationRejected("missing_joints", msg)
        if stale:
            msg = f"joint state at t={t:.3f} is older than {max_age} s: ages {stale}"
            raise ObservationRejected("stale_state", msg)
        if not np.isfinite(out).all():
            bad = [int(i) for i in np.flatnonzero(~np.isfinite(out))]
            reason = self._refused.get(bad[0], "nonfinite_state")
            names = [self.joint_names[i] for i in bad]
            msg = (f"latest positions of {names} were refused at input ({reason}); waiting for "
                   "valid samples")
            raise ObservationRejected(reason, msg)
        return out

    def latest_stamp(self) -> Optional[float]:
        """Newest stamp over all joints, or None before the first message."""
        with self._lock:
            stamps = [h.stamps[-1] for h in self._hist if h.stamps]
        return max(stamps) if stamps else None

    def reset(self) -> None:
        """Forget all samples (clock jumped back, or the node was reset)."""
        with self._lock:
            self._hist = [_History() for _ in self.joint_names]
            self._refused = {}
