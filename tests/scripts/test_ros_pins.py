"""The ROS 2 pin files, one per distribution (requirements/ros-<distro>.txt), against PyPI (skipped without
network access): every pin exists, the binary wheels behind it exist for every Python setup_env.sh accepts,
and each distribution gets its own rclpy series."""
import email.parser
import io
import json
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import pypi_get

REPO = Path(__file__).resolve().parents[2]
RCLPY_SERIES = {"kilted": "9.", "jazzy": "7.1."}  # the ros-rclpy version prefix each distribution must pin


def _setup_env_list(name: str) -> list:
    """A space-separated list assigned in scripts/setup_env.sh (DISTROS, PYTHONS)."""
    line = next(line for line in (REPO / "scripts" / "setup_env.sh").read_text().splitlines()
                if line.startswith(f"{name}="))
    done = subprocess.run(["bash", "-c", f'{line}; echo "${name}"'], capture_output=True, text=True, timeout=10)
    return done.stdout.split()


DISTROS = _setup_env_list("DISTROS")
PYTHONS = _setup_env_list("PYTHONS")


def _pins(distro: str) -> list:
    lines = (REPO / "requirements" / f"ros-{distro}.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def _release_files(name: str, version: str):
    """The files of one release from PyPI's JSON API, None when the release does not exist."""
    project = pypi_get(f"https://pypi.org/pypi/{name}/json")
    return (json.loads(project)["releases"].get(version) or None) if project else None


def _wheel_requires(wheel: dict) -> list:
    """Requires-Dist of a (small, pure-Python) wheel, read from its METADATA: PyPI's JSON API gives the
    requirements of a project's latest release only."""
    assert wheel["size"] < 1_000_000, f"{wheel['filename']} is not a small pure-Python wheel"
    with zipfile.ZipFile(io.BytesIO(pypi_get(wheel["url"]))) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        headers = email.parser.Parser().parsestr(whl.read(meta).decode())
    return [Requirement(r) for r in headers.get_all("Requires-Dist") or []]


def _exact(req: Requirement) -> str:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{req}: pin one exact version (name==version)"
    return specs[0].version


def _binary_release(req: Requirement, problems: list):
    """(name, version, files) of the release with the compiled code: the pin itself, or for a pure-Python
    ros-<distro>-* package the ros-* build it pins exactly."""
    name, version = req.name, _exact(req)
    files = _release_files(name, version)
    if files is None:
        problems.append(f"{name}=={version}: no such release on PyPI")
        return None
    if all(f["filename"].endswith("-py3-none-any.whl") for f in files):
        inner = [r for r in _wheel_requires(files[0])
                 if r.marker is None and r.name == re.sub("^ros-[a-z]+-", "ros-", name)]
        if len(inner) != 1:
            problems.append(f"{name}=={version} is pure Python and pins no ros-* build of its own")
            return None
        name, version = inner[0].name, _exact(inner[0])
        files = _release_files(name, version)
        if files is None:
            problems.append(f"{req} pins {name}=={version}, which is not on PyPI")
            return None
    return name, version, files


def test_one_pin_file_per_distribution():
    files = sorted(p.name for p in (REPO / "requirements").glob("ros-*.txt"))
    assert files == sorted(f"ros-{d}.txt" for d in DISTROS)
    assert set(RCLPY_SERIES) == set(DISTROS), "name the rclpy series of a new distribution in RCLPY_SERIES"
    assert DISTROS[0] == "kilted" and "3.11" in PYTHONS and "3.12" in PYTHONS


@pytest.mark.parametrize("distro", DISTROS)
def test_pins_exist_on_pypi_with_wheels_for_every_python(distro):
    problems, rclpy = [], None
    names = [r.name for r in _pins(distro)]
    for part in ("rclpy", "sensor-msgs", "geometry-msgs", "std-msgs", "diagnostic-msgs", "std-srvs",
                 "visualization-msgs", "rmw-fastrtps-cpp"):  # what the node and the bag tools import, and DDS
        if not any(n in (f"ros-{part}", f"ros-{distro}-{part}") for n in names):
            problems.append(f"ros-{distro}.txt pins no ros-{part} (or ros-{distro}-{part})")
    for req in _pins(distro):
        found = _binary_release(req, problems)
        if found is None:
            continue
        name, version, files = found
        if name == "ros-rclpy":
            rclpy = version
        for python in PYTHONS:
            tag = "cp" + python.replace(".", "")
            if not any(f"-{tag}-{tag}-" in f["filename"] and "manylinux" in f["filename"]
                       and f["filename"].endswith("_x86_64.whl") for f in files):
                problems.append(f"{name}=={version} (from {req}): no manylinux x86_64 wheel for CPython {python}")
    if rclpy is None:
        problems.append(f"ros-{distro}.txt leads to no ros-rclpy")
    elif not rclpy.startswith(RCLPY_SERIES[distro]):
        problems.append(f"{distro} pins ros-rclpy {rclpy}, not {RCLPY_SERIES[distro]}x")
    assert not problems, "\n".join(problems)
