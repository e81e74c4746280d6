"""Pi0MultiRobotNode: one policy serving several namespaced robots with batched inference.

`robots: [left, right]` in the params file; each robot has its inputs and outputs in its own
namespace (control/robots.py: `left/cam_high/image_raw`, `left/joint_states`,
`/left/joint_trajectory_controller/joint_trajectory`), its private topics and services under
`~/<robot>/` (instruction, action_chunk, enable, reset), its own dry run, limits, control core and
/diagnostics entry, and `<robot>.<param>` overrides from the same params file. One control timer
ticks every robot; the control.multi_robot.BatchingWorker thread runs the due requests of all
robots as one backend call. Nothing of one robot (inputs, failures, dry run) reaches another's
commands. The backend is fixed at configure (no switch or shadow here; see docs/multi_robot.md).
Counterparts: control/multi_robot.py, control/robots.py, ros/node.py (the single robot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import Node, State, TransitionCallbackReturn
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from pi0_ttnn_node.control.batching import FAILED, BatchReport
from pi0_ttnn_node.control.multi_robot import Fleet
from pi0_ttnn_node.control.parameters import SPECS
from pi0_ttnn_node.control.pipeline import ControlCore, Tick
from pi0_ttnn_node.control.robots import RobotSpec, is_shared_only, robot_specs
from pi0_ttnn_node.errors import ConfigError, Pi0Error
from pi0_ttnn_node.ros import conversions, params, process, process_tuning, qos
from pi0_ttnn_node.ros.inputs import InputHub
from pi0_ttnn_node.ros.policy_loader import PolicyLoader, check_compatible, primary_choice

NODE_NAME = "pi0_ttnn_node"


@dataclass
class RobotIo:
    """One robot's ROS side: inputs, publishers, dry run and counters."""

    spec: RobotSpec
    hub: InputHub
    dry_run: bool
    command_pub: Any = None
    chunk_pub: Any = None
    cameras: Any = None
    holding: bool = True
    chunks: int = 0
    failures_in_row: int = 0
    failures: int = 0
    holds: Dict[str, int] = field(default_factory=dict)
    last_failure: str = ""


class Pi0MultiRobotNode(Node):
    """Several robots' cameras, joint states and instructions in; one command stream each."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        params.declare_parameters(self)
        self.fleet: Optional[Fleet] = None
        self.robots: Dict[str, RobotIo] = {}
        self.policy: Any = None
        self.configure_error = ""
        self._entities: List[Any] = []
        self._timer = None
        self._active = False
        self._cb_inputs = MutuallyExclusiveCallbackGroup()
        self._cb_control = MutuallyExclusiveCallbackGroup()
        self._cb_misc = MutuallyExclusiveCallbackGroup()

    # ---- configuration -------------------------------------------------------------------------
    def _robot_overrides(self, robots: List[str]) -> Dict[str, Any]:
        """`<robot>.<param>` values from the params file / overrides (read at configure), also
        declared so `ros2 param get` shows them; changing them later has no effect."""
        given = getattr(self, "_parameter_overrides", {})  # rclpy keeps the file's values here
        out: Dict[str, Any] = {}
        for name, param in given.items():
            head, _, rest = name.partition(".")
            if head in robots and rest in SPECS and not is_shared_only(rest):
                out[name] = param.value
                if not self.has_parameter(name):
                    try:
                        self.declare_parameter(name, param.value)
                    except Exception as err:  # noqa: BLE001 - e.g. an untyped [] : value kept
                        self.get_logger().debug(f"{name} not declared: {err!r}")
            elif head in robots or (rest in SPECS and name not in SPECS):
                out[name] = param.value  # refused by robot_specs: shared-only or no such robot
        return out

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            values = params.read_values(self)
            if not values["robots"]:
                raise ConfigError("robots is empty: list the robot names, or run the single-"
                                  "robot node (pi0_ttnn_node)")
            specs = robot_specs(values, self._robot_overrides(list(values["robots"])))
            loader = PolicyLoader(specs[0].config)
            for spec in specs[1:]:  # every robot's joints and cameras against the model
                check_compatible(spec.config, loader.config)
            self.get_logger().info(loader.describe_source())
            tuning = process_tuning.apply_before_load(values["policy.torch_threads"])
            self.policy = loader.make_policy(primary_choice(values))
            warm = loader.warmup(self.policy)
            model = loader.config
            self.robots = {s.name: RobotIo(s, InputHub(
                s.config, self._now, lambda text, n=s.name: self._on_instruction(n, text),
                conversions.make_bridge(), image_size=model.vision.image_size),
                bool(s.config["safety.dry_run"])) for s in specs}
            self.fleet = Fleet(specs, self.policy, values["batch.window_s"], self._now,
                               self._on_report,
                               {n: io.hub.assembler for n, io in self.robots.items()})
            for core in self.fleet.cores.values():
                core.scheduler.latency.seed(warm)
            self._make_entities(model.chunk_size)
            self.fleet.start()
            process_tuning.apply_after_configure(tuning)  # the same steady-tick settings
        except Pi0Error as err:
            self.configure_error = str(err).splitlines()[0]
            self.get_logger().error(f"configure failed: {self.configure_error}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"configured {len(self.robots)} robots {list(self.robots)}, "
                               f"batch window {values['batch.window_s'] * 1e3:.1f} ms")
        return TransitionCallbackReturn.SUCCESS

    def _make_entities(self, chunk_size: int) -> None:
        add = self._entities.append
        self._builders = {}
        for name, io in self.robots.items():
            cfg = io.spec.config
            io.cameras = qos.CameraSubscriptions(
                self, cfg, lambda cam: Image if cam.transport == "raw" else CompressedImage,
                io.hub.on_image, self._cb_inputs, self.get_logger().warn)
            for topic in cfg["joint_states.topics"]:
                add(self.create_subscription(JointState, topic, io.hub.on_joint_state,
                                             qos.joint_state_qos(),
                                             callback_group=self._cb_inputs))
            add(self.create_subscription(String, f"~/{name}/instruction",
                                         lambda m, h=io.hub: h.on_instruction(m.data),
                                         qos.instruction_qos(cfg),
                                         callback_group=self._cb_inputs))
            io.command_pub = self.create_publisher(JointTrajectory, cfg["output.topic"],
                                                   qos.command_qos())
            io.chunk_pub = self.create_publisher(JointTrajectory, f"~/{name}/action_chunk",
                                                 qos.chunk_qos())
            add(io.command_pub)
            add(io.chunk_pub)
            add(self.create_service(SetBool, f"~/{name}/enable",
                                    lambda req, res, n=name: self._on_enable(n, req, res),
                                    callback_group=self._cb_misc))
            add(self.create_service(Trigger, f"~/{name}/reset",
                                    lambda req, res, n=name: self._on_reset(n, req, res),
                                    callback_group=self._cb_misc))
            self._builders[name] = (
                conversions.TrajectoryBuilder(cfg.action_joint_names, cfg.dt, chunk_size + 1),
                conversions.TrajectoryBuilder(cfg.action_joint_names, cfg.dt, chunk_size,
                                              first_index=0))
        first = next(iter(self.robots.values())).spec.config
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        add(self.diag_pub)
        add(self.create_timer(first["diagnostics.period_s"], self._publish_diagnostics,
                              callback_group=self._cb_misc))

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        for core in self.fleet.cores.values():
            core.reset("activate")
        dt = next(iter(self.robots.values())).spec.config.dt
        self._timer = self.create_timer(dt, self._on_tick, callback_group=self._cb_control)
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        for name in self.robots:
            self._hold(name, "deactivate")
            self.fleet.cores[name].reset("deactivate")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        self._active = False
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        for io in self.robots.values():
            if io.cameras is not None:
                io.cameras.close()
        for entity in self._entities:
            process.destroy_entity(self, entity)
        self._entities = []
        if self.policy is not None:
            self.policy.close()
            self.policy = None

    # ---- control tick ----------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_tick(self) -> None:
        now = self._now()
        steady = time.monotonic()
        for name, io in self.robots.items():  # per-robot watchdog on its primary camera
            last = io.hub.stats[f"camera {io.spec.config.primary_camera}"].last_steady
            if (last is None or steady - last > io.spec.config["safety.watchdog_timeout_s"]) \
                    and not io.holding:
                self.fleet.cores[name].reset("watchdog")
                self._hold(name, "watchdog")
        for name, tick in self.fleet.tick(now).items():
            self._publish(name, tick)

    def _publish(self, name: str, tick: Tick) -> None:
        io, core = self.robots[name], self.fleet.cores[name]
        command_builder, chunk_builder = self._builders[name]
        for accepted in tick.accepted:
            if accepted.chunk is not None and accepted.report.reason != "stale_request":
                io.chunk_pub.publish(chunk_builder.build(accepted.chunk,
                                                         stamp=accepted.result.t_obs))
            if accepted.report.accepted:
                io.chunks += 1
                io.failures_in_row = 0
        if tick.trajectory is None:
            if not io.holding:
                self._hold(name, tick.hold_reason)
            return
        io.holding = False
        if io.dry_run:
            return
        cmd = core.command(tick.trajectory, tick.now)
        io.command_pub.publish(command_builder.build(
            cmd.positions, cmd.velocities, stamp=cmd.stamp, time_from_start=cmd.time_from_start))

    def _hold(self, name: str, reason: str, even_in_dry_run: bool = False) -> None:
        io = self.robots[name]
        io.holding = True
        io.holds[reason] = io.holds.get(reason, 0) + 1
        if self.fleet is None or (io.dry_run and not even_in_dry_run) or io.command_pub is None:
            return
        position = self.fleet.cores[name].current_command(self._now())
        if position is not None:
            io.command_pub.publish(conversions.hold_trajectory(
                io.spec.config.action_joint_names, position, io.spec.config.dt))

    # ---- worker side ---------------------------------------------------------------------------
    def _on_report(self, report: BatchReport) -> None:
        """Worker thread: per-robot failure counting; N failures in a row reset that robot."""
        for outcome in report.outcomes:
            io = self.robots[outcome.request.robot]
            if outcome.outcome != FAILED:
                continue
            io.failures += 1
            io.failures_in_row += 1
            io.last_failure = outcome.reason[:200]
            if io.failures_in_row >= io.spec.config["safety.max_consecutive_failures"]:
                self.fleet.cores[outcome.request.robot].reset("inference_failures")
            self.get_logger().error(f"robot {outcome.request.robot}: inference failed "
                                    f"({io.failures_in_row} in a row): {outcome.reason}",
                                    throttle_duration_sec=2.0)

    def _on_instruction(self, name: str, text: str) -> None:
        core: Optional[ControlCore] = None if self.fleet is None else self.fleet.cores.get(name)
        if core is not None:
            core.reset("instruction")
        self.get_logger().info(f"robot {name} instruction: {text!r}")

    # ---- services and diagnostics ----------------------------------------------------------------
    def _on_enable(self, name: str, request: Any, response: Any) -> Any:
        io = self.robots[name]
        io.dry_run = not request.data
        if io.dry_run and self._active:
            self._hold(name, "disarmed", even_in_dry_run=True)
        response.success = True
        response.message = (f"{name}: output armed" if request.data
                            else f"{name}: dry run: output disabled")
        return response

    def _on_reset(self, name: str, request: Any, response: Any) -> Any:
        self.fleet.cores[name].reset("service")
        self.robots[name].failures_in_row = 0
        response.success, response.message = True, f"{name}: queue cleared"
        return response

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        stats = self.fleet.worker.stats if self.fleet is not None else None
        for name, io in self.robots.items():
            core = self.fleet.cores[name] if self.fleet is not None else None
            level = DiagnosticStatus.OK
            message = "dry run" if io.dry_run else "armed"
            if io.failures_in_row:
                level, message = DiagnosticStatus.WARN, f"inference failing: {io.last_failure}"
            elif io.holding:
                level, message = DiagnosticStatus.WARN, "holding"
            values = {"chunks": io.chunks, "failures": io.failures, "dry_run": io.dry_run,
                      "holds": io.holds, "input_rejects": io.hub.rejects(),
                      "p95_delay_steps": core.scheduler.delay_steps if core else 0,
                      "batched_calls": stats.calls if stats else 0,
                      "rows_per_call": round(stats.rows / stats.calls, 2)
                      if stats and stats.calls else 0}
            arr.status.append(DiagnosticStatus(
                level=level, name=f"{self.get_name()}/{name}: policy", message=message,
                hardware_id=name, values=[KeyValue(key=k, value=str(v))
                                          for k, v in values.items()]))
        self.diag_pub.publish(arr)


def main(args: Optional[List[str]] = None) -> None:
    """Console script `pi0_ttnn_multi_node`."""
    process.run(Pi0MultiRobotNode, args)


if __name__ == "__main__":
    main()
