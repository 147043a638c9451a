# shellcheck shell=bash disable=SC2034  # the variables are read by the scripts and tests that source this file
# GPU pins shared by setup_env.sh, gpu_wheelhouse.sh and gpu_check.sh (sourced, not run). The one place
# that maps torch's CUDA version to the spconv wheel; tests/core/test_gpu_pins.py checks every pin below
# against PyPI for the platforms named here.
#
# spconv 2.3.8 is published for four CUDA series only (checked on PyPI, 2026-11-29):
#   cu118, cu121, cu124, cu126 (cp39-cp313; Linux x86_64 and Windows). spconv-cu120 stops at 2.3.6, and
#   there is no cu128/cu129/cu13x series. Each wheel bundles its own CUDA runtime (libcudart, and in cumm
#   libnvrtc), so it needs only an NVIDIA driver new enough for that series, not a matching toolkit:
#   the newest series, cu126, therefore serves torch builds for CUDA 12.6 up to 13.x.
#   Each spconv-cuXXX 2.3.8 requires cumm-cuXXX >=0.7.11,<0.8, pinned here to 0.7.11.
SPCONV_VERSION=2.3.8
CUMM_VERSION=0.7.11
# Platforms the pins are checked for: the venv of setup_env.sh (cp311, for the ROS 2 wheels) and the
# offline images gpu_wheelhouse.sh targets (cp312).
GPU_PYTHONS="3.11 3.12"
GPU_CUDA_SERIES="cu118 cu121 cu124 cu126"

# spconv_series CUDA_VERSION -> the cuXXX series of the spconv wheel for a torch built with that CUDA
# (torch.version.cuda, e.g. 12.4 or 13.0). Prints one line to stderr and returns 1 when none fits.
spconv_series() {
  local cuda=$1 major minor
  if ! [[ "$cuda" =~ ^[0-9]+\.[0-9]+ ]]; then
    echo "gpu_pins: '$cuda' is not a CUDA version like 12.6 (torch.version.cuda)" >&2
    return 1
  fi
  major=${cuda%%.*}
  minor=${cuda#*.}
  minor=${minor%%.*}
  case "$major" in
    11) if [ "$minor" -ge 8 ]; then echo cu118; return 0; fi ;;
    12) if [ "$minor" -ge 6 ]; then echo cu126
        elif [ "$minor" -ge 4 ]; then echo cu124
        elif [ "$minor" -ge 1 ]; then echo cu121
        else echo cu118  # CUDA 12.0: spconv-cu120 stops at 2.3.6; the cu118 runtime runs on its driver
        fi
        return 0 ;;
    13) echo cu126; return 0 ;;  # no cu13x wheel: the bundled 12.6 runtime runs on CUDA 13 drivers
  esac
  echo "gpu_pins: no spconv $SPCONV_VERSION wheel for CUDA '$cuda' (published: $GPU_CUDA_SERIES)" >&2
  return 1
}

# spconv_pins CUDA_VERSION -> "spconv-cuXXX==2.3.8 cumm-cuXXX==0.7.11"
spconv_pins() {
  local series
  series=$(spconv_series "$1") || return 1
  echo "spconv-$series==$SPCONV_VERSION cumm-$series==$CUMM_VERSION"
}
