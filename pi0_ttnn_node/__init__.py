"""pi0_ttnn_node: PI0 / PI0.5 vision-language-action policy for ROS 2, Torch and TTNN backends.

The core (config, checkpoint, preprocessing, backends, scheduling) never imports rclpy; the ROS
layer lives in `pi0_ttnn_node.ros`. ttnn is imported only inside `pi0_ttnn_node.ttnn_backend`.
"""

__version__ = "0.1.0"
