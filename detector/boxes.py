"""Box conventions and box arithmetic.

Conventions used everywhere inside the model:
- boxes are ``(x1, y1, x2, y2)`` in absolute pixels of the padded network input;
- COCO ``(x, y, w, h)`` appears only at the evaluation boundary (``evaluation.py``);
- class label 0 is background, 1..K are foreground classes, -1 marks an ignored element.

Shapes: N images, R boxes per image (anchors or proposals), G ground-truth boxes per image
(padded to the batch's maximum, with a validity mask).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...); degenerate boxes have area 0, never negative."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair within each image: (N, R, 4), (N, G, 4) -> (N, R, G).

    torchvision.ops.box_iou is pairwise over two flat sets; batching it over images lets the
    matcher label all anchors of a batch in one pass instead of a Python loop per image.
    """
    area1 = box_area(boxes1)  # (N, R)
    area2 = box_area(boxes2)  # (N, G)
    top_left = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])  # (N, R, G, 2)
    bottom_right = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, R, G)
    union = area1[:, :, None] + area2[:, None, :] - inter
    # Zero-area pairs (padding against padding) would give 0/0: define their IoU as 0.
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


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
        ref_w = reference[..., 2] - reference[..., 0]
        ref_h = reference[..., 3] - reference[..., 1]
        ref_x = reference[..., 0] + 0.5 * ref_w
        ref_y = reference[..., 1] + 0.5 * ref_h
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        x = boxes[..., 0] + 0.5 * w
        y = boxes[..., 1] + 0.5 * h
        return torch.stack(
            (wx * (x - ref_x) / ref_w, wy * (y - ref_y) / ref_h,
             ww * torch.log(w / ref_w), wh * torch.log(h / ref_h)),
            dim=-1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """(..., 4) deltas and (..., 4) references -> (..., 4) boxes."""
        wx, wy, ww, wh = self.weights
        ref_w = reference[..., 2] - reference[..., 0]
        ref_h = reference[..., 3] - reference[..., 1]
        ref_x = reference[..., 0] + 0.5 * ref_w
        ref_y = reference[..., 1] + 0.5 * ref_h
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        x = dx * ref_w + ref_x
        y = dy * ref_h + ref_y
        half_w = 0.5 * torch.exp(dw) * ref_w
        half_h = 0.5 * torch.exp(dh) * ref_h
        return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=-1)
