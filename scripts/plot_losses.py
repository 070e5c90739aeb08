"""Plot every regression loss and its gradient (the seed figure of this project's question).

    python scripts/plot_losses.py                          # a new runs/loss_curves-<time>.png
    python scripts/plot_losses.py --out reports/loss_curves.png --overwrite
    python scripts/plot_losses.py --gradients runs/A runs/B --out gradients.pdf
"""

from __future__ import annotations

from detector.engine.cli import ArgumentParser, run_main


def main() -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="figure to write, a new file (default: a new runs/loss_curves-<time>.png, or "
                                      "runs/gradients-<time>.png); its suffix (.png, .pdf, .svg) gives the format "
                                      "unless --format does")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    parser.add_argument("--format", choices=("png", "pdf", "svg"),
                        help="file format: png (200 dpi) or vector pdf / svg for papers (replaces --out's suffix)")
    parser.add_argument("--gradients", nargs="+", metavar="RUN_DIR",
                        help="plot the gradient statistics (gradients.csv) of these runs instead")
    args = parser.parse_args()
    from detector.lab.plots import plot_from_args  # torch loads once the arguments are known

    print(plot_from_args(args))
    return 0


if __name__ == "__main__":
    run_main(main)
