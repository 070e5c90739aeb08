"""Outlier labels for the box-noise robustness experiment (``--train-box-noise P``).

A fraction P of all training boxes is replaced, once, by a badly placed copy: the centre moves
by up to one box width / height in each direction and each side is scaled by a factor between
1/2 and 2. The corrupted boxes stay corrupted in every epoch (a wrong label is a property of the
dataset, not of one epoch) and the same boxes are corrupted for every loss and training seed,
so runs that differ only in the loss see identical labels. Validation stays clean.

The textbook argument predicts that L2, whose gradient grows with the residual, is pulled
hardest by such outliers; L1 and smooth L1 bound their gradient at 1.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from detector.data.dataset import ImageRecord

logger = logging.getLogger(__name__)

MAX_CENTRE_SHIFT = 1.0  # in units of the box's own width / height
MAX_LOG2_SCALE = 1.0  # sides scaled by 2**u, u ~ U(-1, 1)


def corrupt_boxes(records: Sequence[ImageRecord], fraction: float, seed: int = 0) -> tuple[list[ImageRecord], int]:
    """Records with exactly ``round(fraction * total boxes)`` boxes displaced, each record's
    ``displaced`` marking them; returns (records, count).

    Displaced centres are clamped to the image, so every box keeps a part inside it and a
    positive width and height after clipping.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"train_box_noise must be a fraction in [0, 1], got {fraction}")
    counts = [len(record.boxes) for record in records]
    total = sum(counts)
    num_corrupt = int(round(fraction * total))
    if num_corrupt == 0:
        return list(records), 0
    rng = np.random.default_rng(seed)
    chosen = np.zeros(total, dtype=bool)
    chosen[rng.permutation(total)[:num_corrupt]] = True
    shift = rng.uniform(-MAX_CENTRE_SHIFT, MAX_CENTRE_SHIFT, size=(total, 2))  # (total, [x, y])
    scale = 2.0 ** rng.uniform(-MAX_LOG2_SCALE, MAX_LOG2_SCALE, size=(total, 2))
    out, start = [], 0
    for record, count in zip(records, counts):
        rows = slice(start, start + count)
        start += count
        mask = chosen[rows]
        if not mask.any():
            out.append(dataclasses.replace(record, displaced=mask.copy()))
            continue
        boxes = record.boxes.astype(np.float64)  # (G, 4) xyxy
        size = boxes[:, 2:] - boxes[:, :2]  # (G, 2) w, h
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + shift[rows] * size
        centre = np.clip(centre, 0, [record.width, record.height])
        half = size * scale[rows] / 2
        moved = np.concatenate([centre - half, centre + half], axis=1)
        moved[:, 0::2] = np.clip(moved[:, 0::2], 0, record.width)
        moved[:, 1::2] = np.clip(moved[:, 1::2], 0, record.height)
        boxes = np.where(mask[:, None], moved, boxes).astype(np.float32)
        out.append(dataclasses.replace(record, boxes=boxes, displaced=mask.copy()))
    logger.info("box noise: displaced %d of %d training boxes (fraction %.3f, seed %d)",
                num_corrupt, total, fraction, seed)
    return out, num_corrupt
