"""Benchmarks against torchvision, in one run: a table on the terminal and JSON in --out.

    python scripts/benchmark.py                                    # a new runs/benchmark-<time>.json
    python scripts/benchmark.py --out reports/benchmark.json --overwrite
    python scripts/benchmark.py --device cuda --out reports/benchmark_cuda.json
    python scripts/benchmark.py --parity --seeds 0 1 2 --out reports/parity.json --overwrite

Sections (--sections, default all):
  assignment      target assignment of both stages, ours vs torchvision's Matcher +
                  BalancedPositiveNegativeSampler + BoxCoder, batch 1/8/16/32, the anchors of
                  800x1333 images, identical inputs
  train-step      images/s of a full training step on the preset's batches, ours vs
                  torchvision's FasterRCNN configured identically (detector/model/reference.py)
  real-sizes      the training step (ours with each RoIAlign path, torchvision's) and the
                  target assignment at BCCD-like 320x427 (batch 8) and COCO-like 800x1333
                  (batch 2), random images and boxes, the --real-config preset's model
  evaluation      COCOeval vs the VOC rule on the same detections
  gradient-stats  the cost of the regression-gradient statistics relative to a step
  levers          each speed lever against the code without it, calls alternating in one
                  process: the training step in fp32/bf16 x contiguous/channels-last, the
                  trunk eager vs torch.compile, and faster-coco-eval vs pycocotools' COCOeval
                  (when faster-coco-eval is installed) on the evaluation section's detections
--parity (a mode of its own, instead of the sections) trains the preset with ours
(--loss smooth_l1 --loss-args beta=0.111, and torchvision's predictor initialisation,
model.predictor_init=torchvision) and with torchvision's FasterRCNN, same schedule, at
each of --seeds, and compares their COCO AP paired by seed. Finished parity runs in --runs-dir
are reused.
--profile (a mode of its own) splits a training step of the preset (--config) into its stages,
times the trunk's own forward+backward on the same batch (step / trunk is the overhead
ratio), and splits one evaluation into inference, post-processing and COCOeval.

Every case runs in a fresh process, so each has its own peak memory.
"""

from __future__ import annotations

from detector.engine.cli import ArgumentParser, add_config_arguments, run_main

# lab/benchmark.py's SECTIONS, named here so that --help and a mistyped section answer before torch
# loads (tests/test_benchmark.py holds the two equal).
SECTIONS = ("assignment", "train-step", "real-sizes", "evaluation", "gradient-stats", "preflight", "levers")


def main() -> int:
    parser = ArgumentParser(description=__doc__)
    add_config_arguments(parser, flags=["--batch-size", "--threads", "--precision"])
    parser.add_argument("--out", help="JSON file to write, a new file (default: a new runs/benchmark-<time>.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--real-config", default="configs/custom.yaml",
                        help="preset of the real-sizes section's model (default: the real-photo preset)")
    parser.add_argument("--preflight-root", help="the preflight section also times every image under this folder")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16, 32],
                        help="batch sizes of the assignment section")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (after warm-up)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per train-step case (2 warm-up)")
    parser.add_argument("--parity", action="store_true",
                        help="instead of the sections: train both detectors on the preset and compare COCO AP")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the sections: where the time of a training step and of one evaluation of "
                             "the preset goes, and the trunk's own forward+backward")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="--profile on random images of this size instead of the preset's data")
    parser.add_argument("--runs-dir", default="runs/benchmark", help="run directories of the parity mode")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds of the parity mode")
    args = parser.parse_args()
    from detector.lab.benchmark import benchmark_from_args  # torch loads once the arguments are known

    benchmark_from_args(args)
    return 0


if __name__ == "__main__":
    run_main(main)
