"""package.xml names every ROS 2 package that the node, the bag tools and the launch file import, so that
rosdep installs them in a colcon workspace."""
import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROS_PACKAGE = re.compile(r"^(rclpy|launch|launch_ros|ament_index_python|tf2_\w+|\w+_(msgs|srvs|interfaces))$")


def _imported_modules(path: Path) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_imported_ros_package_is_an_exec_depend():
    declared = {e.text for e in ET.parse(REPO / "package.xml").getroot().iter("exec_depend")}
    sources = [*(REPO / "gcross_ros").rglob("*.py"), *(REPO / "launch").glob("*.py")]
    missing = {}
    for path in sources:
        for module in _imported_modules(path):
            if ROS_PACKAGE.match(module) and module not in declared:
                missing.setdefault(module, path.relative_to(REPO).as_posix())
    assert not missing, f"imported but not in package.xml: {missing}"
    assert {"rclpy", "sensor_msgs", "launch_ros"} <= declared
