"""Launch pi0_ttnn_node with a parameter file.

Arguments: params_file (default: the package's config/pi0_ttnn_node.yaml), use_sim_time (true for
`ros2 bag play --clock`), backend (torch | ttnn), namespace, dry_run (true: publish only
~/action_chunk until ~/enable), instruction (instruction.default); backend, dry_run and instruction
left empty keep the params file's values.
The node's own `autostart` parameter (default true) configures and activates it, so no lifecycle
manager is needed; set it false to drive transitions yourself.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

PACKAGE = "pi0_ttnn_node"
EXECUTABLE = "pi0_ttnn_node"
NODE_NAME = "pi0_ttnn_node"
DEFAULT_PARAMS = "pi0_ttnn_node.yaml"
TRUE = ("true", "1", "yes")


def overrides(context) -> dict:
    """Launch arguments given on the command line; empty ones leave the params file in force."""
    out = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() in TRUE}
    backend = LaunchConfiguration("backend").perform(context)
    if backend:
        out["policy.backend"] = backend
    dry_run = LaunchConfiguration("dry_run").perform(context)
    if dry_run:
        out["safety.dry_run"] = dry_run.lower() in TRUE
    instruction = LaunchConfiguration("instruction").perform(context)
    if instruction:  # becomes instruction.default: the node applies the same rules as the topic
        out["instruction.default"] = instruction
    return out


def make_node(context, *args, **kwargs) -> list:
    return [LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"), overrides(context)],
    )]


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare(PACKAGE), "config",
                                                DEFAULT_PARAMS]),
            description="Node parameter file (pi0_ttnn_node: ros__parameters: ...)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Follow /clock (bag replay with --clock)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="policy.backend: torch | ttnn; empty = params file"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace for the node and its relative topics"),
        DeclareLaunchArgument("dry_run", default_value="",
                              description="safety.dry_run: true | false; empty = params file"),
        DeclareLaunchArgument("instruction", default_value="",
                              description="instruction.default (same rules as ~/instruction: "
                              "at most 2000 characters, control characters removed); empty = "
                              "params file"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=make_node)])
