"""Pi0PolicyNode: the managed (lifecycle) node serving PI0 / PI0.5 to a joint_trajectory_controller.

configure loads the checkpoint and warms the backend on the inference worker; activate starts the
control timer (control_rate_hz, 50 Hz typical) that publishes the remaining chunk every tick;
deactivate holds; cleanup releases the device. Callbacks only store data or set flags: inference
runs on ros/inference_worker.py's thread. Counterparts: ros/params.py, ros/inputs.py,
ros/diagnostics.py, action_queue.py, safety.py.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rclpy.lifecycle import Node, State, TransitionCallbackReturn
from rclpy.lifecycle.publisher import LifecyclePublisher
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.service import Service
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from pi0_ttnn_node.action_queue import ActionScheduler
from pi0_ttnn_node.errors import BackendUnavailableError, ObservationRejected, Pi0Error
from pi0_ttnn_node.ros import conversions, diagnostics, params, qos
from pi0_ttnn_node.ros.inference_worker import Divergence, InferenceResult, InferenceWorker
from pi0_ttnn_node.ros.inputs import InputHub
from pi0_ttnn_node.ros.policy_loader import PolicyLoader, build_scheduler
from pi0_ttnn_node.safety import to_absolute

NODE_NAME = "pi0_ttnn_node"


class Pi0PolicyNode(Node):
    """Cameras, joint states and an instruction in; JointTrajectory commands out."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        params.declare_parameters(self)
        validate = params.make_validator(lambda: params.read_values(self))
        if hasattr(self, "add_post_set_parameters_callback"):  # Iron and newer
            self.add_on_set_parameters_callback(validate)
            self.add_post_set_parameters_callback(self._on_parameters_set)
        else:  # Humble: apply accepted changes once they are stored, from a one-shot timer
            self.add_on_set_parameters_callback(self._humble_validate_then_apply(validate))
        self.cfg: Optional[params.NodeConfig] = None
        self.configure_error = ""  # one line: why the last configure failed
        self.loader: Optional[PolicyLoader] = None
        self.worker: Optional[InferenceWorker] = None
        self.hub: Optional[InputHub] = None
        self.scheduler: Optional[ActionScheduler] = None
        self.status = diagnostics.PolicyStatus()
        self._entities: List[Any] = []  # subscriptions, services, timers made in configure
        self._control_timer = None
        self._jump_handle = None
        self._holding = True
        self._accepted = 0  # accepted chunks; equals the scheduler's chunk_id of the newest
        self._chunk_t_obs: Dict[int, float] = {}
        self._cb_inputs = MutuallyExclusiveCallbackGroup()
        self._cb_control = MutuallyExclusiveCallbackGroup()
        self._cb_misc = MutuallyExclusiveCallbackGroup()

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load and warm up. SUCCESS -> inactive; FAILURE (one-line reason) -> unconfigured."""
        try:
            self.cfg = params.build_node_config(params.read_values(self))
            self.loader = PolicyLoader(self.cfg)
            self.get_logger().info(self.loader.describe_source())
            self._make_core()
            self.worker.start()
            warmup_s = self._load_primary()
        except Pi0Error as err:
            self.configure_error = str(err).splitlines()[0] if str(err) else repr(err)
            self.get_logger().error(f"configure failed: {self.configure_error}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ""
        self.scheduler.latency.seed(warmup_s)
        self.status.backend_active = self.worker.spec.label()
        if self.cfg.shadow is not None:
            self.worker.request_shadow(self.cfg.shadow)
        self._make_ros_entities()
        self.get_logger().info(
            f"configured: {self.loader.config.model_type} on {self.worker.spec.label()}, warm-up "
            f"{[round(s * 1e3) for s in warmup_s]} ms, dry_run={self.cfg['safety.dry_run']}")
        return TransitionCallbackReturn.SUCCESS

    def _load_primary(self) -> List[float]:
        """Load policy.backend; on a missing device, policy.fallback_backend when it is set."""
        try:
            return self.worker.load(self.cfg.backend).result()
        except BackendUnavailableError as err:
            fallback = self.cfg["policy.fallback_backend"]
            if not fallback or fallback == self.cfg.backend.backend:
                raise
            spec = params.backend_spec(self.cfg.values, fallback)
            self.get_logger().error(f"{self.cfg.backend.label()} is unavailable ({err}); falling "
                                    f"back to {spec.label()} (policy.fallback_backend)")
            self.status.backend_error = f"{self.cfg.backend.label()}: {err}"[:200]
            return self.worker.load(spec).result()

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start the control timer and the lifecycle publishers. SUCCESS -> active."""
        self.scheduler.reset("activate")
        self._holding = True
        self._control_timer = self.create_timer(self.cfg.dt, self._on_control_tick,
                                                callback_group=self._cb_control)
        self.get_logger().info(f"active at {self.cfg['control_rate_hz']} Hz, output "
                               f"{'DRY RUN' if self._dry_run() else 'ARMED'}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop the timer, publish a hold at the current command. SUCCESS -> inactive."""
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        self._publish_hold("deactivate")
        self.scheduler.reset("deactivate")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Release the backend and device. SUCCESS -> unconfigured."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Release everything whatever the state. SUCCESS -> finalized."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """Hold and release. SUCCESS -> unconfigured."""
        self._publish_hold("error")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _make_core(self) -> None:
        cfg, model = self.cfg, self.loader.config
        self.scheduler = build_scheduler(cfg, model.chunk_size)
        self._accepted, self._chunk_t_obs = 0, {}
        self.hub = InputHub(cfg, self._now, self._on_instruction_change, conversions.make_bridge())
        self.command_builder = conversions.TrajectoryBuilder(cfg.action_joint_names, cfg.dt,
                                                             model.chunk_size + 1)
        self.chunk_builder = conversions.TrajectoryBuilder(cfg.action_joint_names, cfg.dt,
                                                           model.chunk_size, first_index=0)
        self.status = diagnostics.PolicyStatus(started_steady=time.monotonic())
        self.worker = InferenceWorker(
            self.loader.make_policy, self.loader.warmup, self._build_observation,
            self._on_result, self._on_reject, self._on_failure, self._on_divergence,
            self._on_backend_event)

    def _make_ros_entities(self) -> None:
        cfg, warn = self.cfg, self.get_logger().warn
        add = self._entities.append
        for cam in cfg.cameras:
            msg_type = Image if cam.transport == "raw" else CompressedImage
            add(self.create_subscription(msg_type, cam.topic,
                                         lambda m, c=cam: self.hub.on_image(c, m),
                                         qos.image_qos(cfg), callback_group=self._cb_inputs,
                                         event_callbacks=qos.incompatible_qos_warning(cam.topic,
                                                                                      warn)))
        for topic in cfg["joint_states.topics"]:
            add(self.create_subscription(JointState, topic, self.hub.on_joint_state,
                                         qos.joint_state_qos(), callback_group=self._cb_inputs))
        add(self.create_subscription(String, "~/instruction",
                                     lambda m: self.hub.on_instruction(m.data),
                                     qos.instruction_qos(cfg), callback_group=self._cb_inputs,
                                     event_callbacks=qos.incompatible_qos_warning(
                                         "~/instruction", warn)))
        self.command_pub = self.create_lifecycle_publisher(JointTrajectory, cfg["output.topic"],
                                                           qos.command_qos())
        self.chunk_pub = self.create_lifecycle_publisher(JointTrajectory, "~/action_chunk",
                                                         qos.chunk_qos())
        self.diag_pub = self.create_publisher(diagnostics.DiagnosticArray, "/diagnostics", 10)
        add(self.command_pub)
        add(self.chunk_pub)
        add(self.diag_pub)
        add(self.create_service(SetBool, "~/enable", self._on_enable,
                                callback_group=self._cb_misc))
        add(self.create_service(Trigger, "~/reset", self._on_reset,
                                callback_group=self._cb_misc))
        add(self.create_timer(cfg["diagnostics.period_s"], self._publish_diagnostics,
                              callback_group=self._cb_misc))
        add(self.create_timer(min(0.1, cfg["safety.watchdog_timeout_s"] / 2), self._on_watchdog,
                              callback_group=self._cb_misc,
                              clock=Clock(clock_type=ClockType.STEADY_TIME)))
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1)),
            post_callback=self._on_clock_jump)

    def _release(self) -> None:
        # the worker first: its callbacks publish, so it must stop before the publishers go
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        for entity in self._entities:
            self._destroy(entity)
        self._entities = []

    def _destroy(self, entity: Any) -> None:
        if isinstance(entity, LifecyclePublisher):  # also leaves the managed-entity set
            self.destroy_lifecycle_publisher(entity)
        elif isinstance(entity, Publisher):
            self.destroy_publisher(entity)
        elif isinstance(entity, Subscription):
            self.destroy_subscription(entity)
        elif isinstance(entity, Service):
            self.destroy_service(entity)
        else:
            self.destroy_timer(entity)

    # ---- control loop (timer group) ----------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _dry_run(self) -> bool:
        return bool(self.get_parameter("safety.dry_run").value)

    def _on_control_tick(self) -> None:
        now = self._now()
        traj = self.scheduler.tick(now)
        if self.scheduler.should_request_inference(now):
            request_id = self.scheduler.mark_inference_started(now)
            if not self.worker.request_inference(request_id):
                self.scheduler.on_inference_failed(request_id)
        self.status.queue_depth = 0 if traj is None else traj.times.shape[0]
        if traj is None:
            if not self._holding:
                self._publish_hold(self.scheduler.hold_reason)
            return
        self._holding = False
        if self._dry_run():
            return
        if self.cfg["output.stamp_mode"] == "observation":
            t0 = self._chunk_t_obs.get(traj.chunk_id, now)
        else:
            t0 = now
        msg = self.command_builder.build(traj.positions, traj.velocities
                                         if self.cfg["output.send_velocities"] else None,
                                         stamp=None if t0 == now else t0,
                                         time_from_start=traj.times - t0)
        self.command_pub.publish(msg)

    def _publish_hold(self, reason: str, even_in_dry_run: bool = False) -> None:
        self._holding = True
        self.status.holds[reason] = self.status.holds.get(reason, 0) + 1
        pub = getattr(self, "command_pub", None)
        if self.scheduler is None or pub is None or not pub.is_activated or \
                (self._dry_run() and not even_in_dry_run):
            return
        now = self._now()
        position = self.scheduler.current_command(now)
        if position is None:
            return  # nothing was ever commanded: the controller already holds its own position
        self.command_pub.publish(conversions.hold_trajectory(self.cfg.action_joint_names,
                                                             position, self.cfg.dt))
        self.get_logger().info(f"holding ({reason})", throttle_duration_sec=2.0)

    def _on_watchdog(self) -> None:
        stats = self.hub.stats[f"camera {self.cfg.primary_camera}"]
        last = stats.last_steady
        stale = last is None or time.monotonic() - last > self.cfg["safety.watchdog_timeout_s"]
        if stale and self._control_timer is not None and not self._holding:
            self.scheduler.reset("watchdog")
            self._publish_hold("watchdog")

    def _on_clock_jump(self, jump: Any) -> None:
        if jump.delta.nanoseconds < 0:
            self.get_logger().warn(f"clock jumped back by {-jump.delta.nanoseconds * 1e-9:.3f} s;"
                                   " resetting the queue and input buffers")
            self.hub.reset()
            self.scheduler.reset("clock_jump_back")

    # ---- worker callbacks (worker thread) ----------------------------------------------------
    def _build_observation(self) -> Any:
        return self.hub.assembler.build(self._now())

    def _on_result(self, result: InferenceResult) -> None:
        cfg = self.cfg
        now = self._now()
        idx = self.loader.action_state_index
        actions = np.asarray(result.actions, dtype=np.float64)[:, list(cfg.action_dims)]
        try:
            chunk = to_absolute(cfg["action.space"], actions, result.state[idx], cfg.dt)
        except Pi0Error as err:
            self._on_failure("action_space", result.request_id, err)
            return
        report = self.scheduler.on_chunk(chunk, result.t_obs, now, result.request_id,
                                         current_state=result.state[idx])
        self.status.record_chunk(result, report)
        # refused chunks are still model output worth recording, except those from before a reset
        if report.reason != "stale_request" and self.chunk_pub.is_activated:
            self.chunk_pub.publish(self.chunk_builder.build(chunk, stamp=result.t_obs))
        if report.accepted:
            # keep the previous chunk's entry: the control tick may still be playing it
            previous = self._chunk_t_obs.get(self._accepted)
            self._accepted += 1
            self._chunk_t_obs = {self._accepted: result.t_obs}
            if previous is not None:
                self._chunk_t_obs[self._accepted - 1] = previous
        else:
            self.get_logger().warn(f"chunk refused: {report.reason}", throttle_duration_sec=2.0)

    def _on_reject(self, request_id: int, err: ObservationRejected) -> None:
        if err.reason == "no_new_frame":  # expected when ticks outpace the camera: not a fault
            self.scheduler.on_inference_failed(request_id, "inference_skipped")
            return
        self.scheduler.on_inference_failed(request_id)
        self.status.last_reject = err.reason
        self.get_logger().warn(f"no observation: {err}", throttle_duration_sec=2.0)

    def _on_failure(self, stage: str, request_id: int, err: BaseException) -> None:
        if stage != "shadow":
            self.scheduler.on_inference_failed(request_id)
        failures = self.status.record_failure(stage, err)
        self.get_logger().error(f"{stage} failed ({failures} in a row): {err}",
                                throttle_duration_sec=2.0)
        if stage != "shadow" and failures >= self.cfg["safety.max_consecutive_failures"]:
            self.scheduler.reset("inference_failures")

    def _on_divergence(self, div: Divergence) -> None:
        self.status.divergence = div

    def _on_backend_event(self, role: str, spec: Any, err: Optional[BaseException]) -> None:
        self.status.backend_event(role, spec, err)

    def _on_instruction_change(self, text: str) -> None:
        if self.scheduler is not None:
            self.scheduler.reset("instruction")
        self.get_logger().info(f"instruction: {text!r}")

    # ---- services and parameters (misc group) ------------------------------------------------
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter("safety.dry_run", value=not request.data)])[0]
        response.success = result.successful
        response.message = "output armed" if request.data else "dry run: output disabled"
        if not result.successful:
            response.message = result.reason
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.scheduler.reset("service")
        self.status.consecutive_failures = 0
        response.success, response.message = True, "queue cleared"
        return response

    def _humble_validate_then_apply(self, validate: Any) -> Any:
        def callback(changed: List[Parameter]) -> Any:
            result = validate(changed)
            if result.successful:
                timer: List[Any] = []

                def apply_once() -> None:
                    timer[0].cancel()
                    self.destroy_timer(timer[0])
                    self._on_parameters_set(changed)

                timer.append(self.create_timer(0.0, apply_once))
            return result
        return callback

    def _on_parameters_set(self, changed: List[Parameter]) -> None:
        names = {p.name for p in changed}
        if self.worker is None:
            return
        values = params.read_values(self)
        if names & set(params.BACKEND_PARAMS):
            spec = params.backend_spec(values)
            self.status.backend_requested = spec.label()
            self.worker.request_switch(spec)
        if "policy.shadow_backend" in names or (names & set(params.BACKEND_PARAMS)
                                                and values["policy.shadow_backend"]):
            shadow = values["policy.shadow_backend"]
            self.worker.request_shadow(params.backend_spec(values, shadow) if shadow else None)
        if "instruction.default" in names:
            self.hub.set_default_instruction(values["instruction.default"])
        if "safety.dry_run" in names:
            self.get_logger().warn("output " + ("disabled (dry run)" if values["safety.dry_run"]
                                                else "ARMED"))
            if values["safety.dry_run"] and self._control_timer is not None:
                # stop the controller following the last trajectory sent while armed
                self._publish_hold("disarmed", even_in_dry_run=True)

    def _publish_diagnostics(self) -> None:
        state = self._state_machine.current_state[1]
        msg = diagnostics.build(self, state)
        self.diag_pub.publish(msg)


USAGE = """usage: pi0_ttnn_node [--ros-args --params-file FILE -p name:=value ...]

Lifecycle node serving PI0 / PI0.5 (see config/pi0_ttnn_node.yaml for every parameter).
With autostart (default true) it configures and activates itself. Typical:
  ros2 launch pi0_ttnn_node pi0_ttnn_node.launch.py params_file:=my_robot.yaml
  ros2 run pi0_ttnn_node pi0_ttnn_node --ros-args --params-file my_robot.yaml
"""


def main(args: Optional[List[str]] = None) -> None:
    """Console script `pi0_ttnn_node`: spin the node on a multi-threaded executor."""
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
    node = Pi0PolicyNode()
    executor = make_executor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            autostart(node)
        executor.spin()
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


def autostart(node: Pi0PolicyNode) -> bool:
    """configure then activate; False (state left as the transition did) when one fails."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().error("autostart: configure failed; the node stays unconfigured")
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS



if __name__ == "__main__":
    main()
