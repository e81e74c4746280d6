"""What the node reports on /diagnostics, built as diagnostic_msgs/DiagnosticArray directly.

One status per input (rate over the period, header-stamp age vs the node clock, last refusal; for
cameras also the QoS in use, the received vs stamped rate and, below LOSSY_BELOW of the stamped
rate, a WARN naming the likely cause) and
one for the policy (backend, latency last/p50/p95, queue depth, refusals by reason, clips,
chunk-boundary jump, consecutive failures, A/B divergence). diagnostic_updater has no wheel here,
so the task structure is reproduced by hand. Counterpart: ros/node.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray

from pi0_ttnn_node.ros.conversions import diagnostic_array, diagnostic_status
from pi0_ttnn_node.ros import process_tuning
from pi0_ttnn_node.ros.inputs import LOSSY_BELOW

PREFIX = "pi0_ttnn_node"


@dataclass
class PolicyStatus:
    """Mutable run state the worker and timers update; read by the diagnostics timer."""

    started_steady: float = field(default_factory=time.monotonic)
    backend_active: str = ""
    backend_requested: str = ""
    backend_error: str = ""
    shadow_active: str = ""
    shadow_error: str = ""
    inferences: int = 0
    consecutive_failures: int = 0
    failures: Dict[str, int] = field(default_factory=dict)
    last_failure: str = ""
    last_reject: str = ""
    last_chunk_reason: str = ""
    boundary_jump_last: float = float("nan")
    boundary_jump_max: float = 0.0
    dropped_last: int = 0
    truncated_prompts: int = 0
    holds: Dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    divergence: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_chunk(self, result: Any, report: Any) -> None:
        with self.lock:
            self.inferences += 1
            self.consecutive_failures = 0
            self.last_reject = ""
            self.truncated_prompts += int(result.truncated_prompt)
            self.dropped_last = report.dropped
            self.last_chunk_reason = report.reason
            if report.accepted:
                self.boundary_jump_last = report.boundary_jump
                self.boundary_jump_max = max(self.boundary_jump_max, report.boundary_jump)

    def record_failure(self, stage: str, err: BaseException) -> int:
        with self.lock:
            self.failures[stage] = self.failures.get(stage, 0) + 1
            self.last_failure = f"{stage}: {err}"[:200]
            if stage != "shadow":
                self.consecutive_failures += 1
            return self.consecutive_failures

    def switch_requested(self, label: str) -> None:
        """A backend (label) was requested. Requesting the one that runs again withdraws the
        failed switch, so its warning clears: the worker skips a switch to the running spec and
        reports nothing, and the warning would otherwise stay for the rest of the run."""
        with self.lock:
            self.backend_requested = label
            if label == self.backend_active:
                self.backend_error = ""

    def backend_event(self, role: str, spec: Any, err: Optional[BaseException]) -> None:
        label = spec.label() if spec is not None else ""
        with self.lock:
            if role == "primary":
                if err is None:
                    self.backend_active, self.backend_error = label, ""
                else:
                    self.backend_error = f"{label}: {err}"[:200]
            elif err is None:
                self.shadow_active, self.shadow_error = label, ""
                if spec is None:
                    self.divergence = None
            else:
                self.shadow_active, self.shadow_error = "", f"{label}: {err}"[:200]


def _ms(seconds: Optional[float]) -> float:
    return float("nan") if seconds is None else seconds * 1e3


def likely_loss_cause(transport: str, reliability: str, offered: str) -> str:
    """One line on why a camera delivers fewer frames than its stamps say were published."""
    if reliability == "best_effort" and transport == "raw":
        hint = ("best-effort delivery of large raw frames: DDS drops samples that do not fit the "
                "shared-memory segment or socket buffers")
        if offered == "reliable":
            hint += "; the publisher offers reliable: set qos.image_reliability auto or reliable"
        return hint + ("; or enlarge the Fast DDS buffers / use the compressed transport "
                       "(docs/deployment.md)")
    if reliability == "best_effort":
        return ("best-effort delivery loses samples under load (socket buffers); use reliable or "
                "enlarge the buffers (docs/deployment.md)")
    return ("reliable delivery with depth 1 still skips frames the node reads too late: CPU load "
            "on this host, or a slow link; check the publisher's rate and the node's CPU")


def camera_delivery(stats: Any, now: float, transport: str, qos_values: Dict[str, Any]
                    ) -> Tuple[Dict[str, Any], str]:
    """Delivery values of one camera and a warning ('' when fine)."""
    rates = stats.delivery(now)
    values = {"received_rate_hz": rates["received_hz"], "stamped_rate_hz": rates["stamped_hz"],
              "delivered_fraction": rates["delivered"]}
    values.update(qos_values)
    delivered = rates["delivered"]
    if delivered == delivered and delivered < LOSSY_BELOW:
        cause = likely_loss_cause(transport, qos_values.get("qos_reliability", ""),
                                  qos_values.get("publishers_offer", ""))
        return values, (f"receiving {rates['received_hz']:.1f} Hz of {rates['stamped_hz']:.1f} "
                        f"Hz published (header stamps); likely cause: {cause}")
    return values, ""


def input_statuses(node: Any, now: float, hardware_id: str) -> list:
    cfg, hub = node.cfg, node.hub
    out = []
    required = {f"camera {c.name}": c.required for c in cfg.cameras}
    cameras = {f"camera {c.name}": c for c in cfg.cameras}
    required["joint_states"] = True
    limits = {"joint_states": cfg["sync.max_state_age_s"]}
    subs = getattr(node, "camera_subs", None)
    since_start = time.monotonic() - node.status.started_steady
    for key, stats in hub.stats.items():
        rate = stats.rate()
        if key == "instruction":
            text = hub.assembler.instruction
            level = "OK" if text else "WARN"
            message = "in force" if text else "waiting for an instruction"
            if stats.last_reject:
                message += f"; last refusal: {stats.last_reject}"
            out.append(diagnostic_status(f"{PREFIX}: instruction", level, message,
                                         hardware_id, {"instruction": text[:120],
                                                       "received": stats.count,
                                                       "last_reject": stats.last_reject}))
            continue
        age = float("nan") if stats.last_stamp is None else now - stats.last_stamp
        limit = limits.get(key, cfg["sync.max_image_age_s"])
        values: Dict[str, Any] = {"rate_hz": rate, "age_s": age, "received": stats.count,
                                  "zero_stamps": stats.zero_stamps,
                                  "last_reject": stats.last_reject}
        loss = ""
        if key in cameras:
            cam = cameras[key]
            qos_values = subs.describe(cam.name) if subs is not None else {}
            extra, loss = camera_delivery(stats, now, cam.transport, qos_values)
            values.update(extra)
        if stats.count == 0:
            level = "ERROR" if required[key] and since_start > cfg["sync.startup_timeout_s"] \
                else "WARN"
            message = "no message received"
        elif stats.last_stamp is None or stats.refused_latest:
            level = "ERROR" if required[key] else "WARN"
            message = "refusing messages"
        elif age > limit:
            level, message = ("ERROR" if required[key] else "WARN"), f"stale ({age:.3f} s)"
        elif loss:
            level, message = "WARN", loss
        else:
            level, message = "OK", "receiving"
        if loss and level != "WARN":
            message += f"; {loss}"
        if stats.last_reject:
            message += f"; last refusal: {stats.last_reject}"
        out.append(diagnostic_status(f"{PREFIX}: {key}", level, message, hardware_id, values))
    return out


def policy_status(node: Any, state: str, hardware_id: str):
    cfg, st, sched = node.cfg, node.status, node.scheduler
    latency = sched.latency
    rejects = node.hub.rejects()
    limiter = sched.limiter.counters if sched.limiter is not None else {}
    values: Dict[str, Any] = {
        "lifecycle_state": state,
        "backend": st.backend_active, "backend_requested": st.backend_requested or
        st.backend_active, "backend_error": st.backend_error,
        "model": f"{node.loader.config.model_type} {node.loader.path}",
        "embedded_demo_model": node.loader.embedded,
        "dry_run": node._dry_run(),
        "instruction": node.hub.assembler.instruction[:120],
        "latency_last_ms": _ms(latency.last), "latency_p50_ms": _ms(latency.p50),
        "latency_p95_ms": _ms(latency.p95), "delay_steps": sched.delay_steps,
        "schedule_mode": sched.effective_mode, "inferences": st.inferences,
        "queue_depth": st.queue_depth, "hold_reason": sched.hold_reason,
        "last_reject": st.last_reject, "last_chunk_refusal": st.last_chunk_reason,
        "consecutive_failures": st.consecutive_failures, "last_failure": st.last_failure,
        "chunk_boundary_jump_last": st.boundary_jump_last,
        "chunk_boundary_jump_max": st.boundary_jump_max, "dropped_last": st.dropped_last,
        "truncated_prompts": st.truncated_prompts,
    }
    if node.worker is not None:
        values.update({f"device.{k}": v for k, v in node.worker.description.items()})
    values.update(process_tuning.describe(getattr(node, "_tuning", None)))
    values.update({f"reject.{k}": v for k, v in sorted(rejects.items())})
    values.update({f"clip.{k}": v for k, v in sorted(limiter.items())})
    values.update({f"queue.{k}": v for k, v in sorted(sched.counters.items())})
    values.update({f"failures.{k}": v for k, v in sorted(st.failures.items())})
    div = st.divergence
    values["shadow_backend"] = st.shadow_active
    values["shadow_error"] = st.shadow_error
    if div is not None:
        values.update({"ab_pcc": div.pcc, "ab_max_abs_diff": div.max_abs_diff,
                       "ab_shadow_latency_ms": _ms(div.shadow_latency_s)})
    if st.consecutive_failures >= cfg["safety.max_consecutive_failures"]:
        level, message = "ERROR", f"holding after {st.consecutive_failures} failed inferences"
    elif st.backend_error:
        level, message = "WARN", f"backend switch failed: {st.backend_error}"
    elif sched.hold_reason and st.last_reject:
        level, message = "WARN", f"holding: {sched.hold_reason}; no observation: {st.last_reject}"
    elif sched.hold_reason:
        level, message = "WARN", f"holding: {sched.hold_reason}"
    else:
        level, message = "OK", "publishing" + (" (dry run)" if values["dry_run"] else "")
    return diagnostic_status(f"{PREFIX}: policy", level, message, hardware_id, values)


def build(node: Any, state: str) -> DiagnosticArray:
    """The whole DiagnosticArray for one period."""
    now = node._now()
    hardware_id = node.get_fully_qualified_name()
    statuses = [policy_status(node, state, hardware_id)]
    statuses += input_statuses(node, now, hardware_id)
    return diagnostic_array(node.get_clock().now().to_msg(), statuses)
