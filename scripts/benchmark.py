"""Benchmarks against torchvision, in one run: a table on the terminal and JSON in --out.

    python scripts/benchmark.py --out reports/benchmark.json
    python scripts/benchmark.py --device cuda --out reports/benchmark_cuda.json
    python scripts/benchmark.py --parity --seeds 0 1 2 --out reports/parity.json

Sections (--sections, default all):
  assignment      target assignment of both stages, ours vs torchvision's Matcher +
                  BalancedPositiveNegativeSampler + BoxCoder, batch 1/8/16/32, the anchors of
                  800x1333 images, identical inputs
  train-step      images/s of a full training step on the preset's batches, ours vs
                  torchvision's FasterRCNN configured identically (detector/reference.py)
  evaluation      COCOeval vs the VOC rule on the same detections
  gradient-stats  the cost of the regression-gradient statistics relative to a step
--parity (a mode of its own, instead of the sections) trains the preset with ours
(--loss smooth_l1 --loss-args beta=0.111, and torchvision's predictor initialisation,
model.predictor_init=torchvision) and with torchvision's FasterRCNN, same schedule, at
each of --seeds, and compares their COCO AP paired by seed. Finished parity runs in --runs-dir
are reused.

Every case runs in a fresh process, so each has its own peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from cli import add_config_arguments, config_from_args, run_main

from detector import benchmark
from detector import config as config_lib
from detector.compare import check_reusable, run_status
from detector.io import atomic_write_json

SECTIONS = ("assignment", "train-step", "evaluation", "gradient-stats")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, flags=["--batch-size", "--threads", "--precision"])
    parser.add_argument("--out", default="reports/benchmark.json", help="JSON file to write")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16, 32],
                        help="batch sizes of the assignment section")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (after warm-up)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per train-step case (2 warm-up)")
    parser.add_argument("--parity", action="store_true",
                        help="instead of the sections: train both detectors on the preset and compare COCO AP")
    parser.add_argument("--runs-dir", default="runs/benchmark", help="run directories of the parity mode")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds of the parity mode")
    args = parser.parse_args()
    cfg = config_from_args(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise config_lib.ConfigError("--device cuda: no CUDA device is visible")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = args.device
    cfg_dict = config_lib.to_dict(cfg)
    result: dict = {"machine": {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
                                "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                                "torch": torch.__version__}}
    if args.parity:
        args.sections = []
        result["parity"] = parity(cfg, Path(args.runs_dir), args.seeds)
    if "assignment" in args.sections:
        rows = []
        print(f"\n{'assignment':<12}{'batch':>6}{'anchors/img':>12}{'ours (ms)':>11}{'torchvision (ms)':>18}"
              f"{'speed-up':>10}{'ours MB':>9}{'tv MB':>8}", flush=True)
        for batch_size in args.batch_sizes:
            ours = benchmark.run_isolated(benchmark.ours_assignment, batch_size, args.repeats, device)
            reference = benchmark.run_isolated(benchmark.torchvision_assignment, batch_size, args.repeats, device)
            row = {"batch_size": batch_size, "anchors_per_image": ours["anchors_per_image"],
                   "ours_s": ours["time_s"], "torchvision_s": reference["time_s"],
                   "speedup": reference["time_s"] / ours["time_s"],
                   "ours_peak_mb": ours["peak_memory_mb"], "torchvision_peak_mb": reference["peak_memory_mb"]}
            rows.append(row)
            print(f"{'':<12}{batch_size:>6}{row['anchors_per_image']:>12}{row['ours_s'] * 1e3:>11.1f}"
                  f"{row['torchvision_s'] * 1e3:>18.1f}{row['speedup']:>9.1f}x{row['ours_peak_mb']:>9.0f}"
                  f"{row['torchvision_peak_mb']:>8.0f}", flush=True)
        result["assignment"] = rows
    if "train-step" in args.sections:
        ours = benchmark.run_isolated(benchmark.train_step, "ours", cfg_dict, args.steps, device)
        reference = benchmark.run_isolated(benchmark.train_step, "torchvision", cfg_dict, args.steps, device)
        result["train_step"] = {"ours": ours, "torchvision": reference,
                                "speedup": ours["images_per_s"] / reference["images_per_s"]}
        print(f"\n{'train-step':<12}{'batch':>6}{'ours img/s':>12}{'torchvision img/s':>19}{'speed-up':>10}"
              f"{'ours MB':>9}{'tv MB':>8}")
        print(f"{'':<12}{ours['batch_size']:>6}{ours['images_per_s']:>12.1f}{reference['images_per_s']:>19.1f}"
              f"{result['train_step']['speedup']:>9.2f}x{ours['peak_memory_mb']:>9.0f}"
              f"{reference['peak_memory_mb']:>8.0f}", flush=True)
    if "evaluation" in args.sections:
        evaluation = benchmark.run_isolated(benchmark.evaluation, cfg_dict, device)
        result["evaluation"] = evaluation
        print(f"\nevaluation: {evaluation['images']} images, {evaluation['detections']} detections: "
              f"COCOeval {evaluation['cocoeval_s']:.2f} s, VOC rule {evaluation['voc_rule_s']:.2f} s "
              f"(peak {evaluation['peak_memory_mb']:.0f} MB)", flush=True)
    if "gradient-stats" in args.sections:
        g = benchmark.run_isolated(benchmark.gradient_stats, cfg_dict, args.steps, device)
        result["gradient_stats"] = g
        print(f"\ngradient-stats: step {g['step_s'] * 1e3:.1f} ms, statistics {g['statistics_s'] * 1e3:.2f} ms: "
              f"{g['overhead_when_logged']:.2%} of a logged step, {g['overhead_averaged']:.3%} averaged", flush=True)
    atomic_write_json(Path(args.out), result)
    print(json.dumps({"written": args.out}))
    return 0


def parity(cfg: config_lib.Config, runs_dir: Path, seeds: list[int]) -> dict:
    """Train (or reuse) both detectors at every seed; their COCO AP, and ours minus
    torchvision's paired by seed with a 95% interval."""
    from detector.report import paired_difference
    from detector.training import train

    out: dict = {"runs": []}
    for seed in seeds:
        for implementation, run_cfg in benchmark.parity_configs(cfg, str(runs_dir), seed).items():
            run_dir = runs_dir / run_cfg.train.run_name
            if run_status(run_dir) == "completed":
                check_reusable(run_cfg, run_dir)
            else:
                train(run_cfg)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            stats = metrics["val"]["stats"]
            out["runs"].append({"implementation": implementation, "seed": seed, "run_dir": str(run_dir),
                                "status": metrics["status"], "AP": stats["AP"], "AP50": stats["AP50"],
                                "AP75": stats["AP75"], "AP90": metrics["val"]["ap_per_iou"]["0.90"],
                                "train_s": metrics["timings"]["train_s"]})
    ap = {impl: {r["seed"]: r["AP"] for r in out["runs"] if r["implementation"] == impl}
          for impl in ("ours", "torchvision")}
    difference = paired_difference(ap["ours"], ap["torchvision"])
    out["AP_mean"] = {impl: sum(v.values()) / len(v) for impl, v in ap.items()}
    out["AP_difference"] = {"mean": difference.mean, "low": difference.low, "high": difference.high,
                            "seeds": difference.pairs}
    print(f"\nparity over seeds {seeds}: COCO AP ours {out['AP_mean']['ours']:.3f}, torchvision "
          f"{out['AP_mean']['torchvision']:.3f}; ours - torchvision {difference.mean:+.3f}"
          + (f" [{difference.low:+.3f}, {difference.high:+.3f}]" if difference.low is not None else ""))
    return out


if __name__ == "__main__":
    run_main(main)
