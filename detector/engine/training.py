"""One training run: data, model, Lightning Trainer, and the run directory's results
(``engine/rundir.py`` says what the directory holds)."""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from detector.data import error_message
from detector.engine import config as config_lib
from detector.engine import rundir
from detector.engine.build import load_trunk_weights, regression_loss_records, report_data, resolve_classes
from detector.engine.callbacks import GradientStatistics, StopOnSignal
from detector.engine.config import Config, ConfigError
from detector.engine.datamodule import DetectionDataModule
from detector.engine.evaluation import format_metrics_table
from detector.engine.figures import RESULTS, plot_runs
from detector.engine.io import atomic_write_json, atomic_write_text
from detector.engine.module import DetectorModule
from detector.engine.outputs import unique_path
from detector.engine.rundir import RunRecord
from detector.engine.trainers import build_trainer, finish_trackers, resolve_precision
from detector.engine.versions import code_version, describe, library_versions

log = logging.getLogger(__name__)

# The run directory already holds config.yaml and metrics.json when the CSV logger opens it;
# Lightning's warning about a non-empty folder would wrongly suggest something gets lost.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
# A step with a non-finite loss returns None on purpose (divergence stops the run, see module.py).
warnings.filterwarnings("ignore", message=".*`training_step` returned `None`")
# Our samplers resume mid-epoch themselves (detector/data/sampler.py), which Lightning cannot see.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


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
    run_dir = _run_dir(cfg, resume=resume, overwrite=overwrite)
    previous = rundir.read_record(run_dir) if resume else {}
    checkpoint = rundir.resume_checkpoint(run_dir, previous) if resume else None

    # Weights that cannot be had or do not fit, and data that cannot be read, stop here.
    trunk_state = None if resume else load_trunk_weights(cfg.model)
    data = DetectionDataModule(cfg.data, seed=t.seed)
    data.setup("fit")  # reads both datasets and checks every image (the shapes dataset is generated on first use)
    if rank_zero_only.rank == 0:
        report_data(cfg.data, data.train_dataset, data.val_dataset)
    data_ready = time.perf_counter()
    module = DetectorModule.from_config(cfg, data.train_dataset, trunk_state)
    module.val_dataset = data.val_dataset
    stop = StopOnSignal(run_dir / rundir.CHECKPOINTS / rundir.INTERRUPTED)
    gradients = GradientStatistics(run_dir / rundir.GRADIENTS_CSV, t.log_every_n_steps) if t.gradient_stats else None
    trainer = build_trainer(cfg, run_dir, callbacks=[stop, *([gradients] if gradients else [])])
    record = RunRecord(run_dir / rundir.METRICS, enabled=trainer.is_global_zero,
                       status="running", run_dir=str(run_dir), config=config_lib.to_dict(cfg),
                       code=code_version(), libraries=library_versions(),
                       **({"resumed_from": str(checkpoint)} if checkpoint else {}),
                       loss=regression_loss_records(cfg), num_train_images=len(data.train_dataset),
                       num_val_images=len(data.val_dataset), class_names=module.class_names)
    if trainer.is_global_zero and not resume:  # only rank 0 writes the run directory's files
        rundir.make_run_dir(run_dir, overwrite=overwrite)
    for tracker in trainer.loggers[1:]:  # the trackers (the configuration reaches them as hyperparameters)
        tracker.log_hyperparams({"code": describe(record.fields["code"])})
    try:
        if trainer.is_global_zero:
            config_lib.save(cfg, run_dir / rundir.CONFIG)
            if cfg.data.val_fraction > 0:  # the held-out images, by name
                atomic_write_text(run_dir / rundir.VAL_IMAGES, "".join(
                    f"{image['file_name']}\n" for image in data.val_dataset.coco.dataset["images"]))
        record.save()
        if checkpoint is not None:
            data.resume_global_step = rundir.checkpoint_step(checkpoint)
            rundir.prepare_resume(run_dir, data.resume_global_step)
            record.fields["resumed_from_step"] = data.resume_global_step
        return fit_and_record(trainer, module, data, record, checkpoint, stop,
                              timings={"data_s": round(data_ready - started, 2), "started": started,
                                       "earlier_train_s": previous.get("timings", {}).get("train_s", 0.0)})
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))  # a second Ctrl-C: stop at once
        # The cause in one line: an error from a DataLoader worker carries the worker's traceback.
        record.save(status="interrupted" if interrupted else "failed", steps=trainer.global_step,
                    **({"stopped_by": stop.signal_name or "SIGINT"} if interrupted
                       else {"error": f"{type(exc).__name__}: {error_message(exc)}"}))
        if interrupted:
            log.warning("training stopped at once at step %d; continue it with: python scripts/train.py --resume %s",
                        trainer.global_step, run_dir)
        finish_trackers(trainer, failed=True)
        raise
    finally:
        finish_trackers(trainer, failed=False)  # a no-op after the failed=True above


def _run_dir(cfg: Config, *, resume: bool, overwrite: bool) -> Path:
    """The run's directory: train.run_name, or a new timestamped name; a new run's is checked
    (rundir.check_new_run_dir) on rank 0, since the other DDP ranks start once rank 0 has made it."""
    t = cfg.train
    run_dir = Path(t.out_dir) / (t.run_name or rundir.default_run_name(cfg))
    if not resume and rank_zero_only.rank == 0:
        if not t.run_name:
            run_dir = unique_path(run_dir)
            # DDP ranks that Lightning starts later inherit this, and use rank 0's timestamped name.
            os.environ[rundir.RUN_NAME_VARIABLE] = run_dir.name
        rundir.check_new_run_dir(run_dir, overwrite=overwrite)
    return run_dir


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
            rundir.merge_metrics_csv(run_dir, until_step=data.resume_global_step)
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
    stopper = trainer.early_stopping_callback
    if stopper is not None and stopper.stopped_epoch:
        record.fields["stopped_early"] = {"epoch": stopper.stopped_epoch, "patience": stopper.patience,
                                          "best_val_AP": float(stopper.best_score)}
        log.info("early stopping at epoch %d: no better validation AP in %d validations", stopper.stopped_epoch,
                 stopper.patience)
    record.fields.update({
        "status": "completed",
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "val": module.last_metrics,
        "best_val_AP": float(best.best_model_score) if best.best_model_score is not None else None,
        "checkpoints": {"best": _relative(best.best_model_path, run_dir), "last": f"{rundir.CHECKPOINTS}/{rundir.LAST}"},
        "timings": {
            "data_s": timings["data_s"],
            "train_s": train_s,
            "final_eval_s": round(evaluated - trained, 2),
            "total_s": round(time.perf_counter() - timings["started"] + timings["earlier_train_s"], 2),
        },
    })
    if trainer.is_global_zero:
        atomic_write_json(run_dir / rundir.DETECTIONS, module.last_results)
        plot_runs([run_dir], run_dir / RESULTS)
        record.save()
        (run_dir / rundir.CHECKPOINTS / rundir.INTERRUPTED).unlink(missing_ok=True)  # superseded
        print(f"\nrun directory: {run_dir}")
        print(format_metrics_table(module.last_metrics))
        print(f"total time: {record.fields['timings']['total_s']:.1f} s")
    return run_dir


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
            best.best_model_path = str(run_dir / rundir.CHECKPOINTS / rundir.BEST)
            best.best_model_score = torch.tensor(final_ap)
            trainer.save_checkpoint(best.best_model_path, weights_only=False)
    trainer.save_checkpoint(run_dir / rundir.CHECKPOINTS / rundir.LAST, weights_only=False)
    return best


def train_from_args(args: argparse.Namespace, argv: list[str], cfg: Config | None = None) -> Path:
    """``scripts/train.py``: train with the configuration of its arguments (``cfg`` when the
    script has made it already), or continue the run of ``--resume`` with that run's own
    configuration (then no other option may be given)."""
    if not args.resume:
        return train(cfg or config_lib.from_args(args), overwrite=args.overwrite)
    given = [a for a in argv if a.startswith("--") and not a.startswith("--resume")]
    if given:
        raise ConfigError(f"--resume continues a run with its own configuration; leave out {', '.join(given)}")
    run_dir = Path(args.resume)
    if not (run_dir / rundir.CONFIG).is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no {rundir.CONFIG})")
    cfg = config_lib.load(run_dir / rundir.CONFIG,
                          overrides=[f"train.out_dir={run_dir.parent}", f"train.run_name={run_dir.name}"])
    return train(cfg, resume=True)


def _relative(path: str, root: Path) -> str | None:
    return str(Path(path).resolve().relative_to(root.resolve())) if path else None
