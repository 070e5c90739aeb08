"""Train the detector with a chosen box-regression loss.

    python scripts/train.py --loss l2
    python scripts/train.py --config configs/coco_subset.yaml --data-root /data/coco --loss giou
"""

from __future__ import annotations

import argparse

from cli import add_config_arguments, config_from_args, run_main

from detector.training import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args())
    train(cfg)
    return 0


if __name__ == "__main__":
    run_main(main)
