"""README "On a robot", rehearsed: scripts/check_robot_route.sh runs its commands end to end.

A wheel-based stand-in replaces `apt install ros-jazzy-ros-base` (see the script); the rest is
the README verbatim: venv with --system-site-packages + COLCON_IGNORE, requirements/robot.txt (no
ROS wheels), `python -m colcon build`, the installed executable with the installed config,
lifecycle services over loopback DDS. Slow: installs the model stack (~3 GB of wheels, from the
pip cache or PyPI) into a fresh venv.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from dds_domain import claim_domain, loopback_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_robot_route.sh"


def readme_robot_commands() -> list:
    text = (ROOT / "README.md").read_text()
    section = text.split("## On a robot", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_robot_route_has_no_broken_pip_line_and_matches_the_script():
    commands = readme_robot_commands()
    joined = "\n".join(commands)
    assert "--ignore-installed" not in joined and "requirements/base.txt" not in joined
    script = SCRIPT.read_text()
    # each README command from the venv on is a step the script runs (and announces)
    for expected, ran in (("python3 -m venv --system-site-packages venv",
                           '"$py" -m venv --system-site-packages venv'),
                          ("touch venv/COLCON_IGNORE", "touch venv/COLCON_IGNORE"),
                          ("source venv/bin/activate", "source venv/bin/activate"),
                          ("requirements/robot.txt", "-r src/pi0_ttnn_node/requirements/robot.txt"),
                          ("python -m colcon build --packages-select pi0_ttnn_node",
                           "python -m colcon build --packages-select pi0_ttnn_node"),
                          ("source install/setup.bash", "source install/setup.bash")):
        assert any(expected in c for c in commands), expected
        assert ran in script, ran
    robot = (ROOT / "requirements" / "robot.txt").read_text()
    names = [re.split(r"[<>=\s]", line)[0] for line in robot.splitlines()
             if line.strip() and not line.startswith("#")]
    ros_wheels = [n for n in names if n.startswith("ros-") or n in ("rclpy",) or "colcon" in n]
    assert "torch" in names and not ros_wheels, ros_wheels


@pytest.mark.slow
def test_robot_route_script_builds_installs_and_starts_the_node(tmp_path):
    env = loopback_env(claim_domain(61, 100))
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "route")], env=env,
                            capture_output=True, text=True, timeout=1800)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    for line in ("rclpy from", "/opt_ros_jazzy/", "lifecycle state: inactive",
                 "lifecycle state: active", "OK: the robot route works"):
        assert line in log, (line, log[-3000:])
    assert not (tmp_path / "route").exists() or os.environ.get("KEEP") == "1"
