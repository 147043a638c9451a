#!/usr/bin/env bash
# Collect what the GPU check needs beyond an offline GPU image (which brings Python, a CUDA torch and nvcc)
# into one archive of unpacked wheels, for scripts/gpu_check.sh. Run it on a machine with access to PyPI.
#
#   bash scripts/gpu_wheelhouse.sh --python 3.12 --cuda 13 --out DIR [--image-has NAMES] [--index-url URL]
#
#   --python X.Y   the image's Python (wheels are taken for CPython X.Y, Linux x86_64)
#   --cuda V       the CUDA version of the image's torch (torch.version.cuda; 13 means 13.0): picks the
#                  spconv/cumm series from scripts/gpu_pins.sh
#   --out DIR      where DIR/gcross-gpu-wheelhouse-pyXY-cuXXX.tar.xz is written
#   --image-has    comma-separated distributions the image already has, left out of the archive and used
#                  in the image's version (gpu_check.sh checks they are there before unpacking); e.g.
#                  numpy,pillow,pytest,Pygments makes the archive small enough to travel to a lent GPU
#                  machine next to a checkout
#   --index-url    the package index (default: pip's configuration)
#   --xz-level N   xz preset (default 7, the lowest that kept the full py312-cu126 archive under 60 MiB:
#                  59.4 MiB after 6.5 min of xz on 2 busy cores; 9 gave 56.7 MiB in about 15 min)
#
# Contents: gsplat and spconv + cumm of the right series with their dependencies, and what the project's
# GPU tests and benchmarks import (pins from requirements/common.txt). Left out, because the image has
# them with its torch: torch itself and torch's own requirements (sympy, typing_extensions, ...), and
# whatever --image-has names.
# Documentation and test folders nothing imports are left out (glm's HTML manual inside gsplat, numpy's
# tests). The archive is xz-compressed; identical files are stored once as hard links.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/gpu_pins.sh
. scripts/gpu_pins.sh

PY_VERSION="" CUDA="" OUT="" INDEX_ARGS=() XZ_LEVEL=7 IMAGE_HAS=""
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY_VERSION=${2:-}; shift 2 ;;
    --cuda) CUDA=${2:-}; shift 2 ;;
    --out) OUT=${2:-}; shift 2 ;;
    --index-url) INDEX_ARGS=(--index-url "${2:-}"); shift 2 ;;
    --xz-level) XZ_LEVEL=${2:-}; shift 2 ;;
    --image-has) IMAGE_HAS=${2:-}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_wheelhouse: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$PY_VERSION" =~ ^3\.[0-9]+$ ]]; then
  echo "gpu_wheelhouse: --python must be a Python version like 3.12, got '$PY_VERSION'" >&2; exit 2
fi
if [[ "$CUDA" =~ ^[0-9]+$ ]]; then CUDA="$CUDA.0"; fi
series=$(spconv_series "$CUDA") || exit 2
if [ -z "$OUT" ]; then echo "gpu_wheelhouse: --out DIR is required" >&2; exit 2; fi
if ! [[ "$XZ_LEVEL" =~ ^[0-9]$ ]]; then echo "gpu_wheelhouse: --xz-level must be 0..9, got '$XZ_LEVEL'" >&2; exit 2; fi
if ! [[ "$IMAGE_HAS" =~ ^([A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*)?$ ]]; then
  echo "gpu_wheelhouse: --image-has must be distribution names separated by commas, got '$IMAGE_HAS'" >&2; exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
tag="py${PY_VERSION/./}-$series"
archive="$OUT/gcross-gpu-wheelhouse-$tag.tar.xz"

# The project's pins for what tests/gpu, benchmarks/gpu.py and scripts/gpu_selftest.py import, plus
# packaging (gsplat imports it without declaring it).
CHECK_PACKAGES="gsplat numpy safetensors PyYAML transforms3d pillow tqdm pytest"
# torch's own requirements: every image with torch has them.
TORCH_PROVIDES="torch triton sympy mpmath typing-extensions filelock jinja2 markupsafe networkx fsspec setuptools"
requirements=()
for name in $CHECK_PACKAGES; do
  line=$(grep -i -E "^$name==" requirements/common.txt) || {
    echo "gpu_wheelhouse: requirements/common.txt pins no '$name'" >&2; exit 1; }
  requirements+=("$line")
done
read -r -a spconv_reqs <<< "$(spconv_pins "$CUDA")"
requirements+=("${spconv_reqs[@]}" packaging)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platform=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64)
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "gpu_wheelhouse: resolving for CPython $PY_VERSION, torch CUDA $CUDA -> $series"
# A metadata-only stand-in for the image's torch, so that the resolver neither downloads torch (GBs) nor
# pulls its CUDA libraries in.
python3 - "$work/stub" <<'EOF'
import os, sys, zipfile
stub = sys.argv[1]
os.makedirs(stub)
info = "torch-0.0.0.dist-info"
with zipfile.ZipFile(os.path.join(stub, "torch-0.0.0-py3-none-any.whl"), "w") as whl:
    whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 0.0.0\n")
    whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: gcross\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    whl.writestr(f"{info}/RECORD", "")
EOF
echo "torch==0.0.0" > "$work/constraints.txt"
python3 -m pip install -q --dry-run --ignore-installed --report "$work/report.json" --target "$work/resolve" \
  "${INDEX_ARGS[@]}" --find-links "$work/stub" -c "$work/constraints.txt" "${platform[@]}" "${requirements[@]}"
mapfile -t pinned < <(python3 - "$work/report.json" "$TORCH_PROVIDES ${IMAGE_HAS//,/ }" <<'EOF'
import json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
report, provided = json.load(open(sys.argv[1])), {norm(name) for name in sys.argv[2].split()}
for item in report["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if norm(name) not in provided and not norm(name).startswith("nvidia-"):
        print(f"{name}=={version}")
EOF
)
echo "gpu_wheelhouse: ${#pinned[@]} packages: ${pinned[*]}"

site="$work/stage/site"
python3 -m pip install -q --no-deps --no-compile --target "$site" "${INDEX_ARGS[@]}" "${platform[@]}" "${pinned[@]}"
rm -rf "$site"/gsplat/cuda/csrc/third_party/glm/{doc,test}
if [ -d "$site/numpy" ]; then find "$site/numpy" -type d -name tests -prune -exec rm -rf {} +; fi
python3 - "$site" "$PY_VERSION" "$CUDA" "$series" "$IMAGE_HAS" "${pinned[@]}" <<'EOF'
import hashlib, json, os, sys
site, python, cuda, series, image_has, packages = (sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4],
                                                   sys.argv[5], sys.argv[6:])
seen, linked = {}, 0
for root, _, files in sorted(os.walk(site)):
    for name in sorted(files):
        path = os.path.join(root, name)
        if os.path.islink(path) or os.path.getsize(path) < (64 << 10):
            continue
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if digest in seen:
            os.remove(path)
            os.link(seen[digest], path)
            linked += os.path.getsize(path)
        else:
            seen[digest] = path
manifest = {"python": python, "torch_cuda": cuda, "spconv_series": series, "packages": packages,
            "image_has": [name for name in image_has.split(",") if name]}
with open(os.path.join(site, "gcross_wheelhouse.json"), "w") as f:
    json.dump(manifest, f, indent=1)
print(f"gpu_wheelhouse: {linked / 2**20:.1f} MiB of duplicate files stored once")
EOF
unpacked=$(du -sm "$site" | cut -f1)
echo "gpu_wheelhouse: compressing $unpacked MiB (xz -$XZ_LEVEL)"
# The manifest goes first, so gpu_check.sh reads it (and checks the archive against the image) without
# decompressing the rest.
(cd "$work/stage" && { echo site/gcross_wheelhouse.json; find site -path site/gcross_wheelhouse.json -prune -o -print; }) \
  | tar -C "$work/stage" --no-recursion -cf - -T - | xz "-$XZ_LEVEL" -T0 > "$archive.tmp"
mv "$archive.tmp" "$archive"
size=$(stat -c %s "$archive")
echo "gpu_wheelhouse: wrote $archive ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB)"
if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
  echo "gpu_wheelhouse: the archive is larger than 60 MiB; --xz-level 9 compresses more, --image-has leaves out" \
       "what the image already has" >&2
  exit 1
fi
