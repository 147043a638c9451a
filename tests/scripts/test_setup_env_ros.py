"""Where scripts/setup_env.sh takes rclpy from, run against a bare venv with pip stubbed (it logs what it
was asked to install) and no GPU: a sourced ROS 2 workspace's rclpy when ROS_DISTRO is set and rclpy
imports from outside the venv (and the node starts on that rclpy), else the pin file of ROS_DISTRO, and a
clear error for a distribution without one."""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 90.0  # importing torch and spconv on a loaded 2-core machine
STUB_PIP = '#!/bin/sh\necho "$*" >> "$PIP_STUB_LOG"\n'


@pytest.fixture
def bare_venv(tmp_path):
    """A venv without pip, whose pip logs its arguments; and a PATH where nvidia-smi finds no GPU."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    (venv / "bin" / "pip").write_text(STUB_PIP)
    (venv / "bin" / "pip").chmod(0o755)
    no_gpu = tmp_path / "no_gpu"
    no_gpu.mkdir()
    (no_gpu / "nvidia-smi").write_text("#!/bin/sh\nexit 1\n")
    (no_gpu / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("ROS_DISTRO", "PYTHONPATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "TORCH_INDEX_URL")}
    env.update(VENV=str(venv), PIP_STUB_LOG=str(tmp_path / "pip.log"), PATH=f"{no_gpu}:{env['PATH']}")
    return venv, env, tmp_path / "pip.log"


def _setup_env(env):
    return subprocess.run(["bash", "scripts/setup_env.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def _stub_torch(tmp_path) -> str:
    """A folder with a stand-in torch module: setup_env.sh's last line imports torch."""
    (tmp_path / "stub" / "torch").mkdir(parents=True)
    (tmp_path / "stub" / "torch" / "__init__.py").write_text('__version__ = "stub"\n')
    return str(tmp_path / "stub")


@pytest.mark.ros
def test_sourced_workspace_rclpy_is_used_and_the_node_starts_on_it(bare_venv, tmp_path):
    """The workspace is this test's own environment, exposed as `source setup.bash` exposes one: its
    site-packages on PYTHONPATH, its libraries on LD_LIBRARY_PATH."""
    spec = importlib.util.find_spec("rclpy")
    if spec is None:
        pytest.skip("rclpy is not importable here")
    venv, env, pip_log = bare_venv
    site = Path(spec.origin).parent.parent
    libs = [str(Path(sys.prefix) / "lib"), *map(str, sorted(site.glob("ros_*.libs")))]
    marker = Path(sys.prefix) / ".gcross-ros-distro"  # the distribution of this test's own venv
    distro = marker.read_text().strip() if marker.is_file() else os.environ.get("ROS_DISTRO", "kilted")
    env.update(ROS_DISTRO=distro, PYTHONPATH=str(site),
               LD_LIBRARY_PATH=os.pathsep.join(libs + [os.environ.get("LD_LIBRARY_PATH", "")]))
    done = _setup_env(env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"using rclpy and messages from the sourced ROS 2 {distro} workspace" in done.stdout
    assert "no rclpy.event_handler" not in done.stderr
    asked = pip_log.read_text()
    assert "requirements/common.txt" in asked and "requirements/ros-" not in asked, asked
    assert not (venv / ".gcross-ros-distro").exists()
    assert not list(venv.glob("lib/python*/site-packages/rclpy")), "the venv itself holds no rclpy"

    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        node = subprocess.Popen([str(venv / "bin" / "python"), "-m", "gcross_ros.node.segment_node", "--ros-args",
                                 "--params-file", "config/segment.yaml", "-p", "torch_threads:=1"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + STARTUP_S
            while "segmenting with" not in log_path.read_text() and node.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            started = "segmenting with" in log_path.read_text()
            alive = node.poll() is None
        finally:
            node.terminate()
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
    assert started and alive, log_path.read_text()[-3000:]


def test_a_workspace_rclpy_without_event_handler_is_used_with_a_warning(bare_venv, tmp_path):
    """Humble's rclpy (3.3) has rclpy.qos_event but no rclpy.event_handler, which the node imports."""
    venv, env, pip_log = bare_venv
    stub = _stub_torch(tmp_path)
    (Path(stub) / "rclpy").mkdir()
    (Path(stub) / "rclpy" / "__init__.py").write_text("")
    (Path(stub) / "rclpy" / "qos_event.py").write_text("")
    env.update(ROS_DISTRO="humble", PYTHONPATH=stub)
    done = _setup_env(env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "sourced ROS 2 humble workspace" in done.stdout
    assert "no rclpy.event_handler" in done.stderr and "will not start" in done.stderr
    assert "requirements/ros-" not in pip_log.read_text()


@pytest.mark.parametrize("distro, pins", [(None, "requirements/ros-kilted.txt"),
                                          ("kilted", "requirements/ros-kilted.txt"),
                                          ("jazzy", "requirements/ros-jazzy.txt")])
def test_without_a_workspace_the_pin_file_of_the_distribution_is_installed(bare_venv, tmp_path, distro, pins):
    venv, env, pip_log = bare_venv
    env["PYTHONPATH"] = _stub_torch(tmp_path)  # no rclpy anywhere
    if distro:
        env["ROS_DISTRO"] = distro
    done = _setup_env(env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "sourced" not in done.stdout
    asked = pip_log.read_text()
    assert f"-r {pins}" in asked and asked.count("requirements/ros-") == 1, asked
    assert (venv / ".gcross-ros-distro").read_text().strip() == (distro or "kilted")

    # the venv now holds that distribution's wheels: another one is refused before anything is installed
    other = "kilted" if distro == "jazzy" else "jazzy"
    pip_log.unlink()
    again = _setup_env(dict(env, ROS_DISTRO=other))
    assert again.returncode == 1 and f"holds the ROS 2 {distro or 'kilted'} wheels" in again.stderr, again.stderr
    assert not pip_log.exists()


def test_a_distribution_without_pins_or_workspace_is_one_clear_error(bare_venv, tmp_path):
    _, env, pip_log = bare_venv
    env.update(ROS_DISTRO="humble", VENV=str(tmp_path / "never_made"))
    done = _setup_env(env)
    assert done.returncode == 1
    assert "ROS_DISTRO=humble has no pin file here; supported: kilted, jazzy" in done.stderr
    assert not (tmp_path / "never_made").exists() and not pip_log.exists()


def test_only_the_pythons_with_wheels_are_accepted(bare_venv, tmp_path):
    _, env, _ = bare_venv
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\necho 3.10\n')  # answers the version question like Python 3.10 would
    fake.chmod(0o755)
    env.update(VENV=str(tmp_path / "never_made"), PYTHON=str(fake))
    done = _setup_env(env)
    assert done.returncode == 1 and "is Python 3.10" in done.stderr and "3.11 or 3.12" in done.stderr
    assert not (tmp_path / "never_made").exists()
