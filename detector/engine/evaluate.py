"""Evaluate a trained checkpoint on a dataset split, with the same outputs as training."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from detector.data import collate
from detector.engine import config as config_lib
from detector.engine.build import build_dataset
from detector.engine.config import Config, ConfigError
from detector.engine.evaluation import format_metrics_table
from detector.engine.io import atomic_write_json
from detector.engine.module import DetectorModule
from detector.engine.training import build_evaluator


def evaluate_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``scripts/evaluate.py``: the checkpoint's own configuration with the command line's data
    options on top, evaluated on ``--split`` (default: its validation split)."""
    checkpoint = find_checkpoint(args.checkpoint)
    cfg = config_lib.from_args(args, base=config_lib.to_dict(checkpoint_config(checkpoint)))
    split = args.split or cfg.data.val_split
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    out = Path(args.out) if args.out else run_dir / f"eval-{split}"
    return evaluate_checkpoint(checkpoint, cfg, split, out)


def find_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint at {path} (expected a .ckpt file or a run directory with checkpoints/)")


def checkpoint_config(checkpoint: Path) -> Config:
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    if "config" not in hparams:
        raise ConfigError(f"{checkpoint}: not a checkpoint of this project (no configuration inside)")
    return config_lib.from_dict(hparams["config"], source=str(checkpoint))


def evaluate_checkpoint(checkpoint: Path, cfg: Config, split: str, out_dir: Path) -> dict[str, Any]:
    """Run the checkpoint over ``split`` of ``cfg.data``; write metrics.json and detections."""
    started = time.perf_counter()
    module = DetectorModule.load_from_checkpoint(checkpoint, map_location="cpu")
    dataset = build_dataset(cfg.data, split, train=False)
    if list(dataset.class_names) != module.class_names or dataset.label_to_category_id != module.label_to_category_id:
        raise ConfigError(
            f"{checkpoint} was trained on classes {module.class_names} (category ids "
            f"{list(module.label_to_category_id.values())}), but {cfg.data.name} split '{split}' has "
            f"{list(dataset.class_names)} (category ids {list(dataset.label_to_category_id.values())})"
        )
    module.val_dataset = dataset
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False,
                                         num_workers=cfg.data.num_workers, collate_fn=collate)
    trainer = build_evaluator(cfg)
    trainer.validate(module, dataloaders=loader, verbose=False)
    record = {
        "status": "completed",
        "checkpoint": str(checkpoint),
        "dataset": {"name": cfg.data.name, "root": cfg.data.root, "split": split, "num_images": len(dataset)},
        "val": module.last_metrics,
        "timings": {"total_s": round(time.perf_counter() - started, 2)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "detections.json", module.last_results)
    atomic_write_json(out_dir / "metrics.json", record)
    if trainer.is_global_zero:
        print(f"\n{checkpoint} on {cfg.data.name}/{split}: results in {out_dir}")
        print(format_metrics_table(module.last_metrics))
    return record
