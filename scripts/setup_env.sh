#!/usr/bin/env bash
# Create (or update) the project's virtual environment. Safe to run again: it only installs what is missing.
#   VENV=path  where to put the environment (default .venv; the Makefile picks .venv-<distro> for a
#              distribution other than Kilted)
#   PYTHON=... interpreter to build it from (default python3; Python 3.11 or 3.12)
#   ROS_DISTRO=...  which ROS 2 distribution's PyPI wheels to install, requirements/ros-<distro>.txt:
#              kilted (the default when unset) or jazzy. When ROS_DISTRO is set and rclpy already imports
#              from outside the venv (a sourced ROS 2 workspace puts it on PYTHONPATH), that rclpy and its
#              messages are used and no ROS wheels are installed, whatever the distribution.
#   TORCH_INDEX_URL=... where torch comes from (default: pip's configuration, i.e. PyPI and any local wheels;
#              PyPI's torch 2.13.0 is the CUDA build: https://download.pytorch.org/whl/cpu for the CPU one)
# With an NVIDIA GPU (nvidia-smi) it installs CUDA torch, the spconv wheel for torch's CUDA version
# (scripts/gpu_pins.sh), builds gsplat's CUDA extension and checks the GPU path (scripts/gpu_selftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# Pythons with wheels for every pin (torch, spconv, the ROS 2 wheels of both distributions); CI uses 3.11.
PYTHONS="3.11 3.12"
# One pin file each, requirements/ros-<distro>.txt; tests/scripts/test_ros_pins.py checks them against PyPI.
DISTROS="kilted jazzy"
distro=${ROS_DISTRO:-kilted}
no_pin_file() {
  echo "setup_env: ROS_DISTRO=$distro has no pin file here; supported: ${DISTROS// /, }" \
    "(requirements/ros-<distro>.txt), or source a ROS 2 workspace whose rclpy this Python imports" >&2
  exit 1
}
# An unknown distribution without a sourced workspace fails before a venv is made for it.
py=$PYTHON
[ -x "$VENV/bin/python" ] && py=$VENV/bin/python
if [[ " $DISTROS " != *" $distro "* ]] && ! "$py" -c "import rclpy" >/dev/null 2>&1; then no_pin_file; fi

if [ ! -x "$VENV/bin/python" ]; then
  ver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [[ " $PYTHONS " != *" $ver "* ]]; then
    echo "setup_env: $PYTHON is Python $ver; the pinned wheels are used with Python ${PYTHONS// / or }" \
      "(set PYTHON=python3.12, for example)" >&2
    exit 1
  fi
  echo "setup_env: creating $VENV (Python $ver)"
  "$PYTHON" -m venv "$VENV"
fi
# The venv may live inside the checkout under any name (.venv-jazzy): git ignores it, as Python 3.13's venv does.
[ -e "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# rclpy from a sourced workspace (ROS_DISTRO set, rclpy importable from outside this venv), or the pin file
# of $distro. Decided before anything is installed, so a wrong distribution fails in a second.
# rclpy_from: none, venv (the wheels installed here), outside (a workspace on PYTHONPATH), or
# "broken DIR" (found there, but it does not import with this Python).
rclpy_from=$(python -c '
import importlib.util, os, sys
spec = importlib.util.find_spec("rclpy")
if spec is None:
    print("none")
    raise SystemExit
try:
    import rclpy
except Exception:
    print("broken", os.path.dirname(spec.origin or "?"))
    raise SystemExit
inside = os.path.realpath(rclpy.__file__).startswith(os.path.realpath(sys.prefix) + os.sep)
print("venv" if inside else "outside")' 2>/dev/null || echo none)
if [[ "$rclpy_from" == broken* ]]; then
  echo "setup_env: warning: rclpy in ${rclpy_from#broken } does not import with $(python -V 2>&1) (a ROS 2" \
    "workspace built for another Python?); it comes before the venv's packages while it is on PYTHONPATH" >&2
fi
# The distribution whose wheels the venv holds (venvs made before this marker existed hold Kilted's).
marker="$VENV/.gcross-ros-distro"
held=""
if [ -f "$marker" ]; then held=$(cat "$marker"); elif [ "$rclpy_from" = venv ]; then held=kilted; fi
ros_pins=""
if [ -n "${ROS_DISTRO:-}" ] && [ "$rclpy_from" = outside ]; then
  echo "setup_env: using rclpy and messages from the sourced ROS 2 $ROS_DISTRO workspace" \
    "($(python -c 'import rclpy, os; print(os.path.dirname(rclpy.__file__))' 2>/dev/null)); no ROS wheels installed"
  if ! python -c "import rclpy.event_handler" >/dev/null 2>&1; then
    echo "setup_env: warning: this rclpy has no rclpy.event_handler (ROS 2 Iron and later have it; Humble does" \
      "not): the node and the live demo will not start on it (tested: Kilted, Jazzy)" >&2
  fi
elif [[ " $DISTROS " != *" $distro "* ]]; then
  no_pin_file
elif [ -n "$held" ] && [ "$held" != "$distro" ]; then
  echo "setup_env: $VENV holds the ROS 2 $held wheels; ROS_DISTRO=$distro needs its own venv" \
    "(VENV=.venv-$distro, the Makefile's default for it) or $VENV removed first" >&2
  exit 1
else
  ros_pins=requirements/ros-$distro.txt
  echo "setup_env: ROS 2 $distro from PyPI ($ros_pins)"
fi

GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi
# TORCH_INDEX_URL=URL  install torch from that index instead (e.g. https://download.pytorch.org/whl/cu126 for
#                      a driver older than CUDA 13, or .../whl/cpu for the CPU build without a local wheel)
if [ -n "${TORCH_INDEX_URL:-}" ]; then pip install -q --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi

if [ "$GPU" = 1 ]; then
  echo "setup_env: NVIDIA GPU found: CUDA torch, spconv for torch's CUDA version, gsplat built now"
  # PyPI's Linux torch 2.13.0 is the CUDA 13.0 build (it needs a driver for CUDA 13).
  pip install -q torch==2.13.0
  torch_cuda=$(python -c 'import torch; print(torch.version.cuda or "")')
  if [ -z "$torch_cuda" ]; then
    echo "setup_env: the torch in $VENV is a CPU build ($(python -c 'import torch; print(torch.__version__)')) on a GPU" \
      "machine; run '$VENV/bin/pip uninstall -y torch' and this script again (TORCH_INDEX_URL picks the CUDA series)" >&2
    exit 1
  fi
  # shellcheck source=scripts/gpu_pins.sh
  . scripts/gpu_pins.sh
  spconv=$(spconv_pins "$torch_cuda")
  echo "setup_env: torch is built for CUDA $torch_cuda -> $spconv"
  # shellcheck disable=SC2086  # two requirement words
  pip install -q $spconv
else
  echo "setup_env: no NVIDIA GPU: CPU torch + spconv"
  if [ -z "${TORCH_INDEX_URL:-}" ] && ! python -c "import importlib.util as u; exit(u.find_spec('torch') is None)"; then
    echo "setup_env: torch 2.13.0 from pip's sources: a local CPU wheel for this Python if PIP_FIND_LINKS has" \
      "one, else PyPI's CUDA build (several GB); TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu gets the CPU build"
  fi
  # Pinned, and the CPU build must come from a local wheel (PIP_FIND_LINKS) or the CPU wheel index
  # (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu): PyPI's torch==2.13.0 itself is the CUDA 13
  # build, several GB of CUDA wheels on a CPU machine.
  pip install -q torch==2.13.0 spconv==2.3.8
fi
pip install -q -r requirements/common.txt

if [ -n "$ros_pins" ]; then
  pip install -q -r "$ros_pins"
  echo "$distro" > "$marker"
fi

pip install -q --no-deps --no-build-isolation -e .
if [ "$GPU" = 1 ]; then
  # gsplat 1.5.3 is CUDA sources compiled by torch on first use: build it now (minutes, all cores), with
  # CUDA_HOME taken from nvcc's real location, then check spconv and a gsplat render on the GPU.
  if ! python scripts/gpu_selftest.py; then
    echo "setup_env: the GPU check failed (the line above names the cause); the CPU path works, backend='gsplat' does not" >&2
    exit 1
  fi
fi
python -c "import gcross_core, gcross_ros; import torch; print('setup_env: ready, torch', torch.__version__)"
