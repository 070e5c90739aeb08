"""Plot every regression loss and its gradient (the seed figure of this project's question).

    python scripts/plot_losses.py --out reports/loss_curves.png
    python scripts/plot_losses.py --gradients runs/A runs/B --out reports/gradients.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import run_main

from detector.plots import plot_gradient_statistics, plot_loss_curves


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/loss_curves.png", help="PNG to write")
    parser.add_argument("--gradients", nargs="+", metavar="RUN_DIR",
                        help="plot the gradient statistics (gradients.csv) of these runs instead")
    args = parser.parse_args()
    if args.gradients:
        runs = {}
        for run in map(Path, args.gradients):
            if not (run / "gradients.csv").is_file():
                raise FileNotFoundError(f"{run}: no gradients.csv (not a run directory, or gradient_stats off)")
            runs[run.name] = run
        print(plot_gradient_statistics(runs, args.out))
    else:
        print(plot_loss_curves(args.out))
    return 0


if __name__ == "__main__":
    run_main(main)
