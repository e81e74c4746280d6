"""Soak benchmark: thousands of 50 Hz control ticks on simulated time through the node's own core.

Drives the node's ControlCore (control/pipeline.py) and InferenceWorker, configured from the node's
parameter table and shipped params file, with random camera drops, joint-state gaps, instruction
changes and backend toggles (torch float32 <-> bfloat16 by default). Inference runs for real; its
simulated latency is 2-5 ticks. Checks every published point (finite, inside limits) and reports
holds by reason, RSS growth after warm-up and thread counts. Counterpart: ros/node.py.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from pi0_ttnn_node.backends import BackendSpec, TorchSpec
from pi0_ttnn_node.checkpoint import load_checkpoint
from pi0_ttnn_node.control.node_config import build_node_config
from pi0_ttnn_node.control.parameters import node_values, shipped_params_file
from pi0_ttnn_node.control.pipeline import ControlCore, make_assembler
from pi0_ttnn_node.control.safety import Limits
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.image_conversion import raw_image_decoder
from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig
from pi0_ttnn_node.ros.inference_worker import InferenceWorker
from pi0_ttnn_node.ttnn_backend.ttnn_config import TtRuntimeConfig

CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
JOINTS = [f"joint_{i}" for i in range(1, 8)] + ["gripper"]
INSTRUCTIONS = ("pick up the red cube", "open the top drawer", "push the green block left",
                "fold the towel in half")
TOL = 1e-9


@dataclass
class SoakConfig:
    ticks: int = 10_000
    rate_hz: float = 50.0
    seed: int = 0
    num_steps: int = 0  # 0 = the checkpoint's (10)
    backends: str = "float32,bfloat16"  # torch dtypes (or "ttnn") cycled by the toggles
    toggle_every: int = 2000
    camera_drop_p: float = 0.03  # per camera and tick
    camera_outage_p: float = 0.001  # per tick: the primary camera stops for 10-60 ticks
    joint_gap_p: float = 0.002  # per tick: joint states stop for 5-30 ticks
    instruction_p: float = 0.001  # per tick: a new instruction
    warmup_ticks: int = 1000  # RSS/thread baseline; later if the toggles have not loaded all yet
    torch_threads: int = 1
    json_path: str = ""


@dataclass
class SoakReport:
    ticks: int = 0
    inferences: int = 0
    chunks_accepted: int = 0
    published_trajectories: int = 0
    holds: Dict[str, int] = field(default_factory=dict)
    observation_rejects: Dict[str, int] = field(default_factory=dict)
    chunk_refusals: Dict[str, int] = field(default_factory=dict)
    inference_failures: int = 0
    backend_switches: List[str] = field(default_factory=list)
    instruction_changes: int = 0
    unsafe_commands: int = 0
    warmup_ticks: int = 0
    rss_mb_start: float = 0.0
    rss_mb_end: float = 0.0
    rss_mb_max: float = 0.0
    rss_growth_pct: float = 0.0
    threads_min: int = 0
    threads_max: int = 0
    wall_s: float = 0.0


def proc_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def unsafe_points(positions: np.ndarray, velocities: np.ndarray, times: np.ndarray,
                  start: np.ndarray, limits: Limits, now: float) -> int:
    """Count published points that are non-finite, outside the box or faster than allowed."""
    bad = ~np.isfinite(positions).all(axis=1) | ~np.isfinite(velocities).all(axis=1)
    bad |= ((positions < limits.position_lower - TOL) | (positions > limits.position_upper + TOL)
            ).any(axis=1)
    bad |= (np.abs(velocities) > limits.max_velocity + TOL).any(axis=1)
    prev_t = np.concatenate(([now], times[:-1]))
    prev_p = np.vstack((start[None, :], positions[:-1]))
    speed = np.abs(positions - prev_p) / np.maximum(times - prev_t, 1e-12)[:, None]
    # points are limited per period dt; a first point closer than dt may carry up to one period
    bad[1:] |= (speed[1:] > limits.max_velocity * (1 + 1e-6) + TOL).any(axis=1)
    bad |= np.diff(np.concatenate(([now], times))) <= 0
    return int(bad.sum())


class Soak:
    """Simulated robot + clock around the node's core objects."""

    def __init__(self, cfg: SoakConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.dt = 1.0 / cfg.rate_hz
        self.path = ensure_embedded_checkpoint("pi0")
        self.checkpoint = load_checkpoint(self.path)
        # the node's shipped parameters, except: the random demo model's actions are far from any
        # state, so a start jump up to the box width is allowed and the velocity limit ramps there
        values = node_values([str(shipped_params_file())], overrides={
            "control_rate_hz": cfg.rate_hz, "cameras.names": list(CAMERAS),
            "state.joint_names": JOINTS, "action.joint_names": JOINTS[:7],
            "limits.position_lower": [-2.0] * 7, "limits.position_upper": [2.0] * 7,
            "limits.max_velocity": [3.0] * 7, "limits.max_start_jump": 4.0,
            "instruction.default": "", "policy.noise_seed": cfg.seed})
        self.node_config = build_node_config(values)
        self.limits = self.node_config.limits
        model = self.checkpoint.config
        self.assembler = make_assembler(self.node_config,
                                        lambda text: self.core.reset("instruction"))
        self.joints = self.assembler.joints
        self.core = ControlCore(self.node_config, model.chunk_size, self.assembler,
                                model.max_action_dim)
        self.scheduler = self.core.scheduler
        self.assembler.set_instruction(INSTRUCTIONS[0])
        self.frames = [self.rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
        self.report = SoakReport()
        self.now = 100.0
        self.state = np.zeros(8)
        self._done = threading.Event()
        self._result = None
        self.worker = InferenceWorker(self._make_policy, self._warmup, self.core.prepare,
                                      self._on_result, self._on_reject, self._on_failure,
                                      lambda div: None, self._on_backend)

    # ---- worker side ----------------------------------------------------------------------------
    def _make_policy(self, name: str) -> Pi0Policy:
        """`name`: a torch dtype, or "ttnn" (on its CPU emulation)."""
        backend = "ttnn" if name == "ttnn" else "torch"
        spec = BackendSpec(backend, TorchSpec(dtype=name if backend == "torch" else "float32",
                                              threads=self.cfg.torch_threads),
                           TtRuntimeConfig(emulate=True))
        cfg = PolicyConfig(str(self.path), spec=spec, num_steps=self.cfg.num_steps,
                           noise_seed=self.cfg.seed)
        return Pi0Policy.load(cfg, checkpoint=self.checkpoint)

    def _warmup(self, policy: Pi0Policy) -> List[float]:
        return []

    def _on_result(self, result) -> None:
        self._result = result
        self._done.set()

    def _on_reject(self, request_id: int, err) -> None:
        self._result = ("reject", request_id, err.reason)
        self._done.set()

    def _on_failure(self, stage: str, request_id: int, err) -> None:
        self._result = ("failure", request_id, f"{stage}: {err!r}")
        self._done.set()

    def _on_backend(self, role: str, spec, err) -> None:
        self.report.backend_switches.append(f"{spec}{' FAILED ' + repr(err) if err else ''}")

    # ---- simulation -----------------------------------------------------------------------------
    def run(self) -> SoakReport:
        cfg, rep = self.cfg, self.report
        specs = cfg.backends.split(",")
        self.worker.start()
        self.worker.load(specs[0]).result()
        # warm-up ends once every backend has been loaded once (first loads allocate for good)
        warm = cfg.warmup_ticks
        if cfg.toggle_every * len(specs) + 100 < cfg.ticks:
            warm = max(warm, cfg.toggle_every * len(specs) + 100)
        rep.warmup_ticks = warm
        camera_off = joints_off = 0
        t_start = time.perf_counter()
        for k in range(cfg.ticks):
            self.now += self.dt
            if k == warm:
                rep.rss_mb_start = proc_status("VmRSS") / 1024
            if k and k % cfg.toggle_every == 0:
                self.worker.request_switch(specs[(k // cfg.toggle_every) % len(specs)])
            if self.rng.random() < cfg.instruction_p:
                rep.instruction_changes += int(self.assembler.set_instruction(
                    str(self.rng.choice(INSTRUCTIONS))))
            camera_off = max(camera_off - 1, 0) or (
                int(self.rng.integers(10, 60)) if self.rng.random() < cfg.camera_outage_p else 0)
            joints_off = max(joints_off - 1, 0) or (
                int(self.rng.integers(5, 30)) if self.rng.random() < cfg.joint_gap_p else 0)
            self._publish_inputs(camera_off > 0, joints_off > 0)
            self._control_tick()
            if k >= warm and k % 250 == 0:
                rep.rss_mb_max = max(rep.rss_mb_max, proc_status("VmRSS") / 1024)
                threads = proc_status("Threads")
                rep.threads_min = min(rep.threads_min or threads, threads)
                rep.threads_max = max(rep.threads_max, threads)
        self.worker.stop()
        rep.ticks = cfg.ticks
        rep.wall_s = time.perf_counter() - t_start
        rep.rss_mb_end = proc_status("VmRSS") / 1024
        rep.rss_growth_pct = 100.0 * (rep.rss_mb_end / max(rep.rss_mb_start, 1e-9) - 1.0)
        rep.observation_rejects = dict(self.assembler.counters)
        for key, n in self.scheduler.counters.items():
            if key.startswith("hold_"):
                rep.holds[key[5:]] = n
            elif key.startswith("reject_"):
                rep.chunk_refusals[key[7:]] = n
        return rep

    def _publish_inputs(self, camera_off: bool, joints_off: bool) -> None:
        stamp = self.now - 0.01  # 10 ms of camera and driver latency
        for i, cam in enumerate(CAMERAS):
            if (i == 0 and camera_off) or self.rng.random() < self.cfg.camera_drop_p:
                continue
            img = self.frames[int(self.rng.integers(len(self.frames)))]
            self.assembler.add_image(cam, stamp, raw_image_decoder("rgb8", 48, 64, 64 * 3,
                                                                   img.tobytes()))
        if not joints_off:
            self.joints.add(stamp, JOINTS, self.state + self.rng.normal(0, 1e-3, 8))

    def _control_tick(self) -> None:
        rep = self.report
        tick = self.core.tick(self.now)
        rep.chunks_accepted += sum(a.report.accepted for a in tick.accepted)
        start = self.core.current_command(self.now)
        traj = tick.trajectory
        if traj is None:
            if start is not None:  # the node publishes a one-point hold at the current command
                rep.unsafe_commands += unsafe_points(start[None, :], np.zeros((1, 7)),
                                                     np.array([self.now + self.dt]), start,
                                                     self.limits, self.now)
        else:
            rep.published_trajectories += 1
            rep.unsafe_commands += unsafe_points(traj.positions, traj.velocities, traj.times,
                                                 start, self.limits, self.now)
            self.state[:7] = traj.positions[0]  # an ideal controller reaches the first point
        if tick.request_id is not None:
            self._infer(tick.request_id)

    def _infer(self, request_id: int) -> None:
        """Run the request on the worker (waiting for it); the result lands 2-5 ticks later."""
        while self.worker.busy:  # the worker clears its flag just after the callback returns
            time.sleep(1e-4)
        self._done.clear()
        if not self.worker.request_inference(request_id):
            self.core.on_failed(request_id)
            return
        if not self._done.wait(600):
            raise RuntimeError("the inference worker did not answer within 600 s")
        result = self._result
        if isinstance(result, tuple):
            self.core.on_failed(request_id, "inference_skipped" if result[2] == "no_new_frame"
                                else "inference_failed")
            self.report.inference_failures += int(result[0] == "failure")
            return
        self.report.inferences += 1
        self.core.on_result(result, self.now + self.dt * int(self.rng.integers(2, 6)))


def print_report(rep: SoakReport) -> None:
    rows = [("ticks", rep.ticks), ("inferences", rep.inferences),
            ("chunks accepted", rep.chunks_accepted),
            ("trajectories published", rep.published_trajectories),
            ("holds by reason", rep.holds), ("observation rejects", rep.observation_rejects),
            ("chunk refusals", rep.chunk_refusals), ("inference failures", rep.inference_failures),
            ("backend switches", rep.backend_switches),
            ("instruction changes", rep.instruction_changes),
            (f"RSS MB at tick {rep.warmup_ticks} / end",
             f"{rep.rss_mb_start:.1f} / {rep.rss_mb_end:.1f} ({rep.rss_growth_pct:+.2f} %), "
             f"max {rep.rss_mb_max:.1f}"),
            ("threads min / max", f"{rep.threads_min} / {rep.threads_max}"),
            ("unsafe commands published", rep.unsafe_commands), ("wall s", f"{rep.wall_s:.1f}")]
    for name, value in rows:
        print(f"{name:28s} {value}")


def main(argv: Optional[List[str]] = None) -> int:
    """Console script `pi0-soak`: run the soak, print the report, exit 1 on an unsafe command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in SoakConfig.__dataclass_fields__.values():
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default),
                            default=f.default)
    args = parser.parse_args(argv)
    cfg = SoakConfig(**{k: v for k, v in vars(args).items()})
    rep = Soak(cfg).run()
    print_report(rep)
    if cfg.json_path:
        with open(cfg.json_path, "w") as fh:
            json.dump(asdict(rep), fh, indent=1)
    return 0 if rep.unsafe_commands == 0 and math.isfinite(rep.rss_growth_pct) else 1


if __name__ == "__main__":
    raise SystemExit(main())
