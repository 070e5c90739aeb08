"""Evaluate a checkpoint on a dataset split (COCO AP table, metrics.json, detections.json).

    python scripts/evaluate.py runs/shapes-smooth_l1-seed0-...          # best checkpoint, its val split
    python scripts/evaluate.py model.ckpt --data coco --data-root /data/coco --split val2017
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import FLAGS, config_from_args, run_main

from detector import config as config_lib
from detector.evaluate_run import checkpoint_config, evaluate_checkpoint, find_checkpoint

DATA_FLAGS = ["--data", "--data-root", "--batch-size", "--num-workers", "--accelerator", "--devices",
              "--precision"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt file or a run directory")
    parser.add_argument("--split", help="split to evaluate (default: the configuration's val split)")
    parser.add_argument("--out", help="output folder (default: <run dir>/eval-<split>)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override data options")
    for flag in DATA_FLAGS:
        key, help_text, kwargs = FLAGS[flag]
        parser.add_argument(flag, dest=key.replace(".", "__"), help=f"{help_text} [{key}]", **kwargs)
    args = parser.parse_args()
    checkpoint = find_checkpoint(args.checkpoint)
    cfg = checkpoint_config(checkpoint)
    # The checkpoint's configuration, then the command line's data overrides on top.
    args.config, args.loss_args, args.rpn_loss_args = None, [], []
    overrides = config_from_args(args, base=config_lib.to_dict(cfg))
    split = args.split or overrides.data.val_split
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    out = Path(args.out) if args.out else run_dir / f"eval-{split}"
    evaluate_checkpoint(checkpoint, overrides, split, out)
    return 0


if __name__ == "__main__":
    run_main(main)
