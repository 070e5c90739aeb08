"""Export a trained detector for runtimes without this project: TorchScript or ONNX.

    python scripts/export.py runs/shapes-smooth_l1-seed0-...                    # TorchScript
    python scripts/export.py runs/x --format onnx --size 320 427 --out detector.onnx

The exported model takes one uint8 (3, H, W) image of the exported size (--size; default: the
checkpoint's validation size for the shapes set, else data.min_size square) and returns its
detections: boxes (D, 4) xyxy in that image's pixels, scores (D,), labels (D,) 1..K. The size is
fixed by the trace (the anchors follow the feature map): resize other images to it first. The
file goes to --out (default: <run dir>/exported/detector-<H>x<W>.pt or .onnx), a new file unless
--overwrite.
"""

from __future__ import annotations

from detector.engine.cli import ArgumentParser, run_main


def main() -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt file or a run directory (its best checkpoint, else its last)")
    parser.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="the image size the model takes")
    parser.add_argument("--out", help="file to write (default: <run dir>/exported/detector-<H>x<W>.pt or .onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    from detector.engine.api import export_from_args  # torch loads once the arguments are known

    print(f"exported: {export_from_args(args)}")
    return 0


if __name__ == "__main__":
    run_main(main)
