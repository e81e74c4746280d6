"""The rclpy layer: parameters, message conversions, the inference worker and the lifecycle node.

Everything here translates between ROS messages and the ROS-free core; no model logic lives here.
"""
