"""The LightningDataModule: datasets of a :class:`~detector.engine.config.DataConfig` and their
DataLoaders.

Batches are ``(list of uint8 (3, H, W) images, list of target dicts)``: images keep their own
sizes, and the model normalises and pads them on the device.
"""

from __future__ import annotations

import signal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from detector.data import DetectionDataset, EpochSampler, collate
from detector.engine.build import build_splits, ensure_generated
from detector.engine.callbacks import StopOnSignal
from detector.engine.config import DataConfig


class DetectionDataModule(pl.LightningDataModule):
    """Training (flip + resize) and validation (resize only) datasets and their loaders."""

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.seed = seed  # the training order and flips are functions of (seed, epoch)
        self.train_dataset: DetectionDataset | None = None
        self.val_dataset: DetectionDataset | None = None
        # Set when resuming: the epoch in progress skips the batches already trained on.
        self.resume_global_step = 0

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before setup() runs on every rank, so
        # the shapes dataset is generated once instead of by every DDP rank at the same time.
        ensure_generated(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        fit = stage in (None, "fit")
        if self.val_dataset is None or (fit and self.train_dataset is None):
            self.train_dataset, self.val_dataset = build_splits(self.cfg, train=fit)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_dataset, shuffle=True)
        steps_per_epoch = len(loader)
        if self.resume_global_step % steps_per_epoch:
            loader.sampler.skip_next(self.resume_global_step % steps_per_epoch * self.cfg.batch_size)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def _loader(self, dataset: DetectionDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("DetectionDataModule.setup() must run before its dataloaders are requested")
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=self.seed, rank=rank, world_size=world_size),
            # Creating an iterator draws a seed from this generator; from the global one it would
            # shift the samplers' random stream by a draw per epoch, and a resumed run's with it.
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=False,
            num_workers=self.cfg.num_workers,
            collate_fn=collate,
            worker_init_fn=leave_stop_signals_to_the_trainer,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.cfg.num_workers > 0,
        )


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """In a DataLoader worker, ignore the signals with which StopOnSignal stops training. SLURM
    signals every process of a job (SIGTERM, and USR1/USR2 before the time limit), as does a kill
    of the process group: by default each of them killed the worker, and the run failed instead
    of stopping after its step with a checkpoint. Workers still end when the loader closes or the
    main process dies (torch watches it). SIGINT is ignored as well: Ctrl-C reaches the whole
    foreground group, and the trainer is the one to answer it."""
    for signum in StopOnSignal.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
