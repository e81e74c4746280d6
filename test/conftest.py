"""Session-wide test setup: DDS on loopback in a private domain, set before rclpy is imported.

In-process nodes use the session domain (1..60); tests that start node subprocesses claim their
own domain from 61..100 with dds_domain.claim_domain.
"""

from __future__ import annotations

import os

from dds_domain import claim_domain

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ["ROS_DOMAIN_ID"] = str(claim_domain(1, 60))
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "1")
