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
from detector.engine.evaluation import confusion_at, format_metrics_table
from detector.engine.figures import plot_confusion, plot_pr_curves
from detector.engine.inference import (
    EVALUATION_DATA_OPTIONS,
    POSTPROCESSING_OPTIONS,
    RUNTIME_OPTIONS,
    inference_config,
    load_module,
    output_identity,
    postprocessing_record,
)
from detector.engine.io import atomic_write_json
from detector.engine.outputs import check_folder, claim_folder
from detector.engine.rundir import run_dir_of
from detector.engine.trainers import build_evaluator


def evaluate_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``scripts/evaluate.py``: the checkpoint's own configuration with the command line's data,
    post-processing and device options on top, evaluated on ``--split`` (default: its
    validation split). Any other option is refused, naming it."""
    checkpoint, cfg = inference_config(args, POSTPROCESSING_OPTIONS + RUNTIME_OPTIONS + EVALUATION_DATA_OPTIONS,
                                       "evaluate.py")
    split = args.split or cfg.data.val_split
    out = Path(args.out) if args.out else (run_dir_of(checkpoint) or checkpoint.parent) / f"eval-{split}"
    return evaluate_checkpoint(checkpoint, cfg, split, out, overwrite=args.overwrite, conf_thresh=args.conf_thresh)


def evaluate_checkpoint(checkpoint: Path, cfg: Config, split: str, out_dir: Path, *,
                        overwrite: bool = False, conf_thresh: float = 0.5) -> dict[str, Any]:
    """Run the checkpoint over ``split`` of ``cfg.data`` with ``cfg``'s post-processing; write
    metrics.json (with the post-processing and the checkpoint's digest) and detections.json.
    ``out_dir`` must be new, empty, or hold this same evaluation; one of another checkpoint,
    data or post-processing is replaced only with ``overwrite`` (engine/outputs.py)."""
    started = time.perf_counter()
    flat = config_lib.flatten(cfg)
    identity = output_identity(checkpoint, cfg, split=split,
                               data={key: flat[key] for key in EVALUATION_DATA_OPTIONS})
    check_folder(out_dir, "evaluation", identity, overwrite=overwrite)  # before the work; claimed once it is done
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    module = load_module(checkpoint, cfg)
    dataset = build_dataset(cfg.data, split, train=False)
    if list(dataset.class_names) != module.class_names or dataset.label_to_category_id != module.label_to_category_id:
        raise ConfigError(
            f"{checkpoint} was trained on classes {module.class_names} (category ids "
            f"{list(module.label_to_category_id.values())}), but {cfg.data.name} split '{split}' has "
            f"{list(dataset.class_names)} (category ids {list(dataset.label_to_category_id.values())})"
        )
    module.val_dataset = dataset
    module.record_curves = True
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False,
                                         num_workers=cfg.data.num_workers, collate_fn=collate)
    trainer = build_evaluator(cfg)
    trainer.validate(module, dataloaders=loader, verbose=False)
    record = {
        "status": "completed",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": identity["checkpoint_sha256"],
        "dataset": {"name": cfg.data.name, "root": cfg.data.root, "split": split, "num_images": len(dataset)},
        "postprocessing": postprocessing_record(cfg),
        "val": module.last_metrics,
        "confusion": confusion_at(dataset.coco, module.last_results, dataset.class_names, dataset.label_to_category_id,
                                  score_thresh=conf_thresh, image_ids=dataset.image_ids),
        "timings": {"total_s": round(time.perf_counter() - started, 2)},
    }
    if trainer.is_global_zero:  # every rank holds the same gathered results; one writes them
        folder = claim_folder(out_dir, "evaluation", identity, overwrite=overwrite)
        atomic_write_json(out_dir / "detections.json", module.last_results)
        atomic_write_json(out_dir / "metrics.json", record)
        plot_pr_curves(module.last_metrics["pr_curves"], out_dir / "pr_curves.png")
        plot_confusion(record["confusion"], out_dir / "confusion_matrix.png")
        folder.finish(["detections.json", "metrics.json", "pr_curves.png", "confusion_matrix.png"])
        print(f"\n{checkpoint} on {cfg.data.name}/{split}: results in {out_dir}")
        print(format_metrics_table(module.last_metrics))
        print(format_confusion(record["confusion"]))
    return record


def format_confusion(confusion: dict[str, Any]) -> str:
    """Precision, recall and F1 per class at the confusion matrix's score threshold."""
    def number(value: float | None) -> str:
        return f"{value:.3f}" if value is not None else "-"

    lines = [f"detections scoring >= {confusion['score_thresh']:g}, matched at IoU >= {confusion['iou_thresh']:g}:",
             f"{'class':<20}{'precision':>10}{'recall':>8}{'F1':>7}"]
    lines += [f"{name[:20]:<20}{number(v['precision']):>10}{number(v['recall']):>8}{number(v['f1']):>7}"
              for name, v in confusion["per_class"].items()]
    return "\n".join(lines)
