"""One policy serving several robots: N ControlCores and the worker that batches their requests.

`Fleet` owns one ControlCore per robot (its own scheduler, RTC state, limiter, assembler and noise
stream) and ticks them all; a core's request goes to `BatchingWorker.submit`. The worker thread
waits until `batch.window_s` after the oldest pending request (or until every robot that can ask
has asked), then takes ALL pending requests and runs them as one batched call (control/batching.py).
Since every call takes every pending request, no robot is ever more than one window behind
another; a request that arrives while a call runs waits for that call (one backend). When one
robot's request starts, robots due within `batch.align_steps` ticks ask at once too
(`ControlCore.request_early`), so robots that started out of phase meet in one call. Each row goes
back to its own core with its own latency. ROS-free: the node, benchmarks and tests drive it the
same way. Counterparts: control/batching.py, control/robots.py, tools/bench_multi_robot.py.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from pi0_ttnn_node.control.batching import BatchReport, Request, deliver, run_batch
from pi0_ttnn_node.control.pipeline import ControlCore, Tick, make_assembler
from pi0_ttnn_node.control.robots import RobotSpec
from pi0_ttnn_node.observation_sync import ObservationAssembler

LOG = logging.getLogger(__name__)


def make_core(spec: RobotSpec, chunk_size: int, max_action_dim: int,
              assembler: Optional[ObservationAssembler] = None) -> ControlCore:
    """A robot's core; an instruction change resets only this robot's queue. A driver that owns
    the inputs (the node's InputHub) passes its assembler and resets the core itself."""
    holder: Dict[str, ControlCore] = {}
    if assembler is None:
        assembler = make_assembler(spec.config,
                                   lambda _text: holder["core"].reset("instruction"))
    core = ControlCore(spec.config, chunk_size, assembler, max_action_dim,
                       noise_stream=spec.noise_stream)
    holder["core"] = core
    return core


@dataclass
class BatchStats:
    """Counters since start (read under the worker's lock)."""

    calls: int = 0
    rows: int = 0
    outcomes: Dict[str, int] = field(default_factory=dict)
    rows_per_call: List[int] = field(default_factory=list)


class BatchingWorker:
    """The one thread that calls the policy for every robot; at most one request per robot."""

    def __init__(self, policy: Any, cores: Dict[str, ControlCore], window_s: float,
                 now: Callable[[], float],
                 on_report: Optional[Callable[[BatchReport], None]] = None) -> None:
        self.policy = policy
        self.cores = cores
        self.window_s = float(window_s)
        self._now = now
        self._on_report = on_report
        self._cond = threading.Condition()
        self._pending: Dict[str, Request] = {}
        self._running: set = set()  # robots whose request is in the current call
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.stats = BatchStats()

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="pi0_batch", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, robot: str, request_id: int) -> bool:
        """Queue robot's request (any thread); False while that robot already has one."""
        with self._cond:
            if robot in self._pending or robot in self._running:
                return False
            self._pending[robot] = Request(robot, request_id, time.perf_counter())
            self._cond.notify_all()
            return True

    def busy(self, robot: str) -> bool:
        with self._cond:
            return robot in self._pending or robot in self._running

    def _take(self) -> Optional[List[Request]]:
        """Block until a batch is due (window over, or every robot has asked); None = stop."""
        with self._cond:
            while True:
                if self._stop:
                    return None
                if self._pending:
                    oldest = min(r.submitted for r in self._pending.values())
                    wait = oldest + self.window_s - time.perf_counter()
                    if wait <= 0 or len(self._pending) == len(self.cores):
                        batch = sorted(self._pending.values(), key=lambda r: r.submitted)
                        self._pending = {}
                        self._running = {r.robot for r in batch}
                        return batch
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                report = run_batch(self.policy, self.cores, batch)
                deliver(report, self.cores, self._now)
            except Exception:  # noqa: BLE001 - never end the worker; robots time out and hold
                LOG.exception("batched inference failed outside any row")
                for req in batch:
                    self.cores[req.robot].on_failed(req.request_id, "inference_failed")
                report = None
            with self._cond:
                self._running = set()
                if report is not None:
                    s = self.stats
                    s.calls += report.calls
                    s.rows += sum(report.rows_per_call)
                    s.rows_per_call.extend(report.rows_per_call)
                    for o in report.outcomes:
                        s.outcomes[o.outcome] = s.outcomes.get(o.outcome, 0) + 1
            if report is not None and self._on_report is not None:
                self._on_report(report)


class Fleet:
    """N robots' cores behind one policy; `tick(now)` ticks every robot and submits requests."""

    def __init__(self, specs: Sequence[RobotSpec], policy: Any, window_s: float,
                 now: Callable[[], float] = time.monotonic,
                 on_report: Optional[Callable[[BatchReport], None]] = None,
                 assemblers: Optional[Dict[str, ObservationAssembler]] = None) -> None:
        cfg = policy.config
        assemblers = assemblers or {}
        self.specs = {s.name: s for s in specs}
        self.cores = {s.name: make_core(s, cfg.chunk_size, cfg.max_action_dim,
                                        assemblers.get(s.name)) for s in specs}
        self.worker = BatchingWorker(policy, self.cores, window_s, now, on_report)
        self.refused: Dict[str, int] = {name: 0 for name in self.cores}
        first = specs[0].config
        # batch.align_steps in seconds: robots due that soon join a call that starts now
        self.align_s = first["batch.align_steps"] * first.dt
        self.aligned = 0  # requests started early to join another robot's call

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def tick(self, now: float) -> Dict[str, Tick]:
        """Tick every robot; a core's new request goes to the worker (refused while that robot
        already has one queued or running; the core is told so it can ask again)."""
        out: Dict[str, Tick] = {}
        for name, core in self.cores.items():
            out[name] = tick = core.tick(now)
            if tick.request_id is not None:
                self._submit(name, tick.request_id)
        if self.align_s > 0 and any(t.request_id is not None for t in out.values()):
            for name, core in self.cores.items():
                if out[name].request_id is None and not self.worker.busy(name):
                    request_id = core.request_early(now, self.align_s)
                    if request_id is not None:
                        self.aligned += 1
                        self._submit(name, request_id)
        return out

    def _submit(self, name: str, request_id: int) -> None:
        if not self.worker.submit(name, request_id):
            self.refused[name] += 1
            self.cores[name].on_failed(request_id, "inference_busy")
