"""Figures and plots of an offline replay: latency per backend, A/B divergence, actions over time.

Divergence compares backend A and B chunk by chunk on the same observation and noise: per joint
over all (tick, horizon) values PCC, max and mean |A - B|, plus the first tick whose max |A - B|
exceeds a threshold (robot units). Plots use matplotlib's Agg backend (no display). Counterpart:
tools/replay.py (collects the records), ros/inference_worker.py (the node's own shadow PCC).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

COLORS = {"a": "tab:blue", "b": "tab:orange"}

@dataclass
class TickRecord:
    """One inference tick: the observation and each backend's absolute-position chunk [H, n]."""

    tick: int
    now: float  # node-clock (bag) seconds
    t_obs: float
    state: np.ndarray  # [n] measured positions of the action joints at t_obs
    chunks: Dict[str, np.ndarray] = field(default_factory=dict)  # backend key -> [H, n]
    latency_ms: Dict[str, float] = field(default_factory=dict)
    request_id: int = -1
    delay_steps: int = 0  # RTC's frozen prefix d for this inference (0 without guidance)
    normalized: Dict[str, np.ndarray] = field(default_factory=dict)  # key -> [H, max_action_dim]
    target: Optional[np.ndarray] = None  # RTC's Y [H, max_action_dim] when guided
    accepted: Optional[bool] = None  # backend A's chunk taken by the queue (None: not yet due)
    boundary_jump: float = float("nan")  # max |new - old command| at its switch (robot units)


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of flattened arrays; 1.0 when both are constant and equal."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if denom == 0.0:
        return 1.0 if np.array_equal(np.asarray(a), np.asarray(b)) else 0.0
    return float((x * y).sum() / denom)


def latency_summary(samples_ms: Sequence[float]) -> Dict[str, Optional[float]]:
    if not samples_ms:
        return {"count": 0, "p50": None, "p95": None, "max": None, "mean": None}
    arr = np.asarray(samples_ms, dtype=np.float64)
    p50, p95 = np.percentile(arr, [50, 95])
    return {"count": int(arr.size), "p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "max": round(float(arr.max()), 3), "mean": round(float(arr.mean()), 3)}


def actions_digest(records: Sequence[TickRecord], key: str) -> str:
    """SHA-256 over every chunk's float64 bytes: equal digests mean bit-identical actions."""
    h = hashlib.sha256()
    for r in records:
        if key in r.chunks:
            h.update(np.int64(r.tick).tobytes() + np.ascontiguousarray(r.chunks[key]).tobytes())
    return h.hexdigest()


def divergence(records: Sequence[TickRecord], joint_names: Sequence[str], threshold: float,
               a: str = "a", b: str = "b") -> Dict[str, Any]:
    """Per-joint and per-tick divergence of backend b from backend a."""
    pairs = [r for r in records if a in r.chunks and b in r.chunks]
    if not pairs:
        return {"compared_ticks": 0}
    xa = np.stack([r.chunks[a] for r in pairs])  # [K, H, n]
    xb = np.stack([r.chunks[b] for r in pairs])
    diff = np.abs(xa - xb)
    per_joint = {name: {"pcc": round(pcc(xa[:, :, j], xb[:, :, j]), 9),
                        "max_abs_diff": float(diff[:, :, j].max()),
                        "mean_abs_diff": float(diff[:, :, j].mean())}
                 for j, name in enumerate(joint_names)}
    per_tick = [{"tick": r.tick, "t_obs": round(r.t_obs, 6), "pcc": round(pcc(pa, pb), 9),
                 "max_abs_diff": float(d.max())}
                for r, pa, pb, d in zip(pairs, xa, xb, diff)]
    first = next((t for t in per_tick if t["max_abs_diff"] > threshold), None)
    return {"compared_ticks": len(pairs), "threshold": threshold, "pcc": round(pcc(xa, xb), 9),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "first_divergent_tick": first, "per_joint": per_joint, "per_tick": per_tick}


def write_plots(out_dir: Path, records: Sequence[TickRecord], labels: Dict[str, str],
                joint_names: Sequence[str], dt: float, t0: float,
                div: Optional[Dict[str, Any]], trace: Any = None) -> List[str]:
    """actions.png (chunks, the commanded positions and the chunk switches), latency.png and
    (with two backends) divergence.png; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    paths = [_plot_actions(out_dir / "actions.png", records, labels, joint_names, dt, t0,
                           trace),
             _plot_latency(out_dir / "latency.png", records, labels)]
    if div and div.get("compared_ticks"):
        paths.append(_plot_divergence(out_dir / "divergence.png", div, labels, t0))
    return paths


def _plot_actions(path: Path, records: Sequence[TickRecord], labels: Dict[str, str],
                  joint_names: Sequence[str], dt: float, t0: float, trace: Any = None) -> str:
    import matplotlib.pyplot as plt

    commands = np.array(trace.commands) if trace is not None and trace.commands else None

    n = len(joint_names)
    cols = 2 if n > 3 else 1
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.8 * rows + 1), sharex=True,
                             squeeze=False)
    # each chunk solid up to the next observation (what would play), faint beyond
    ends = [r.t_obs for r in records[1:]] + [np.inf]
    for j, name in enumerate(joint_names):
        ax = axes[j // cols][j % cols]
        for r, end in zip(records, ends):
            for key, chunk in r.chunks.items():
                times = r.t_obs + dt * np.arange(chunk.shape[0])
                played = times <= end + 1e-9
                ls = "-" if key == "a" else "--"
                ax.plot(times[played] - t0, chunk[played, j], color=COLORS[key], lw=1.0, ls=ls)
                ax.plot(times[~played] - t0, chunk[~played, j], color=COLORS[key], lw=0.6,
                        alpha=0.2, ls=ls)
        ax.plot([r.t_obs - t0 for r in records], [r.state[j] for r in records], "k.", ms=3)
        if commands is not None:
            ax.plot(np.array(trace.times) - t0, commands[:, j], color="0.3", lw=0.8)
            for t in trace.switch_times:
                ax.axvline(t - t0, color="0.6", lw=0.5, ls=":")
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=COLORS[k], ls="-" if k == "a" else "--", label=v)
               for k, v in labels.items()]
    handles.append(plt.Line2D([], [], color="k", marker=".", ls="", label="measured state"))
    if commands is not None:
        handles.append(plt.Line2D([], [], color="0.3", label="commanded (switches dotted)"))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8)
    fig.supxlabel("bag time [s]")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


def _plot_latency(path: Path, records: Sequence[TickRecord], labels: Dict[str, str]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in labels.items():
        lat = [r.latency_ms[key] for r in records if key in r.latency_ms]
        if lat:
            ax.hist(lat, bins=min(30, max(5, len(lat) // 2)), alpha=0.6, color=COLORS[key],
                    label=label)
    ax.set_xlabel("inference latency [ms], wall clock")
    ax.set_ylabel("inferences")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _plot_divergence(path: Path, div: Dict[str, Any], labels: Dict[str, str], t0: float) -> str:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    t = [p["t_obs"] - t0 for p in div["per_tick"]]
    # log axes; exact agreement (0) is drawn at 1e-12 so it stays visible
    ax1.plot(t, [max(p["max_abs_diff"], 1e-12) for p in div["per_tick"]], "o-", ms=3)
    ax1.axhline(max(div["threshold"], 1e-12), color="r", ls=":", label="threshold")
    ax1.set_ylabel("max |A - B| per chunk")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.plot(t, [max(1.0 - p["pcc"], 1e-12) for p in div["per_tick"]], "o-", ms=3)
    ax2.set_ylabel("1 - PCC per chunk")
    ax2.set_yscale("log")
    ax2.set_xlabel("bag time [s]")
    fig.suptitle(f"{labels['a']} vs {labels['b']}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
