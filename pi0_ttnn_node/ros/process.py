"""The node process: executor choice, signal handling, autostart and the spin loop.

Kept apart from ros/node.py so the node class holds only its lifecycle, entities and the hand-off
to the control core. The executor is single-threaded on purpose (see make_executor). Counterparts:
ros/node.py (Pi0PolicyNode, `main`), tools/demo_ros.py.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any, Callable, List, Optional

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.lifecycle.publisher import LifecyclePublisher
from rclpy.publisher import Publisher
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.signals import SignalHandlerOptions

USAGE = """usage: pi0_ttnn_node [--ros-args --params-file FILE -p name:=value ...]

Lifecycle node serving PI0 / PI0.5 (see config/pi0_ttnn_node.yaml for every parameter).
With autostart (default true) it configures and activates itself. Typical:
  ros2 launch pi0_ttnn_node pi0_ttnn_node.launch.py params_file:=my_robot.yaml
  ros2 run pi0_ttnn_node pi0_ttnn_node --ros-args --params-file my_robot.yaml
"""


def run(make_node: Callable[[], Any], args: Optional[List[str]] = None) -> None:
    """Spin one node on the single-threaded executor until SIGINT / SIGTERM."""
    argv = sys.argv[1:] if args is None else list(args)
    own = argv[:argv.index("--ros-args")] if "--ros-args" in argv else argv
    if "-h" in own or "--help" in own:  # answer without touching DDS
        print(USAGE, end="")
        return
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    # Our own SIGINT/SIGTERM handling: stop the worker and publish the final hold while the ROS
    # context is still valid, instead of rclpy invalidating it under a running executor.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    node = make_node()
    executor = make_executor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            autostart(node)
        while True:  # bounded waits: with no timer (unconfigured) an unbounded rcl_wait never
            executor.spin_once(timeout_sec=0.2)  # returns, so SIGINT/SIGTERM were never handled
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()  # waits for running callbacks; the context stays valid until below
        node._release()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def make_executor() -> Any:
    """The executor for the node process: single-threaded, on purpose.

    Every callback only stores data, sets flags or publishes (inference runs on the worker
    thread), so one thread serves them with room to spare. rclpy 7.1's MultiThreadedExecutor
    re-polls entities it has already handed to its pool: under use_sim_time with a bag playing
    it woke ~9,000 times/s here, starved the process on 2 cores and dropped most camera and joint
    messages (2 chunks instead of 15 for a 3 s bag); the single-threaded executor woke ~120
    times/s. The callback groups stay, so embedding the node in a MultiThreadedExecutor works.
    """
    return SingleThreadedExecutor()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def autostart(node: Any) -> bool:
    """configure then activate; False (state left as the transition did) when one fails."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("autostart: configure failed; the node stays unconfigured")
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def destroy_entity(node: Any, entity: Any) -> None:
    """Destroy a publisher, subscription, service or timer the node made in configure."""
    if isinstance(entity, LifecyclePublisher):  # also leaves the managed-entity set
        node.destroy_lifecycle_publisher(entity)
    elif isinstance(entity, Publisher):
        node.destroy_publisher(entity)
    elif isinstance(entity, Subscription):
        node.destroy_subscription(entity)
    elif isinstance(entity, Service):
        node.destroy_service(entity)
    else:
        node.destroy_timer(entity)
