#!/usr/bin/env bash
# Create (or update) the project's virtual environment. Safe to run again: it only installs what is missing.
#   VENV=path  where to put the environment (default .venv)
#   PYTHON=... interpreter to build it from (default python3; must be 3.11 for the ROS 2 PyPI wheels)
#   TORCH_INDEX_URL=... where torch comes from (default: pip's configuration, i.e. PyPI and any local wheels)
# With an NVIDIA GPU (nvidia-smi) it installs CUDA torch, the spconv wheel for torch's CUDA version
# (scripts/gpu_pins.sh), builds gsplat's CUDA extension and checks the GPU path (scripts/gpu_selftest.py).
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
  # Pinned, and the CPU build must come from a local wheel (PIP_FIND_LINKS) or the CPU wheel index
  # (TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu): PyPI's torch==2.13.0 itself is the CUDA 13
  # build, several GB of CUDA wheels on a CPU machine.
  pip install -q torch==2.13.0 spconv==2.3.8
fi
pip install -q -r requirements/common.txt

if [ -n "${ROS_DISTRO:-}" ] && python -c "import rclpy" >/dev/null 2>&1; then
  echo "setup_env: using rclpy and messages from the sourced ROS 2 $ROS_DISTRO workspace"
else
  pip install -q -r requirements/ros-pypi.txt
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
