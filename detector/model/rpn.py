"""Region proposal network: head, batched proposal selection, losses.

Shape letters as in the ``detector`` package docstring; the proposal selection keeps the
top-scoring ``pre_nms_top_n`` anchors of each image (written (N, R') below) before NMS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from detector.model.anchors import AnchorGenerator
from detector.model.boxes import BoxCoder, clip_boxes
from detector.model.gradients import GradientProbe
from detector.model.losses import RegressionLoss, box_regression_loss
from detector.model.targets import Sample, label_sparse, matched_box, matched_flags, sample_masks

# The key of the RPN regression loss (metrics.csv: train/loss_rpn_box), torchvision's detector included.
RPN_REGRESSION_LOSS = "loss_rpn_box"


class RPNHead(nn.Module):
    """3x3 conv, then per-anchor objectness logits and box deltas."""

    def __init__(self, *, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness, self.deltas):  # torchvision's initialisation
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        n = features.shape[0]
        hidden = F.relu(self.conv(features))
        # (N, A, H, W) -> (N, H*W*A)
        objectness = self.objectness(hidden).permute(0, 2, 3, 1).reshape(n, -1)
        # (N, A*4, H, W) -> (N, H, W, A*4) -> (N, H*W*A, 4)
        deltas = self.deltas(hidden).permute(0, 2, 3, 1).reshape(n, -1, 4)
        return objectness, deltas


class RegionProposalNetwork(nn.Module):
    def __init__(self, *, in_channels: int, anchor_generator: AnchorGenerator,
                 regression_loss: RegressionLoss, regression_weight: float,
                 fg_iou_thresh: float, bg_iou_thresh: float, batch_size_per_image: int,
                 positive_fraction: float, pre_nms_top_n: dict[str, int],
                 post_nms_top_n: dict[str, int], nms_thresh: float, min_size: float):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = RPNHead(in_channels=in_channels, num_anchors=anchor_generator.num_anchors_per_location)
        self.coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.regression_loss = regression_loss
        self.regression_weight = regression_weight
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        # Set by whoever wants the regression gradients (the engine, with train.gradient_stats).
        self.regression_probe: GradientProbe | None = None

    def forward(self, features: Tensor, image_sizes: Tensor, gt_boxes: Tensor | None = None,
                gt_valid: Tensor | None = None,
                gt_displaced: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """features (N, C, H, W); image_sizes (N, 2) of (height, width) before padding;
        ``gt_displaced`` (N, G): ground-truth boxes that are outlier labels (for the probe).

        Returns proposals (N, P, 4), their validity (N, P), and the losses when ground
        truth is given.
        """
        objectness, deltas = self.head(features)  # (N, R), (N, R, 4)
        # fp32 anchors whatever the feature dtype: under bf16 autocast they would be rounded.
        anchors = self.anchor_generator.grid_anchors(*features.shape[-2:], features.device, torch.float32)
        mode = "train" if self.training else "test"
        # Proposals are decoded in fp32 even under mixed precision (bf16 would round their
        # coordinates to whole pixels and worse on large images).
        proposals, valid = self.select_proposals(objectness.detach().float(), deltas.detach().float(), anchors,
                                                 image_sizes, self.pre_nms_top_n[mode], self.post_nms_top_n[mode])
        losses = {}
        if gt_boxes is not None:
            losses = self.losses(objectness.float(), deltas, tuple(features.shape[-2:]), gt_boxes, gt_valid,
                                 gt_displaced)
        return proposals, valid, losses

    def select_proposals(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, image_sizes: Tensor,
                         pre_nms_top_n: int, post_nms_top_n: int) -> tuple[Tensor, Tensor]:
        """Top-k, decode, clip, drop small boxes, one NMS for the whole batch, top-M.

        Returns (N, P, 4) proposals sorted by score and a (N, P) mask of real ones (an image
        with fewer than P survivors is padded with invalid entries).
        """
        n, r = objectness.shape
        k = min(pre_nms_top_n, r)
        scores, index = objectness.topk(k, dim=1)  # (N, R')
        boxes = self.coder.decode(torch.gather(deltas, 1, index[..., None].expand(-1, -1, 4)), anchors[index])
        boxes = clip_boxes(boxes, image_sizes[:, None, 0], image_sizes[:, None, 1])  # (N, R', 4)
        small = ((boxes[..., 2] - boxes[..., 0]) < self.min_size) | ((boxes[..., 3] - boxes[..., 1]) < self.min_size)
        scores = scores.masked_fill(small, float("-inf"))
        image_index = torch.arange(n, device=boxes.device)[:, None].expand(n, k)
        # NMS returns a data-dependent number of boxes: this is the training step's one
        # unavoidable host synchronisation. One call for the whole batch: batched_nms keeps
        # images apart by offsetting their coordinates, or, above 1000 boxes on a CPU (100,000
        # coordinates on a GPU), runs one NMS per image.
        keep = torchvision.ops.batched_nms(boxes.reshape(-1, 4), scores.reshape(-1), image_index.reshape(-1),
                                           self.nms_thresh)
        kept = torch.zeros(n * k, dtype=torch.bool, device=boxes.device)
        kept[keep] = True
        scores = scores.masked_fill(~kept.view(n, k), float("-inf"))
        top_scores, top = scores.topk(min(post_nms_top_n, k), dim=1)  # (N, P), best first
        proposals = torch.gather(boxes, 1, top[..., None].expand(-1, -1, 4))
        return proposals, torch.isfinite(top_scores)

    def sample_anchors(self, feature_size: tuple[int, int], gt_boxes: Tensor,
                       gt_valid: Tensor) -> tuple[Sample, Tensor, Tensor]:
        """Label every anchor of an H x W ``feature_size`` grid against the padded ground truth
        (N, G, 4) and draw the balanced sample. Returns the sample, and the anchors (N, S, 4),
        matched ground-truth boxes (N, S, 4) and their indices (N, S) in G of its positives
        (``sample.positive_index``).

        Regression only needs the sampled positives (at most S per image): gathering them into
        (N, S) avoids encoding and masking all R anchors (200k per COCO-sized image).
        """
        anchors = self.anchor_generator.grid_anchors(*feature_size, gt_boxes.device, torch.float32)  # (R, 4)
        overlaps = self.anchor_generator.nonzero_iou(gt_boxes, gt_valid, *feature_size, low_threshold=self.bg_iou_thresh)
        positive, negative, best = label_sparse(overlaps, gt_valid, len(anchors), high_threshold=self.fg_iou_thresh,
                                                low_threshold=self.bg_iou_thresh, allow_low_quality_matches=True)
        sample = sample_masks(positive, negative, batch_size_per_image=self.batch_size_per_image,
                              positive_fraction=self.positive_fraction)
        positive_anchors = anchors[sample.positive_index]  # (N, S, 4)
        if gt_boxes.shape[1] == 0:  # no ground truth in the batch: no positive either
            return sample, positive_anchors, positive_anchors, torch.zeros_like(sample.positive_index)
        matched_gt = matched_box(torch.gather(best, 1, sample.positive_index))  # (N, S)
        matched = torch.gather(gt_boxes, 1, matched_gt[..., None].expand(-1, -1, 4))  # (N, S, 4)
        return sample, positive_anchors, matched, matched_gt

    def losses(self, objectness: Tensor, deltas: Tensor, feature_size: tuple[int, int], gt_boxes: Tensor,
               gt_valid: Tensor, gt_displaced: Tensor | None = None) -> dict[str, Tensor]:
        """objectness (N, R), deltas (N, R, 4) of the anchors of an H x W ``feature_size`` grid."""
        sample, positive_anchors, matched, matched_gt = self.sample_anchors(feature_size, gt_boxes, gt_valid)
        sampled = sample.positive | sample.negative
        # Normalised by the number of sampled anchors, as torchvision does, so a loss's weight
        # means the same whatever the share of positives (detectron2 divides by the nominal
        # batch_size_per_image * N instead, which differs when an image runs short of anchors).
        num_sampled = sampled.sum().clamp(min=1)
        objectness_loss = (F.binary_cross_entropy_with_logits(
            objectness, sample.positive.to(objectness.dtype), reduction="none") * sampled).sum() / num_sampled
        # (N, S, 4) in fp32: see RoIHeads.losses
        positive_deltas = torch.gather(deltas, 1, sample.positive_index[..., None].expand(-1, -1, 4)).float()
        if self.regression_probe is not None:
            displaced = None if gt_displaced is None else matched_flags(gt_displaced, matched_gt)
            self.regression_probe.attach(positive_deltas, sample.positive_valid, self.regression_weight / num_sampled,
                                         displaced)
        regression = box_regression_loss(self.regression_loss, positive_deltas, matched, positive_anchors,
                                         self.coder, sample.positive_valid)
        return {"loss_objectness": objectness_loss,
                RPN_REGRESSION_LOSS: self.regression_weight * regression / num_sampled}
