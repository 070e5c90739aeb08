"""Train a losses x seeds (x box-noise) matrix and write the comparison report.

    python scripts/compare.py --data-root my_photos
    python scripts/compare.py --losses l1 l2 smooth_l1 balanced_l1 giou --seeds 0 1 2 --out reports/losses
    python scripts/compare.py --losses l1 l2 smooth_l1 --seeds 0 --noise 0 0.2 0.4 --out reports/noise
    python scripts/compare.py --runs runs/compare/l1-seed0 runs/compare/l2-seed0 --out reports/mine

Without --losses the five of the README's comparison are trained with three seeds. Runs go to
--runs-dir (default runs/compare/<the data root's folder name>), one directory per cell (``l2-seed1``,
``l2-noise0.2-seed1``). Finished cells are not trained again and an interrupted one resumes from
its checkpoint, so rerunning the same command after an interruption continues the matrix, and
rerunning it on a finished matrix only rewrites the report. Each run is a separate
``scripts/train.py`` process; with several GPUs, --jobs runs that many at once, one GPU each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from detector.engine.cli import FLAGS, ArgumentParser, add_config_arguments, run_main

# The matrix of a plain `compare.py --data-root DIR`: the README's five losses, three seeds (the
# fewest that give a paired interval with a spread estimated from more than one difference).
DEFAULT_LOSSES = ("smooth_l1", "l1", "l2", "balanced_l1", "giou")
DEFAULT_SEEDS = (0, 1, 2)

# Set per cell by the matrix, so not accepted as options here.
MATRIX_FLAGS = ("--loss", "--seed", "--run-name", "--out-dir", "--train-box-noise")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES),
                        help=f"regression losses, the rows of the matrix (default: {' '.join(DEFAULT_LOSSES)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                        help=f"training seeds (default: {' '.join(map(str, DEFAULT_SEEDS))})")
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0],
                        help="fractions of training boxes displaced as outlier labels (data.train_box_noise)")
    parser.add_argument("--runs", nargs="+", default=[], help="report on these run directories only; train nothing")
    parser.add_argument("--runs-dir", help="folder of the matrix's run directories (default: runs/compare/<the data "
                                           "root's folder name>, e.g. runs/compare/my_photos)")
    parser.add_argument("--out", help="report folder (default: RUNS_DIR/report; required with --runs)")
    parser.add_argument("--baseline", default="smooth_l1", help="loss the others are compared against")
    parser.add_argument("--allow-early-stopping", action="store_true",
                        help="let train.patience stop cells early (they then train for different lengths)")
    parser.add_argument("--metric", choices=("AP", "AP50", "AP75", "AP90"), default="AP",
                        help="the primary metric: the verdict and the Holm-adjusted comparisons rest on it")
    parser.add_argument("--format", choices=("png", "pdf", "svg"), default="png",
                        help="figures' file format: png (200 dpi, shown in report.md) or vector pdf / svg for papers")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once (default: one per visible GPU; on a CPU 2, the cores split between them)")
    parser.add_argument("--budget", metavar="DURATION",
                        help="stop starting cells when the next would not fit (e.g. 60m, 2h); seeds beyond the first "
                             "two are left out first, and the report says what was left out")
    cluster = parser.add_argument_group("on a cluster (README: On a SLURM cluster)")
    cluster.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                         help="local: processes on this machine; slurm: every unfinished cell one job of a submitit "
                              "array; submitit-local: those jobs as local processes, to try a matrix first")
    cluster.add_argument("--no-wait", action="store_true",
                         help="with a cluster: queue the cells and return; the same command without it writes the report")
    cluster.add_argument("--slurm-partition", help="sbatch --partition")
    cluster.add_argument("--slurm-gpus-per-cell", type=int, default=0,
                         help="GPUs per node of each cell (sbatch --gpus-per-node, one task each); 2 or more train with "
                              "DDP (train.devices)")
    cluster.add_argument("--slurm-nodes-per-cell", type=int, default=1, help="nodes per cell (sbatch --nodes, "
                                                                             "train.num_nodes)")
    cluster.add_argument("--slurm-time", default="240", help="each cell's time limit (sbatch --time): minutes, "
                                                            "H:MM:SS, 90m or 4h (default 240)")
    cluster.add_argument("--slurm-mem", help="sbatch --mem, e.g. 32G")
    cluster.add_argument("--slurm-cpus-per-task", type=int, help="sbatch --cpus-per-task")
    cluster.add_argument("--slurm-account", help="sbatch --account")
    cluster.add_argument("--slurm-qos", help="sbatch --qos")
    cluster.add_argument("--slurm-extra", nargs="+", action="extend", metavar="KEY=VALUE",
                         help="any other sbatch option without its --, e.g. constraint=a100 exclude=node3")
    add_config_arguments(parser, [flag for flag in FLAGS if flag not in MATRIX_FLAGS])
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.runs and not args.out:
        parser.error("--runs needs --out, the report folder")
    from detector.engine import config as config_lib  # the options are checked before torch loads

    cfg = None if args.runs else config_lib.from_args(args)
    if cfg is not None:
        # The root as given: the layout found there may have moved data.root into a subfolder.
        data_root = Path(getattr(args, "data__root", None) or cfg.data.root).resolve()
        args.runs_dir = args.runs_dir or str(Path("runs", "compare", data_root.name))
        args.out = args.out or str(Path(args.runs_dir, "report"))
    from detector.lab.compare import MatrixStopped, compare_from_args

    try:
        report = compare_from_args(args, sys.argv[1:], cfg)
    except MatrixStopped as stopped:
        print(stopped, file=sys.stderr)
        return stopped.exit_status
    print(f"report: {report}")
    if not args.no_wait:  # with it, the cluster's jobs are still queued and no report is written yet
        print(f"verdict: {json.loads((report.parent / 'results.json').read_text())['verdict']}")
    return 0


if __name__ == "__main__":
    run_main(main)
