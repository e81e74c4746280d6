"""The ROS-free robot loop that the node, offline replay and the soak all drive."""
