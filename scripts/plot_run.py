"""The figure of one run, or of several in one (training losses, learning rate, validation AP
at each evaluation, regression gradients), as every run writes it to its results.png.

    python scripts/plot_run.py runs/shapes-l2-seed0-...                         # a new runs/results-<time>.png
    python scripts/plot_run.py runs/compare/l1-seed0 runs/compare/l2-seed0 --out l1_l2.pdf
"""

from __future__ import annotations

from detector.engine.cli import ArgumentParser, run_main


def main() -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--out", help="figure to write, a new file (.png, .pdf or .svg; default: a new "
                                      "runs/results-<time>.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    from pathlib import Path

    from detector.engine.errors import ConfigError
    from detector.engine.figures import FORMATS, plot_runs  # matplotlib loads once the arguments are known
    from detector.engine.outputs import check_new_file, default_location
    from detector.engine.rundir import METRICS_CSV

    for run in args.runs:
        if not (Path(run) / METRICS_CSV).is_file():
            raise FileNotFoundError(f"{run}: no {METRICS_CSV} (not a run directory)")
    out = check_new_file(args.out or default_location("results", ".png"), overwrite=args.overwrite)
    if out.suffix.lstrip(".") not in FORMATS:
        raise ConfigError(f"--out {out}: a figure is written as {', '.join(FORMATS)}")
    print(plot_runs([Path(run) for run in args.runs], out))
    return 0


if __name__ == "__main__":
    run_main(main)
