"""ROS tests stay on loopback, each pytest process on its own DDS domain.

The environment is set here, at collection, before any test module imports rclpy. The domain is
drawn from 1..100 and held with an flock on /tmp/pi0_ttnn_node_ros_domain_<id>.lock for the
whole session, so parallel sessions on one machine never share a domain.
"""

from __future__ import annotations

import fcntl
import os
import random

import pytest

_LOCK_HANDLE = None


def _claim_domain() -> int:
    global _LOCK_HANDLE
    ids = list(range(1, 101))
    random.SystemRandom().shuffle(ids)
    for domain in ids:
        handle = open(f"/tmp/pi0_ttnn_node_ros_domain_{domain}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _LOCK_HANDLE = handle
        return domain
    raise RuntimeError("all ROS domain ids 1..100 are in use by other test sessions")


os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ["ROS_DOMAIN_ID"] = str(_claim_domain())
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "1")


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.ros)


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    return int(os.environ["ROS_DOMAIN_ID"])
