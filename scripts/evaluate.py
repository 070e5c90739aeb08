"""Evaluate a checkpoint on a dataset split (COCO AP table, metrics.json, detections.json).

    python scripts/evaluate.py runs/shapes-smooth_l1-seed0-...          # best checkpoint, its val split
    python scripts/evaluate.py model.ckpt --data coco --data-root /data/coco --split val2017
    python scripts/evaluate.py runs/shapes-smooth_l1-seed0-... --score-thresh 0.5 --out eval-score0.5

The checkpoint's own configuration applies, with the data, the post-processing (--score-thresh,
--nms-thresh, --max-detections, model.rpn_*_test via --set), the test-time sizes (--min-size,
--max-size) and the device options given here on top; metrics.json records the post-processing
used. Options that training fixed (the model, the loss, the schedule) are refused by name.
"""

from __future__ import annotations

from detector.engine.cli import ArgumentParser, add_inference_arguments, run_main


def main() -> int:
    parser = ArgumentParser(description=__doc__)
    add_inference_arguments(parser, ["--data", "--data-root"])
    parser.add_argument("--split", help="split to evaluate (default: the configuration's val split)")
    parser.add_argument("--out", help="output folder (default: <run dir>/eval-<split>)")
    parser.add_argument("--conf-thresh", type=float, default=0.5,
                        help="score from which a detection counts in the confusion matrix and in precision, recall "
                             "and F1 (default 0.5)")
    args = parser.parse_args()
    from detector.engine.evaluate import evaluate_from_args  # torch loads once the arguments are known

    evaluate_from_args(args)
    return 0


if __name__ == "__main__":
    run_main(main)
