"""Box arithmetic: the project's one IoU, clipping, and the delta parametrisation.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels (conventions and shape letters: the
``detector`` package docstring). Candidates (anchors or proposals) take the letter R here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...); degenerate boxes have area 0, never negative."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _intersection_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union areas of boxes that broadcast against each other: (..., 4)."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(boxes1) + box_area(boxes2) - inter


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair within each image: (N, R, 4), (N, G, 4) -> (N, R, G).

    torchvision.ops.box_iou is pairwise over two flat sets; batching it over images lets the
    matcher label all anchors of a batch in one pass instead of a Python loop per image.
    Zero-area pairs (padding against padding) would give 0/0: their IoU is 0.
    """
    inter, union = _intersection_union(boxes1[:, :, None, :], boxes2[:, None, :, :])  # (N, R, G)
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of two flat sets: (M1, 4), (M2, 4) -> (M1, M2)."""
    return batched_box_iou(boxes1[None], boxes2[None])[0]


def paired_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    """IoU of row-wise pairs, (M, 4), (M, 4) -> (M,), as the IoU losses define it:
    inter / (union + eps), differentiable everywhere."""
    inter, union = _intersection_union(boxes1, boxes2)
    return inter / (union + eps)


def enclosing_box(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """The smallest box holding both boxes of each row-wise pair: (M, 4), (M, 4) -> (M, 4)."""
    return torch.cat((torch.minimum(boxes1[..., :2], boxes2[..., :2]),
                      torch.maximum(boxes1[..., 2:], boxes2[..., 2:])), dim=-1)


def clip_boxes(boxes: Tensor, height: Tensor | float, width: Tensor | float) -> Tensor:
    """Clip (..., 4) boxes to [0, width] x [0, height].

    ``height``/``width`` may be tensors broadcastable to ``boxes[..., 0]`` (per-image sizes).
    """
    x = boxes[..., 0::2].clamp(min=0)
    y = boxes[..., 1::2].clamp(min=0)
    width = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    height = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    x = torch.minimum(x, width[..., None] if width.dim() else width)
    y = torch.minimum(y, height[..., None] if height.dim() else height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


class BoxCoder:
    """Encode boxes as deltas (dx, dy, dw, dh) relative to reference boxes, and back.

    The parametrisation of Faster R-CNN, identical to torchvision's ``BoxCoder``: centre
    offsets in units of the reference size times ``weights[0:2]``, log size ratios times
    ``weights[2:4]``. ``scale_clamp`` caps dw/dh before ``exp`` so an early, wild prediction
    cannot overflow (torchvision's value, log(1000/16)).
    """

    def __init__(self, *, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = math.log(1000.0 / 16)):
        self.weights = weights
        self.scale_clamp = scale_clamp

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """(..., 4) target boxes and (..., 4) references -> (..., 4) deltas."""
        wx, wy, ww, wh = self.weights
        ref_x, ref_y, ref_w, ref_h = _centre_and_size(reference)
        x, y, w, h = _centre_and_size(boxes)
        return torch.stack(
            (wx * (x - ref_x) / ref_w, wy * (y - ref_y) / ref_h,
             ww * torch.log(w / ref_w), wh * torch.log(h / ref_h)),
            dim=-1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """(..., 4) deltas and (..., 4) references -> (..., 4) boxes."""
        wx, wy, ww, wh = self.weights
        ref_x, ref_y, ref_w, ref_h = _centre_and_size(reference)
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        x = dx * ref_w + ref_x
        y = dy * ref_h + ref_y
        half_w = 0.5 * torch.exp(dw) * ref_w
        half_h = 0.5 * torch.exp(dh) * ref_h
        return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=-1)


def _centre_and_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(..., 4) xyxy -> centre x, centre y, width, height, each (...)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h
