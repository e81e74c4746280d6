"""What a merge mode does to the commanded motion: boundary jump, frozen-prefix error, jerk.

`MergeTrace` watches the control core during a replay (before and after each tick) and measures
at every chunk switch the jump between the command the old queue would have sent at the first
tick the new chunk drives and the command actually sent (robot units, per joint), how far the new
chunk's frozen prefix (actions whose time had passed when it landed) is from the previous chunk,
and the jerk of the commanded positions over the run. `main` is the benchmark behind the table in
docs/control.md: embedded PI0 and PI0.5, one replayed demo bag, identical seeds, simulated delays
d ticks, merge modes replace / blend / rtc-forward / rtc-vjp. Random-weight models: the numbers
compare the mechanics, not task success. Counterparts: tools/replay_engine.py, control/pipeline.py.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

MODES = {"replace": {"merge.mode": "replace"}, "blend": {"merge.mode": "blend"},
         "rtc-forward": {"merge.mode": "rtc", "rtc.method": "forward"},
         "rtc-vjp": {"merge.mode": "rtc", "rtc.method": "vjp"}}


@dataclass
class MergeTrace:
    """Per-tick commands and per-switch measurements of one replay."""

    times: List[float] = field(default_factory=list)
    commands: List[np.ndarray] = field(default_factory=list)
    switch_times: List[float] = field(default_factory=list)
    jumps: List[np.ndarray] = field(default_factory=list)  # [n] per switch
    prefix_errors: List[np.ndarray] = field(default_factory=list)  # [n] per switch with d > 0
    frozen: List[int] = field(default_factory=list)  # actions dropped on arrival, per switch
    _old: Optional[tuple] = None
    _prev_chunk: Optional[tuple] = None  # (t_obs, absolute chunk) of the last accepted one

    def before(self, core: Any, now: float) -> None:
        self._old = core.scheduler.queue_snapshot()

    def after(self, core: Any, tick: Any) -> None:
        for acc in tick.accepted:
            if acc.report.accepted and acc.chunk is not None:
                self._switch(core, tick, acc)
        cmd = core.current_command(tick.now)
        if cmd is not None:
            self.times.append(tick.now)
            self.commands.append(cmd)

    def _switch(self, core: Any, tick: Any, acc: Any) -> None:
        traj = tick.trajectory
        if self._old is not None and traj is not None:
            old_t, old_p = self._old
            t1 = traj.times[0]  # the first action the new chunk drives
            old = np.array([np.interp(t1, old_t, old_p[:, j]) for j in range(old_p.shape[1])])
            self.jumps.append(np.abs(traj.positions[0] - old))
            self.switch_times.append(float(t1))
        d = acc.report.dropped
        self.frozen.append(d)
        if self._prev_chunk is not None and d > 0:
            # the previous chunk at the new chunk's frozen action times (linear, as the queue)
            prev_t, prev = self._prev_chunk
            t_prev = prev_t + core.dt * np.arange(prev.shape[0])
            t_new = acc.result.t_obs + core.dt * np.arange(d)
            t_new = t_new[t_new <= t_prev[-1] + 1e-9]
            if t_new.size:
                old = np.stack([np.interp(t_new, t_prev, prev[:, j])
                                for j in range(prev.shape[1])], axis=1)
                self.prefix_errors.append(np.abs(acc.chunk[:t_new.size] - old).mean(0))
        self._prev_chunk = (acc.result.t_obs, acc.chunk)

    def summary(self, dt: float) -> Dict[str, Any]:
        jumps = np.array(self.jumps) if self.jumps else np.zeros((0, 1))
        pos = np.array(self.commands)
        jerk = np.abs(np.diff(pos, n=3, axis=0)) / dt**3 if len(pos) > 3 else np.zeros((0, 1))
        prefix = np.array(self.prefix_errors) if self.prefix_errors else np.zeros((0, 1))
        return {
            "switches": len(self.jumps),
            "boundary_jump_mean": float(jumps.mean()) if jumps.size else None,
            "boundary_jump_max": float(jumps.max()) if jumps.size else None,
            "boundary_jump_mean_per_joint": jumps.mean(0).round(6).tolist() if jumps.size
            else [],
            "frozen_prefix_mean_actions": float(np.mean(self.frozen)) if self.frozen else None,
            "frozen_prefix_error_mean": float(prefix.mean()) if prefix.size else None,
            "jerk_mean": float(jerk.mean()) if jerk.size else None,
            "jerk_p99": float(np.percentile(jerk, 99)) if jerk.size else None,
        }


def run_one(bag: Path, model: str, mode: str, delay: int, seed: int, steps: int,
            execute_steps: int, out: Path) -> Dict[str, Any]:
    """One replay of `bag` with `mode` at a simulated latency of `delay` ticks."""
    from pi0_ttnn_node.tools import replay

    params = out.with_suffix(".yaml")
    overrides = dict(MODES[mode], **{"schedule.execute_steps": execute_steps})
    lines = ["pi0_ttnn_node:", "  ros__parameters:"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in overrides.items()]
    lines += ["    limits: {position_lower: [-10.0, -10.0, -10.0, -10.0, -10.0, -10.0, -10.0],",
              "             position_upper: [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0],",
              "             max_velocity: [1e4, 1e4, 1e4, 1e4, 1e4, 1e4, 1e4],",
              "             max_start_jump: 100.0}"]
    params.write_text("\n".join(lines) + "\n")
    args = replay.parse_args([str(bag), "--out", str(out), "--params-file", str(params),
                              "--model-type", model, "--seed", str(seed), "--num-steps",
                              str(steps), "--sim-latency-ms", str(delay * 20.0), "--warmup", "1",
                              "--torch-threads", "1", "--no-progress", "--no-plots",
                              "--overwrite"])
    trace = MergeTrace()
    report = replay.run_replay(args, trace=trace)
    result = trace.summary(1.0 / report["control_rate_hz"])
    lat = report["backends"]["a"]["latency_ms"]
    result.update(model=model, mode=mode, delay_ticks=delay, inferences=lat["count"],
                  latency_ms_mean=lat["mean"])
    return result


def main(argv: Optional[List[str]] = None) -> int:
    """Print the merge-mode table (markdown) and write it as JSON."""
    from pi0_ttnn_node import bag_tools as bt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["pi0", "pi05"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--delays", nargs="+", type=int, default=[0, 3, 10])
    p.add_argument("--seconds", type=float, default=6.0, help="length of the demo bag")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--execute-steps", type=int, default=25)
    p.add_argument("--json", default="", help="write the rows here")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bag = bt.make_demo_bag(Path(tmp) / "bag", a.seconds, transport="compressed",
                               image_size=(96, 72), camera_names=("cam_high",))
        for model in a.models:
            for delay in a.delays:
                for mode in a.modes:
                    t0 = time.perf_counter()
                    row = run_one(bag, model, mode, delay, a.seed, a.num_steps,
                                  a.execute_steps, Path(tmp) / f"{model}_{mode}_{delay}")
                    row["wall_s"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print_table(rows)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def print_table(rows: List[Dict[str, Any]]) -> None:
    def f(v: Any, fmt: str = "{:.4f}") -> str:
        return "-" if v is None else fmt.format(v)

    base = {(r["model"], r["delay_ticks"]): r["boundary_jump_mean"] for r in rows
            if r["mode"] == "replace"}
    lat = {(r["model"], r["delay_ticks"]): r["latency_ms_mean"] for r in rows
           if r["mode"] == "replace"}
    print("| model | d | mode | switches | jump mean | jump max | vs replace | frozen d | "
          "prefix err | jerk mean | latency ms | overhead ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        key = (r["model"], r["delay_ticks"])
        ratio = base.get(key) / r["boundary_jump_mean"] if base.get(key) and \
            r["boundary_jump_mean"] else None
        over = r["latency_ms_mean"] - lat[key] if lat.get(key) is not None and \
            r["latency_ms_mean"] is not None else None
        print(f"| {r['model']} | {r['delay_ticks']} | {r['mode']} | {r['switches']} | "
              f"{f(r['boundary_jump_mean'])} | {f(r['boundary_jump_max'])} | "
              f"{f(ratio, '{:.1f}x')} | {f(r['frozen_prefix_mean_actions'], '{:.1f}')} | "
              f"{f(r['frozen_prefix_error_mean'])} | {f(r['jerk_mean'], '{:.1f}')} | "
              f"{f(r['latency_ms_mean'], '{:.1f}')} | {f(over, '{:+.1f}')} |")


if __name__ == "__main__":
    raise SystemExit(main())
