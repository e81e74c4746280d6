"""Everything to run on a machine with a Tenstorrent card, in one command, one folder to send back.

    .venv/bin/python tools/tt_device_suite.py [--out tt_device_report] [--checkpoint DIR]

1. records the environment (ttnn version, /dev/tenstorrent*, tt-smi -s when installed);
2. runs the card variants of the TTNN tests (`pytest -m tt_device test/ttnn_backend`): end-to-end
   PCC vs the Torch backend (accurate and fast presets, tiny and mid sizes), one upload / one
   download per call, no transfer inside vision / prefill / denoise, trace replay == eager,
   whole-inference trace with 2 command queues, pipelined 2-CQ calls;
3. times `bench_ttnn --ttnn-preset fast --trace whole --cqs 2` (and the accurate preset) for PI0
   and PI0.5 on the mid-size random model, the full-size random model (--full) or a checkpoint.
Every command's output goes to <out>/; send that folder back (docs/ttnn_backend.md says what is in
it). Run from a source checkout (the tests are not installed with the package).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]


def run(cmd: List[str], log: Path, timeout: int) -> int:
    """Run one command from the repository root; stdout + stderr to `log`; return its exit code."""
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            return subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\nTIMEOUT after {timeout} s\n")
            return 124


def environment() -> dict:
    info = {"date_utc": datetime.datetime.utcnow().isoformat(), "python": sys.version,
            "cards": sorted(glob.glob("/dev/tenstorrent*"))}
    try:
        import importlib.metadata as md

        info["ttnn"] = md.version("ttnn")
    except Exception as err:  # report, do not fail: the card tests will say more
        info["ttnn"] = f"unknown ({err})"
    if shutil.which("tt-smi"):
        result = subprocess.run(["tt-smi", "-s"], capture_output=True, text=True, timeout=60)
        info["tt_smi"] = result.stdout[-20000:]
    return info


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tt_device_report")
    p.add_argument("--checkpoint", default="", help="also time this checkpoint")
    p.add_argument("--full", action="store_true", help="also time the full-size random models")
    p.add_argument("--iterations", type=int, default=20)
    a = p.parse_args(argv)
    out = (REPO / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    if not env["cards"]:
        print("no /dev/tenstorrent* found: this suite is for a machine with a card",
              file=sys.stderr)
        return 2
    py = sys.executable
    codes = {}
    codes["tests"] = run([py, "-m", "pytest", "-m", "tt_device", "-p", "no:cacheprovider", "-rA",
                          "-s", f"--junitxml={out / 'tests.xml'}", "test/ttnn_backend"],
                         out / "tests.log", timeout=6 * 3600)
    sources = [["--size", "mid"]] + ([["--size", "full"]] if a.full else []) + \
        ([["--checkpoint", a.checkpoint]] if a.checkpoint else [])
    for source in sources:
        for model_type in ("pi0", "pi05"):
            for preset, extra in (("fast", ["--trace", "whole", "--cqs", "2"]),
                                  ("fast", ["--trace", "whole", "--cqs", "2", "--num-steps", "5"]),
                                  ("accurate", [])):
                name = f"bench_{model_type}_{'_'.join(s.strip('-') for s in source)}_{preset}" \
                       f"{'_5steps' if '--num-steps' in extra else ''}"
                name = name.replace("/", "_")
                cmd = [py, "-m", "pi0_ttnn_node.tools.bench_ttnn", "--model-type", model_type,
                       *source, "--ttnn-preset", preset, *extra,
                       "--iterations", str(a.iterations), "--warmup", "3"]
                codes[name] = run(cmd, out / f"{name}.log", timeout=3600)
    (out / "exit_codes.json").write_text(json.dumps(codes, indent=1))
    failed = [k for k, v in codes.items() if v]
    print(f"wrote {out}; send that folder back. failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
