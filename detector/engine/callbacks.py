"""Lightning callbacks of a training run: the regression-gradient statistics, and stopping
cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import csv
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from detector.model import GRADIENT_COLUMNS

log = logging.getLogger(__name__)

LOGGED_STATISTICS = ("count", "mean", "median", "p90", "p99", "max", "fraction_at_bound")


class GradientStatistics(pl.Callback):
    """At every logging step, the |dl/dx| statistics of the module's gradient probes, one row
    per head (three with outlier labels: all outputs, displaced, clean) appended to ``path``
    (gradients.csv) and flushed, so an interrupted run keeps them, and the same numbers to the
    trainer's loggers (``gradients/<head>/<statistic>``, e.g. ``gradients/box_head/median`` in
    TensorBoard, and ``gradients/<head>/displaced/<statistic>``). At the same steps, the global norm of every
    parameter's gradient before any clipping, ``train/grad_norm`` (what ``train.grad_clip``
    bounds). Only rank 0 writes; a diverged step has no gradients to describe."""

    def __init__(self, path: str | Path, every_n_steps: int):
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self._file = None
        self._writer: csv.DictWriter | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # A resumed run appends under the header its file already has.
        header = self.path.read_text().partition("\n")[0].split(",") if self.path.is_file() else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=header or GRADIENT_COLUMNS, extrasaction="ignore")
        if header is None:
            self._writer.writeheader()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this before it clips: the norm is the one the clip value is compared with.
        step = trainer.global_step
        if self._writer is None or step % self.every_n_steps:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) if grads else 0
        for logger in trainer.loggers:
            logger.log_metrics({"train/grad_norm": float(norm)}, step=step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step - 1  # global_step has advanced past the step the probes saw
        if self._writer is None or step % self.every_n_steps or pl_module.diverged is not None:
            return
        for probe in pl_module.gradient_probes:
            for row in probe.statistics(step):
                self._writer.writerow(row)
                # fraction_at_bound is NaN for a loss without a bound (l2), a group without outputs
                # has no statistics: nothing to plot.
                prefix = f"gradients/{row['head']}" + ("" if row["boxes"] == "all" else f"/{row['boxes']}")
                keys = LOGGED_STATISTICS + (() if row["boxes"] == "all" else ("share",))
                values = {f"{prefix}/{key}": float(row[key]) for key in keys if math.isfinite(row[key])}
                for logger in trainer.loggers:
                    logger.log_metrics(values, step=step)
        self._file.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()  # Lightning skips the teardown hooks when fit() fails

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


class EpochLine(pl.Callback):
    """One log line per training epoch and per validation, where a progress bar would write its
    frames into a file that is not a terminal (a cluster's log, a pipe)."""

    def __init__(self):
        self._started = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        # With train.max_steps the steps, not the epochs, end the run: the line counts those.
        epoch = f"{trainer.current_epoch + 1}" + (f"/{trainer.max_epochs}" if (trainer.max_epochs or 0) > 0 else "")
        step = f"{trainer.global_step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")
        log.info("epoch %s: step %s, loss %s, %.0f s", epoch, step, f"{float(loss):.3f}" if loss is not None else "-",
                 time.perf_counter() - self._started)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ap = trainer.callback_metrics.get("val/AP")
        if ap is not None and not trainer.sanity_checking:
            log.info("validation at step %d: AP %.3f", trainer.global_step, float(ap))


class StopOnSignal(pl.Callback):
    """Ctrl-C, SIGTERM or SLURM's SIGUSR1 / SIGUSR2 asks training to stop after the current step:
    the callback then saves ``checkpoint`` and stops the trainer (the run is marked interrupted);
    a second signal, a second or more later, stops at once (KeyboardInterrupt). ``stopped_at_step``
    says where it stopped, None if it did not; ``signal_name`` which signal asked."""

    # SIGINT: Ctrl-C; SIGTERM: a kill, a cluster's pre-emption; SIGUSR1 / SIGUSR2: what SLURM sends
    # before a job's time limit (submitit asks for USR2, sbatch --signal for any).
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    # A second signal this soon after the first is the same request delivered twice: to every
    # process of a job or cgroup, and passed on by compare.py to its cells. A person's second
    # Ctrl-C comes later.
    SAME_REQUEST_S = 1.0

    def __init__(self, checkpoint: str | Path):
        self.checkpoint = str(checkpoint)
        self.stopped_at_step: int | None = None
        self.signal_name: str | None = None
        self._requested_at: float | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self._requested_at is not None:
            if now - self._requested_at < self.SAME_REQUEST_S:
                return
            raise KeyboardInterrupt
        self._requested_at = now
        self.signal_name = signal.Signals(signum).name
        log.warning("%s: stopping after this step and saving a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.strategy.reduce_boolean_decision(self._requested_at is not None, all=False):  # any rank asked
            # Between two steps the model, optimiser, schedule and loop counters agree, so a
            # checkpoint written here resumes exactly where this run stopped.
            self.stopped_at_step = trainer.global_step
            trainer.save_checkpoint(self.checkpoint, weights_only=False)  # a resumable checkpoint
            trainer.should_stop = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()  # Lightning skips the teardown hooks when fit() fails

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
