"""The shared dataset of every reader: image records, cleaned training boxes, a pycocotools
ground truth, decoding and transforms.

Shape letters as in the ``detector`` package docstring (G: boxes of one image).

Every dataset carries two views of the same annotations:
- training targets per image: crowd / difficult objects removed, boxes clipped to the image,
  boxes with no width or height dropped, categories mapped to contiguous labels 1..K;
- ``coco``: an in-memory pycocotools ground truth restricted to this dataset's images and
  categories, with crowd annotations kept (COCOeval ignores detections matched to them), which
  the evaluator hands to COCOeval unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from detector.data.errors import DataError
from detector.data.images import load_image

logger = logging.getLogger(__name__)

# A side beyond PNG's limit (JPEG stops at 65535) is a corrupt value, not an image.
MAX_IMAGE_SIDE = 2**31 - 1


# (image, boxes, generator for random choices) -> (image, boxes, scale)
Transform = Callable[[Tensor, Tensor, "torch.Generator | None"], tuple[Tensor, Tensor, float]]


@dataclass(frozen=True)
class ImageRecord:
    """One image and its training targets (crowd / difficult objects already left out)."""

    path: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray  # (G, 4) float32 xyxy, absolute pixels of the stored image (readers may pass float64)
    labels: np.ndarray  # (G,) int64 in 1..K
    displaced: np.ndarray | None = None  # (G,) bool: outlier labels (data/noise.py); None without box noise


class DetectionDataset(Dataset):
    """Images decoded to uint8 (3, H, W) plus targets; see ``__getitem__`` for the format.

    Subclasses parse their annotation format into ``records`` and a COCO-format ground-truth
    dict; this class cleans the training boxes, builds the pycocotools object and decodes.
    ``source`` is the annotation file that log lines and errors name.
    """

    def __init__(
        self,
        *,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        label_to_category_id: dict[int, int],
        coco_dataset: dict[str, Any],
        transform: Transform | None,
        source: str,
    ):
        self.records = _clean_boxes(records, source)
        self.source = source
        self.class_names = list(class_names)
        self.label_to_category_id = dict(label_to_category_id)
        self.image_ids = [record.image_id for record in self.records]
        self.transform = transform
        self._stored_pixels: set[int] = set()  # indices of images annotated without their EXIF orientation
        self.coco = COCO()
        self.coco.dataset = coco_dataset
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
            self.coco.createIndex()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        """``key``: an index, or (index, draw) from :class:`~detector.data.sampler.EpochSampler`,
        whose draw seeds this image's random augmentation. Returns image uint8 (3, H, W) and a
        target dict:

        boxes float32 (G, 4) xyxy in pixels of the returned image; labels int64 (G,) in 1..K;
        image_id (the id in ``coco``); scale (returned size / stored size, 1.0 without
        resizing); orig_size (h, w) of the stored image; with box noise, displaced bool (G,):
        the boxes that are outlier labels.
        """
        index, draw = key if isinstance(key, tuple) else (key, None)
        record = self.records[index]
        try:
            image = load_image(record.path, exif_orientation=index not in self._stored_pixels)
            if tuple(image.shape[-2:]) == (record.width, record.height) != (record.height, record.width):
                # A photo that its EXIF orientation turns by a quarter, annotated on its stored
                # pixels (LabelImg ignores the tag; its <size> is the stored one): read those.
                # Remembered, so that the image is decoded once per epoch (per worker process).
                self._stored_pixels.add(index)
                image = load_image(record.path, exif_orientation=False)
        except DataError as exc:
            raise DataError(f"{exc} (set data.skip_bad_images=true to leave out such images)") from None
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise DataError(
                f"{record.path}: image is {image.shape[-1]}x{image.shape[-2]} pixels but "
                f"{self.annotation_file(record)} says {record.width}x{record.height}"
            )
        boxes = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)  # a copy: never alias the records
        scale = 1.0
        if self.transform is not None:
            generator = torch.Generator().manual_seed(draw) if draw is not None else None
            image, boxes, scale = self.transform(image, boxes, generator)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(record.labels, dtype=torch.int64),
            "image_id": record.image_id,
            "scale": scale,
            "orig_size": (record.height, record.width),
        }
        if record.displaced is not None:
            target["displaced"] = torch.tensor(record.displaced, dtype=torch.bool)
        return image, target

    def annotation_file(self, record: ImageRecord) -> str:
        """The file that holds ``record``'s annotations."""
        return self.source

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {len(self.class_names)} classes, "
                f"transform={self.transform!r})")


def collate(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """[(image, target), ...] -> ([image, ...], [target, ...]); no stacking, sizes may differ."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def select_categories(requested: Sequence[str], available: Sequence[str], source: str) -> set[str]:
    """Validate a category subset by name; empty means all. Errors list the valid names."""
    if not requested:
        return set(available)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise DataError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
            f"for {source}; valid names: {', '.join(available)}"
        )
    return set(requested)



@dataclass(frozen=True)
class Holdout:
    """One part of a seeded division of a split's images into training and held-out validation
    images (for datasets that come without a validation split).

    The division depends only on the image names, ``fraction`` and ``seed``: names sorted, a
    permutation drawn from ``numpy.random.default_rng(seed)``, and its first round(fraction * n)
    positions (at least 1, at most n - 1) held out. The two parts never overlap and together
    hold every image; listing the files in another order gives the same division.
    """

    fraction: float
    seed: int
    part: str  # "train" or "val"

    def select(self, names: Sequence[str], source: str) -> list[int]:
        """Indices (ascending) of the ``names`` that belong to this part."""
        if not 0 < self.fraction < 1 or self.part not in ("train", "val"):
            raise ValueError(f"Holdout needs a fraction in (0, 1) and part train or val; got {self!r}")
        count = len(names)
        if count < 2:
            raise DataError(f"{source}: cannot hold out a fraction of {count} image(s) for validation")
        held_count = min(max(math.floor(self.fraction * count + 0.5), 1), count - 1)
        order = sorted(range(count), key=lambda index: names[index])
        held = {order[i] for i in np.random.default_rng(self.seed).permutation(count)[:held_count]}
        return [index for index in range(count) if (index in held) == (self.part == "val")]


def part_source(source: str, holdout: Holdout | None) -> str:
    """``source`` for messages about a dataset's images: with the held-out part named, if any."""
    if holdout is None:
        return source
    if holdout.part == "val":
        return f"{source} (the {holdout.fraction:.0%} held out for validation)"
    return f"{source} (the {1 - holdout.fraction:.0%} kept for training)"


def _clean_boxes(records: Sequence[ImageRecord], source: str) -> list[ImageRecord]:
    """Clip training boxes to their image and drop those with no width or height.

    Dropped boxes are counted and reported in one warning per dataset, naming the files.
    """
    cleaned, dropped, files = [], 0, []
    for record in records:
        # Clipped in float64: a huge coordinate would overflow float32 to inf.
        boxes = record.boxes.astype(np.float64)
        np.clip(boxes[:, 0::2], 0, record.width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, record.height, out=boxes[:, 1::2])
        boxes = boxes.astype(np.float32)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not valid.all():
            dropped += int((~valid).sum())
            files.append(os.path.basename(record.path))
        cleaned.append(ImageRecord(record.path, record.image_id, record.height, record.width,
                                   boxes[valid], record.labels[valid]))
    if dropped:
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        logger.warning("%s: left %d boxes with zero or negative width or height (after clipping to the "
                       "image) out of the targets, in %s; the ground truth keeps them", source, dropped, shown)
    return cleaned
