#!/usr/bin/env bash
# The GPU check for an offline GPU machine (a cluster node or container with Python, a CUDA torch and nvcc,
# but no package index): unpack the wheelhouse of scripts/gpu_wheelhouse.sh into a private site folder,
# build gsplat's CUDA extension, run tests/gpu and the GPU benchmarks, and write summary.json + summary.md.
# Nothing is installed into the image's Python and no registry is contacted.
#
#   bash scripts/gpu_check.sh --wheelhouse ARCHIVE --out DIR [--python PY] [--dry-run]
#
#   --wheelhouse  the .tar.xz from gpu_wheelhouse.sh (its Python and CUDA series must fit the image)
#   --out DIR     site/ (the unpacked wheels), torch_extensions/ (gsplat's build), logs, summary.json/.md
#   --python PY   the image's interpreter (default: python3)
#   --dry-run     walk every stage that needs no GPU: unpack, imports, toolkit, tests/gpu (they skip),
#                 benchmarks (they print that they skip); the gsplat build and GPU runs are skipped
#
# Budget: under 10 minutes on one GPU including the build; each stage prints how long it took and has a
# time limit (unpack 1 min, build 5, tests 2, benchmarks 2; benchmarks/gpu.py writes its figures as it
# goes, so a benchmark stage cut short still reports the cases it finished).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)

WHEELHOUSE="" OUT="" PY=python3 DRY_RUN=0
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) WHEELHOUSE=${2:-}; shift 2 ;;
    --out) OUT=${2:-}; shift 2 ;;
    --python) PY=${2:-}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$WHEELHOUSE" ] || [ ! -f "$WHEELHOUSE" ]; then
  echo "gpu_check: --wheelhouse must name the archive written by scripts/gpu_wheelhouse.sh, got '$WHEELHOUSE'" >&2
  exit 2
fi
if [ -z "$OUT" ]; then echo "gpu_check: --out DIR is required" >&2; exit 2; fi
if ! command -v "$PY" >/dev/null 2>&1; then echo "gpu_check: no Python interpreter '$PY'" >&2; exit 2; fi
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
STAGES="$OUT/logs/stages.tsv"
: > "$STAGES"

# The private environment: the unpacked wheels first on sys.path, the project from this checkout, gsplat's
# build under OUT, every core for the build, and no package index.
export PYTHONPATH="$OUT/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$OUT/site/bin:$PATH"
export TORCH_EXTENSIONS_DIR="$OUT/torch_extensions"
MAX_JOBS=${MAX_JOBS:-$(nproc)}
export MAX_JOBS
export PIP_NO_INDEX=1 PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1
DRY_ARGS=()
if [ "$DRY_RUN" = 1 ]; then DRY_ARGS=(--dry-run); fi

failed=0
# stage NAME LIMIT_S COMMAND...: run, log to logs/NAME.log, print and record status and seconds.
stage() {
  local name=$1 limit=$2 start rc status
  shift 2
  echo "gpu_check: [$name] $*"
  start=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  local seconds
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" = 0 ]; then status=ok; elif [ "$rc" = 124 ]; then status="timeout after ${limit}s"; else status="failed (exit $rc)"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$*" >> "$STAGES"
  tail -n 5 "$OUT/logs/$name.log" | sed 's/^/    /'
  echo "gpu_check: [$name] $status in $seconds s"
  if [ "$rc" != 0 ]; then failed=1; fi
  return "$rc"
}

# shellcheck disable=SC2317  # called through stage()
unpack() {
  rm -rf "$OUT/site" && mkdir -p "$OUT" && tar -C "$OUT" -xJf "$WHEELHOUSE" || return 1
  local manifest="$OUT/site/gcross_wheelhouse.json"
  [ -f "$manifest" ] || { echo "not a gcross wheelhouse: no site/gcross_wheelhouse.json in $WHEELHOUSE"; return 1; }
  "$PY" - "$manifest" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
here = "%d.%d" % sys.version_info[:2]
print(f"wheelhouse for Python {m['python']}, torch CUDA {m['torch_cuda']} ({m['spconv_series']}); "
      f"{len(m['packages'])} packages")
if m["python"] != here:  # checked before torch imports the wheelhouse's compiled numpy
    sys.exit(f"the wheelhouse is for Python {m['python']} but {sys.executable} is {here}: rebuild it with "
             f"scripts/gpu_wheelhouse.sh --python {here}")
import torch
print(f"this interpreter: Python {here}, torch {torch.__version__} (CUDA {torch.version.cuda})")
EOF
}

check_start=$(date +%s)
echo "gpu_check: out=$OUT python=$($PY -c 'import sys; print(sys.executable)') MAX_JOBS=$MAX_JOBS dry_run=$DRY_RUN"
export -f unpack
export OUT WHEELHOUSE PY
stage unpack 60 bash -c unpack || echo "gpu_check: cannot go on without the wheelhouse" >&2
if [ "$failed" = 0 ]; then
  # Builds gsplat's extension (the longest stage) and checks spconv and a gsplat render on the GPU.
  stage build 300 "$PY" scripts/gpu_selftest.py "${DRY_ARGS[@]}"
  stage tests 120 "$PY" -m pytest tests/gpu -v -p no:cacheprovider --junitxml "$OUT/logs/tests.xml"
  stage benchmarks 120 "$PY" benchmarks/gpu.py "${DRY_ARGS[@]}" --repeats 3 --json "$OUT/logs/benchmarks.json"
fi
total=$(( $(date +%s) - check_start ))

"$PY" - "$OUT" "$total" "$DRY_RUN" <<'EOF'
import json, os, platform, subprocess, sys
import xml.etree.ElementTree as ET
out, total, dry_run = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
stages = []
for line in open(os.path.join(out, "logs", "stages.tsv")):
    name, status, seconds, command = line.rstrip("\n").split("\t")
    stages.append({"stage": name, "status": status, "seconds": float(seconds), "command": command})
env = {"python": platform.python_version(), "dry_run": dry_run}
try:
    import torch
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as err:  # noqa: BLE001
    env["torch"] = f"not importable: {err}"
for name in ("gsplat", "spconv"):
    try:
        env[name] = __import__(name).__version__
    except Exception as err:  # noqa: BLE001
        env[name] = f"not importable: {err}"
try:
    env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    env["driver"] = None
tests = []
xml = os.path.join(out, "logs", "tests.xml")
if os.path.exists(xml):
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                reason = (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
                break
        else:
            reason = ""
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "reason": reason})
bench_path = os.path.join(out, "logs", "benchmarks.json")
benchmarks = json.load(open(bench_path)) if os.path.exists(bench_path) else []
ok = all(s["status"] == "ok" for s in stages) and not any(t["outcome"] in ("failed", "error") for t in tests)
summary = {"ok": ok, "total_seconds": total, "environment": env, "stages": stages, "tests": tests,
           "benchmarks": benchmarks}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)

md = [f"# GPU check{' (dry run)' if dry_run else ''}: {'passed' if ok else 'FAILED'} in {total} s", ""]
md += [", ".join(f"{k} {v}" for k, v in env.items()), "", "| stage | status | seconds |", "|---|---|---|"]
md += [f"| {s['stage']} | {s['status']} | {s['seconds']:.1f} |" for s in stages]
if tests:
    md += ["", "| test | outcome | seconds | note |", "|---|---|---|---|"]
    md += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['reason']} |" for t in tests]
if benchmarks:
    md += ["", "| benchmark | case | figures |", "|---|---|---|"]
    md += [f"| {b['benchmark']} | {b['case']} | {b['figures']} |" for b in benchmarks]
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
echo "gpu_check: wrote $OUT/summary.json and $OUT/summary.md (logs in $OUT/logs)"
exit "$failed"
