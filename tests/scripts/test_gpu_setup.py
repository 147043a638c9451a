"""The GPU set-up scripts on a CPU machine: shell syntax (and shellcheck where installed), the spconv
table of scripts/gpu_pins.sh, every GPU pin against PyPI for the platforms it names (skipped without
network access), and a dry run of scripts/gpu_check.sh on a stand-in wheelhouse."""
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
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


@pytest.mark.slow
def test_gpu_check_dry_run_walks_every_stage(tmp_path):
    """A stand-in wheelhouse (nothing but the manifest: this environment already has every package)."""
    python = "%d.%d" % sys.version_info[:2]
    site = tmp_path / "stage" / "site"
    site.mkdir(parents=True)
    (site / "gcross_wheelhouse.json").write_text(json.dumps(
        {"python": python, "torch_cuda": "13.0", "spconv_series": "cu126", "packages": []}))
    archive = tmp_path / "wheelhouse.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(site, arcname="site")
    out = tmp_path / "out"
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--wheelhouse", str(archive), "--out", str(out),
                           "--python", sys.executable, "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["unpack", "build", "tests", "benchmarks"]
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in summary["stages"])
    assert summary["environment"]["dry_run"] is True
    assert summary["tests"] and all(t["outcome"] == "skipped" for t in summary["tests"])
    assert "dry run" in (out / "summary.md").read_text()

    bad = subprocess.run(["bash", "scripts/gpu_check.sh", "--wheelhouse", str(tmp_path / "none.tar.xz"),
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--wheelhouse" in bad.stderr
