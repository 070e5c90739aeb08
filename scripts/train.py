"""Train the detector with a chosen box-regression loss.

    python scripts/train.py --loss l2
    python scripts/train.py --config configs/coco_subset.yaml --data-root /data/coco --loss giou
    python scripts/train.py --resume runs/shapes-l2-seed0-20261129-051500

Ctrl-C or SIGTERM stops after the current step, saves a checkpoint and marks the run
interrupted; --resume continues it with its own configuration, as if never stopped. An existing
--run-name is refused unless --overwrite. Exit status: 0 completed, 3 diverged, 1 failed,
2 a user error (nothing written), 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import sys

from detector.engine.cli import ArgumentParser, add_config_arguments, run_main


def main() -> int:
    parser = ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (no other options)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run directory of --run-name if it holds a run (default: refuse)")
    args = parser.parse_args()
    from detector.engine import config as config_lib  # the options are checked before torch loads

    cfg = None if args.resume else config_lib.from_args(args)
    from detector.engine.rundir import exit_status
    from detector.engine.training import train_from_args

    return exit_status(train_from_args(args, sys.argv[1:], cfg))


if __name__ == "__main__":
    run_main(main)
