"""From a :class:`~detector.config.DataConfig` to datasets and DataLoaders.

Batches are ``(list of uint8 (3, H, W) images, list of target dicts)``: images keep their own
sizes, and the model normalises and pads them on the device.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from detector.config import DataConfig
from detector.data.coco import CocoDetection, DetectionDataset
from detector.data.noise import corrupt_boxes
from detector.data.sampler import EpochSampler
from detector.data.shapes import ensure_shapes
from detector.data.transforms import DetectionTransform
from detector.data.voc import VocDetection


def build_dataset(cfg: DataConfig, split: str, train: bool) -> DetectionDataset:
    """The dataset of ``split`` (cfg.train_split or cfg.val_split).

    ``train`` enables the random horizontal flip (when cfg.hflip); resizing applies to both.
    The image subset is cfg.max_train_images for the training split and cfg.max_val_images
    for the validation split (``train`` decides when both splits have the same name).
    """
    transform = DetectionTransform(min_size=cfg.min_size, max_size=cfg.max_size, hflip=train and cfg.hflip)
    if split == cfg.train_split and (train or split != cfg.val_split):
        max_images = cfg.max_train_images
    elif split == cfg.val_split:
        max_images = cfg.max_val_images
    else:
        max_images = None
    options = dict(categories=cfg.categories, max_images=max_images, transform=transform,
                   skip_bad_images=cfg.skip_bad_images)
    if cfg.name == "shapes":
        ensure_shapes(cfg.root, image_size=cfg.shapes_image_size, num_train=cfg.shapes_num_train,
                      num_val=cfg.shapes_num_val, seed=cfg.shapes_seed)
        dataset = CocoDetection(cfg.root, split, **options)
    elif cfg.name == "coco":
        dataset = CocoDetection(cfg.root, split, **options)
    elif cfg.name == "voc":
        dataset = VocDetection(cfg.root, split, **options)
    else:
        raise ValueError(f"unknown dataset '{cfg.name}'; valid names: shapes, coco, voc")
    if train and cfg.train_box_noise > 0:
        dataset.records, _ = corrupt_boxes(dataset.records, cfg.train_box_noise, cfg.train_box_noise_seed)
    return dataset


def collate(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """[(image, target), ...] -> ([image, ...], [target, ...]); no stacking, sizes may differ."""
    images, targets = zip(*batch)
    return list(images), list(targets)


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
        if self.cfg.name == "shapes":
            ensure_shapes(self.cfg.root, image_size=self.cfg.shapes_image_size,
                          num_train=self.cfg.shapes_num_train, num_val=self.cfg.shapes_num_val,
                          seed=self.cfg.shapes_seed)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = build_dataset(self.cfg, self.cfg.train_split, train=True)
        if self.val_dataset is None:
            self.val_dataset = build_dataset(self.cfg, self.cfg.val_split, train=False)

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
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.cfg.num_workers > 0,
        )
