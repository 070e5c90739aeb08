"""Batched target assignment: matching boxes to ground truth and balanced sampling.

Shape letters as in the ``detector`` package docstring; here R counts the candidates of an
image (anchors, or proposals plus ground truth in the box head), and ``gt_valid`` (N, G)
marks the real ground-truth boxes among the padded ones.

torchvision, detectron2 and MMDetection match and sample one image at a time in Python; here
the whole batch is labelled at once (one (N, R, G) IoU tensor in the box head, the sparse
entries of ``AnchorGenerator.nonzero_iou`` in the RPN) and sampling is a top-k over random
keys, so the training step has no per-image loop.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from detector.model.anchors import AnchorOverlaps
from detector.model.boxes import batched_box_iou

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
    # Padding columns get IoU -1 so they never win a max.
    iou = iou.masked_fill(~gt_valid[:, None, :], -1.0)
    matched_vals, all_matches = iou.max(dim=2)  # (N, R)
    matches = torch.where(matched_vals < low_threshold, BELOW_LOW_THRESHOLD, all_matches)
    between = (matched_vals >= low_threshold) & (matched_vals < high_threshold)
    matches = torch.where(between, BETWEEN_THRESHOLDS, matches)
    if allow_low_quality_matches:
        # A padding column's best is set to 2 (above any IoU), so it promotes nothing.
        best_per_gt = iou.amax(dim=1, keepdim=True).masked_fill_(~gt_valid[:, None, :], 2.0)  # (N, 1, G)
        promoted = (iou == best_per_gt).any(dim=2)  # (N, R)
        matches = torch.where(promoted, all_matches, matches)
    return matches


def label_sparse(overlaps: AnchorOverlaps, gt_valid: Tensor, num_candidates: int, *, high_threshold: float,
                 low_threshold: float, allow_low_quality_matches: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``match``'s decisions from the non-zero entries of the IoU matrix only (N images x R
    candidates x G boxes, every other entry 0), identical index for index.

    overlaps: E entries (candidate, box, IoU > 0), flat over the batch; gt_valid (N, G).
    Returns positive and negative (N, R) bool masks (neither: ignored) and an (N, R) int64
    ``best`` from which ``matched_box(best)`` reads the matched box of any candidate. Only the
    sampled positives need their box, so it is decoded for those alone.
    """
    n, g = gt_valid.shape
    if g >= 2**16:
        raise ValueError(f"at most {2**16 - 1} ground-truth boxes per image, got {g}")
    # One scatter finds both the largest IoU of each candidate and the first box reaching it
    # (``max`` returns the first maximum): a non-negative float's bits order like the float, so
    # key = (IoU bits << 16) | (65535 - box) is largest for the largest IoU and, among equal
    # IoUs, for the smallest box. A candidate without entries keeps key 0: IoU 0 with every box.
    box_in_image = overlaps.box % max(g, 1)
    key = (overlaps.iou.view(torch.int32).long() << 16) | (2**16 - 1 - box_in_image)  # (E,)
    best = key.new_zeros(n * num_candidates).scatter_reduce_(0, overlaps.candidate, key, "amax")
    best_iou = (best >> 16).int().view(torch.float32).view(n, num_candidates)
    positive = best_iou >= high_threshold
    negative = best_iou < low_threshold
    if g > 0 and allow_low_quality_matches:
        best_per_gt = overlaps.iou.new_zeros(n * g).scatter_reduce_(0, overlaps.box, overlaps.iou, "amax")
        ties = (overlaps.iou == best_per_gt[overlaps.box]).to(torch.uint8)
        promoted = torch.zeros(n * num_candidates, dtype=torch.uint8, device=ties.device)
        promoted = promoted.scatter_reduce_(0, overlaps.candidate, ties, "amax").view(n, num_candidates).bool()
        # torchvision's quirk: a box whose best IoU is 0 promotes every candidate (all overlap it by 0).
        promoted |= (gt_valid & (best_per_gt.view(n, g) == 0)).any(dim=1)[:, None]
        positive |= promoted
        negative &= ~promoted
    return positive, negative, best.view(n, num_candidates)


def matched_box(best: Tensor) -> Tensor:
    """Ground-truth index of candidates from ``label_sparse``'s ``best`` (any shape)."""
    return torch.where(best > 0, 2**16 - 1 - (best & (2**16 - 1)), 0)


class Sample(NamedTuple):
    """A balanced draw. ``positive_index`` lists each image's sampled positives in a fixed-size
    (N, S) tensor (S = the most positives an image may have), ``positive_valid`` marks its real
    entries: the regression loss gathers just these instead of masking all R candidates."""

    positive: Tensor  # (N, R) bool
    negative: Tensor  # (N, R) bool
    positive_index: Tensor  # (N, S) int64
    positive_valid: Tensor  # (N, S) bool


def sample_balanced(labels: Tensor, *, batch_size_per_image: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> Sample:
    """Draw a uniform random subset of positives and negatives per image.

    labels: (N, R) with >= 1 foreground, 0 background, -1 ignored. The masks hold exactly
    torchvision's counts: ``min(#pos, batch * fraction)`` positives and
    ``min(#neg, batch - sampled positives)`` negatives per image; ignored candidates are never drawn.
    """
    return sample_masks(labels >= 1, labels == 0, batch_size_per_image=batch_size_per_image,
                        positive_fraction=positive_fraction, generator=generator)


def sample_masks(positive: Tensor, negative: Tensor, *, batch_size_per_image: int, positive_fraction: float,
                 generator: torch.Generator | None = None) -> Sample:
    """``sample_balanced`` from (N, R) masks of the positive and negative candidates."""
    max_pos = int(batch_size_per_image * positive_fraction)
    num_pos = positive.sum(dim=1).clamp(max=max_pos)  # (N,)
    num_neg = negative.sum(dim=1).clamp(max=batch_size_per_image - num_pos)
    keys = torch.rand(positive.shape, device=positive.device, generator=generator)  # (N, R)
    positive_mask, positive_index, positive_valid = _take_random(positive, num_pos, max_pos, keys)
    negative_mask, _, _ = _take_random(negative, num_neg, batch_size_per_image, keys)
    return Sample(positive_mask, negative_mask, positive_index, positive_valid)


def _take_random(eligible: Tensor, count: Tensor, max_count: int, keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``count[n]`` eligible elements per row, chosen by the largest random keys: their mask
    (N, R), and their indices (N, k) with a (N, k) validity mask, k = min(max_count, R)."""
    k = min(max_count, eligible.shape[1])
    # Ineligible elements get key -1, so the top-k lists eligible ones first.
    top = torch.where(eligible, keys, -1.0).topk(k, dim=1).indices  # (N, k)
    valid = torch.arange(k, device=eligible.device)[None, :] < count[:, None]  # (N, k)
    return torch.zeros_like(eligible).scatter(1, top, valid), top, valid


def assign(candidates: Tensor, candidate_valid: Tensor | None, gt_boxes: Tensor, gt_labels: Tensor,
           gt_valid: Tensor, *, fg_iou_thresh: float, bg_iou_thresh: float,
           allow_low_quality_matches: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Label candidates against ground truth.

    candidates: (N, R, 4); candidate_valid: (N, R) or None; gt_boxes: (N, G, 4);
    gt_labels: (N, G) class labels (1 for the RPN's objectness); gt_valid: (N, G).
    Returns labels (N, R) (class, 0 background, -1 ignored), matched ground-truth boxes
    (N, R, 4) and their indices (N, R) in G (both meaningful where the label is >= 1).
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
    return labels, matched_boxes, index


def matched_flags(gt_flags: Tensor, matched_index: Tensor) -> Tensor:
    """(N, G) per-box flags -> the flag of each candidate's matched box, matched_index's shape
    (False where the batch has no boxes)."""
    if gt_flags.shape[1] == 0:
        return torch.zeros(matched_index.shape, dtype=torch.bool, device=matched_index.device)
    return torch.gather(gt_flags, 1, matched_index)
