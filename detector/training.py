"""One training run: data, model, Lightning Trainer, run directory.

A run directory holds everything a report needs:
  config.yaml            the resolved configuration
  metrics.json           status, COCO stats of the final model, AP per IoU threshold and per
                         class, the best validation AP, timings
  metrics.csv            per-step training losses and learning rate, COCO stats of the
                         validations inside training (the final one is in metrics.json)
  gradients.csv          |dl/dx| of the regression outputs (box head, RPN) at logging steps
  detections_val.json    the final model's validation detections, COCO results format
  checkpoints/           last.ckpt and best.ckpt (by validation AP)
"""

from __future__ import annotations

import logging
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from detector import config as config_lib
from detector.config import Config
from detector.data import DetectionDataModule
from detector.evaluation import format_metrics_table
from detector.gradients import GradientLog
from detector.io import atomic_write_json
from detector.lit import DetectorModule

log = logging.getLogger(__name__)

# The run directory already holds config.yaml and metrics.json when the CSV logger opens it;
# Lightning's warning about a non-empty folder would wrongly suggest something gets lost.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


def default_run_name(cfg: Config) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.data.name}-{cfg.loss.name.replace(':', '.')}-seed{cfg.train.seed}-{stamp}"


def resolve_precision(cfg: Config) -> None:
    """Mixed precision is for GPUs: on the CPU, fp16 autocast is slow or unsupported and bf16 is
    slower than fp32 on most CPUs, so a GPU preset run on a CPU trains in fp32 (with a warning,
    and the recorded configuration says so)."""
    t = cfg.train
    on_gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    if t.precision in ("16-mixed", "bf16-mixed") and not on_gpu and t.accelerator != "mps":
        log.warning("precision %s needs a GPU; training in fp32 (32-true) on the CPU", t.precision)
        t.precision = "32-true"


def build_trainer(cfg: Config, run_dir: Path, *, callbacks: list | None = None) -> pl.Trainer:
    t = cfg.train
    checkpoints = run_dir / "checkpoints"
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=t.epochs if t.max_steps <= 0 else -1,
        max_steps=t.max_steps,
        check_val_every_n_epoch=t.val_every_n_epochs,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.grad_clip,
        deterministic=t.deterministic,
        logger=CSVLogger(save_dir=str(run_dir), name="", version=""),
        callbacks=[
            ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/AP", mode="max",
                            save_last=True, auto_insert_metric_name=False),
            LearningRateMonitor(logging_interval="step"),
            *([TQDMProgressBar(refresh_rate=5)] if t.progress else []),
            *(callbacks or []),
        ],
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def build_evaluator(cfg: Config) -> pl.Trainer:
    """A Trainer for validation only: no logger (Lightning's CSV logger would start
    metrics.csv afresh) and no checkpointing."""
    t = cfg.train
    return pl.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                      precision=t.precision, logger=False, enable_checkpointing=False,
                      enable_progress_bar=t.progress, enable_model_summary=False)


def train(cfg: Config) -> Path:
    """Train as configured; return the run directory (metrics.json says how it went)."""
    started = time.perf_counter()
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    resolve_precision(cfg)
    run_dir = Path(t.out_dir) / (t.run_name or default_run_name(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, run_dir / "config.yaml")
    metrics_path = run_dir / "metrics.json"
    record: dict[str, Any] = {"status": "running", "run_dir": str(run_dir), "config": config_lib.to_dict(cfg)}
    atomic_write_json(metrics_path, record)

    data = DetectionDataModule(cfg.data)
    data.setup("fit")  # generates the shapes dataset on first use
    data_ready = time.perf_counter()
    module = DetectorModule.from_config(cfg, data.train_dataset)
    module.val_dataset = data.val_dataset
    record["loss"] = module.model.regression_loss_records()
    record["num_train_images"] = len(data.train_dataset)
    record["num_val_images"] = len(data.val_dataset)
    record["class_names"] = module.class_names

    trainer = build_trainer(cfg, run_dir)
    if t.gradient_stats and trainer.is_global_zero:
        module.gradient_log = GradientLog(run_dir / "gradients.csv")
    try:
        trainer.fit(module, datamodule=data)
    except BaseException as exc:
        # Never leave a run directory that says "running" (or worse) for a run that failed.
        record.update({"status": "failed", "error": f"{type(exc).__name__}: {exc}", "steps": trainer.global_step})
        atomic_write_json(metrics_path, record)
        raise
    finally:
        if module.gradient_log is not None:
            module.gradient_log.close()
    trained = time.perf_counter()
    if trainer.interrupted:  # Lightning turns Ctrl-C into a graceful stop: not a finished run
        record.update({"status": "interrupted", "steps": trainer.global_step})
        atomic_write_json(metrics_path, record)
        log.warning("training interrupted at step %d; %s is marked interrupted", trainer.global_step, run_dir)
        return run_dir
    best = trainer.checkpoint_callback
    if module.last_metrics_step != trainer.global_step:  # the final model was not validated yet
        build_evaluator(cfg).validate(module, datamodule=data, verbose=False)
        final_ap = module.last_metrics["stats"]["AP"]
        # ModelCheckpoint only acts on validations inside fit(); keep best.ckpt truthful.
        if best.best_model_score is None or final_ap > float(best.best_model_score):
            best.best_model_path = str(run_dir / "checkpoints" / "best.ckpt")
            best.best_model_score = torch.tensor(final_ap)
            trainer.save_checkpoint(best.best_model_path)
    evaluated = time.perf_counter()

    record.update({
        "status": "completed",
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "val": module.last_metrics,
        "best_val_AP": float(best.best_model_score) if best.best_model_score is not None else None,
        "checkpoints": {"best": _relative(best.best_model_path, run_dir), "last": _relative(best.last_model_path, run_dir)},
        "timings": {
            "data_s": round(data_ready - started, 2),
            "train_s": round(trained - data_ready, 2),
            "final_eval_s": round(evaluated - trained, 2),
            "total_s": round(time.perf_counter() - started, 2),
        },
    })
    atomic_write_json(run_dir / "detections_val.json", module.last_results)
    atomic_write_json(metrics_path, record)
    if trainer.is_global_zero:
        print(f"\nrun directory: {run_dir}")
        print(format_metrics_table(module.last_metrics))
        print(f"total time: {record['timings']['total_s']:.1f} s")
    return run_dir


def _relative(path: str, root: Path) -> str | None:
    return str(Path(path).resolve().relative_to(root.resolve())) if path else None
