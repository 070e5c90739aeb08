"""Batched target assignment: matching boxes to ground truth and balanced sampling.

Shapes: N images, R candidates per image (anchors or proposals), G ground-truth boxes per
image padded to the batch maximum, with ``gt_valid`` (N, G) marking the real ones.

torchvision, detectron2 and MMDetection match and sample one image at a time in Python; here
one (N, R, G) IoU tensor labels the whole batch and sampling is a top-k over random keys, so
the training step has no per-image loop and no host-device synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.boxes import batched_box_iou

BELOW_LOW_THRESHOLD = -1  # IoU below the background threshold: background
BETWEEN_THRESHOLDS = -2  # IoU between the thresholds: ignored


def match(iou: Tensor, gt_valid: Tensor, *, high_threshold: float, low_threshold: float,
          allow_low_quality_matches: bool) -> Tensor:
    """Assign each candidate its best ground truth, with torchvision ``Matcher`` semantics.

    iou: (N, R, G); gt_valid: (N, G) bool. Returns (N, R) int64: the matched ground-truth
    index, ``BELOW_LOW_THRESHOLD`` or ``BETWEEN_THRESHOLDS``.

    With ``allow_low_quality_matches`` every candidate that ties for the highest IoU of some
    ground truth is matched to its own best ground truth even below ``high_threshold``, as in
    torchvision (including its quirk: a ground truth whose best IoU is 0 promotes every
    candidate that overlaps it by 0).
    """
    n, r, g = iou.shape
    if g == 0:
        return torch.full((n, r), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
    # Padding columns get IoU -1 so they never win a max and never promote a candidate.
    iou = iou.masked_fill(~gt_valid[:, None, :], -1.0)
    matched_vals, all_matches = iou.max(dim=2)  # (N, R)
    matches = torch.where(matched_vals < low_threshold, BELOW_LOW_THRESHOLD, all_matches)
    between = (matched_vals >= low_threshold) & (matched_vals < high_threshold)
    matches = torch.where(between, BETWEEN_THRESHOLDS, matches)
    if allow_low_quality_matches:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # (N, 1, G)
        is_best = (iou == best_per_gt) & gt_valid[:, None, :]  # (N, R, G)
        matches = torch.where(is_best.any(dim=2), all_matches, matches)
    return matches


def sample_balanced(labels: Tensor, *, batch_size_per_image: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw a uniform random subset of positives and negatives per image.

    labels: (N, R) with >= 1 foreground, 0 background, -1 ignored. Returns boolean (N, R)
    masks of sampled positives and negatives with exactly torchvision's counts:
    ``min(#pos, batch * fraction)`` positives and ``min(#neg, batch - sampled positives)``
    negatives per image; ignored candidates are never drawn.
    """
    positive = labels >= 1
    negative = labels == 0
    max_pos = int(batch_size_per_image * positive_fraction)
    num_pos = positive.sum(dim=1).clamp(max=max_pos)  # (N,)
    num_neg = negative.sum(dim=1).clamp(max=batch_size_per_image - num_pos)
    keys = torch.rand(labels.shape, device=labels.device, generator=generator)  # (N, R)
    return (_take_random(positive, num_pos, max_pos, keys),
            _take_random(negative, num_neg, batch_size_per_image, keys))


def _take_random(eligible: Tensor, count: Tensor, max_count: int, keys: Tensor) -> Tensor:
    """Mask of ``count[n]`` eligible elements per row, chosen by the largest random keys."""
    k = min(max_count, eligible.shape[1])
    chosen = torch.zeros_like(eligible)
    if k == 0:
        return chosen
    # Ineligible elements get key -1, so the top-k lists eligible ones first.
    top = torch.where(eligible, keys, -1.0).topk(k, dim=1).indices  # (N, k)
    rank = torch.arange(k, device=eligible.device)[None, :]  # (1, k)
    return chosen.scatter(1, top, rank < count[:, None])


def assign(candidates: Tensor, candidate_valid: Tensor | None, gt_boxes: Tensor, gt_labels: Tensor,
           gt_valid: Tensor, *, fg_iou_thresh: float, bg_iou_thresh: float,
           allow_low_quality_matches: bool) -> tuple[Tensor, Tensor]:
    """Label candidates against ground truth.

    candidates: (N, R, 4); candidate_valid: (N, R) or None; gt_boxes: (N, G, 4);
    gt_labels: (N, G) class labels (1 for the RPN's objectness); gt_valid: (N, G).
    Returns labels (N, R) (class, 0 background, -1 ignored) and matched ground-truth boxes
    (N, R, 4) (meaningful where the label is >= 1).
    """
    iou = batched_box_iou(candidates, gt_boxes)  # (N, R, G)
    matches = match(iou, gt_valid, high_threshold=fg_iou_thresh, low_threshold=bg_iou_thresh,
                    allow_low_quality_matches=allow_low_quality_matches)
    index = matches.clamp(min=0)  # (N, R): safe gather index for every candidate
    if gt_boxes.shape[1] == 0:  # no ground truth anywhere in the batch: nothing to gather
        matched_boxes = torch.zeros_like(candidates)
        labels = torch.zeros_like(matches)
    else:
        matched_boxes = torch.gather(gt_boxes, 1, index[..., None].expand(-1, -1, 4))
        labels = torch.gather(gt_labels, 1, index)
    labels = torch.where(matches == BELOW_LOW_THRESHOLD, 0, labels)
    labels = torch.where(matches == BETWEEN_THRESHOLDS, -1, labels)
    if candidate_valid is not None:
        labels = torch.where(candidate_valid, labels, -1)
    return labels, matched_boxes
