"""Reliability tests that start DDS stay on loopback, on a domain no other session holds.

The environment is set at collection, before any test imports rclpy; the domain id is held with
an flock on /tmp/pi0_ttnn_node_ros_domain_<id>.lock (the scheme test/ros/conftest.py uses) for the
whole session. Files named test_*_dds.py / test_hostile_inputs.py get the `ros` marker.
"""

from __future__ import annotations

import fcntl
import os
import random

import pytest

_LOCK = None
ROS_FILES = ("test_hostile_inputs.py", "test_node_faults_dds.py")


def _claim_domain() -> int:
    global _LOCK
    ids = list(range(1, 101))
    random.SystemRandom().shuffle(ids)
    for domain in ids:
        handle = open(f"/tmp/pi0_ttnn_node_ros_domain_{domain}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _LOCK = handle
        return domain
    raise RuntimeError("all ROS domain ids 1..100 are in use by other test sessions")


os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ["ROS_DOMAIN_ID"] = str(_claim_domain())


def pytest_collection_modifyitems(items):
    for item in items:
        if os.path.basename(str(item.fspath)) in ROS_FILES:
            item.add_marker(pytest.mark.ros)
