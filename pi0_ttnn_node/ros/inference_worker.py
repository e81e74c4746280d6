"""The one thread that touches backends: load, warm-up, inference, backend switch, shadow, close.

Runs outside the ROS executor and waits on a condition variable; at most one inference is in flight.
Keeping every backend call (model load, device open, trace, close) on this thread avoids concurrent
ttnn calls, which ttnn does not document as safe. A switch loads and warms the new backend here
while the controller keeps playing the queued chunk, then swaps between two inferences and closes
the old one. Shadow mode re-runs each observation, with the same noise, on a second backend.
Counterparts: control/pipeline.py (prepares each inference and takes its result), ros/node.py and
tools/soak.py (request work, receive results through callbacks).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from pi0_ttnn_node.control.pipeline import InferenceResult, Prepared
from pi0_ttnn_node.errors import ObservationRejected, Pi0Error

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Divergence:
    """Primary vs shadow on the same observation and noise."""

    primary: str
    shadow: str
    pcc: float
    max_abs_diff: List[float]  # per action dim
    shadow_latency_s: float


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays flattened; 1.0 when both are constant and equal."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if denom == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float((x * y).sum() / denom)


class InferenceWorker:
    """Owns the primary and shadow policies; everything backend-related runs on its thread.

    Callbacks run on the worker thread: keep them short (queue a chunk, bump a counter).
    `make_policy(spec)` builds a policy for a backend spec; `warmup(policy)` runs the warm-up and
    returns its latencies in seconds; `prepare(request_id, policy)` returns the observation, noise
    and guidance of that request (control.pipeline.ControlCore.prepare) or raises
    ObservationRejected. `request_id` (the scheduler's) travels with each inference and
    comes back in every result, refusal and failure callback.
    """

    def __init__(self, make_policy: Callable[[Any], Any], warmup: Callable[[Any], List[float]],
                 prepare: Callable[[int, Any], Prepared],
                 on_result: Callable[[InferenceResult], None],
                 on_reject: Callable[[int, ObservationRejected], None],
                 on_failure: Callable[[str, int, BaseException], None],
                 on_divergence: Callable[[Divergence], None],
                 on_backend: Callable[[str, Any, Optional[BaseException]], None]) -> None:
        self._make_policy, self._warmup = make_policy, warmup
        self._prepare = prepare
        self._on_result, self._on_reject, self._on_failure = on_result, on_reject, on_failure
        self._on_divergence, self._on_backend = on_divergence, on_backend
        self._cond = threading.Condition()
        self._tasks: List[tuple] = []
        self._inference_request_id: Optional[int] = None
        self._pending_switch: Optional[Any] = None
        self._pending_shadow: Optional[tuple] = None  # (spec or None,)
        self._stop = False
        self._in_flight = False
        self._thread: Optional[threading.Thread] = None
        self.policy: Any = None
        self.shadow: Any = None
        self.spec: Any = None
        self.shadow_spec: Any = None
        self.description: Dict[str, Any] = {}  # primary backend.describe(), read on this thread

    # ---- thread control ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="pi0_inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Close both policies on the worker thread, then end it."""
        if self._thread is None:
            return
        done = self.call(self._close_all)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        try:
            done.result(timeout)
        except Exception as err:  # noqa: BLE001 - closing must finish; the error is logged
            LOG.error("closing the backends failed: %r", err)
        self._thread.join(timeout)
        self._thread = None

    @property
    def busy(self) -> bool:
        """True while an inference is requested or running."""
        with self._cond:
            return self._in_flight or self._inference_request_id is not None

    # ---- requests (any thread) -----------------------------------------------------------------
    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn()` on the worker thread before any further inference; return its Future."""
        future: Future = Future()
        with self._cond:
            self._tasks.append((fn, future))
            self._cond.notify_all()
        return future

    def load(self, spec: Any) -> Future:
        """Build and warm the primary policy; the Future holds the warm-up latencies (s)."""
        return self.call(lambda: self._load_primary(spec))

    def request_inference(self, request_id: int) -> bool:
        """Ask for one inference; False when one is already requested or running."""
        with self._cond:
            if self._in_flight or self._inference_request_id is not None or self.policy is None:
                return False
            self._inference_request_id = request_id
            self._cond.notify_all()
            return True

    def request_switch(self, spec: Any) -> None:
        """Replace the primary backend (latest request wins)."""
        with self._cond:
            self._pending_switch = spec
            self._cond.notify_all()

    def request_shadow(self, spec: Optional[Any]) -> None:
        """Start, replace or (None) stop the shadow backend."""
        with self._cond:
            self._pending_shadow = (spec,)
            self._cond.notify_all()

    # ---- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._tasks or self._inference_request_id is not None
                           or self._pending_switch is not None or self._pending_shadow):
                    self._cond.wait()
                if self._tasks:
                    job = ("task", self._tasks.pop(0))
                elif self._stop:
                    return
                elif self._inference_request_id is not None:
                    # an inference first: the old backend refills the queue before a switch
                    job = ("infer", self._inference_request_id)
                    self._inference_request_id, self._in_flight = None, True
                elif self._pending_switch is not None:
                    job, self._pending_switch = ("switch", self._pending_switch), None
                else:
                    job, self._pending_shadow = ("shadow", self._pending_shadow[0]), None
            self._dispatch(*job)

    def _dispatch(self, kind: str, arg: Any) -> None:
        if kind == "task":
            fn, future = arg
            try:
                future.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed to the caller through the Future
                future.set_exception(err)
        elif kind == "infer":
            try:
                self._infer(arg)
            except Exception:  # noqa: BLE001 - a failing callback must not end the worker
                LOG.error("inference callback raised:\n%s", traceback.format_exc())
            finally:
                with self._cond:
                    self._in_flight = False
        elif kind == "switch":
            self._switch(arg)
        else:
            self._set_shadow(arg)

    def _load_primary(self, spec: Any) -> List[float]:
        policy = self._make_policy(spec)
        try:
            latencies = self._warmup(policy)
        except BaseException:
            policy.close()
            raise
        old, self.policy, self.spec = self.policy, policy, spec
        self.description = dict(policy.backend.describe())
        if old is not None:
            old.close()
        return latencies

    def _switch(self, spec: Any) -> None:
        if spec == self.spec:
            return
        try:
            latencies = self._load_primary(spec)
        except Exception as err:  # noqa: BLE001 - keep serving with the old backend
            LOG.error("backend switch to %s failed, keeping %s: %r", spec, self.spec, err)
            self._on_backend("primary", spec, err)
            return
        LOG.info("switched backend to %s (warm-up %s s)", spec,
                 [round(x, 3) for x in latencies])
        self._on_backend("primary", spec, None)

    def _set_shadow(self, spec: Optional[Any]) -> None:
        if spec == self.shadow_spec and (spec is None) == (self.shadow is None):
            return
        old, self.shadow, self.shadow_spec = self.shadow, None, None
        if old is not None:
            old.close()
        if spec is None:
            self._on_backend("shadow", None, None)
            return
        try:
            policy = self._make_policy(spec)
            self._warmup(policy)
        except Exception as err:  # noqa: BLE001 - shadow is optional; report and go on
            LOG.error("shadow backend %s failed to start: %r", spec, err)
            self._on_backend("shadow", spec, err)
            return
        self.shadow, self.shadow_spec = policy, spec
        self._on_backend("shadow", spec, None)

    def _infer(self, request_id: int) -> None:
        t0 = time.perf_counter()
        policy = self.policy
        try:
            prepared = self._prepare(request_id, policy)
        except ObservationRejected as err:
            self._on_reject(request_id, err)
            return
        except Exception as err:  # noqa: BLE001 - a bug must not end the worker
            self._on_failure("observation", request_id, err)
            LOG.error("building the observation failed:\n%s", traceback.format_exc())
            return
        obs, noise = prepared.observation, prepared.noise
        try:
            chunk = policy.sample([obs], noise=noise, guidance=prepared.guidance)
        except Exception as err:  # noqa: BLE001 - counted; the node holds after N in a row
            self._on_failure("inference", request_id, err)
            if not isinstance(err, Pi0Error):
                LOG.error("inference raised:\n%s", traceback.format_exc())
            return
        latency = time.perf_counter() - t0
        self._on_result(InferenceResult(
            actions=chunk.actions[0], normalized=chunk.normalized[0],
            state=np.asarray(obs.state, dtype=np.float64),
            t_obs=obs.timestamp, latency_s=latency, request_id=request_id,
            backend=str(getattr(self.spec, "backend", self.spec)), timings_ms=chunk.timings_ms,
            truncated_prompt=bool(chunk.truncated_prompt and chunk.truncated_prompt[0]),
            guided=prepared.guidance is not None))
        if self.shadow is not None:
            self._run_shadow(prepared, chunk.actions[0], request_id)

    def _run_shadow(self, prepared: Prepared, primary: np.ndarray, request_id: int) -> None:
        t0 = time.perf_counter()
        try:
            other = self.shadow.sample([prepared.observation], noise=prepared.noise,
                                       guidance=prepared.guidance).actions[0]
        except Exception as err:  # noqa: BLE001 - shadow failures never touch the output
            self._on_failure("shadow", request_id, err)
            return
        diff = np.abs(np.asarray(primary, np.float64) - np.asarray(other, np.float64))
        self._on_divergence(Divergence(
            primary=str(self.spec), shadow=str(self.shadow_spec), pcc=pcc(primary, other),
            max_abs_diff=diff.max(axis=0).tolist(), shadow_latency_s=time.perf_counter() - t0))

    def _close_all(self) -> None:
        for attr in ("shadow", "policy"):
            policy = getattr(self, attr)
            setattr(self, attr, None)
            if policy is not None:
                policy.close()
        self.spec = self.shadow_spec = None
