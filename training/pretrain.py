"""Self-supervised GaussianCross pretraining.

    python training/pretrain.py --config training/configs/synthetic_tiny.yaml [--out DIR] [--resume] \\
        [--set train.epochs=10 --set optim.lr=1e-3 ...]

    # several GPUs / nodes: one process per GPU, launched by torchrun
    torchrun --nproc_per_node 8 training/pretrain.py --config training/configs/scannet.yaml --out runs/scannet

The run folder (``--out``, default ``runs/<config name>``) receives ``config.yaml``/``config.json``
(the resolved config), ``metrics.jsonl`` and ``tb/`` (TensorBoard: every loss term, PSNR, depth error,
lr), ``images/`` (rendered colour / depth / features next to the ground truth),
``checkpoints/last.safetensors`` (full training state; ``--resume`` continues from it exactly) and, at
the end, ``final.safetensors``: the weights with the encoder under ``model.encoder.*`` and metadata
``{"kind": "pretrain", "model_config": ..., "config": ...}``, which ``training/finetune.py --pretrained``
loads.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from gcross_core.cli import cli_main
from gcross_core.config import load_config
from gcross_core.pretraining.config import PretrainConfig
from gcross_core.pretraining.run import run_pretraining

log = logging.getLogger("pretrain")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", required=True, help="YAML file (training/configs/*.yaml)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.safetensors")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.epochs=3 (value parsed as YAML)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--no-tensorboard", action="store_true")
    return p.parse_args(argv)


@cli_main("pretrain.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, PretrainConfig, args.overrides)
    out = args.out or Path("runs") / cfg.name
    state, final = run_pretraining(cfg, out, resume=args.resume, progress=not args.no_progress,
                                   tensorboard=not args.no_tensorboard)
    if final is not None:
        summary = {"steps": state.step, "skipped_steps": state.skipped_steps, "first": state.first_metrics,
                   "last": state.last_metrics, "checkpoint": str(final)}
        log.info("done: %s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
