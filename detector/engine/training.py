"""One training run: data, model, Lightning Trainer, run directory.

A run directory holds everything a report needs:
  config.yaml            the resolved configuration
  metrics.json           status, COCO stats of the final model, AP per IoU threshold and per
                         class, the best validation AP, timings
  metrics.csv            per-step training losses and learning rate, COCO stats of the
                         validations inside training (the final one is in metrics.json)
  gradients.csv          |dl/dx| of the regression outputs (box head, RPN) at logging steps
  detections_val.json    the final model's validation detections, COCO results format
  val_images.txt         with data.val_fraction: the held-out images' file names
  checkpoints/           last.ckpt and best.ckpt (by validation AP)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
import signal
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from detector.engine import config as config_lib
from detector.engine.build import load_trunk_weights, regression_loss_records, resolve_classes
from detector.engine.callbacks import GradientStatistics, StopOnSignal
from detector.engine.config import Config, ConfigError
from detector.engine.datamodule import DetectionDataModule
from detector.engine.evaluation import format_metrics_table
from detector.engine.io import atomic_path, atomic_write_json, atomic_write_text, read_csv_rows
from detector.engine.module import DetectorModule
from detector.engine.outputs import unique_path
from detector.engine.versions import code_version, library_versions

log = logging.getLogger(__name__)

# The run directory already holds config.yaml and metrics.json when the CSV logger opens it;
# Lightning's warning about a non-empty folder would wrongly suggest something gets lost.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
# A step with a non-finite loss returns None on purpose (divergence stops the run, see module.py).
warnings.filterwarnings("ignore", message=".*`training_step` returned `None`")
# Our samplers resume mid-epoch themselves (detector/data/sampler.py), which Lightning cannot see.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


RUN_NAME_VARIABLE = "DETECTOR_RUN_NAME"


def default_run_name(cfg: Config) -> str:
    """<dataset>-<loss>-seed<seed>-<timestamp>, or in a DDP rank above 0 the name rank 0 chose."""
    if rank_zero_only.rank != 0 and os.environ.get(RUN_NAME_VARIABLE):
        return os.environ[RUN_NAME_VARIABLE]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.data.name}-{cfg.loss.name.replace(':', '.')}-seed{cfg.train.seed}-{stamp}"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so that oneDNN's bf16
    convolutions and matmuls beat fp32 (measured on a 2-core AVX512-BF16 CPU: a shapes training
    step 164 ms in bf16 autocast against 336 ms in fp32; reports/profile*.json)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(cfg: Config) -> None:
    """``train.precision`` as the hardware can run it, written back so the recorded
    configuration says what ran. ``auto``: bf16 autocast on a GPU that supports bf16 and on a
    CPU with native bf16 (cpu_has_fast_bf16), else fp32. Mixed precision on a CPU without
    native bf16 (or fp16 on any CPU: slow or unsupported there) falls back to fp32, with a warning."""
    t = cfg.train
    on_gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    on_cpu = not on_gpu and t.accelerator != "mps"
    if t.precision == "auto":
        fast_bf16 = cpu_has_fast_bf16() if on_cpu else on_gpu and torch.cuda.is_bf16_supported()
        t.precision = "bf16-mixed" if fast_bf16 else "32-true"
        log.info("precision auto: %s", t.precision)
    elif on_cpu and (t.precision == "16-mixed" or (t.precision == "bf16-mixed" and not cpu_has_fast_bf16())):
        log.warning("precision %s needs a GPU or a CPU with native bf16 (AVX512-BF16 or AMX); training in fp32 "
                    "(32-true) on this CPU", t.precision)
        t.precision = "32-true"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file that is then renamed over the target, so a run
    stopped while saving keeps its previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as partial:
            super().save_checkpoint(checkpoint, partial, storage_options)


def build_loggers(cfg: Config, run_dir: Path) -> list[Logger]:
    """metrics.csv always (the comparison report reads it); TensorBoard event files in the run
    directory as well with train.logger=tensorboard, so ``tensorboard --logdir runs`` shows
    every run under its directory's name."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if cfg.train.logger == "tensorboard":
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False))
    return loggers


def build_trainer(cfg: Config, run_dir: Path, *, callbacks: list | None = None) -> pl.Trainer:
    t = cfg.train
    checkpoints = run_dir / "checkpoints"
    return _trainer(
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
        logger=build_loggers(cfg, run_dir),
        callbacks=[
            ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/AP", mode="max",
                            auto_insert_metric_name=False, enable_version_counter=False),
            # last.ckpt at the end of every epoch. ModelCheckpoint(save_last=True) rewrites it only
            # when a new best was saved in the same step (Lightning 2.6), which left it at an older
            # epoch whenever the final validation was not the best.
            ModelCheckpoint(dirpath=checkpoints, filename="last", monitor=None, save_top_k=1,
                            auto_insert_metric_name=False, enable_version_counter=False),
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
    return _trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                    precision=t.precision, logger=False, enable_checkpointing=False,
                    enable_progress_bar=t.progress, enable_model_summary=False)


def _trainer(**options: Any) -> pl.Trainer:
    """A Trainer; Lightning refusing the train.* options (a GPU asked for where there is none, an
    unknown strategy) is a user error, reported before anything is written."""
    try:
        return pl.Trainer(**options)
    except (MisconfigurationException, ValueError) as exc:
        raise ConfigError(f"the Trainer options (train.accelerator, train.devices, train.num_nodes, train.strategy, "
                          f"train.precision) cannot be used here: {exc}") from None


FINISHED = ("completed", "diverged")  # a run with nothing left to train
INTERRUPTED_CHECKPOINT = "interrupted.ckpt"
LAST_CHECKPOINT = "last.ckpt"


class RunRecord:
    """The run's metrics.json: fields added as the run goes and written at every status change
    (by rank 0 only), so the file always says how far the run got."""

    def __init__(self, path: Path, *, enabled: bool, **fields: Any):
        self.path, self.enabled, self.fields = path, enabled, dict(fields)

    def save(self, **fields: Any) -> None:
        self.fields.update(fields)
        if self.enabled:
            atomic_write_json(self.path, self.fields)


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train as configured; return the run directory (metrics.json says how it went).

    Everything that can fail on the user's input (data roots, annotation files, categories,
    images, trunk weights, Trainer options) is checked before the run directory exists, so a
    failed start leaves nothing behind; a failure after that marks the run ``failed`` with the
    error, never leaving it ``running``.

    ``resume``: continue the interrupted run in the configured run directory from its newest
    checkpoint: the model, optimiser, schedule, loop counters, random generators and the
    position in the epoch are restored, so the result equals an uninterrupted run's. Otherwise
    the run directory must not exist yet (a default name gets a suffix instead): an existing one
    is refused, unless ``overwrite`` and it is a run directory, which is then replaced.
    """
    started = time.perf_counter()
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    resolve_precision(cfg)
    cfg.data.classes = resolve_classes(cfg.data)  # fixed before training, recorded in config.yaml
    run_dir = Path(t.out_dir) / (t.run_name or default_run_name(cfg))
    if not resume and rank_zero_only.rank == 0:  # other DDP ranks start once rank 0 has made it
        if not t.run_name:
            run_dir = unique_path(run_dir)
            # DDP ranks that Lightning starts later inherit this, and use rank 0's timestamped name.
            os.environ[RUN_NAME_VARIABLE] = run_dir.name
        check_new_run_dir(run_dir, overwrite=overwrite)
    checkpoint = resume_checkpoint(run_dir) if resume else None
    previous = json.loads((run_dir / "metrics.json").read_text()) if resume else {}

    # Weights that cannot be had or do not fit, and data that cannot be read, stop here.
    trunk_state = None if resume else load_trunk_weights(cfg.model)
    data = DetectionDataModule(cfg.data, seed=t.seed)
    data.setup("fit")  # reads both datasets (the shapes dataset is generated on first use)
    data_ready = time.perf_counter()
    module = DetectorModule.from_config(cfg, data.train_dataset, trunk_state)
    module.val_dataset = data.val_dataset
    stop = StopOnSignal(run_dir / "checkpoints" / INTERRUPTED_CHECKPOINT)
    gradients = GradientStatistics(run_dir / "gradients.csv", t.log_every_n_steps) if t.gradient_stats else None
    trainer = build_trainer(cfg, run_dir, callbacks=[stop, *([gradients] if gradients else [])])
    record = RunRecord(run_dir / "metrics.json", enabled=trainer.is_global_zero,
                       status="running", run_dir=str(run_dir), config=config_lib.to_dict(cfg),
                       code=code_version(), libraries=library_versions(),
                       **({"resumed_from": str(checkpoint)} if checkpoint else {}),
                       loss=regression_loss_records(cfg), num_train_images=len(data.train_dataset),
                       num_val_images=len(data.val_dataset), class_names=module.class_names)
    if trainer.is_global_zero and not resume:  # only rank 0 writes the run directory's files
        make_run_dir(run_dir, overwrite=overwrite)
    try:
        if trainer.is_global_zero:
            config_lib.save(cfg, run_dir / "config.yaml")
            if cfg.data.val_fraction > 0:  # the held-out images, by name
                atomic_write_text(run_dir / "val_images.txt", "".join(
                    f"{image['file_name']}\n" for image in data.val_dataset.coco.dataset["images"]))
        record.save()
        if checkpoint is not None:
            set_metrics_csv_aside(run_dir)
            data.resume_global_step = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])
            record.fields["resumed_from_step"] = data.resume_global_step
        return fit_and_record(trainer, module, data, record, checkpoint, stop,
                              timings={"data_s": round(data_ready - started, 2), "started": started,
                                       "earlier_train_s": previous.get("timings", {}).get("train_s", 0.0)})
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))  # a second Ctrl-C: stop at once
        record.save(status="interrupted" if interrupted else "failed", steps=trainer.global_step,
                    **({"stopped_by": stop.signal_name or "SIGINT"} if interrupted
                       else {"error": f"{type(exc).__name__}: {exc}"}))
        if interrupted:
            log.warning("training stopped at once at step %d; continue it with: python scripts/train.py --resume %s",
                        trainer.global_step, run_dir)
        raise


def check_new_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse (ConfigError) a run directory that exists, unless it is empty, or ``overwrite``
    and it is a run directory; the message names the ways on."""
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise ConfigError(f"{run_dir} exists and is not a run directory (no metrics.json); it is left as it is: "
                          f"choose another --run-name or --out-dir")
    if overwrite:
        return
    try:
        record = json.loads(metrics.read_text())
    except (OSError, ValueError):
        record = {}
    status, steps = record.get("status", "unknown"), record.get("steps")
    resumable = status not in FINISHED and any((run_dir / "checkpoints").glob("*.ckpt"))
    ways = f"continue it with --resume {run_dir}, " if resumable else ""
    raise ConfigError(f"run directory {run_dir} already exists (a {status} run{f' of {steps} steps' if steps else ''}); "
                      f"{ways}choose another --run-name, or replace it with --overwrite")


def make_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Create the new run's directory; with ``overwrite``, a run directory there is removed first
    (check_new_run_dir has made sure it is one), so nothing of the old run stays beside the new."""
    check_new_run_dir(run_dir, overwrite=overwrite)  # again: the data were read in the meantime
    if overwrite and (run_dir / "metrics.json").is_file():
        log.warning("--overwrite: removing the earlier run in %s", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # exists only when empty (check_new_run_dir)


def fit_and_record(trainer: pl.Trainer, module: DetectorModule, data: DetectionDataModule, record: RunRecord,
                   checkpoint: Path | None, stop: StopOnSignal, timings: dict[str, float]) -> Path:
    """Train (from ``checkpoint`` when resuming), validate the final model and write the run's
    results; ``timings`` holds the data time, the start time and the training time of the run
    before a resume."""
    run_dir = Path(record.fields["run_dir"])
    fit_started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(checkpoint) if checkpoint else None)
    except SIGTERMException:
        # Lightning stops the loop on SIGTERM (on every rank) after the step in which the
        # StopOnSignal callback saved the checkpoint: the interrupted-run path below records it.
        pass
    finally:
        if checkpoint is not None and trainer.is_global_zero:
            _merge_metrics_csv(run_dir, until_step=data.resume_global_step)
    trained = time.perf_counter()
    train_s = round(trained - fit_started + timings["earlier_train_s"], 2)
    if module.diverged is not None:
        record.save(status="diverged", diverged_at_step=module.diverged["step"], steps=module.diverged["step"],
                    divergence=module.diverged, timings={"train_s": train_s})
        log.error("training diverged at step %d (non-finite loss: %s); %s is marked diverged",
                  module.diverged["step"], module.diverged["losses"], run_dir)
        return run_dir
    if stop.stopped_at_step is not None or trainer.interrupted or trainer.received_sigterm:
        stopped_by = stop.signal_name or ("SIGTERM" if trainer.received_sigterm else "SIGINT")
        record.save(status="interrupted", stopped_by=stopped_by, steps=trainer.global_step,
                    timings={"train_s": train_s})
        log.warning("training stopped at step %d; continue it with: python scripts/train.py --resume %s",
                    trainer.global_step, run_dir)
        return run_dir
    best = validate_final_model(trainer, module, data, run_dir)
    evaluated = time.perf_counter()
    record.fields.update({
        "status": "completed",
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "val": module.last_metrics,
        "best_val_AP": float(best.best_model_score) if best.best_model_score is not None else None,
        "checkpoints": {"best": _relative(best.best_model_path, run_dir), "last": f"checkpoints/{LAST_CHECKPOINT}"},
        "timings": {
            "data_s": timings["data_s"],
            "train_s": train_s,
            "final_eval_s": round(evaluated - trained, 2),
            "total_s": round(time.perf_counter() - timings["started"] + timings["earlier_train_s"], 2),
        },
    })
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "detections_val.json", module.last_results)
        record.save()
        (run_dir / "checkpoints" / INTERRUPTED_CHECKPOINT).unlink(missing_ok=True)  # superseded
        print(f"\nrun directory: {run_dir}")
        print(format_metrics_table(module.last_metrics))
        print(f"total time: {record.fields['timings']['total_s']:.1f} s")
    return run_dir


# The exit status of scripts/train.py for each way a run ends (README: "Exit status").
# Interrupted: 128 + the signal's number, as a shell reports a process the signal ended.
EXIT_STATUS = {"completed": 0, "failed": 1, "diverged": 3}


def exit_status(run_dir: Path) -> int:
    """scripts/train.py's exit status for the run in ``run_dir``: 0 completed, 3 diverged, 1
    failed, 130 / 143 interrupted by SIGINT / SIGTERM."""
    record = json.loads((run_dir / "metrics.json").read_text())
    if record["status"] == "interrupted":
        return 128 + int(getattr(signal, record.get("stopped_by") or "SIGINT"))
    return EXIT_STATUS.get(record["status"], 1)


def train_from_args(args: argparse.Namespace, argv: list[str]) -> Path:
    """``scripts/train.py``: train with the configuration of its arguments, or continue the run
    of ``--resume`` with that run's own configuration (then no other option may be given)."""
    if not args.resume:
        return train(config_lib.from_args(args), overwrite=args.overwrite)
    given = [a for a in argv if a.startswith("--") and not a.startswith("--resume")]
    if given:
        raise ConfigError(f"--resume continues a run with its own configuration; leave out {', '.join(given)}")
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    cfg = config_lib.load(run_dir / "config.yaml",
                          overrides=[f"train.out_dir={run_dir.parent}", f"train.run_name={run_dir.name}"])
    return train(cfg, resume=True)


def validate_final_model(trainer: pl.Trainer, module: DetectorModule, data: DetectionDataModule,
                         run_dir: Path) -> ModelCheckpoint:
    """Validate the final model unless the last validation inside fit() already did, keep
    best.ckpt truthful (ModelCheckpoint only acts on validations inside fit()), and write the
    final model to last.ckpt (fit() may end between epochs, with max_steps). Returns the best
    checkpoint's callback."""
    best = trainer.checkpoint_callback
    if module.last_metrics_step != trainer.global_step:
        trainer.validate(module, datamodule=data, verbose=False)
        final_ap = module.last_metrics["stats"]["AP"]
        if best.best_model_score is None or final_ap > float(best.best_model_score):
            best.best_model_path = str(run_dir / "checkpoints" / "best.ckpt")
            best.best_model_score = torch.tensor(final_ap)
            trainer.save_checkpoint(best.best_model_path)
    trainer.save_checkpoint(run_dir / "checkpoints" / LAST_CHECKPOINT)
    return best


def set_metrics_csv_aside(run_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing metrics.csv when it opens the folder: a
    resumed run moves it aside (``_merge_metrics_csv`` puts the rows back)."""
    if (run_dir / "metrics.csv").is_file():
        os.replace(run_dir / "metrics.csv", run_dir / EARLIER_METRICS)


EARLIER_METRICS = ".metrics-before-resume.csv"


def _merge_metrics_csv(run_dir: Path, until_step: int) -> None:
    """metrics.csv = the rows logged before the resumed step, then the resumed run's rows."""
    earlier_path, path = run_dir / EARLIER_METRICS, run_dir / "metrics.csv"
    if not earlier_path.is_file():
        return
    earlier = [row for row in read_csv_rows(earlier_path) if row.get("step") and int(row["step"]) < until_step]
    later = read_csv_rows(path)
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
    if status in FINISHED:
        raise ConfigError(f"--resume {run_dir}: the run is {status}; there is nothing to continue")
    candidates = [p for p in (run_dir / "checkpoints" / INTERRUPTED_CHECKPOINT, run_dir / "checkpoints" / LAST_CHECKPOINT)
                  if p.is_file()]
    if not candidates:
        raise ConfigError(f"--resume {run_dir}: the run ({status}) left no checkpoint in {run_dir / 'checkpoints'}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def _relative(path: str, root: Path) -> str | None:
    return str(Path(path).resolve().relative_to(root.resolve())) if path else None
