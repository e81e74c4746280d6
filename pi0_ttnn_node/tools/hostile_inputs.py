"""Hostile-input harness: start the node as its own process and attack it over DDS, case by case.

For each case of tools/hostile_cases.py it checks that the node stays active, counts the reject
under the expected reason on /diagnostics, publishes nothing derived from the bad input (commands
are stamped with their observation time, `output.stamp_mode: observation`, so stamps trace them)
and resumes on the next good input. DDS stays on loopback; the domain id is an argument.
Prints one table row per case; exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pi0_ttnn_node
from pi0_ttnn_node.control.parameters import shipped_params_file

NODE_ARGS = {  # fast replanning so resumption shows within a few hundred ms
    "control_rate_hz": "20.0", "policy.num_steps": "2", "policy.warmup_iterations": "1",
    "policy.noise_seed": "0", "policy.torch_threads": "1", "schedule.execute_steps": "1",
    "safety.dry_run": "false", "limits.max_start_jump": "100.0", "output.stamp_mode":
    "observation", "diagnostics.period_s": "0.1", "safety.watchdog_timeout_s": "30.0",
    "instruction.default": "''", "cameras.names": "[base_0_rgb, left_wrist_0_rgb]",
    "cameras.topics": "[cam_high/image_raw, cam_left_wrist/image_raw/compressed]",
    "cameras.required": "[true, true]", "cameras.transports": "[raw, compressed]",
}


@dataclass
class HarnessConfig:
    domain_id: int = 0  # 0 = pick from the process id
    ci_only: bool = False
    rate_hz: float = 20.0
    window_s: float = 0.5
    quiet_s: float = 0.3  # longer than sync.max_state_age_s and max_camera_skew_s
    resume_timeout_s: float = 15.0
    huge_raw: bool = False  # also send a real 7680x4320 rgb8 Image (100 MB) once
    extra_node_args: Dict[str, str] = field(default_factory=dict)


def set_loopback_env(domain_id: int) -> int:
    """Loopback-only DDS on a private domain; must run before rclpy is imported."""
    domain = domain_id or (100 + os.getpid() % 100)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_STATIC_PEERS", None)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    return domain


def start_node(extra: Dict[str, str], log_path: Path) -> subprocess.Popen:
    """The node as a separate process, with the package params file plus test overrides."""
    args = dict(NODE_ARGS, **extra)
    # the shipped params file: config/ in a checkout, share/pi0_ttnn_node/config/ when installed
    cmd = [sys.executable, "-c", "from pi0_ttnn_node.ros.node import main; main()",
           "--ros-args", "--params-file", str(shipped_params_file())]
    for key, value in args.items():
        cmd += ["-p", f"{key}:={value}"]
    # the node process imports this same copy of the package (checkout or install)
    package_root = Path(pi0_ttnn_node.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(package_root) + os.pathsep
               + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def run(cfg: HarnessConfig, log_path: Path) -> List["Row"]:
    """Start the node, run every selected case, stop the node; return the rows."""
    set_loopback_env(cfg.domain_id)
    import rclpy  # noqa: E402 - after the DDS environment is set

    from pi0_ttnn_node.tools import hostile_cases as hc
    from pi0_ttnn_node.tools.hostile_driver import Attacker

    proc = start_node(cfg.extra_node_args, log_path)
    rclpy.init()
    attacker = Attacker(cfg)
    rows: List["Row"] = []
    try:
        if not attacker.wait_active(90.0):
            raise RuntimeError(f"the node did not become active; see {log_path}")
        attacker.start_good_stream()
        if not attacker.wait_output_after(time.time(), cfg.resume_timeout_s * 2):
            raise RuntimeError(f"no trajectory from good input; see {log_path}")
        cases = [c for c in hc.ALL_CASES if c.ci or not cfg.ci_only]
        for case in cases:
            rows.append(attacker.run_case(case))
        if cfg.huge_raw and not cfg.ci_only:
            rows.append(attacker.run_huge_raw())
    finally:
        attacker.close()
        rclpy.shutdown()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def print_table(rows: Sequence["Row"]) -> None:
    header = ("kind", "expected reason", "observed", "published from it", "resumed", "ok")
    widths = (46, 22, 34, 17, 7, 3)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        cells = (r.kind, r.expected or "-", r.observed, r.published_from_it,
                 "yes" if r.resumed else "NO", "ok" if r.ok else "FAIL")
        print("  ".join(str(c)[:w].ljust(w) for c, w in zip(cells, widths)))
        if not r.ok:
            print(f"    FAILED: active={r.active} observed: {r.observed}")
    print(f"{sum(r.ok for r in rows)}/{len(rows)} cases passed")


def main(argv: Optional[List[str]] = None) -> int:
    """Console script `pi0-hostile-inputs`: print the table; exit 1 when a case fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain-id", type=int, default=0)
    parser.add_argument("--ci-only", action="store_true", help="only the fast CI subset")
    parser.add_argument("--huge-raw", action="store_true", help="also send a 100 MB 8K Image")
    parser.add_argument("--log", default="/tmp/pi0_hostile_node.log", help="node output file")
    args = parser.parse_args(argv)
    cfg = HarnessConfig(domain_id=args.domain_id, ci_only=args.ci_only, huge_raw=args.huge_raw)
    rows = run(cfg, Path(args.log))
    print_table(rows)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
