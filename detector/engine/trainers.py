"""How runs execute: the precision policy, and the Lightning Trainers of training and of
evaluation (``train.accelerator``, ``devices``, ``num_nodes``, ``strategy``, ``precision``)."""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any, ContextManager

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from detector.engine import rundir
from detector.engine.callbacks import EpochLine
from detector.engine.config import Config, ConfigError
from detector.engine.io import atomic_path

log = logging.getLogger(__name__)


class _NoAdvertisement(logging.Filter):
    """Lightning's tip to install a cloud logger, logged at every Trainer's start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdvertisement())
# Lightning 2.6 with torch 2.14 warns about its own use of torch's pytree at every fit; harmless.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# Where SLURM is installed, every Trainer outside a job suggests srun; a cell of a cluster matrix
# is a job of its own (lab/cluster.py).
warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")


def autocast(device: str, precision: str) -> ContextManager:
    """Autocast as a resolved ``train.precision`` trains: bf16 or fp16 mixed precision, or none (fp32)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast(device.split(":")[0], dtype=dtype) if dtype else contextlib.nullcontext()


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


MLFLOW_STORE = "mlruns.db"  # train.logger=mlflow's store in train.out_dir without $MLFLOW_TRACKING_URI


def build_loggers(cfg: Config, run_dir: Path) -> list[Logger]:
    """metrics.csv always (the comparison report reads it), and the tracker of train.logger:
    TensorBoard event files in the run directory (``tensorboard --logdir runs`` shows every run
    under its directory's name); MLflow, in $MLFLOW_TRACKING_URI or else an SQLite store beside
    the run directories (``<out_dir>/mlruns.db``; MLflow 3 no longer writes its old file store;
    ``mlflow ui --backend-store-uri sqlite:///runs/mlruns.db`` shows it), experiment "detector",
    the run named as its directory; Weights & Biases, project "detector", offline (synced later with ``wandb sync``)
    unless WANDB_MODE says otherwise or its server cannot be reached. Each gets the losses,
    learning rate, AP, gradient statistics, the configuration and the code version."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if cfg.train.logger == "tensorboard":
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False))
    elif cfg.train.logger == "mlflow":
        from pytorch_lightning.loggers import MLFlowLogger

        # Its store's set-up lines ("Creating initial MLflow database tables...") on every new store.
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir.parent / MLFLOW_STORE).resolve()}"
        loggers.append(MLFlowLogger(experiment_name="detector", run_name=run_dir.name, tracking_uri=uri))
    elif cfg.train.logger == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        offline = os.environ.get("WANDB_MODE", "online" if _wandb_can_sync() else "offline") != "online"
        loggers.append(WandbLogger(project="detector", name=run_dir.name, save_dir=str(run_dir), offline=offline))
    return loggers


def finish_trackers(trainer: pl.Trainer, *, failed: bool) -> None:
    """Close a W&B run (Lightning leaves it open until the interpreter exits, and the next
    train() in the same process would log into it); the other loggers close themselves."""
    from pytorch_lightning.loggers import WandbLogger

    for tracker in trainer.loggers:
        if isinstance(tracker, WandbLogger):
            tracker.experiment.finish(exit_code=1 if failed else 0)  # a second finish() does nothing


def _wandb_can_sync(host: str = "api.wandb.ai", timeout_s: float = 2.0) -> bool:
    """Logged in (an API key in $WANDB_API_KEY or ~/.netrc, where ``wandb login`` puts it) and
    the server reachable: otherwise an online run would stop to ask for a key, or wait on the
    network."""
    try:
        logged_in = bool(os.environ.get("WANDB_API_KEY")) or netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def build_trainer(cfg: Config, run_dir: Path, *, callbacks: list | None = None) -> pl.Trainer:
    """The training Trainer: best and last checkpoints, the learning rate, a progress bar."""
    t = cfg.train
    checkpoints = run_dir / rundir.CHECKPOINTS
    bar = t.progress and sys.stderr.isatty()  # elsewhere a line per epoch (EpochLine), not a bar's frames
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
            ModelCheckpoint(dirpath=checkpoints, filename=Path(rundir.BEST).stem, monitor="val/AP", mode="max",
                            auto_insert_metric_name=False, enable_version_counter=False),
            # last.ckpt at the end of every epoch. ModelCheckpoint(save_last=True) rewrites it only
            # when a new best was saved in the same step (Lightning 2.6), which left it at an older
            # epoch whenever the final validation was not the best.
            ModelCheckpoint(dirpath=checkpoints, filename=Path(rundir.LAST).stem, monitor=None, save_top_k=1,
                            auto_insert_metric_name=False, enable_version_counter=False),
            LearningRateMonitor(logging_interval="step"),
            *([EarlyStopping(monitor="val/AP", mode="max", patience=t.patience, check_on_train_epoch_end=False)]
              if t.patience else []),
            *([TQDMProgressBar(refresh_rate=5)] if bar else [EpochLine()] if t.progress else []),
            *(callbacks or []),
        ],
        enable_progress_bar=bar,
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
                    enable_progress_bar=t.progress and sys.stderr.isatty(), enable_model_summary=False)


def _trainer(**options: Any) -> pl.Trainer:
    """A Trainer; Lightning refusing the train.* options (a GPU asked for where there is none, an
    unknown strategy) is a user error, reported before anything is written."""
    try:
        return pl.Trainer(**options)
    except (MisconfigurationException, ValueError) as exc:
        raise ConfigError(f"the Trainer options (train.accelerator, train.devices, train.num_nodes, train.strategy, "
                          f"train.precision) cannot be used here: {exc}") from None
