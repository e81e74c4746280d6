"""Private DDS domains for tests: loopback-only discovery, one domain id per holder.

A domain id is claimed with an flock on /tmp/pi0_ttnn_node_ros_domain_<id>.lock and held for the
whole pytest session, so parallel sessions on one machine never share a domain. Ids stay within
1..100: higher ids map to UDP ports inside Linux's ephemeral range.
"""

from __future__ import annotations

import fcntl
import os
import random
from typing import IO, List

_HELD: List[IO[str]] = []


def claim_domain(first: int, last: int) -> int:
    """Lock and return a free domain id in [first, last]; held until the process exits."""
    ids = list(range(first, last + 1))
    random.SystemRandom().shuffle(ids)
    for domain in ids:
        handle = open(f"/tmp/pi0_ttnn_node_ros_domain_{domain}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _HELD.append(handle)
        return domain
    raise RuntimeError(f"all ROS domain ids {first}..{last} are held by other test sessions")


def loopback_env(domain: int) -> dict:
    """os.environ for a subprocess on `domain`, discovery limited to this host."""
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain))
    env.pop("ROS_STATIC_PEERS", None)
    return env
