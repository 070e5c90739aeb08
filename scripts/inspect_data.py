"""Know your data before training: images and boxes per class and split, box sizes after the
configured resize, the boxes training leaves out and why, and the anchor coverage (the share
of boxes whose best anchor reaches the RPN's foreground IoU), with a box-size histogram; the
report and the figure go to --out (default: a new runs/inspect-<dataset>-<time>). Takes the
options of train.py.

    python scripts/inspect_data.py --data voc --data-root ../shared/data/bccd/BCCD --train-split train \\
        --val-split val --set data.min_size=320 data.max_size=427 "model.anchor_sizes=[16,32,64,128,256]"
    python scripts/inspect_data.py --config configs/voc.yaml --data-root data/VOCdevkit/VOC2007
"""

from __future__ import annotations

from detector.engine.cli import ArgumentParser, add_config_arguments, run_main


def main() -> int:
    parser = ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--out", help="folder for the report and the box-size histogram "
                                      "(default: a new runs/inspect-<dataset>-<time>)")
    parser.add_argument("--format", choices=("png", "pdf", "svg"), default="png",
                        help="figures' file format: png (200 dpi) or vector pdf / svg")
    parser.add_argument("--draw", type=int, default=0, metavar="N",
                        help="also draw the first N training images with their boxes (labels.png)")
    args = parser.parse_args()
    from detector.engine import config as config_lib  # the options are checked before torch loads

    cfg = config_lib.from_args(args)
    from detector.lab.inspect_data import inspect_from_args

    print(inspect_from_args(args, cfg))
    return 0


if __name__ == "__main__":
    run_main(main)
