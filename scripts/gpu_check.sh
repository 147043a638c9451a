#!/usr/bin/env bash
# The GPU check for an offline GPU machine (a cluster node or container with Python, a CUDA torch and nvcc,
# but no package index): unpack the wheelhouse of scripts/gpu_wheelhouse.sh into a private site folder,
# build gsplat's CUDA extension, run tests/gpu and the quick GPU benchmarks, and write summary.json +
# summary.md. Nothing is installed into the image's Python and no registry is contacted.
#
#   bash scripts/gpu_check.sh --wheelhouse ARCHIVE --out DIR [--work DIR] [--python PY] [--clean] [--dry-run]
#
#   --wheelhouse  the .tar.xz from gpu_wheelhouse.sh; its Python and CUDA series are checked against the
#                 image before anything is unpacked
#   --out DIR     summary.json, summary.md and logs/<stage>.log, nothing else; must be empty or new
#   --clean       empty an --out an earlier gpu_check wrote (one holding summary.json) instead of refusing it
#   --work DIR    site/ (the unpacked wheels), torch_extensions/ (gsplat's build, kept: a second run on the
#                 same machine continues it) and the check's working files; one check at a time per folder
#                 (default: ${TMPDIR:-/tmp}/gcross_gpu_check)
#   --python PY   the image's interpreter (default: python3)
#   --dry-run     walk every stage that needs no GPU: unpack, imports, toolkit, tests/gpu (they skip),
#                 benchmarks (they print that they skip); the gsplat build and GPU runs are skipped
#   --limits      print each stage's time limit in seconds and the check's worst case, then exit
#
# Time: every stage has a limit (TERM at the limit, KILL 5 s later); with those grace periods the limits
# add up to at most 7 minutes, what a 10-minute command on a lent GPU machine leaves once the machine has
# started. The build compiles for the visible GPU only (TORCH_CUDA_ARCH_LIST from its compute capability,
# replacing any value in the environment). When the build fails or is cut off, the tests and benchmarks
# are not run (each would start gsplat's build again) and are marked so. summary.json and summary.md are
# written before and after every stage, so a check that is killed leaves what ran.
# Exit status: 0 when every stage passed, 1 when one failed or was cut off, 2 for bad arguments.
set -uo pipefail
CALLER_DIR=$(pwd)  # relative --wheelhouse, --out and --work are taken from where the check was started
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)

STAGE_NAMES=(unpack build tests benchmarks)
# unpack: reading the manifest, one torch import, ~440 MiB out of xz. build: gsplat's 20 .cu files for one
# architecture with every core (2-4 min on 16 cores with nvcc 13), the spconv check and a small render.
# tests: tests/gpu on small scenes. benchmarks: python -m benchmarks.gpu --quick (CPU scene building included).
STAGE_LIMITS_S=(25 240 60 75)
KILL_GRACE_S=5
CHECK_BUDGET_S=420

WHEELHOUSE="" OUT="" WORK="${TMPDIR:-/tmp}/gcross_gpu_check" PY=python3 DRY_RUN=0 CLEAN=0
usage() { sed -n '2,27p' "$REPO/scripts/gpu_check.sh" | sed 's/^# \{0,1\}//'; }
print_limits() {
  local i worst=0
  for i in "${!STAGE_NAMES[@]}"; do
    printf '%s\t%s\n' "${STAGE_NAMES[$i]}" "${STAGE_LIMITS_S[$i]}"
    worst=$((worst + STAGE_LIMITS_S[i] + KILL_GRACE_S))
  done
  printf 'kill_grace\t%s\nworst_case\t%s\nbudget\t%s\n' "$KILL_GRACE_S" "$worst" "$CHECK_BUDGET_S"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) WHEELHOUSE=${2:-}; shift 2 ;;
    --out) OUT=${2:-}; shift 2 ;;
    --work) WORK=${2:-}; shift 2 ;;
    --python) PY=${2:-}; shift 2 ;;
    --clean) CLEAN=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --limits) print_limits; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$OUT" ]; then echo "gpu_check: --out DIR is required" >&2; exit 2; fi
if [ -z "$WORK" ]; then echo "gpu_check: --work must name a folder" >&2; exit 2; fi
WHEELHOUSE=${WHEELHOUSE:+$(cd "$CALLER_DIR" && realpath -m -- "$WHEELHOUSE")}
OUT=$(cd "$CALLER_DIR" && realpath -m -- "$OUT")
WORK=$(cd "$CALLER_DIR" && realpath -m -- "$WORK")
if [ -z "$WHEELHOUSE" ] || [ ! -f "$WHEELHOUSE" ]; then
  echo "gpu_check: --wheelhouse must name the archive written by scripts/gpu_wheelhouse.sh, got '$WHEELHOUSE'" >&2
  exit 2
fi
case "$WORK/" in
  "$OUT"/*) echo "gpu_check: --work must lie outside --out (the unpacked wheels and the build are hundreds of MiB)" >&2
            exit 2 ;;
esac
case "$PY" in */*) PY=$(cd "$CALLER_DIR" && realpath -ms -- "$PY") ;; esac  # -s: a venv's python is a link
if ! command -v "$PY" >/dev/null 2>&1; then echo "gpu_check: no Python interpreter '$PY'" >&2; exit 2; fi

# A fresh OUT each run: an earlier run's logs and figures must not reach this run's summary.
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  if [ "$CLEAN" = 0 ]; then
    echo "gpu_check: --out $OUT is not empty (an earlier check?); give a new or empty folder, or add --clean" \
         "to empty one an earlier gpu_check wrote" >&2
    exit 2
  fi
  if [ ! -f "$OUT/summary.json" ]; then
    echo "gpu_check: --clean empties only a folder an earlier gpu_check wrote (one with summary.json), and" \
         "$OUT has none; give a new or empty --out" >&2
    exit 2
  fi
  find "$OUT" -mindepth 1 -delete || { echo "gpu_check: cannot empty $OUT" >&2; exit 2; }
fi
mkdir -p "$OUT/logs" "$WORK" || { echo "gpu_check: cannot create $OUT/logs or $WORK" >&2; exit 2; }
STATE="$WORK/state"  # this run's stage table, environment, test report and figures
if ! { rm -rf "$STATE" && mkdir -p "$STATE"; }; then echo "gpu_check: cannot create $STATE" >&2; exit 2; fi
: > "$STATE/stages.tsv"

# The private environment: the unpacked wheels first on sys.path, the project from this checkout, gsplat's
# build under WORK, every core for the build, and no package index.
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$WORK/site/bin:$PATH"
export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"
MAX_JOBS=${MAX_JOBS:-$(nproc)}
export MAX_JOBS
export PIP_NO_INDEX=1 PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1
DRY_ARGS=()
if [ "$DRY_RUN" = 1 ]; then DRY_ARGS=(--dry-run); fi

# write_summary FINISHED: summary.json and summary.md from what is in STATE now (stages done, the one
# running, the environment, test outcomes, benchmark figures). Imports nothing heavy: it runs around
# every stage.
write_summary() {
  "$PY" - "$OUT" "$STATE" "$1" "$DRY_RUN" "$(( $(date +%s) - CHECK_START ))" "${STAGE_NAMES[*]}" \
        "${STAGE_LIMITS_S[*]}" "$CHECK_BUDGET_S" <<'EOF'
import json, os, re, sys, time
import xml.etree.ElementTree as ET
out, state, finished, dry_run, total = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1", int(sys.argv[5])
names, limits, budget = sys.argv[6].split(), [int(x) for x in sys.argv[7].split()], int(sys.argv[8])

def read_json(name, default):
    try:
        with open(os.path.join(state, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default

done = {}
for line in open(os.path.join(state, "stages.tsv")):
    name, status, seconds, command = line.rstrip("\n").split("\t")
    done[name] = {"status": status, "seconds": float(seconds), "command": command}
running = None
if os.path.exists(os.path.join(state, "running")):
    running_name, started = open(os.path.join(state, "running")).read().split()
    running = (running_name, time.time() - float(started))
stages = []
for name, limit in zip(names, limits):
    entry = {"stage": name, "limit_s": limit, "status": "pending", "seconds": None, "command": ""}
    if name in done:
        entry.update(done[name])
    elif running and running[0] == name:
        entry.update(status="running", seconds=round(running[1], 1))
    stages.append(entry)

env = read_json("environment.json", {})
manifest = env.get("wheelhouse") or {}
versions = dict(p.split("==", 1) for p in manifest.get("packages", []) if "==" in p)
env_line = {"python": env.get("python"), "torch": env.get("torch"), "torch_cuda": env.get("torch_cuda"),
            "gpu": ", ".join(env.get("gpus", [])) or None,
            "compute_capability": ", ".join(env.get("compute_capabilities", [])) or None,
            "driver": env.get("driver"), "torch_cuda_arch_list": read_json("arch.json", {}).get("value"),
            "gsplat": versions.get("gsplat"),
            "spconv": next((v for k, v in versions.items() if k.startswith("spconv")), None),
            "dry_run": dry_run}

tests, source = [], None
xml = os.path.join(state, "tests.xml")
if os.path.exists(xml):
    source = "junit"
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for tag, word in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            node = case.find(tag)
            if node is not None:
                outcome, reason = word, ((node.get("message") or "").splitlines() or [""])[0][:200]
                break
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "reason": reason})
elif os.path.exists(os.path.join(out, "logs", "tests.log")):
    # pytest writes its junit report at the end: a tests stage cut short leaves only -v's lines
    source = "log"
    words = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "xfailed",
             "XPASS": "xpassed"}
    pattern = re.compile(r"^(\S+::\S+) (%s)\b" % "|".join(words))
    for line in open(os.path.join(out, "logs", "tests.log"), errors="replace"):
        m = pattern.match(line)
        if m:
            tests.append({"test": m.group(1), "outcome": words[m.group(2)], "seconds": None, "reason": ""})
benchmarks = read_json("benchmarks.json", [])

ok = (finished and all(s["status"] == "ok" for s in stages)
      and not any(t["outcome"] in ("failed", "error") for t in tests)
      and not any(b["case"] == "error" for b in benchmarks))
summary = {"ok": ok, "finished": finished, "total_seconds": total, "budget_s": budget,
           "environment": env_line, "stages": stages, "tests": tests, "tests_from": source,
           "benchmarks": benchmarks}
tmp = os.path.join(out, "summary.json.tmp")
with open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
os.replace(tmp, os.path.join(out, "summary.json"))

verdict = ("passed" if ok else "FAILED") if finished else "STOPPED before the end (killed or cut off)"
md = [f"# GPU check{' (dry run)' if dry_run else ''}: {verdict} after {total} s", ""]
md += [", ".join(f"{k} {v}" for k, v in env_line.items() if v is not None), "",
       "| stage | status | seconds | limit s |", "|---|---|---|---|"]
md += [f"| {s['stage']} | {s['status']} | {'' if s['seconds'] is None else s['seconds']} | {s['limit_s']} |"
       for s in stages]
if tests:
    md += ["", "| test | outcome | seconds | note |", "|---|---|---|---|"]
    md += [f"| {t['test']} | {t['outcome']} | {'' if t['seconds'] is None else round(t['seconds'], 1)} | "
           f"{t['reason']} |" for t in tests]
if benchmarks:
    md += ["", "| benchmark | case | figures |", "|---|---|---|"]
    md += [f"| {b['benchmark']} | {b['case']} | {b['figures']} |" for b in benchmarks]
tmp = os.path.join(out, "summary.md.tmp")
with open(tmp, "w") as f:
    f.write("\n".join(md) + "\n")
os.replace(tmp, os.path.join(out, "summary.md"))
if finished:
    print("\n".join(md))
EOF
}

failed=0
# record NAME STATUS SECONDS COMMAND: one finished (or skipped) stage into the stage table.
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STATE/stages.tsv"; }

# stage NAME COMMAND...: run under the stage's limit, log to OUT/logs/NAME.log, record status and seconds,
# rewrite the summary before and after.
stage() {
  local name=$1 limit="" i start rc status seconds
  shift
  for i in "${!STAGE_NAMES[@]}"; do
    if [ "${STAGE_NAMES[$i]}" = "$name" ]; then limit=${STAGE_LIMITS_S[$i]}; fi
  done
  echo "gpu_check: [$name] (limit ${limit} s) $*"
  start=$(date +%s.%N)
  echo "$name $start" > "$STATE/running"
  write_summary 0
  timeout -k "$KILL_GRACE_S" "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  status="failed (exit $rc)"
  if [ "$rc" = 0 ]; then
    status=ok
  elif { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && awk -v s="$seconds" -v l="$limit" 'BEGIN { exit !(s >= l) }'; then
    status="timeout after ${limit} s"
  fi
  record "$name" "$status" "$seconds" "$*"
  rm -f "$STATE/running"
  write_summary 0
  tail -n 5 "$OUT/logs/$name.log" | sed 's/^/    /'
  echo "gpu_check: [$name] $status in $seconds s"
  if [ "$rc" != 0 ]; then failed=1; fi
  return "$rc"
}

# not_run NAME REASON: a stage that is skipped, recorded so.
not_run() {
  echo "gpu_check: [$1] not run: $2"
  record "$1" "not run: $2" 0 ""
}

# shellcheck disable=SC2317,SC2329  # called through stage()
unpack() {
  # gpu_wheelhouse.sh puts the manifest first in the archive, so it is read (and the archive checked
  # against this Python and torch) before the rest is decompressed.
  tar -xJOf "$WHEELHOUSE" --occurrence=1 site/gcross_wheelhouse.json > "$STATE/manifest.json" 2>/dev/null \
    && [ -s "$STATE/manifest.json" ] \
    || { echo "not a gcross wheelhouse: no site/gcross_wheelhouse.json in $WHEELHOUSE"; return 1; }
  "$PY" scripts/gpu_selftest.py --describe "$STATE/environment.json" \
    --wheelhouse-manifest "$STATE/manifest.json" || return 1
  rm -rf "$WORK/site" && tar -C "$WORK" -xJf "$WHEELHOUSE" || return 1
  echo "unpacked $(du -sm "$WORK/site" | cut -f1) MiB into $WORK/site"
  # A build killed by an earlier run's limit leaves torch's lock file behind, and the next build would wait
  # on it for ever.
  find "$TORCH_EXTENSIONS_DIR" -name lock -type f -print -delete 2>/dev/null | sed 's/^/removed a stale build lock: /'
  if [ -d "$TORCH_EXTENSIONS_DIR" ]; then
    echo "gsplat's build folder from an earlier run is kept: $(find "$TORCH_EXTENSIONS_DIR" -type f | wc -l) files"
  fi
}

# set_arch_list: TORCH_CUDA_ARCH_LIST from the compute capability of the visible GPU(s), for the build and
# every later stage (torch rewrites the extension's build.ninja in each process, and a different list
# there rebuilds everything).
set_arch_list() {
  local arch before=${TORCH_CUDA_ARCH_LIST-}
  arch=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["cuda_arch_list"] or "")' \
           "$STATE/environment.json" 2>/dev/null)
  if [ -n "$arch" ]; then
    export TORCH_CUDA_ARCH_LIST="$arch"
    if [ -n "$before" ] && [ "$before" != "$arch" ]; then before="replacing the environment's '$before'"
    else before="the environment had ${before:-none}"; fi
    echo "gpu_check: TORCH_CUDA_ARCH_LIST=$arch from the visible GPU's compute capability ($before)"
  else
    echo "gpu_check: no GPU visible: TORCH_CUDA_ARCH_LIST is not set from a device (left as the" \
         "environment has it: ${before:-unset})"
  fi
  "$PY" -c 'import json, sys; json.dump({"value": sys.argv[2] or None}, open(sys.argv[1], "w"))' \
    "$STATE/arch.json" "${TORCH_CUDA_ARCH_LIST-}"
}

CHECK_START=$(date +%s)
echo "gpu_check: out=$OUT work=$WORK python=$($PY -c 'import sys; print(sys.executable)') MAX_JOBS=$MAX_JOBS" \
     "dry_run=$DRY_RUN; limits: $(print_limits | paste -sd' ' | tr '\t' '=')"
write_summary 0
export -f unpack
export WHEELHOUSE PY STATE WORK
if stage unpack bash -c unpack; then
  set_arch_list
  # spconv on the GPU, then gsplat's extension (the longest stage) and a small render.
  stage build "$PY" scripts/gpu_selftest.py "${DRY_ARGS[@]}"
  build_rc=$?
  if [ "$build_rc" = 3 ]; then
    echo "gpu_check: gsplat's extension is built but the spconv or the render check failed (see logs/build.log);" \
         "the tests and benchmarks still run"
  fi
  if [ "$build_rc" = 0 ] || [ "$build_rc" = 3 ]; then
    stage tests "$PY" -m pytest tests/gpu -v -p no:cacheprovider --junitxml "$STATE/tests.xml"
    stage benchmarks "$PY" -m benchmarks.gpu "${DRY_ARGS[@]}" --quick --json "$STATE/benchmarks.json"
  else
    not_run tests "the build failed or was cut off (each test process would start gsplat's build again)"
    not_run benchmarks "the build failed or was cut off"
  fi
else
  echo "gpu_check: cannot go on without the wheelhouse" >&2
  for name in build tests benchmarks; do not_run "$name" "the wheelhouse was not unpacked"; done
fi
write_summary 1
echo "gpu_check: wrote $OUT/summary.json and $OUT/summary.md (logs in $OUT/logs)"
exit "$failed"
