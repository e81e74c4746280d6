"""ROS tests stay on loopback, each pytest process on its own DDS domain.

The loopback environment and the session's private domain are set by test/conftest.py before any
test module imports rclpy; this file marks the tests `ros`.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.ros)


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    return int(os.environ["ROS_DOMAIN_ID"])
