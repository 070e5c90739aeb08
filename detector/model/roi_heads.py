"""Second stage: RoI sampling, RoIAlign, box head, class-specific predictor, losses, post-processing.

Shape letters as in the ``detector`` package docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from detector.model.boxes import BoxCoder, clip_boxes
from detector.model.choices import ROI_ALIGN_KERNELS
from detector.model.gradients import GradientProbe
from detector.model.losses import RegressionLoss, box_regression_loss
from detector.model.roi_align import roi_align
from detector.model.targets import assign, matched_flags, sample_balanced

# The separable RoIAlign materialises an (N, S*Q, C*W) intermediate; above this many elements
# (256 MB in fp32) the "auto" kernel is torchvision's gather-based one instead. Both give equal values.
SEPARABLE_ROI_ALIGN_MAX_ELEMENTS = 64 * 2**20


class RoIHeads(nn.Module):
    def __init__(self, *, in_channels: int, num_classes: int, spatial_scale: float, output_size: int,
                 sampling_ratio: int, aligned: bool, representation_size: int, predictor_init: str,
                 regression_loss: RegressionLoss, regression_weight: float, fg_iou_thresh: float, bg_iou_thresh: float,
                 batch_size_per_image: int, positive_fraction: float, score_thresh: float,
                 nms_thresh: float, detections_per_image: int, roi_align_kernel: str = "auto"):
        """``roi_align_kernel``: "separable" (model/roi_align.py), "torchvision"
        (torchvision.ops.roi_align), or "auto": separable while its intermediate stays below
        SEPARABLE_ROI_ALIGN_MAX_ELEMENTS."""
        super().__init__()
        if roi_align_kernel not in ROI_ALIGN_KERNELS:
            raise ValueError(f"roi_align_kernel is {roi_align_kernel!r}; valid: {', '.join(ROI_ALIGN_KERNELS)}")
        self.roi_align_kernel = roi_align_kernel
        self.num_classes = num_classes
        self.spatial_scale = spatial_scale
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        # torchvision's TwoMLPHead, narrower: 256 instead of 1024 units suits 7x7x128 inputs.
        self.box_head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * output_size * output_size, representation_size),
            nn.ReLU(inplace=True),
            nn.Linear(representation_size, representation_size),
            nn.ReLU(inplace=True),
        )
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        self.bbox_pred = nn.Linear(representation_size, (num_classes + 1) * 4)
        if predictor_init == "detectron":  # torchvision's FastRCNNPredictor keeps nn.Linear's default
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.normal_(self.bbox_pred.weight, std=0.001)
            nn.init.constant_(self.cls_score.bias, 0)
            nn.init.constant_(self.bbox_pred.bias, 0)
        # The weights of torchvision's RoIHeads: deltas of a well-placed proposal are small, so
        # scaling them up puts the regression targets at roughly unit variance.
        self.coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.regression_loss = regression_loss
        self.regression_weight = regression_weight
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        # Set by whoever wants the regression gradients (the engine, with train.gradient_stats).
        self.regression_probe: GradientProbe | None = None

    def sample_rois(self, proposals: Tensor, proposal_valid: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                    gt_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Label proposals (ground truth added, as torchvision does) and draw S per image.

        Returns rois (N, S, 4), labels (N, S) (class, 0 background, -1 not sampled), matched
        ground-truth boxes (N, S, 4) and their indices (N, S) in G. S is fixed, so an image
        with too few candidates gets padding rows labelled -1.
        """
        candidates = torch.cat((proposals, gt_boxes), dim=1)  # (N, P+G, 4)
        valid = torch.cat((proposal_valid, gt_valid), dim=1)
        labels, matched, matched_index = assign(candidates, valid, gt_boxes, gt_labels, gt_valid,
                                 fg_iou_thresh=self.fg_iou_thresh, bg_iou_thresh=self.bg_iou_thresh,
                                 allow_low_quality_matches=False)
        positive, negative, _, _ = sample_balanced(labels, batch_size_per_image=self.batch_size_per_image,
                                                   positive_fraction=self.positive_fraction)
        s = min(self.batch_size_per_image, candidates.shape[1])
        # Sampled positives first, then sampled negatives, then padding.
        priority = 2.0 * positive + 1.0 * negative  # (N, P+G)
        index = priority.topk(s, dim=1).indices  # (N, S)
        sampled = torch.gather(positive | negative, 1, index)
        rois = torch.gather(candidates, 1, index[..., None].expand(-1, -1, 4))
        roi_labels = torch.where(sampled, torch.gather(labels, 1, index), -1)
        roi_matched = torch.gather(matched, 1, index[..., None].expand(-1, -1, 4))
        return rois, roi_labels, roi_matched, torch.gather(matched_index, 1, index)

    def predict(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """features (N, C, H, W), rois (N, S, 4) -> logits (N, S, K+1), deltas (N, S, K+1, 4)."""
        n, s = rois.shape[:2]
        c, h, w = features.shape[1:]
        separable = self.roi_align_kernel == "separable" or (
            self.roi_align_kernel == "auto" and n * s * self.output_size * c * max(h, w) <= SEPARABLE_ROI_ALIGN_MAX_ELEMENTS)
        if separable:
            pooled = roi_align(features, rois, output_size=self.output_size, spatial_scale=self.spatial_scale,
                               sampling_ratio=self.sampling_ratio, aligned=self.aligned)  # (N*S, C, Q, Q)
        else:  # large feature maps (COCO-sized inputs): the dense intermediate would not fit
            pooled = torchvision.ops.roi_align(features, list(rois.detach()), self.output_size, self.spatial_scale,
                                               self.sampling_ratio, self.aligned)
        hidden = self.box_head(pooled)
        logits = self.cls_score(hidden).view(n, s, -1)
        deltas = self.bbox_pred(hidden).view(n, s, -1, 4)
        return logits, deltas

    def losses(self, logits: Tensor, deltas: Tensor, rois: Tensor, labels: Tensor, matched: Tensor,
               displaced: Tensor | None = None) -> dict[str, Tensor]:
        """``displaced`` (N, S): the RoIs whose matched ground truth is an outlier label, for the
        gradient probe (None: no such labels)."""
        # Both losses are normalised by the number of sampled RoIs, as torchvision's
        # fastrcnn_loss and detectron2's FastRCNNOutputLayers do (not by the number of positives).
        num_sampled = (labels >= 0).sum().clamp(min=1)
        classification = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-1,
                                         reduction="sum") / num_sampled
        # (N, S, K+1, 4) -> (N, S, 4): the deltas predicted for the RoI's own class, in fp32 from
        # here on, so that under mixed precision the loss and the gradient the probe reads are
        # not rounded to bf16 (2^-9 relative: enough to move a gradient off the loss's bound)
        class_deltas = torch.gather(deltas, 2, labels.clamp(min=0)[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
        class_deltas = class_deltas.float()
        foreground = labels >= 1
        if self.regression_probe is not None:
            self.regression_probe.attach(class_deltas, foreground, self.regression_weight / num_sampled, displaced)
        regression = box_regression_loss(self.regression_loss, class_deltas, matched, rois, self.coder, foreground)
        return {"loss_classifier": classification, "loss_box_reg": self.regression_weight * regression / num_sampled}

    def forward(self, features: Tensor, proposals: Tensor, proposal_valid: Tensor, image_sizes: Tensor,
                gt_boxes: Tensor | None = None, gt_labels: Tensor | None = None, gt_valid: Tensor | None = None,
                gt_displaced: Tensor | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the losses. Inference: one dict of boxes/scores/labels per image.
        ``gt_displaced`` (N, G): ground-truth boxes that are outlier labels (the probe tells them apart)."""
        if self.training:
            rois, labels, matched, matched_index = self.sample_rois(proposals, proposal_valid, gt_boxes, gt_labels,
                                                                    gt_valid)
            logits, deltas = self.predict(features, rois)
            displaced = None if gt_displaced is None else matched_flags(gt_displaced, matched_index)
            return self.losses(logits, deltas, rois, labels, matched, displaced)
        logits, deltas = self.predict(features, proposals)
        # Scores and boxes in fp32 even under mixed precision (see RegionProposalNetwork.forward).
        return self.postprocess(logits.float(), deltas.float(), proposals, proposal_valid, image_sizes)

    @torch.no_grad()
    def postprocess(self, logits: Tensor, deltas: Tensor, proposals: Tensor, proposal_valid: Tensor,
                    image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Per-class boxes, score threshold, per-class NMS, top detections per image."""
        n, k = logits.shape[0], logits.shape[2] - 1
        scores = F.softmax(logits, dim=-1)[..., 1:]  # (N, P, K) background dropped
        boxes = self.coder.decode(deltas[:, :, 1:], proposals[:, :, None, :])  # (N, P, K, 4)
        boxes = clip_boxes(boxes, image_sizes[:, None, None, 0], image_sizes[:, None, None, 1])
        wide = (boxes[..., 2] - boxes[..., 0] >= 1e-2) & (boxes[..., 3] - boxes[..., 1] >= 1e-2)
        keep = (scores > self.score_thresh) & wide & proposal_valid[:, :, None]  # (N, P, K)
        image_index, _, class_index = keep.nonzero(as_tuple=True)  # evaluation only: a host sync is fine
        flat_boxes, flat_scores = boxes[keep], scores[keep]
        kept = torchvision.ops.batched_nms(flat_boxes, flat_scores, image_index * k + class_index, self.nms_thresh)
        # kept is sorted by decreasing score, so each image's first entries are its best.
        results = []
        for i in range(n):
            mine = kept[image_index[kept] == i][: self.detections_per_image]
            results.append({"boxes": flat_boxes[mine], "scores": flat_scores[mine], "labels": class_index[mine] + 1})
        return results

