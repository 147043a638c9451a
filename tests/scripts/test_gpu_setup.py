"""The GPU set-up scripts on a CPU machine: shell syntax (and shellcheck where installed), the spconv
table of scripts/gpu_pins.sh, every GPU pin against PyPI for the platforms it names (skipped without
network access), and scripts/gpu_check.sh on stand-in wheelhouses: its time limits, a failed build, a
check killed midway, a used --out, the architecture it builds for, and a dry run through every stage."""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import pypi_get

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))


def _pins(expr: str) -> str:
    """Evaluate a bash expression after sourcing scripts/gpu_pins.sh."""
    done = subprocess.run(["bash", "-c", f". scripts/gpu_pins.sh; {expr}"], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
    done = subprocess.run(["shellcheck", "-x", *[str(s.relative_to(REPO)) for s in SCRIPTS]], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("cuda, series", [("11.8", "cu118"), ("12.1", "cu121"), ("12.4", "cu124"),
                                          ("12.6", "cu126"), ("12.8", "cu126"), ("12.9", "cu126"),
                                          ("13.0", "cu126"), ("13.1", "cu126")])
def test_spconv_series_per_torch_cuda(cuda, series):
    rc, out, _ = _pins(f"spconv_pins {cuda}")
    assert rc == 0
    spconv, cumm = out.split()
    assert spconv.startswith(f"spconv-{series}==") and cumm.startswith(f"cumm-{series}==")
    rc, listed, _ = _pins("echo $GPU_CUDA_SERIES")
    assert series in listed.split()


@pytest.mark.parametrize("cuda", ["10.2", "11.7", "12", "abc", ""])
def test_unsupported_cuda_is_one_clear_line(cuda):
    rc, out, err = _pins(f"spconv_pins '{cuda}'")
    assert rc == 1 and out == ""
    assert len(err.splitlines()) == 1 and "gpu_pins:" in err and (cuda in err or "CUDA" in err)


def _release(name: str, version: str):
    """(files of one release, PyPI's info of the project's latest release) from PyPI's JSON API, or None
    when the release does not exist; skips the test without network access."""
    body = pypi_get(f"https://pypi.org/pypi/{name}/json")
    if body is None:
        return None
    project = json.loads(body)
    files = project["releases"].get(version)
    return {"urls": files, "info": project["info"]} if files else None


def _has_wheel(release, python: str) -> bool:
    tag = "cp" + python.replace(".", "")
    return any(f["filename"].endswith(".whl") and f"-{tag}-{tag}-" in f["filename"]
               and "manylinux" in f["filename"] and "x86_64" in f["filename"] for f in release["urls"])


def test_gpu_pins_exist_on_pypi_for_their_platforms():
    _, spconv_version, _ = _pins("echo $SPCONV_VERSION")
    _, cumm_version, _ = _pins("echo $CUMM_VERSION")
    _, pythons, _ = _pins("echo $GPU_PYTHONS")
    _, series_list, _ = _pins("echo $GPU_CUDA_SERIES")
    missing = []
    for series in series_list.split():
        spconv = _release(f"spconv-{series}", spconv_version)
        cumm = _release(f"cumm-{series}", cumm_version)
        if spconv is None or cumm is None:
            missing.append(f"spconv-{series}=={spconv_version} or cumm-{series}=={cumm_version}: no such release")
            continue
        for python in pythons.split():
            for release, name in ((spconv, f"spconv-{series}"), (cumm, f"cumm-{series}")):
                if not _has_wheel(release, python):
                    missing.append(f"{name}: no manylinux x86_64 wheel for CPython {python}")
        if spconv["info"]["version"] == spconv_version:  # PyPI's info describes the latest release only
            wants = [Requirement(r) for r in spconv["info"]["requires_dist"] or []]
            cumm_req = [r for r in wants if r.name == f"cumm-{series}"]
            if not cumm_req or Version(cumm_version) not in cumm_req[0].specifier:
                missing.append(f"spconv-{series}=={spconv_version} requires {cumm_req}, not cumm {cumm_version}")
    # setup_env.sh's GPU branch: torch 2.13.0 (CPython 3.11, the ROS 2 wheels' Python) and gsplat
    torch = _release("torch", "2.13.0")
    if torch is None or not _has_wheel(torch, "3.11"):
        missing.append("torch==2.13.0: no manylinux x86_64 wheel for CPython 3.11")
    gsplat_pin = next(line.strip() for line in (REPO / "requirements" / "common.txt").read_text().splitlines()
                      if line.startswith("gsplat=="))
    if _release("gsplat", gsplat_pin.split("==")[1]) is None:
        missing.append(f"{gsplat_pin}: no such release")
    assert not missing, "\n".join(missing)


# ---------------------------------------------------------------- scripts/gpu_check.sh

PYTHON = "%d.%d" % sys.version_info[:2]
STAGES = ["unpack", "build", "tests", "benchmarks"]


def _selftest():
    spec = importlib.util.spec_from_file_location("gpu_selftest", REPO / "scripts" / "gpu_selftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheelhouse(tmp_path, python=PYTHON, files=None, manifest=True) -> Path:
    """A stand-in wheelhouse: the manifest (first, as gpu_wheelhouse.sh writes it) and ``files`` (path
    under site/ -> text); this environment already has every package the check imports."""
    stage = tmp_path / "stage"
    site = stage / "site"
    site.mkdir(parents=True)
    names = []
    if manifest:
        (site / "gcross_wheelhouse.json").write_text(json.dumps(
            {"python": python, "torch_cuda": "13.0", "spconv_series": "cu126", "packages": ["gsplat==1.5.3"]}))
        names.append("site/gcross_wheelhouse.json")
    for rel, text in (files or {}).items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
        names.append(f"site/{rel}")
    archive = tmp_path / "wheelhouse.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for name in names:
            tar.add(stage / name, arcname=name)
    return archive


def _check(archive, out, work, *args, python=sys.executable, env=None, timeout=300):
    return subprocess.run(["bash", "scripts/gpu_check.sh", "--wheelhouse", str(archive), "--out", str(out),
                           "--work", str(work), "--python", str(python), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def _statuses(summary) -> dict:
    return {s["stage"]: s["status"] for s in summary["stages"]}


def test_gpu_check_stage_limits_fit_a_seven_minute_window():
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--limits"], cwd=REPO, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    rows = dict(line.split("\t") for line in done.stdout.splitlines())
    limits = {name: int(rows[name]) for name in STAGES}
    assert all(limit > 0 for limit in limits.values()), limits
    worst = sum(limits.values()) + len(STAGES) * int(rows["kill_grace"])
    assert int(rows["worst_case"]) == worst
    assert worst <= 420 and int(rows["budget"]) <= 420, f"stage limits {limits} + kill grace: {worst} s"


def test_cuda_arch_list_is_the_visible_gpus_only():
    selftest = _selftest()
    assert selftest.cuda_arch_list([(9, 0)]) == "9.0"
    assert selftest.cuda_arch_list([(9, 0), (8, 6), (9, 0)]) == "8.6;9.0"
    assert selftest.cuda_arch_list([(12, 0), (8, 9)]) == "8.9;12.0"  # numeric order, not text order
    assert selftest.cuda_arch_list([]) is None


def test_wheelhouse_must_fit_the_interpreter_and_torch_cuda():
    selftest = _selftest()
    manifest = {"python": "3.12", "torch_cuda": "13.0", "spconv_series": "cu126", "packages": []}
    env = {"python": "3.12.4", "executable": "/usr/bin/python3", "torch": "2.11.0", "torch_cuda": "13.0"}
    assert "cu126" in selftest.check_wheelhouse(manifest, env)
    with pytest.raises(selftest.Failed, match=r"Python 3\.12 but /usr/bin/python3 is 3\.11.*--python 3\.11"):
        selftest.check_wheelhouse(manifest, {**env, "python": "3.11.9"})
    with pytest.raises(selftest.Failed, match=r"CUDA 12\.4, which needs cu124.*--cuda 12\.4"):
        selftest.check_wheelhouse(manifest, {**env, "torch_cuda": "12.4"})
    assert "CPU build" in selftest.check_wheelhouse(manifest, {**env, "torch_cuda": None})
    # what the wheelhouse leaves to the image must be there
    assert "from the image: pytest" in selftest.check_wheelhouse({**manifest, "image_has": ["pytest"]}, env)
    with pytest.raises(selftest.Failed, match=r"leaves no-such-dist to the image.*--image-has pytest$"):
        selftest.check_wheelhouse({**manifest, "image_has": ["pytest", "no-such-dist"]}, env)


def test_gpu_check_refuses_a_wheelhouse_for_another_python_before_unpacking(tmp_path):
    archive = _wheelhouse(tmp_path, python="3.99")
    out, work = tmp_path / "out", tmp_path / "work"
    done = _check(archive, out, work)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _summary(out)
    assert summary["finished"] and not summary["ok"]
    statuses = _statuses(summary)
    assert statuses["unpack"] == "failed (exit 1)"
    assert all(statuses[name].startswith("not run") for name in ("build", "tests", "benchmarks")), statuses
    assert "the wheelhouse is for Python 3.99" in (out / "logs" / "unpack.log").read_text()
    assert not (work / "site").exists()  # refused before anything was unpacked


def test_gpu_check_refuses_a_used_out_and_clean_empties_only_a_check_out(tmp_path):
    archive = _wheelhouse(tmp_path, manifest=False)  # fails at once: the check stops in its first stage
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    (out / "notes.txt").write_text("not a gpu_check folder")
    for args in ((), ("--clean",)):
        done = _check(archive, out, work, *args)
        assert done.returncode == 2 and "--out" in done.stderr and str(out) in done.stderr, done.stderr
        assert (out / "notes.txt").exists() and not (out / "summary.json").exists()

    (out / "notes.txt").unlink()
    first = _check(archive, out, work)
    assert first.returncode == 1 and _statuses(_summary(out))["unpack"] == "failed (exit 1)"
    assert "not a gcross wheelhouse" in (out / "logs" / "unpack.log").read_text()
    (out / "logs" / "old_benchmarks.json").write_text("[]")  # what an earlier run left

    again = _check(archive, out, work)
    assert again.returncode == 2 and "--clean" in again.stderr
    assert (out / "logs" / "old_benchmarks.json").exists()
    cleaned = _check(archive, out, work, "--clean")
    assert cleaned.returncode == 1 and (out / "summary.json").exists()
    assert not (out / "logs" / "old_benchmarks.json").exists()

    inside = _check(archive, tmp_path / "other", tmp_path / "other" / "work")
    assert inside.returncode == 2 and "--work must lie outside --out" in inside.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the build would run for real")
def test_gpu_check_failed_build_marks_the_later_stages_not_run(tmp_path):
    """Without --dry-run on a CPU torch the build stage fails (gpu_selftest: a CPU build); tests and
    benchmarks must not start (each would begin gsplat's build again)."""
    archive = _wheelhouse(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    done = _check(archive, out, work)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _summary(out)
    assert summary["finished"] and not summary["ok"]
    statuses = _statuses(summary)
    assert statuses["unpack"] == "ok" and statuses["build"] == "failed (exit 1)", statuses
    for name in ("tests", "benchmarks"):
        assert statuses[name].startswith("not run: the build failed"), statuses
        assert not (out / "logs" / f"{name}.log").exists()
    assert summary["tests"] == [] and summary["benchmarks"] == []
    assert "CPU build" in (out / "logs" / "build.log").read_text()
    md = (out / "summary.md").read_text()
    assert "FAILED" in md and "| tests | not run: the build failed" in md
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["build.log", "summary.json", "summary.md",
                                                                     "unpack.log"]


def _python_whose_selftest_exits(tmp_path, status: int) -> Path:
    """This interpreter, except that the build stage's ``scripts/gpu_selftest.py`` (without arguments)
    exits with ``status`` at once: a stand-in for a gsplat build that failed (1) or for one that worked
    while the spconv or render check failed (3)."""
    python = tmp_path / f"python-selftest-exits-{status}"
    python.write_text(f'#!/bin/sh\nif [ "$1" = scripts/gpu_selftest.py ] && [ $# = 1 ]; then exit {status}; fi\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.slow
def test_gpu_check_runs_tests_when_gsplat_built_but_another_check_failed(tmp_path):
    archive = _wheelhouse(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    done = _check(archive, out, work, python=_python_whose_selftest_exits(tmp_path, 3))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gsplat's extension is built but the spconv or the render check failed" in done.stdout
    summary = _summary(out)
    assert _statuses(summary) == {"unpack": "ok", "build": "failed (exit 3)", "tests": "ok", "benchmarks": "ok"}
    assert summary["tests"] and not summary["ok"]


FAKE_TORCH = """\
import json, os
__version__ = "2.11.0+fake"
class version:
    cuda = "13.0"
class cuda:
    is_available = staticmethod(lambda: True)
    device_count = staticmethod(lambda: 1)
    get_device_capability = staticmethod(lambda i=0: (8, 6))
    get_device_name = staticmethod(lambda i=0: "Fake GPU")
with open(os.environ["FAKE_TORCH_LOG"], "a") as f:  # what each importing process saw
    f.write(json.dumps(os.environ.get("TORCH_CUDA_ARCH_LIST")) + "\\n")
"""


def test_gpu_check_builds_for_the_visible_gpu_only(tmp_path):
    """A torch that reports one GPU of compute capability 8.6: the build and every later process get
    TORCH_CUDA_ARCH_LIST=8.6 in place of the environment's list. (The fake torch cannot build anything,
    so the build stage fails, which also stops the later stages.)"""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(FAKE_TORCH)
    python = tmp_path / "python-with-fake-torch"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{fake}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    log = tmp_path / "torch_imports.jsonl"
    archive = _wheelhouse(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    done = _check(archive, out, work, python=python,
                  env={"TORCH_CUDA_ARCH_LIST": "7.0;8.0;9.0+PTX", "FAKE_TORCH_LOG": str(log)})
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("TORCH_CUDA_ARCH_LIST=8.6 from the visible GPU's compute capability (replacing the environment's "
            "'7.0;8.0;9.0+PTX')") in done.stdout
    summary = _summary(out)
    assert summary["environment"]["torch_cuda_arch_list"] == "8.6"
    assert summary["environment"]["gpu"] == "Fake GPU" and summary["environment"]["compute_capability"] == "8.6"
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert seen[0] == "7.0;8.0;9.0+PTX"  # the device query itself, before the list is known
    assert len(seen) >= 2 and all(value == "8.6" for value in seen[1:]), seen  # the build stage's processes
    statuses = _statuses(summary)
    assert statuses["build"] == "failed (exit 1)" and statuses["tests"].startswith("not run"), statuses


FAKE_PYTEST_MAIN = """\
import os, time
open(os.environ["FAKE_PYTEST_STARTED"], "w").close()
time.sleep(600)
"""


def test_gpu_check_killed_midway_leaves_a_summary_of_what_ran(tmp_path):
    """A dry run whose tests stage hangs (a stand-in pytest in the wheelhouse) is killed once that stage
    has begun: summary.json already holds the unpack and build outcomes and the stage that was running."""
    archive = _wheelhouse(tmp_path, files={"pytest/__init__.py": "", "pytest/__main__.py": FAKE_PYTEST_MAIN})
    out, work, started = tmp_path / "out", tmp_path / "work", tmp_path / "pytest_started"
    proc = subprocess.Popen(["bash", "scripts/gpu_check.sh", "--wheelhouse", str(archive), "--out", str(out),
                             "--work", str(work), "--python", sys.executable, "--dry-run"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "FAKE_PYTEST_STARTED": str(started)})
    try:
        deadline = time.monotonic() + 300
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), f"the tests stage never began (exit {proc.poll()})"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate(timeout=30)[0]
    summary = _summary(out)
    assert not summary["finished"] and not summary["ok"], output[-3000:]
    assert _statuses(summary) == {"unpack": "ok", "build": "ok", "tests": "running", "benchmarks": "pending"}
    assert "STOPPED" in (out / "summary.md").read_text()
    assert "imports: ok" in (out / "logs" / "build.log").read_text()


@pytest.mark.slow
def test_gpu_check_dry_run_walks_every_stage(tmp_path):
    archive = _wheelhouse(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    done = _check(archive, out, work, "--dry-run", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _summary(out)
    assert summary["finished"] and summary["ok"]
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in summary["stages"])
    assert "--quick" in summary["stages"][-1]["command"]
    assert summary["environment"]["dry_run"] is True
    assert summary["tests"] and all(t["outcome"] == "skipped" for t in summary["tests"])
    assert "dry run" in (out / "summary.md").read_text()

    bad = subprocess.run(["bash", "scripts/gpu_check.sh", "--wheelhouse", str(tmp_path / "none.tar.xz"),
                          "--out", str(tmp_path / "out2")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--wheelhouse" in bad.stderr
