"""ament_python package definition for pi0_ttnn_node (also installable with plain pip)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "pi0_ttnn_node"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "tools", "tools.*"]),
    package_data={PACKAGE: ["ttnn_backend/mock_cluster/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="pi0_ttnn_node maintainers",
    maintainer_email="maintainers@pi0-ttnn-node.dev",
    description="ROS 2 node running PI0 / PI0.5 with Torch or TTNN (Tenstorrent) backends",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            f"{PACKAGE} = {PACKAGE}.ros.node:main",
            f"pi0_ttnn_multi_node = {PACKAGE}.ros.multi_node:main",
            f"pi0-demo = {PACKAGE}.tools.demo:main",
            f"pi0-bench = {PACKAGE}.tools.bench:main",
            f"pi0-bench-ttnn = {PACKAGE}.tools.bench_ttnn:main",
            f"pi0-bench-node = {PACKAGE}.tools.bench_node:main",
            f"pi0-replay = {PACKAGE}.tools.replay:main",
            f"pi0-bag-play = {PACKAGE}.tools.bag_play:main",
            f"pi0-bag-record = {PACKAGE}.tools.bag_record:main",
            f"pi0-soak = {PACKAGE}.tools.soak:main",
            f"pi0-hostile-inputs = {PACKAGE}.tools.hostile_inputs:main",
        ],
    },
)
