"""Reliability tests that start DDS stay on loopback, on a domain no other session holds.

The environment and domain are set by test/conftest.py before any test imports rclpy. Files named
test_*_dds.py / test_hostile_inputs.py get the `ros` marker.
"""

from __future__ import annotations

import os

import pytest

ROS_FILES = ("test_hostile_inputs.py", "test_node_faults_dds.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if os.path.basename(str(item.fspath)) in ROS_FILES:
            item.add_marker(pytest.mark.ros)
