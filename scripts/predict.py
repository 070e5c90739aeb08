"""Detect objects in new images with a trained checkpoint.

    python scripts/predict.py runs/shapes-smooth_l1-seed0-... data/shapes/val
    python scripts/predict.py model.ckpt photos/ more/*.jpg one.png --out predictions --score-thresh 0.3

INPUT: image files, folders (their own image files: .jpg .jpeg .png .gif .webp) or glob patterns
(quote them; ** reaches subfolders). Images get image ids 1, 2, ... in sorted path order, go
through the same resize as the checkpoint's validation images (--min-size/--max-size change it)
and are predicted in batches on --accelerator/--devices/--precision. Writes to --out (a new or
empty folder, or one holding these same predictions; --overwrite replaces other predictions):
detections.json (COCO results format, boxes in the files' pixels), image_info.json (the
images and categories those refer to; pycocotools loads them with COCO(...).loadRes(...)), and
images/ with the detections scoring at least --draw-thresh drawn on each file. A file that
cannot be read stops the run naming it (exit status 2) unless --skip-bad-images.
"""

from __future__ import annotations

from detector.engine.cli import ArgumentParser, add_inference_arguments, run_main


def main() -> int:
    parser = ArgumentParser(description=__doc__)
    add_inference_arguments(parser, [])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--out", help="output folder (default: a new runs/predict-<run>-<time>)")
    parser.add_argument("--draw-size", type=int, metavar="PX",
                        help="draw the images with their shorter side this long (default: their own size)")
    parser.add_argument("--draw-thresh", type=float, default=0.5,
                        help="draw the detections scoring at least this (detections.json keeps every one above "
                             "--score-thresh); default 0.5")
    args = parser.parse_args()
    from detector.engine.predict import predict_from_args  # torch loads once the arguments are known

    predict_from_args(args)
    return 0


if __name__ == "__main__":
    run_main(main)
