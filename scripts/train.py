"""Train the detector with a chosen box-regression loss.

    python scripts/train.py --loss l2
    python scripts/train.py --config configs/coco_subset.yaml --data-root /data/coco --loss giou
    python scripts/train.py --resume runs/shapes-l2-seed0-20261129-051500

Ctrl-C or SIGTERM stops after the current step, saves a checkpoint and marks the run
interrupted; --resume continues it with its own configuration, as if never stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli import add_config_arguments, config_from_args, run_main

from detector import config as config_lib
from detector.config import ConfigError
from detector.training import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (no other options)")
    args = parser.parse_args()
    if args.resume:
        given = [a for a in sys.argv[1:] if a.startswith("--") and not a.startswith("--resume")]
        if given:
            raise ConfigError(f"--resume continues a run with its own configuration; leave out {', '.join(given)}")
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        cfg = config_lib.load(run_dir / "config.yaml",
                              overrides=[f"train.out_dir={run_dir.parent}", f"train.run_name={run_dir.name}"])
        train(cfg, resume=True)
        return 0
    cfg = config_from_args(args)
    train(cfg)
    return 0


if __name__ == "__main__":
    run_main(main)
