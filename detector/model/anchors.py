"""Grid anchors for one feature map, and their non-zero IoUs with ground truth.

Shape letters as in the ``detector`` package docstring; the R = H * W * A anchors of an image
are ordered location-major, the order the RPN head's outputs are flattened in:
``(N, A*4, H, W) -> (N, H*W*A, 4)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class AnchorGenerator:
    """Anchors of every size and aspect ratio centred on each cell of a stride-``stride`` grid.

    Aspect ratio is height / width at constant area, as in torchvision. Anchors are centred
    on ``(i + offset) * stride``: the cell centre with the default offset 0.5, the cell corner
    ``i * stride`` of torchvision and detectron2 with 0. They are cached per
    (grid size, device, dtype): the grid of a batch only changes with the padded input size.
    """

    def __init__(self, *, sizes: list[int], aspect_ratios: list[float], stride: int, offset: float = 0.5):
        self.sizes = list(sizes)
        self.aspect_ratios = list(aspect_ratios)
        self.stride = stride
        self.offset = offset
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def base_anchors(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """(A, 4) anchors centred on (0, 0), ratio-major as torchvision orders them."""
        sizes = torch.as_tensor(self.sizes, dtype=dtype, device=device)
        ratios = torch.as_tensor(self.aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        widths = (w_ratios[:, None] * sizes[None, :]).reshape(-1)  # (A,)
        heights = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
        return torch.stack((-widths, -heights, widths, heights), dim=1) / 2

    def grid_anchors(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(H*W*A, 4) anchors for an H x W feature map, in input-image pixels."""
        key = (height, width, str(device), dtype)
        if key not in self._cache:
            centres_x, centres_y = self._centres(width, dtype, device), self._centres(height, dtype, device)
            cy, cx = torch.meshgrid(centres_y, centres_x, indexing="ij")  # (H, W)
            shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
            base = self.base_anchors(dtype, device)[None]  # (1, A, 4)
            self._cache[key] = (shifts + base).reshape(-1, 4)
        return self._cache[key]

    def nonzero_iou(self, boxes: Tensor, gt_valid: Tensor, height: int, width: int,
                    low_threshold: float | None = None) -> "AnchorOverlaps":
        """Every non-zero IoU between the anchors of an H x W grid and the valid boxes of each
        image, as flat lists: boxes (N, G, 4), gt_valid (N, G) -> E (anchor, box, IoU) entries,
        anchors numbered as the R = H*W*A anchors of ``grid_anchors``. Each value is
        computed with the expression of ``batched_box_iou``, so it is equal bit for bit. Indices
        are flat over the batch (see :class:`AnchorOverlaps`).

        Hand-written, rather than ``boxes.batched_box_iou``, because the dense (N, R, G) IoU is
        the largest tensor of a training step (16 x 200k x 20 on COCO-sized images) and almost
        all of it is zero (with the sparse matching, target assignment is 9.2x torchvision's
        at batch 16, reports/benchmark.json): a box overlaps only
        a window of rows and columns. An anchor's x-extent depends only on its column and type
        and its y-extent only on its row and type, so the overlaps are computed per (N, G, A)
        on rows and columns, and the IoU only inside each window. The windows' total size is
        data-dependent: reading it is one host synchronisation per step (as NMS is anyway).

        With ``low_threshold`` (the matcher's background threshold), a (box, anchor type) pair
        is skipped when its area ratio bounds every IoU below both that threshold and the best
        IoU found so far for every box of the image (one exact entry per pair). Such entries
        are background, are no box's best, and are below any promoted anchor's best, so the
        matching is unchanged: small anchors inside large boxes mostly drop out.
        """
        n, g = boxes.shape[:2]
        a = self.num_anchors_per_location
        dtype, device = boxes.dtype, boxes.device
        base = self.base_anchors(dtype, device)  # (A, 4), centred on (0, 0)
        centres_x, centres_y = self._centres(width, dtype, device), self._centres(height, dtype, device)  # (W,), (H,)
        # The same sums grid_anchors makes (centre + offset), so every coordinate is identical.
        x1, x2 = base[:, 0, None] + centres_x, base[:, 2, None] + centres_x  # (A, W)
        y1, y2 = base[:, 1, None] + centres_y, base[:, 3, None] + centres_y  # (A, H)
        bx1, by1, bx2, by2 = (boxes[:, :, None, None, k] for k in range(4))  # (N, G, 1, 1)
        overlap_x = (torch.minimum(x2, bx2) - torch.maximum(x1, bx1)).clamp(min=0)  # (N, G, A, W)
        overlap_y = (torch.minimum(y2, by2) - torch.maximum(y1, by1)).clamp(min=0)  # (N, G, A, H)
        # Each box's non-zero overlaps form one contiguous window of columns and of rows.
        cols, rows = (overlap_x > 0).sum(-1), (overlap_y > 0).sum(-1)  # (N, G, A)
        col0, row0 = (overlap_x > 0).int().argmax(-1), (overlap_y > 0).int().argmax(-1)  # first in window
        box_area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)  # (N, G)
        keep = gt_valid[:, :, None] & (rows > 0) & (cols > 0)  # (N, G, A)
        if low_threshold is not None:
            keep &= self._may_matter(overlap_x, overlap_y, x1, x2, y1, y2, box_area, gt_valid, low_threshold)
        count = (rows * cols * keep).flatten()  # (N*G*A,) entries per (image, box, anchor type) slot
        total = int(count.sum())  # the one host synchronisation
        slot = torch.repeat_interleave(torch.arange(count.numel(), device=device), count, output_size=total)  # (E,)
        offset = torch.arange(total, device=device) - (torch.cumsum(count, 0) - count)[slot]
        slot_cols = cols.flatten()[slot]
        row = row0.flatten()[slot] + torch.div(offset, slot_cols, rounding_mode="floor")  # (E,)
        col = col0.flatten()[slot] + (offset - torch.div(offset, slot_cols, rounding_mode="floor") * slot_cols)
        kind = slot % a
        # IoU as batched_box_iou computes it: inter / (area1 + area2 - inter), with the areas
        # and overlaps of the same coordinates. Flat takes: one index per gather.
        inter = overlap_x.flatten().take(slot * width + col) * overlap_y.flatten().take(slot * height + row)
        anchor_area = ((x2 - x1).clamp(min=0).flatten().take(kind * width + col)
                       * (y2 - y1).clamp(min=0).flatten().take(kind * height + row))
        box = slot // a  # (E,) box index in the batch: image * G + box
        iou = inter / (anchor_area + box_area.flatten().take(box) - inter).clamp(min=torch.finfo(dtype).tiny)
        candidate = box // g * (height * width * a) + (row * width + col) * a + kind  # image * R + anchor
        return AnchorOverlaps(candidate, box, iou)

    def _centres(self, count: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """(count,) anchor centres along one axis of the grid, in pixels."""
        return (torch.arange(count, dtype=dtype, device=device) + self.offset) * self.stride

    @staticmethod
    def _may_matter(overlap_x: Tensor, overlap_y: Tensor, x1: Tensor, x2: Tensor, y1: Tensor, y2: Tensor,
                    box_area: Tensor, gt_valid: Tensor, low_threshold: float) -> Tensor:
        """(N, G, A) mask of the (box, anchor type) pairs whose entries may change a match."""
        # One exact IoU per pair: at the row and column of largest overlap, as nonzero_iou computes it.
        col, row = overlap_x.argmax(-1, keepdim=True), overlap_y.argmax(-1, keepdim=True)  # (N, G, A, 1)
        inter = (overlap_x.gather(-1, col) * overlap_y.gather(-1, row)).squeeze(-1)  # (N, G, A)
        kinds = torch.arange(x1.shape[0], device=x1.device)  # (A,)
        anchor_area = (x2 - x1).clamp(min=0)[kinds, col.squeeze(-1)] * (y2 - y1).clamp(min=0)[kinds, row.squeeze(-1)]
        union = (anchor_area + box_area[..., None] - inter).clamp(min=torch.finfo(inter.dtype).tiny)
        found = (inter / union).amax(-1).masked_fill(~gt_valid, float("inf"))  # (N, G) a lower bound of each best
        floor = torch.minimum(found.amin(-1), torch.tensor(low_threshold, dtype=found.dtype, device=found.device))  # (N,)
        # Upper bound of every IoU of a pair: min(area) / max(area), widened for rounding.
        area = (x2 - x1)[:, 0] * (y2 - y1)[:, 0]  # (A,) anchor areas
        bound = torch.minimum(area, box_area[..., None]) / torch.maximum(area, box_area[..., None]).clamp(
            min=torch.finfo(area.dtype).tiny) * (1 + 1e-5)  # (N, G, A)
        return bound >= floor[:, None, None]


class AnchorOverlaps(NamedTuple):
    """Non-zero anchor-box IoUs as E flat entries (see ``AnchorGenerator.nonzero_iou``)."""

    candidate: Tensor  # (E,) anchor index in the batch: image * R + anchor
    box: Tensor  # (E,) ground-truth index in the batch: image * G + box
    iou: Tensor  # (E,) > 0
