"""Pi0PolicyNode: the managed (lifecycle) node serving PI0 / PI0.5 to a joint_trajectory_controller.

configure loads the checkpoint and warms the backend on the inference worker; activate starts the
control timer (control_rate_hz, 50 Hz typical) that publishes the remaining chunk every tick;
deactivate holds; cleanup releases the device. Callbacks only store data or set flags: inference
runs on ros/inference_worker.py's thread. The control logic (when to infer, merging, limits, what
to command) is control/pipeline.py's ControlCore, shared with offline replay and the soak; this
module only moves ROS data in and out of it. Counterparts: ros/params.py, ros/inputs.py,
ros/diagnostics.py, control/pipeline.py.
"""

from __future__ import annotations

import time
from typing import Any, List, Optional

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.lifecycle import Node, State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from pi0_ttnn_node.control.action_queue import ActionScheduler
from pi0_ttnn_node.control.node_config import NodeConfig, backend_spec, build_node_config
from pi0_ttnn_node.control.pipeline import Accepted, ControlCore, InferenceResult
from pi0_ttnn_node.errors import (BackendUnavailableError, ConfigError, ObservationRejected,
                                  Pi0Error)
from pi0_ttnn_node.ros import conversions, diagnostics, params, process, process_tuning, qos
from pi0_ttnn_node.ros.inference_worker import Divergence, InferenceWorker
from pi0_ttnn_node.ros.inputs import InputHub
from pi0_ttnn_node.ros.policy_loader import (PolicyChoice, PolicyLoader, backend_changes,
                                             primary_choice)

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
            self.add_on_set_parameters_callback(
                params.apply_after_set(self, validate, self._on_parameters_set))
        self.cfg: Optional[NodeConfig] = None
        self.configure_error = ""  # one line: why the last configure failed
        self.loader: Optional[PolicyLoader] = None
        self.worker: Optional[InferenceWorker] = None
        self.hub: Optional[InputHub] = None
        self.core: Optional[ControlCore] = None
        self.status = diagnostics.PolicyStatus()
        self._entities: List[Any] = []  # subscriptions, services, timers made in configure
        self._control_timer = None
        self._jump_handle = None
        self._holding = True
        self._cb_inputs = MutuallyExclusiveCallbackGroup()
        self._cb_control = MutuallyExclusiveCallbackGroup()
        self._cb_misc = MutuallyExclusiveCallbackGroup()

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load and warm up. SUCCESS -> inactive; FAILURE (one-line reason) -> unconfigured."""
        try:
            self.cfg = build_node_config(params.read_values(self))
            if self.cfg["robots"]:
                raise ConfigError(f"robots is {self.cfg['robots']}: this node serves one robot; "
                                  "run pi0_ttnn_multi_node for several (docs/multi_robot.md)")
            self.loader = PolicyLoader(self.cfg)
            self.get_logger().info(self.loader.describe_source())
            self._tuning = process_tuning.apply_before_load(self.cfg["policy.torch_threads"])
            self._make_core()
            self.worker.start()
            warmup_s = self._load_primary()
        except Pi0Error as err:
            self.configure_error = str(err).splitlines()[0] if str(err) else repr(err)
            self.get_logger().error(f"configure failed: {self.configure_error}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ""
        self._tuning = process_tuning.apply_after_configure(self._tuning)  # steady ticks
        self.core.scheduler.latency.seed(warmup_s)
        self.status.backend_active = self.worker.spec.label()
        if self.cfg.shadow is not None:
            self.worker.request_shadow(PolicyChoice(self.cfg.shadow))
        self._make_ros_entities()
        self.get_logger().info(
            f"configured: {self.loader.config.model_type} on {self.worker.spec.label()}, warm-up "
            f"{[round(s * 1e3) for s in warmup_s]} ms, dry_run={self.cfg['safety.dry_run']}")
        return TransitionCallbackReturn.SUCCESS

    def _load_primary(self) -> List[float]:
        """Load policy.backend; on a missing device, policy.fallback_backend when it is set."""
        try:
            return self.worker.load(primary_choice(self.cfg.values)).result()
        except BackendUnavailableError as err:
            fallback = self.cfg["policy.fallback_backend"]
            if not fallback or fallback == self.cfg.backend.backend:
                raise
            spec = PolicyChoice(backend_spec(self.cfg.values, fallback))
            self.get_logger().error(f"{self.cfg.backend.label()} is unavailable ({err}); falling "
                                    f"back to {spec.label()} (policy.fallback_backend)")
            self.status.backend_error = f"{self.cfg.backend.label()}: {err}"[:200]
            return self.worker.load(spec).result()

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Start the control timer and the lifecycle publishers. SUCCESS -> active."""
        self.core.reset("activate")
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
        self.core.reset("deactivate")
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
        self.hub = InputHub(cfg, self._now, self._on_instruction_change, conversions.make_bridge(),
                            image_size=model.vision.image_size)  # decode straight to model size
        self.core = ControlCore(cfg, model.chunk_size, self.hub.assembler, model.max_action_dim)
        self.command_builder = conversions.TrajectoryBuilder(cfg.action_joint_names, cfg.dt,
                                                             model.chunk_size + 1)
        self.chunk_builder = conversions.TrajectoryBuilder(cfg.action_joint_names, cfg.dt,
                                                           model.chunk_size, first_index=0)
        self.status = diagnostics.PolicyStatus(started_steady=time.monotonic())
        self.worker = InferenceWorker(
            self.loader.make_policy, self.loader.warmup, self.core.prepare,
            self._on_result, self._on_reject, self._on_failure, self._on_divergence,
            self._on_backend_event)

    def _make_ros_entities(self) -> None:
        cfg, warn = self.cfg, self.get_logger().warn
        add = self._entities.append
        # reliability per camera follows its publishers (qos.image_reliability: auto)
        self.camera_subs = qos.CameraSubscriptions(
            self, cfg, lambda cam: Image if cam.transport == "raw" else CompressedImage,
            self.hub.on_image, self._cb_inputs, warn)
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
        if getattr(self, "camera_subs", None) is not None:
            self.camera_subs.close()
            self.camera_subs = None
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        for entity in self._entities:
            process.destroy_entity(self, entity)
        self._entities = []

    # ---- control loop (timer group) ----------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _dry_run(self) -> bool:
        return bool(self.get_parameter("safety.dry_run").value)

    @property
    def scheduler(self) -> Optional[ActionScheduler]:
        return None if self.core is None else self.core.scheduler

    def _on_control_tick(self) -> None:
        tick = self.core.tick(self._now())
        try:
            self._publish_tick(tick)
        finally:
            # wake the worker only once this tick's command is out: a woken worker takes the
            # GIL for its Python work and would otherwise stretch the rest of the tick
            if tick.request_id is not None and not self.worker.request_inference(
                    tick.request_id):
                self.core.on_failed(tick.request_id)

    def _publish_tick(self, tick: Any) -> None:
        for accepted in tick.accepted:
            self._on_accepted(accepted)
        traj = tick.trajectory
        self.status.queue_depth = 0 if traj is None else traj.times.shape[0]
        if traj is None:
            if not self._holding:
                self._publish_hold(tick.hold_reason)
            return
        self._holding = False
        if self._dry_run():
            return
        cmd = self.core.command(traj, tick.now)
        self.command_pub.publish(self.command_builder.build(
            cmd.positions, cmd.velocities, stamp=cmd.stamp, time_from_start=cmd.time_from_start))

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
            self.core.reset("watchdog")
            self._publish_hold("watchdog")

    def _on_clock_jump(self, jump: Any) -> None:
        if jump.delta.nanoseconds < 0:
            self.get_logger().warn(f"clock jumped back by {-jump.delta.nanoseconds * 1e-9:.3f} s;"
                                   " resetting the queue and input buffers")
            self.hub.reset()
            self.core.reset("clock_jump_back")

    # ---- worker callbacks (worker thread) ----------------------------------------------------
    def _on_result(self, result: InferenceResult) -> None:
        self.core.on_result(result, self._now())  # merged by the control tick that is due

    def _on_accepted(self, accepted: Accepted) -> None:
        result, report = accepted.result, accepted.report
        if accepted.chunk is None:  # the action space conversion failed
            self._on_failure("action_space", result.request_id, Pi0Error(report.reason))
            return
        self.status.record_chunk(result, report)
        # refused chunks are still model output worth recording, except those from before a reset
        if report.reason != "stale_request" and self.chunk_pub.is_activated:
            self.chunk_pub.publish(self.chunk_builder.build(accepted.chunk, stamp=result.t_obs))
        if not report.accepted:
            self.get_logger().warn(f"chunk refused: {report.reason}", throttle_duration_sec=2.0)

    def _on_reject(self, request_id: int, err: ObservationRejected) -> None:
        if err.reason == "no_new_frame":  # expected when ticks outpace the camera: not a fault
            self.core.on_failed(request_id, "inference_skipped")
            return
        self.core.on_failed(request_id)
        self.status.last_reject = err.reason
        self.get_logger().warn(f"no observation: {err}", throttle_duration_sec=2.0)

    def _on_failure(self, stage: str, request_id: int, err: BaseException) -> None:
        if stage not in ("shadow", "action_space"):  # action_space: the core already counted it
            self.core.on_failed(request_id)
        failures = self.status.record_failure(stage, err)
        self.get_logger().error(f"{stage} failed ({failures} in a row): {err}",
                                throttle_duration_sec=2.0)
        if stage != "shadow" and failures >= self.cfg["safety.max_consecutive_failures"]:
            self.core.reset("inference_failures")

    def _on_divergence(self, div: Divergence) -> None:
        self.status.divergence = div

    def _on_backend_event(self, role: str, spec: Any, err: Optional[BaseException]) -> None:
        self.status.backend_event(role, spec, err)

    def _on_instruction_change(self, text: str) -> None:
        if self.core is not None:
            self.core.reset("instruction")
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
        self.core.reset("service")
        self.status.consecutive_failures = 0
        response.success, response.message = True, "queue cleared"
        return response

    def _on_parameters_set(self, changed: List[Parameter]) -> None:
        names = {p.name for p in changed}
        if self.worker is None:
            return
        values = params.read_values(self)
        try:
            primary, shadow_changed, shadow = backend_changes(names, values)
        except Pi0Error as err:  # e.g. TTNN knobs that do not fit together
            self.status.backend_error = f"backend parameters: {err}"[:200]
            self.get_logger().error(f"backend parameters refused: {err}")
            primary, shadow_changed = None, False
        if primary is not None:
            self.status.switch_requested(primary.label())  # clears a withdrawn failure
            self.worker.request_switch(primary)
        if shadow_changed:
            self.worker.request_shadow(shadow)
        if "instruction.default" in names:
            self.hub.set_default_instruction(values["instruction.default"])
        if "safety.dry_run" in names:
            self.get_logger().warn("output " + ("disabled (dry run)" if values["safety.dry_run"]
                                                else "ARMED"))
            if values["safety.dry_run"] and self._control_timer is not None:
                # stop the controller following the last trajectory sent while armed
                self._publish_hold("disarmed", even_in_dry_run=True)

    def _publish_diagnostics(self) -> None:
        self.diag_pub.publish(diagnostics.build(self, self._state_machine.current_state[1]))


def main(args: Optional[List[str]] = None) -> None:
    """Console script `pi0_ttnn_node`: run the node in its own process (ros/process.py)."""
    process.run(Pi0PolicyNode, args)


if __name__ == "__main__":
    main()
