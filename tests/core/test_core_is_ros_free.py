"""gcross_core must import with ROS absent: the library is used offline and on machines without ROS."""
import subprocess
import sys
import textwrap


def test_import_gcross_core_with_ros_blocked():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                root = name.split(".")[0]
                if root == "rclpy" or root.endswith("_msgs"):
                    raise ImportError(f"blocked ROS module {name}")
                return None

        sys.meta_path.insert(0, Block())
        import gcross_core
        names = [m.name for m in pkgutil.walk_packages(gcross_core.__path__, "gcross_core.")]
        for name in names:
            importlib.import_module(name)
        leaked = [m for m in sys.modules if m.split(".")[0] == "rclpy" or m.split(".")[0].endswith("_msgs")]
        assert not leaked, leaked
        print(len(names))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) >= 2
