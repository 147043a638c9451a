"""ament_python package `gcross_ros`: the ROS-free library `gcross_core` and the ROS 2 glue `gcross_ros`."""
from glob import glob

from setuptools import find_packages, setup

package_name = "gcross_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["gcross_core", "gcross_core.*", "gcross_ros", "gcross_ros.*"]),
    package_data={"gcross_core": ["assets/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*")),
    ],
    # Runtime dependencies are installed by `make env` (see README.md): torch must be pinned per machine
    # (CPU wheel vs CUDA build) and rclpy/messages come either from PyPI or from a sourced ROS 2 workspace,
    # so they are deliberately not listed in install_requires.
    install_requires=["setuptools"],
    zip_safe=False,  # gcross_core/assets is read from the file system
    maintainer="gcross maintainers",
    maintainer_email="maintainers@gcross.dev",
    description="GaussianCross pretraining, 3D semantic segmentation and a ROS 2 segmentation node.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "segment_node = gcross_ros.node.segment_node:main",
            "gcross-bag = gcross_ros.bag.cli:main",
        ],
    },
)
