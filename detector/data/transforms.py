"""Geometric transforms of a uint8 image together with its boxes.

Tensor shapes: image (3, H, W) uint8; boxes (G, 4) float32 xyxy in absolute pixels of that image.
Only resizing and horizontal flipping are needed: photometric normalisation happens on the
device inside the model, so workers ship compact uint8 tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F


def resize_scale(height: int, width: int, min_size: int | None, max_size: int | None) -> float:
    """Scale factor of torchvision's GeneralizedRCNNTransform: shorter side to ``min_size``,
    reduced so that the longer side does not exceed ``max_size``; 1.0 when both are None."""
    scale = 1.0 if min_size is None else min_size / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


def resized_size(height: int, width: int, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    """(height, width) after :func:`resize`: ``floor(side * scale)`` as in torchvision (the
    epsilon keeps e.g. 97 * (800 / 97) from flooring to 799)."""
    scale = resize_scale(height, width, min_size, max_size)
    return math.floor(height * scale + 1e-6), math.floor(width * scale + 1e-6)


def resize(image: Tensor, boxes: Tensor, min_size: int | None, max_size: int | None) -> tuple[Tensor, Tensor, float]:
    """Resize ``image`` (antialiased) and its boxes to :func:`resized_size`; returns (image,
    boxes, scale).

    Boxes are scaled by the exact per-axis ratio new_size / old_size, which differs from
    ``scale`` by less than one pixel over the image, so they stay aligned with the resized pixels.
    """
    height, width = image.shape[-2:]
    scale = resize_scale(height, width, min_size, max_size)
    new_height, new_width = resized_size(height, width, min_size, max_size)
    if (new_height, new_width) == (height, width):
        return image, boxes, scale
    image = F.resize(image, [new_height, new_width], antialias=True)
    # Multiply before dividing: whole-pixel coordinates then scale exactly (97 * 800 / 97 = 800).
    new_sizes = torch.tensor([new_width, new_height] * 2, dtype=boxes.dtype)
    old_sizes = torch.tensor([width, height] * 2, dtype=boxes.dtype)
    return image, boxes * new_sizes / old_sizes, scale


def boxes_to_original(boxes: Tensor, size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
    """Boxes (D, 4) in pixels of an image that ``resize`` made ``size`` (h, w) -> pixels of the
    original image of ``original_size`` (h, w), where the ground truth and the user's file are.
    Per axis: resizing rounds each side, so one scalar scale would be off by up to a pixel."""
    (height, width), (original_height, original_width) = size, original_size
    return boxes * boxes.new_tensor([original_width / width, original_height / height] * 2)


def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror the image left-right; a box [x1, x2] becomes [W - x2, W - x1]."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


class DetectionTransform:
    """Resize, then (when ``hflip``) mirror with probability 0.5.

    The coin flip draws from ``generator``, which the dataset seeds per image and epoch from
    the sampler (detector/data/sampler.py), so it does not depend on worker processes; without
    one it draws from torch's global generator.
    """

    def __init__(self, *, min_size: int | None = None, max_size: int | None = None, hflip: bool = False):
        self.min_size = min_size
        self.max_size = max_size
        self.hflip = hflip

    def __call__(self, image: Tensor, boxes: Tensor,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, float]:
        image, boxes, scale = resize(image, boxes, self.min_size, self.max_size)
        if self.hflip and torch.rand((), generator=generator) < 0.5:
            image, boxes = hflip(image, boxes)
        return image, boxes, scale

    def __repr__(self) -> str:
        return f"DetectionTransform(min_size={self.min_size}, max_size={self.max_size}, hflip={self.hflip})"
