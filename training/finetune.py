"""Semantic segmentation on a (pretrained) encoder: linear probing, fine-tuning, data-efficient runs.

    python training/finetune.py --config training/configs/finetune_scannet.yaml \
        --pretrained runs/pretrain/final.safetensors [--linear-probe] \
        [--limited-scenes PCT | --limited-points N] [--set key.sub=value ...] --out runs/finetune

- ``--pretrained``: a pretraining checkpoint (encoder under ``model.encoder.*``), a segmenter checkpoint
  or an imported Pointcept encoder (training/import_pointcept.py). Every encoder tensor must match the
  encoder configuration by name and shape or the run stops. Without it the encoder starts from random
  weights (training from scratch, or the random-encoder linear-probing baseline). The run feeds the
  colour range and voxel lattice the checkpoint records (an imported GaussianCross backbone: colour / 127.5
  - 1 and Pointcept's centre-shift lattice) unless ``--set data.input_features=...`` /
  ``data.grid_lattice=...`` says otherwise; a checkpoint that records neither is refused.
- ``--linear-probe``: freeze the encoder (weights and BatchNorm statistics) and train only the linear
  classifier (paper Table 1). Otherwise the whole network trains (Tables 2-3).
- ``--limited-scenes PCT`` / ``--limited-points N``: the data-efficient benchmark (Table 2); the chosen
  scenes / labelled point indices are written into the run folder (``limited_scenes.txt``,
  ``limited_points.npz``) and can be reused with ``--set data.limited_scenes_file=...``.

The run folder receives the resolved config, training logs (``metrics.jsonl``, TensorBoard), the
trainer's checkpoints, ``segmenter.safetensors`` (what ``Segmenter.from_checkpoint``, the ROS node and
``training/evaluate.py`` load) and, unless ``--no-eval``, an evaluation of the validation split in
``eval/`` (results.json, report.md, confusion.csv/png). Multi-GPU: launch under ``torchrun``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from gcross_core.cli import cli_main
from gcross_core.config import load_config
from gcross_core.segmentation.run import FinetuneConfig, run_finetuning

log = logging.getLogger("finetune")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML file (training/configs/finetune_*.yaml)")
    p.add_argument("--pretrained", default=None, help="checkpoint whose encoder initialises the model")
    p.add_argument("--linear-probe", action="store_true", help="freeze the encoder; train the classifier only")
    p.add_argument("--limited-scenes", type=float, default=None, metavar="PCT",
                   help="data-efficient: train on PCT %% of the training scenes (Table 2: 1, 5, 10, 20)")
    p.add_argument("--limited-points", type=int, default=None, metavar="N",
                   help="data-efficient: N labelled points per scene (Table 2: 20, 50, 100, 200)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. train.max_steps=100 (repeatable)")
    p.add_argument("--out", default="runs/finetune", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.safetensors")
    p.add_argument("--no-eval", action="store_true", help="skip the validation at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and spconv (sets train.num_threads; 0: torch's default). On a "
                        "busy machine 1 thread can be many times faster than oversubscribed OpenMP threads")
    return p.parse_args(argv)


@cli_main("finetune.py")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    if args.linear_probe:
        overrides.append("linear_probe=true")
    if args.limited_scenes is not None:
        overrides.append(f"data.limited_scenes_pct={args.limited_scenes}")
    if args.limited_points is not None:
        overrides.append(f"data.limited_points={args.limited_points}")
    if args.no_eval:
        overrides.append("evaluate=false")
    if args.threads is not None:
        overrides.append(f"train.num_threads={args.threads}")
    cfg = load_config(args.config, FinetuneConfig, overrides)
    summary = run_finetuning(cfg, args.out, args.pretrained, progress=not args.no_progress,
                             tensorboard=not args.no_tensorboard, resume=args.resume)
    if summary.get("segmenter"):
        log.info("segmenter written to %s", summary["segmenter"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
