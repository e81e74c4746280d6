"""One backend call for several robots' due inferences; every row judged and returned on its own.

`run_batch` prepares each robot's request with its own ControlCore (observation at the request's
tick time, the robot's noise stream, its RTC guidance), stacks the rows, runs ONE
`Pi0Policy.sample_rows` call and hands back one `RowOutcome` per request. Isolation rules:

- a rejected observation (stale, missing, hostile input) drops only that robot's row;
- a row with non-finite output fails only that robot (sample_rows checks per row);
- when the whole call raises (a row the preprocessor or backend cannot take), each row is re-run
  alone, so only the robot whose row fails loses its chunk (the others pay one extra call each);
- rows whose RTC settings differ (method, beta) go in separate calls; unguided rows ride along
  with the guided ones with zero prefix weights (the plain velocity, exactly).

ROS-free. Counterparts: control/multi_robot.py (the worker thread and window), policy.py
(sample_rows), control/pipeline.py (prepare, on_result).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from pi0_ttnn_node import rtc
from pi0_ttnn_node.control.pipeline import ControlCore, InferenceResult, Prepared
from pi0_ttnn_node.errors import ObservationRejected

OK, REJECTED, FAILED = "ok", "inference_skipped", "inference_failed"


@dataclass(frozen=True)
class Request:
    """One robot's due inference: its core's request id and when (steady clock) it was asked."""

    robot: str
    request_id: int
    submitted: float  # time.perf_counter() at submission; latency is measured from here


@dataclass(frozen=True)
class RowOutcome:
    """What one robot gets back from a batch: a result, or why it has none."""

    request: Request
    outcome: str  # OK, REJECTED or FAILED
    result: Optional[InferenceResult]
    reason: str = ""
    batch_rows: int = 0  # rows in the backend call that served it (0 = none ran)
    prepared: Optional[Prepared] = None  # the row's inputs (observation, noise, guidance)


@dataclass(frozen=True)
class BatchReport:
    """One run_batch: backend calls made, rows per call, outcomes."""

    calls: int
    rows_per_call: Tuple[int, ...]
    outcomes: Tuple[RowOutcome, ...]
    seconds: float


def _guidance_key(prepared: Prepared) -> Optional[Tuple[str, float]]:
    g = prepared.guidance
    return None if g is None else (g.method, float(g.max_guidance))


def _stack_guidance(rows: Sequence[Prepared], horizon: int,
                    action_dim: int) -> Optional[rtc.RtcGuidance]:
    """[B, H, A] target and [B, H] weights; unguided rows get zeros (no pull on them)."""
    guided = [p.guidance for p in rows if p.guidance is not None]
    if not guided:
        return None
    target = torch.zeros((len(rows), horizon, action_dim), dtype=torch.float32)
    weights = torch.zeros((len(rows), horizon), dtype=torch.float32)
    for i, p in enumerate(rows):
        if p.guidance is not None:
            target[i] = p.guidance.target[0]
            weights[i] = p.guidance.weights[0]
    return rtc.RtcGuidance(target, weights, guided[0].max_guidance, guided[0].method)


def group_rows(prepared: Sequence[Tuple[Request, Prepared]]
               ) -> List[List[Tuple[Request, Prepared]]]:
    """Rows that can share one call: same RTC method and beta; unguided rows join the first
    guided group (zero weights) or form their own group when nobody is guided."""
    groups: Dict[Any, List[Tuple[Request, Prepared]]] = {}
    plain: List[Tuple[Request, Prepared]] = []
    for row in prepared:
        key = _guidance_key(row[1])
        if key is None:
            plain.append(row)
        else:
            groups.setdefault(key, []).append(row)
    ordered = list(groups.values())
    if plain:
        if ordered:
            ordered[0] = plain + ordered[0]
        else:
            ordered.append(plain)
    return ordered


def _result(req: Request, prep: Prepared, chunk: Any, row: int, backend: str,
            done: float) -> InferenceResult:
    obs = prep.observation
    return InferenceResult(
        actions=chunk.actions[row], normalized=chunk.normalized[row],
        state=np.asarray(obs.state, dtype=np.float64), t_obs=obs.timestamp,
        latency_s=done - req.submitted, request_id=req.request_id, backend=backend,
        timings_ms=dict(chunk.timings_ms),
        truncated_prompt=bool(chunk.truncated_prompt and chunk.truncated_prompt[row]),
        guided=prep.guidance is not None)


def _call(policy: Any, rows: Sequence[Tuple[Request, Prepared]], backend: str,
          calls: List[int]) -> List[RowOutcome]:
    """One backend call for `rows`; on an exception with several rows, each row alone."""
    cfg = policy.config
    noise = torch.cat([p.noise for _, p in rows], dim=0)
    guidance = _stack_guidance([p for _, p in rows], cfg.chunk_size, cfg.max_action_dim)
    try:
        calls.append(len(rows))
        chunk = policy.sample_rows([p.observation for _, p in rows], noise, guidance)
    except Exception as err:  # noqa: BLE001 - isolate: find the row that cannot run
        if len(rows) == 1:
            return [RowOutcome(rows[0][0], FAILED, None, f"{type(err).__name__}: {err}", 1,
                               rows[0][1])]
        out: List[RowOutcome] = []
        for row in rows:
            out.extend(_call(policy, [row], backend, calls))
        return out
    done = time.perf_counter()
    out = []
    for i, (req, prep) in enumerate(rows):
        if chunk.row_errors and chunk.row_errors[i]:
            out.append(RowOutcome(req, FAILED, None, chunk.row_errors[i], len(rows), prep))
        else:
            out.append(RowOutcome(req, OK, _result(req, prep, chunk, i, backend, done),
                                  "", len(rows), prep))
    return out


def run_batch(policy: Any, cores: Mapping[str, ControlCore], requests: Sequence[Request],
              backend: str = "torch") -> BatchReport:
    """Prepare every request on its robot's core, run the rows in as few calls as the RTC
    settings allow, and return one outcome per request (in request order)."""
    t0 = time.perf_counter()
    ready: List[Tuple[Request, Prepared]] = []
    outcomes: Dict[Tuple[str, int], RowOutcome] = {}
    for req in requests:
        try:
            ready.append((req, cores[req.robot].prepare(req.request_id, policy)))
        except ObservationRejected as err:
            outcomes[(req.robot, req.request_id)] = RowOutcome(req, REJECTED, None, str(err))
        except Exception as err:  # noqa: BLE001 - a bug on one robot must not stop the others
            outcomes[(req.robot, req.request_id)] = RowOutcome(
                req, FAILED, None, f"observation: {type(err).__name__}: {err}")
    calls: List[int] = []
    for group in group_rows(ready):
        for outcome in _call(policy, group, backend, calls):
            outcomes[(outcome.request.robot, outcome.request.request_id)] = outcome
    ordered = tuple(outcomes[(r.robot, r.request_id)] for r in requests)
    return BatchReport(len(calls), tuple(calls), ordered, time.perf_counter() - t0)


def deliver(report: BatchReport, cores: Mapping[str, ControlCore],
            now: Callable[[], float]) -> None:
    """Hand each outcome to its own core: a result (arrival = now()) or a failure."""
    for outcome in report.outcomes:
        core = cores[outcome.request.robot]
        if outcome.outcome == OK:
            core.on_result(outcome.result, now())
        else:
            core.on_failed(outcome.request.request_id, outcome.outcome)
