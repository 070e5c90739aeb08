"""Compare finished runs: report.md (table, AP-vs-IoU and gradient plots), results.csv/json.

    python scripts/report.py runs/default-l1 runs/default-l2 runs/default-smooth_l1 --out reports/default
"""

from __future__ import annotations

import argparse
import shlex
import sys

from cli import run_main

from detector.report import write_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--out", required=True, help="report folder")
    args = parser.parse_args()
    command = "python scripts/report.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_report(args.runs, args.out, command))
    return 0


if __name__ == "__main__":
    run_main(main)
