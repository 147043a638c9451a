#!/usr/bin/env bash
# Create (or update) the project's virtual environment. Safe to run again: it only installs what is missing.
#   VENV=path  where to put the environment (default .venv)
#   PYTHON=... interpreter to build it from (default python3; must be 3.11 for the ROS 2 PyPI wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  ver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$ver" != "3.11" ]; then
    echo "setup_env: $PYTHON is Python $ver; the ROS 2 wheels on PyPI need Python 3.11 (set PYTHON=python3.11)" >&2
    exit 1
  fi
  echo "setup_env: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup_env: NVIDIA GPU found: CUDA torch + spconv-cu120"
  # PyPI's Linux torch 2.13.0 is the CUDA build.
  pip install -q torch==2.13.0 spconv-cu120==2.3.8
else
  echo "setup_env: no NVIDIA GPU: CPU torch + spconv"
  # Pinned: an unpinned torch would pull several GB of CUDA wheels onto a CPU machine.
  pip install -q torch==2.13.0 spconv==2.3.8
fi
pip install -q -r requirements/common.txt

if [ -n "${ROS_DISTRO:-}" ] && python -c "import rclpy" >/dev/null 2>&1; then
  echo "setup_env: using rclpy and messages from the sourced ROS 2 $ROS_DISTRO workspace"
else
  pip install -q -r requirements/ros-pypi.txt
fi

pip install -q --no-deps --no-build-isolation -e .
python -c "import gcross_core, gcross_ros; import torch; print('setup_env: ready, torch', torch.__version__)"
