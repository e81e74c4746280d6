"""The ament_python package builds with colcon and installs what `ros2 run` / `ros2 launch` need."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ("package.xml", "setup.py", "setup.cfg", "resource", "pi0_ttnn_node", "launch",
                 "config")


def test_package_xml_is_format_3_with_the_runtime_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "pi0_ttnn_node"
    deps = {e.text for e in root.iter() if e.tag.endswith("depend")}
    for dep in ("rclpy", "sensor_msgs", "std_msgs", "std_srvs", "trajectory_msgs",
                "diagnostic_msgs", "lifecycle_msgs"):
        assert dep in deps, dep
    assert root.find("export/build_type").text == "ament_python"


def test_colcon_build_installs_executables_launch_and_config(tmp_path):
    src = tmp_path / "src" / "pi0_ttnn_node"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGE_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.exists():
            shutil.copy2(path, src / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["colcon", "build"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    install = tmp_path / "install" / "pi0_ttnn_node"
    assert (install / "lib" / "pi0_ttnn_node" / "pi0_ttnn_node").is_file()
    assert (install / "lib" / "pi0_ttnn_node" / "pi0_ttnn_multi_node").is_file()
    share = install / "share" / "pi0_ttnn_node"
    assert (share / "package.xml").is_file()
    assert sorted(p.name for p in (share / "launch").glob("*.launch.py"))
    assert sorted(p.name for p in (share / "config").glob("*.yaml"))
    index = install / "share" / "ament_index" / "resource_index" / "packages" / "pi0_ttnn_node"
    assert index.is_file()
