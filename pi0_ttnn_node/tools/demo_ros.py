"""The README's main job: the real lifecycle node on the embedded default, fed over DDS by a bag.

A deterministic recorded session (3 cameras, joint states at 100 Hz, an instruction) is written with
rosbags, then played over DDS with /clock while the node runs with use_sim_time. A listener prints
every action chunk the node publishes (observation stamp, latency in bag time, first action) and a
summary of the controller trajectories; everything stops when the bag ends. DDS stays on loopback.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any, Dict, List

# Set before rclpy is imported anywhere: loopback-only discovery and a private domain.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(5 + os.getpid() % 90))

from pi0_ttnn_node.bag_tools import (DEMO_CAMERAS, DEMO_JOINTS, DEMO_START_NS,  # noqa: E402
                                     make_demo_bag)
from pi0_ttnn_node.control.parameters import shipped_params_file  # noqa: E402
from pi0_ttnn_node.embedded import default_cache_dir, ensure_embedded_checkpoint  # noqa: E402

OUTPUT_TOPIC = "/joint_trajectory_controller/joint_trajectory"
CHUNK_TOPIC = "/pi0_ttnn_node/action_chunk"


def _seconds(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def demo_overrides(backend: str, emulate: bool) -> Dict[str, Any]:
    """Node parameters for the demo on top of config/pi0_ttnn_node.yaml."""
    return {
        "use_sim_time": True,
        "policy.backend": backend,
        "policy.ttnn_emulate": emulate,
        "policy.noise_seed": 0,
        "cameras.topics": [f"{name}/image_raw" for name in DEMO_CAMERAS],
        "state.joint_names": list(DEMO_JOINTS),
        "action.joint_names": list(DEMO_JOINTS[:7]),
        # No robot is attached: show what would be commanded. The tiny model has random weights,
        # so its first actions are far from the recorded pose; a real robot keeps 0.3 rad.
        "safety.dry_run": False,
        "limits.max_start_jump": 10.0,
    }


class Listener:
    """Subscribes to the node's outputs and prints each new action chunk."""

    def __init__(self, node: Any) -> None:
        from trajectory_msgs.msg import JointTrajectory

        self.node = node
        self.trajectories = 0
        self.chunk_latencies: List[float] = []
        node.create_subscription(JointTrajectory, OUTPUT_TOPIC, self._on_trajectory, 10)
        node.create_subscription(JointTrajectory, CHUNK_TOPIC, self._on_chunk, 10)

    def _on_trajectory(self, msg: Any) -> None:
        self.trajectories += 1

    def _on_chunk(self, msg: Any) -> None:
        now = self.node.get_clock().now().nanoseconds * 1e-9
        t_obs = _seconds(msg.header.stamp)
        latency_ms = (now - t_obs) * 1e3
        self.chunk_latencies.append(latency_ms)
        first = ", ".join(f"{p:+.3f}" for p in msg.points[0].positions)
        print(f"chunk #{len(self.chunk_latencies):02d} obs t={t_obs - DEMO_START_NS * 1e-9:6.3f}s  "
              f"{len(msg.points)} points x {len(msg.joint_names)} joints  latency "
              f"{latency_ms:6.1f} ms (bag time)  first [{first}]  controller msgs so far "
              f"{self.trajectories}", flush=True)


def run_node_demo(model_type: str, backend: str, emulate: bool, seconds_of_bag: int,
                  max_wall_s: float) -> int:
    import rclpy
    from rclpy.parameter import Parameter

    from pi0_ttnn_node.ros.node import Pi0PolicyNode
    from pi0_ttnn_node.ros.process import autostart, make_executor
    from pi0_ttnn_node.tools.bag_play import BagPlayer, PlayConfig

    ckpt = ensure_embedded_checkpoint(model_type)
    bag = default_cache_dir() / f"demo-bag-{seconds_of_bag}s"
    if not (bag / "metadata.yaml").is_file():
        if bag.exists():
            import shutil

            shutil.rmtree(bag)
        make_demo_bag(bag, seconds=float(seconds_of_bag))
    print(f"checkpoint: {ckpt} (embedded tiny {model_type}, random weights: demo only)")
    print(f"recorded observations: {bag} (rosbag2, {seconds_of_bag} s, 3 cameras + joint states)")
    print(f"DDS: ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, discovery "
          f"{os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']}")
    params_file = shipped_params_file()  # checkout config/ or the installed share/ copy
    overrides = demo_overrides(backend, emulate)
    overrides["policy.checkpoint_dir"] = str(ckpt)
    overrides["policy.model_type"] = model_type

    rclpy.init()
    node = Pi0PolicyNode(cli_args=["--ros-args", "--params-file", str(params_file)],
                         parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    aux = rclpy.create_node("pi0_demo_player",
                            parameter_overrides=[Parameter("use_sim_time", value=True)])
    listener = Listener(aux)
    executor = make_executor()
    executor.add_node(node)
    executor.add_node(aux)
    spinning = threading.Event()
    spinning.set()

    def spin() -> None:
        while spinning.is_set():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        if not autostart(node):
            print(f"node failed to start: {node.configure_error}")
            return 1
        print(f"node active on backend {node.status.backend_active}; playing the recording...")
        player = BagPlayer(aux, PlayConfig(bag=str(bag), clock_hz=100.0,
                                           wait_for=["/joint_states"], delay=0.5))
        player.wait_for_subscribers()
        watchdog = threading.Timer(max_wall_s, player.stop)
        watchdog.start()
        player.run()
        watchdog.cancel()
        time.sleep(0.5)
    finally:
        node.trigger_deactivate()
        spinning.clear()
        thread.join(2.0)
        executor.shutdown()
        node._release()
        node.destroy_node()
        aux.destroy_node()
        rclpy.shutdown()
    lat = listener.chunk_latencies
    print(f"done in {time.monotonic() - t0:.1f} s wall: {len(lat)} action chunks, "
          f"{listener.trajectories} controller trajectories on {OUTPUT_TOPIC}")
    if lat:
        print(f"chunk latency (observation stamp to chunk, bag time): median "
              f"{statistics.median(lat):.1f} ms, max {max(lat):.1f} ms")
    return 0 if lat and listener.trajectories else 1
