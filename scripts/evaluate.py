"""Evaluate a checkpoint on a dataset split (COCO AP table, metrics.json, detections.json).

    python scripts/evaluate.py runs/shapes-smooth_l1-seed0-...          # best checkpoint, its val split
    python scripts/evaluate.py model.ckpt --data coco --data-root /data/coco --split val2017
"""

from __future__ import annotations

import argparse

from detector.engine.cli import add_flags, add_set_argument, run_main

DATA_FLAGS = ["--data", "--data-root", "--batch-size", "--num-workers", "--accelerator", "--devices",
              "--precision"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt file or a run directory")
    parser.add_argument("--split", help="split to evaluate (default: the configuration's val split)")
    parser.add_argument("--out", help="output folder (default: <run dir>/eval-<split>)")
    add_set_argument(parser, "override data options")
    add_flags(parser, DATA_FLAGS)
    args = parser.parse_args()
    from detector.engine.evaluate import evaluate_from_args  # torch loads once the arguments are known

    evaluate_from_args(args)
    return 0


if __name__ == "__main__":
    run_main(main)
