"""Benchmarks, printed as a table and written as JSON.

    python scripts/benchmark.py --out reports/benchmark.json

gradient-stats: the cost of the regression-gradient statistics (gradients.csv) relative to a
training step of the default preset, measured in one process on the same batches.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from cli import config_from_args, add_config_arguments, run_main

from detector.data import build_dataset, collate
from detector.io import atomic_write_json
from detector.model import build_model


def gradient_stats(cfg, steps: int = 12, warmup: int = 2) -> dict:
    """Median training-step time, and the time of the statistics of both heads."""
    dataset = build_dataset(cfg.data, cfg.data.train_split, train=True)
    size = cfg.data.batch_size
    batches = [collate([dataset[(j * size + i) % len(dataset)] for i in range(size)]) for j in range(steps)]
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, num_classes=len(dataset.class_names)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    step_times, stats_times = [], []
    for images, targets in batches:
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stepped = time.perf_counter()
        for probe in (model.roi_heads.gradient_probe, model.rpn.gradient_probe):
            probe.statistics(0)
        step_times.append(stepped - start)
        stats_times.append(time.perf_counter() - stepped)
    step = sorted(step_times[warmup:])[len(step_times[warmup:]) // 2]
    stats = sorted(stats_times[warmup:])[len(stats_times[warmup:]) // 2]
    every = cfg.train.log_every_n_steps
    return {"step_s": step, "statistics_s": stats, "log_every_n_steps": every,
            "overhead_when_logged": stats / step, "overhead_averaged": stats / step / every}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, flags=["--batch-size", "--threads"])
    parser.add_argument("--out", default="reports/benchmark.json", help="JSON file to write")
    args = parser.parse_args()
    cfg = config_from_args(args)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    result = {"machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                          "torch": torch.__version__},
              "gradient_stats": gradient_stats(cfg)}
    g = result["gradient_stats"]
    print(f"{'benchmark':<16}{'step (ms)':>12}{'stats (ms)':>12}{'logged step':>14}{'averaged':>10}")
    print(f"{'gradient-stats':<16}{g['step_s'] * 1e3:>12.1f}{g['statistics_s'] * 1e3:>12.2f}"
          f"{g['overhead_when_logged']:>14.2%}{g['overhead_averaged']:>10.3%}")
    atomic_write_json(Path(args.out), result)
    print(json.dumps({"written": args.out}))
    return 0


if __name__ == "__main__":
    run_main(main)
