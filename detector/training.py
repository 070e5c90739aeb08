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

import csv
import io
import json
import logging
import os
import signal
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from detector import config as config_lib
from detector.config import Config, ConfigError
from detector.data import DetectionDataModule
from detector.evaluation import format_metrics_table
from detector.gradients import GradientLog
from detector.io import atomic_write_json, atomic_write_text
from detector.lit import DetectorModule

log = logging.getLogger(__name__)

# The run directory already holds config.yaml and metrics.json when the CSV logger opens it;
# Lightning's warning about a non-empty folder would wrongly suggest something gets lost.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
# A step with a non-finite loss returns None on purpose (divergence stops the run, see lit.py).
warnings.filterwarnings("ignore", message=".*`training_step` returned `None`")
# Our samplers resume mid-epoch themselves (detector/data/sampler.py), which Lightning cannot see.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file that is then renamed over the target, so a run
    stopped while saving keeps its previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


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
        plugins=[AtomicCheckpointIO()],
        # The data module's samplers split the data between ranks themselves (see
        # detector/data/sampler.py), so that a resumed run continues mid-epoch exactly.
        use_distributed_sampler=False,
    )


def build_evaluator(cfg: Config) -> pl.Trainer:
    """A Trainer for validation only: no logger (Lightning's CSV logger would start
    metrics.csv afresh) and no checkpointing."""
    t = cfg.train
    return pl.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                      precision=t.precision, logger=False, enable_checkpointing=False,
                      enable_progress_bar=t.progress, enable_model_summary=False)


INTERRUPTED_CHECKPOINT = "interrupted.ckpt"


def train(cfg: Config, *, resume: bool = False) -> Path:
    """Train as configured; return the run directory (metrics.json says how it went).

    ``resume``: continue the interrupted run in the configured run directory from its newest
    checkpoint: the model, optimiser, schedule, loop counters, random generators and the
    position in the epoch are restored, so the result equals an uninterrupted run's.
    """
    started = time.perf_counter()
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    resolve_precision(cfg)
    run_dir = Path(t.out_dir) / (t.run_name or default_run_name(cfg))
    previous: dict[str, Any] = {}
    checkpoint = None
    if resume:
        checkpoint = resume_checkpoint(run_dir)
        previous = json.loads((run_dir / "metrics.json").read_text())
        # Lightning's CSV logger deletes an existing metrics.csv when it opens the folder.
        if (run_dir / "metrics.csv").is_file():
            os.replace(run_dir / "metrics.csv", run_dir / EARLIER_METRICS)
    trainer = build_trainer(cfg, run_dir)
    zero = trainer.is_global_zero  # only rank 0 writes the run directory's files
    metrics_path = run_dir / "metrics.json"
    record: dict[str, Any] = {"status": "running", "run_dir": str(run_dir), "config": config_lib.to_dict(cfg)}

    def save_record(**fields: Any) -> None:
        """Add ``fields`` to the run's record and write it to metrics.json (rank 0 only)."""
        record.update(fields)
        if zero:
            atomic_write_json(metrics_path, record)

    if zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, run_dir / "config.yaml")
    save_record(**({"resumed_from": str(checkpoint)} if checkpoint else {}))

    try:
        data = DetectionDataModule(cfg.data, seed=t.seed)
        data.setup("fit")  # generates the shapes dataset on first use
    except BaseException as exc:  # a dataset that cannot be read: the run failed before training
        save_record(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    data_ready = time.perf_counter()
    module = DetectorModule.from_config(cfg, data.train_dataset)
    module.val_dataset = data.val_dataset
    module.interrupt_checkpoint = str(run_dir / "checkpoints" / INTERRUPTED_CHECKPOINT)
    record["loss"] = module.model.regression_loss_records()
    record["num_train_images"] = len(data.train_dataset)
    record["num_val_images"] = len(data.val_dataset)
    record["class_names"] = module.class_names
    if checkpoint is not None:
        data.resume_global_step = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])
        record["resumed_from_step"] = data.resume_global_step

    if t.gradient_stats and zero:
        module.gradient_log = GradientLog(run_dir / "gradients.csv")
    try:
        with StopOnSignal() as stop:
            module.stop_requested = stop.requested
            trainer.fit(module, datamodule=data, ckpt_path=str(checkpoint) if checkpoint else None)
    except SIGTERMException:
        # Lightning stops the loop on SIGTERM (on every rank) after the step in which our
        # handler saved the checkpoint: the interrupted-run path below records it.
        pass
    except BaseException as exc:
        # Never leave a run directory that says "running" (or worse) for a run that failed.
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))  # a second Ctrl-C: stop at once
        save_record(status="interrupted" if interrupted else "failed", steps=trainer.global_step,
                    **({} if interrupted else {"error": f"{type(exc).__name__}: {exc}"}))
        raise
    finally:
        if module.gradient_log is not None:
            module.gradient_log.close()
        if checkpoint is not None and zero:
            _merge_metrics_csv(run_dir, until_step=data.resume_global_step)
    trained = time.perf_counter()
    train_s = round(trained - data_ready + previous.get("timings", {}).get("train_s", 0.0), 2)
    if module.diverged is not None:
        save_record(status="diverged", diverged_at_step=module.diverged["step"], steps=module.diverged["step"],
                    divergence=module.diverged, timings={"train_s": train_s})
        log.error("training diverged at step %d (non-finite loss: %s); %s is marked diverged",
                  module.diverged["step"], module.diverged["losses"], run_dir)
        return run_dir
    if module.interrupted_at_step is not None or trainer.interrupted or trainer.received_sigterm:
        save_record(status="interrupted", steps=trainer.global_step, timings={"train_s": train_s})
        log.warning("training stopped at step %d; continue it with: python scripts/train.py --resume %s",
                    trainer.global_step, run_dir)
        return run_dir
    best = trainer.checkpoint_callback
    if module.last_metrics_step != trainer.global_step:  # the final model was not validated yet
        trainer.validate(module, datamodule=data, verbose=False)
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
            "train_s": train_s,
            "final_eval_s": round(evaluated - trained, 2),
            "total_s": round(time.perf_counter() - started + previous.get("timings", {}).get("train_s", 0.0), 2),
        },
    })
    if zero:
        atomic_write_json(run_dir / "detections_val.json", module.last_results)
        atomic_write_json(metrics_path, record)
        (run_dir / "checkpoints" / INTERRUPTED_CHECKPOINT).unlink(missing_ok=True)  # superseded
        print(f"\nrun directory: {run_dir}")
        print(format_metrics_table(module.last_metrics))
        print(f"total time: {record['timings']['total_s']:.1f} s")
    return run_dir


EARLIER_METRICS = ".metrics-before-resume.csv"


def _merge_metrics_csv(run_dir: Path, until_step: int) -> None:
    """metrics.csv = the rows logged before the resumed step, then the resumed run's rows."""
    earlier_path, path = run_dir / EARLIER_METRICS, run_dir / "metrics.csv"
    if not earlier_path.is_file():
        return
    with earlier_path.open(newline="") as handle:
        earlier = [row for row in csv.DictReader(handle) if row.get("step") and int(row["step"]) < until_step]
    later = []
    if path.is_file():
        with path.open(newline="") as handle:
            later = list(csv.DictReader(handle))
    columns = sorted(set().union(*(row.keys() for row in earlier + later)))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(earlier + later)
    atomic_write_text(path, buffer.getvalue())
    earlier_path.unlink()


def resume_checkpoint(run_dir: Path) -> Path:
    """The checkpoint an unfinished run continues from: the newer of the one written when it
    was stopped and the last end-of-epoch one."""
    status = json.loads((run_dir / "metrics.json").read_text()).get("status") if (run_dir / "metrics.json").is_file() else None
    if status is None:
        raise ConfigError(f"--resume {run_dir}: not a run directory (no metrics.json)")
    if status in ("completed", "diverged"):
        raise ConfigError(f"--resume {run_dir}: the run is {status}; there is nothing to continue")
    candidates = [p for p in (run_dir / "checkpoints" / INTERRUPTED_CHECKPOINT, run_dir / "checkpoints" / "last.ckpt")
                  if p.is_file()]
    if not candidates:
        raise ConfigError(f"--resume {run_dir}: the run ({status}) left no checkpoint in {run_dir / 'checkpoints'}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


class StopOnSignal:
    """Ctrl-C or SIGTERM asks training to stop after the current step (it then saves a
    checkpoint and marks the run interrupted); a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._requested = False
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self._requested

    def _handle(self, signum: int, frame) -> None:
        if self._requested:
            raise KeyboardInterrupt
        self._requested = True
        log.warning("%s: stopping after this step and saving a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _relative(path: str, root: Path) -> str | None:
    return str(Path(path).resolve().relative_to(root.resolve())) if path else None
