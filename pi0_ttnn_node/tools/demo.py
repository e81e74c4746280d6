"""Main job: the policy on the embedded default checkpoint, fed with replayed observations.

`--offline` runs the ROS-free policy directly (no DDS). The default runs the real lifecycle node
over DDS (loopback only) fed by a replay of recorded observations, prints the trajectories it
publishes with their latency, and stops by itself (see pi0_ttnn_node/tools/demo_ros.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

import numpy as np

from pi0_ttnn_node.backends import BackendSpec, TorchSpec
from pi0_ttnn_node.embedded import ensure_embedded_checkpoint
from pi0_ttnn_node.preprocessing import Observation
from pi0_ttnn_node.ttnn_backend.ttnn_config import add_ttnn_arguments, runtime_config_from_args

LOG = logging.getLogger("pi0_demo")


def recorded_observations(camera_names, state_dim: int, count: int, seed: int = 0):
    """A short deterministic 'recording': moving coloured blocks and a smooth joint trajectory."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, (480, 640, 3), dtype=np.uint8)
    for i in range(count):
        images = {}
        for c, name in enumerate(camera_names):
            frame = base.copy()
            x = 40 + (i * 23 + c * 97) % 520
            frame[200:280, x:x + 80] = (200, 40 + 60 * c, 30)
            images[name] = frame
        state = 0.3 * np.sin(0.2 * i + np.arange(state_dim, dtype=np.float32))
        yield Observation(images=images, state=state.astype(np.float32),
                          instruction="pick up the red block and place it in the bowl",
                          timestamp=i * 0.1)


def run_offline(model_type: str, spec: BackendSpec, steps: int) -> int:
    from pi0_ttnn_node.policy import Pi0Policy, PolicyConfig

    ckpt_dir = ensure_embedded_checkpoint(model_type)
    print(f"embedded default checkpoint (tiny, random weights, demo only): {ckpt_dir}")
    cfg = PolicyConfig(checkpoint_dir=str(ckpt_dir), spec=spec, noise_seed=0)
    policy = Pi0Policy.load(cfg)
    print(f"backend: {policy.backend.describe()}")
    feats = policy.config.features
    observations = list(recorded_observations(feats.camera_names, feats.state_dim, steps))
    policy.warmup(1, observations[0])
    latencies: List[float] = []
    for i, obs in enumerate(observations):
        chunk = policy.sample([obs])
        latencies.append(chunk.timings_ms["total"])
        first = np.array2string(chunk.actions[0, 0], precision=3, suppress_small=True)
        print(f"[{i:02d}] t={obs.timestamp:4.1f}s chunk {chunk.actions.shape[1]}x"
              f"{chunk.actions.shape[2]} first action {first} "
              f"({chunk.timings_ms['total']:.1f} ms: pre {chunk.timings_ms['preprocess']:.1f}, "
              f"model {chunk.timings_ms['model']:.1f})")
    print(f"latency median {np.median(latencies):.1f} ms, p95 {np.percentile(latencies, 95):.1f} ms"
          f" over {len(latencies)} inferences")
    policy.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-type", choices=("pi0", "pi05"), default="pi0")
    p.add_argument("--backend", choices=("torch", "ttnn"), default="torch")
    p.add_argument("--steps", type=int, default=10,
                   help="observations to replay (--offline) or seconds of recording (node demo)")
    p.add_argument("--offline", action="store_true", help="run the policy without ROS / DDS")
    p.add_argument("--seconds", type=float, default=20.0, help="node demo duration bound")
    add_ttnn_arguments(p)  # --ttnn-emulate runs TTNN on the CPU emulation (no card)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.offline:
        spec = BackendSpec(args.backend, TorchSpec(), runtime_config_from_args(args))
        return run_offline(args.model_type, spec, args.steps)
    from pi0_ttnn_node.tools.demo_ros import run_node_demo

    return run_node_demo(args.model_type, args.backend, args.ttnn_emulate, args.steps,
                         args.seconds)


if __name__ == "__main__":
    sys.exit(main())
