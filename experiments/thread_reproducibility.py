"""Does the same config and seed give the same run whatever the CPU thread count?

    python -m experiments.thread_reproducibility --mosd DIR --real-frames DIR [--threads 1 2]
        [--pretrain-steps 40] [--finetune-steps 100] [--out runs/thread_reproducibility]

``--mosd``: tabletop scene folders (``learn/``, ``test/``, from ``training/prepare_frames.py``, as
``experiments.real_tabletop`` writes them under ``<out>/data/mosd``); ``--real-frames``: the scene folders
of ``pretrain_real_frames.yaml`` (``<out>/data/real_frames`` there).

For each thread count in ``--threads``, and twice for the first one (run-to-run, same threads):

1. ``training/pretrain.py --config training/configs/pretrain_real_frames.yaml`` for ``--pretrain-steps``
   steps, seed 0;
2. ``training/finetune.py --config training/configs/finetune_tabletop.yaml`` from that encoder for
   ``--finetune-steps`` steps, seed 0, scored on the test frames.

For every other thread count a further run fine-tunes the first run's encoder with that many threads
(``threads<N>_finetune_only``), which separates what the fine-tuning alone varies.

Each run is its own process (``--threads N`` sets torch's intra-op threads; ``OMP_NUM_THREADS`` is set to
the same). Compared with the first run: the largest difference of the per-step pretraining loss and the
step where it first differs, the same for the fine-tuning loss, and the fine-tuned mIoU. Writes
``<out>/report.md`` and ``<out>/report.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"


def _run(cmd: List[str], threads: int, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("w") as f:
        if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"{' '.join(cmd)} failed; see {log}")


def losses(run: Path) -> List[float]:
    """The per-step training loss of a run (its metrics.jsonl)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if "loss" in r and "step" in r]


def compare(a: List[float], b: List[float]) -> dict:
    """Largest absolute difference of two loss curves and the first step (1-based) where they differ."""
    n = min(len(a), len(b))
    diffs = [abs(x - y) for x, y in zip(a[:n], b[:n])]
    first = next((k + 1 for k, d in enumerate(diffs) if d > 0), None)
    return {"max_abs_diff": max(diffs) if diffs else 0.0, "first_differing_step": first, "steps": n,
            "final": (a[n - 1], b[n - 1]) if n else None}


def one(out: Path, name: str, threads: int, args: argparse.Namespace, encoder_of: Optional[str] = None) -> dict:
    """One run; with ``encoder_of`` only the fine-tuning runs, from that run's pretrained encoder."""
    pre, fine = out / (encoder_of or name) / "pretrain", out / name / "finetune"
    py = sys.executable
    if not (pre / "final.safetensors").is_file():
        _run([py, str(ROOT / "training" / "pretrain.py"), "--config", str(CONFIGS / "pretrain_real_frames.yaml"),
              "--out", str(pre), "--no-progress", "--no-tensorboard",
              "--set", f"data.root={args.real_frames}", "--set", "train.seed=0", "--set", "train.device=cpu",
              "--set", f"train.num_threads={threads}", "--set", f"train.max_steps={args.pretrain_steps}"],
             threads, out / f"{name}_pretrain.log")
    if not (fine / "eval" / "results.json").is_file():
        _run([py, str(ROOT / "training" / "finetune.py"), "--config", str(CONFIGS / "finetune_tabletop.yaml"),
              "--pretrained", str(pre / "final.safetensors"), "--out", str(fine), "--no-progress", "--no-tensorboard",
              "--threads", str(threads), "--set", f"data.root={args.mosd}", "--set", "train.seed=0",
              "--set", "train.device=cpu", "--set", f"train.max_steps={args.finetune_steps}",
              "--set", "train.log_every_steps=1"],
             threads, out / f"{name}_finetune.log")
    miou = json.loads((fine / "eval" / "results.json").read_text())["metrics"]["miou"]
    return {"name": name, "threads": threads, "pretrain_loss": losses(pre), "finetune_loss": losses(fine),
            "miou": miou}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mosd", type=Path, required=True, help="tabletop scene folders (learn/, test/)")
    ap.add_argument("--real-frames", type=Path, required=True, help="scene folders for real-frame pretraining")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--pretrain-steps", type=int, default=40)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("runs/thread_reproducibility"))
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    first = args.threads[0]
    plan = [(f"threads{first}_a", first, None), (f"threads{first}_b", first, None)]
    for t in args.threads[1:]:
        plan += [(f"threads{t}", t, None), (f"threads{t}_finetune_only", t, f"threads{first}_a")]
    runs = []
    for name, threads, encoder_of in plan:
        runs.append(one(args.out, name, threads, args, encoder_of))
        print(f"{name}: final pretraining loss {runs[-1]['pretrain_loss'][-1]:.6f}, fine-tuned mIoU "
              f"{100 * runs[-1]['miou']:.2f}", flush=True)
    ref = runs[0]
    lines = ["# Same config and seed, different CPU thread counts", "",
             f"real-frame pretraining {args.pretrain_steps} steps, then tabletop fine-tuning {args.finetune_steps} "
             f"steps, seed 0; each row against {ref['name']}.", "",
             "| run | threads | pretraining loss: max diff (first differing step) | fine-tuning loss: max diff "
             "(first differing step) | mIoU | mIoU diff |", "|---|---|---|---|---|---|"]
    report = {"runs": runs, "against": ref["name"], "comparisons": []}
    for r in runs:
        p, f = compare(ref["pretrain_loss"], r["pretrain_loss"]), compare(ref["finetune_loss"], r["finetune_loss"])
        report["comparisons"].append({"run": r["name"], "pretrain": p, "finetune": f,
                                      "miou_diff": r["miou"] - ref["miou"]})
        lines.append(f"| {r['name']} | {r['threads']} | {p['max_abs_diff']:.2e} ({p['first_differing_step']}) | "
                     f"{f['max_abs_diff']:.2e} ({f['first_differing_step']}) | {100 * r['miou']:.2f} | "
                     f"{100 * (r['miou'] - ref['miou']):+.2f} |")
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
