"""The detector, wired in paper order, and ``build_model(cfg)``.

Shapes: N images, G ground-truth boxes per image (padded to the batch maximum).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.backbone import Backbone
from detector.config import Config
from detector.gradients import GradientProbe
from detector.losses import RegressionLoss, build_loss
from detector.roi_heads import RoIHeads
from detector.rpn import RegionProposalNetwork

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_DIVISIBLE = 16  # the stride of layer3, so the top-down merge lines up exactly


class FasterRCNN(nn.Module):
    """images -> normalise + pad -> backbone -> RPN -> RoI heads -> losses or detections."""

    def __init__(self, *, backbone: Backbone, rpn: RegionProposalNetwork, roi_heads: RoIHeads):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        """uint8 (3, h_i, w_i) images on the device -> normalised (N, 3, H, W) batch, zero-padded
        to a multiple of 16, and (N, 2) sizes (h_i, w_i) before padding."""
        height = -(-max(im.shape[1] for im in images) // SIZE_DIVISIBLE) * SIZE_DIVISIBLE
        width = -(-max(im.shape[2] for im in images) // SIZE_DIVISIBLE) * SIZE_DIVISIBLE
        batch = self.pixel_mean.new_zeros((len(images), 3, height, width))
        for i, image in enumerate(images):
            # Normalise before padding so the padding is the mean colour (0 after normalising).
            batch[i, :, : image.shape[1], : image.shape[2]] = (image[None].float() - self.pixel_mean) / self.pixel_std
        sizes = torch.tensor([im.shape[1:] for im in images], device=batch.device, dtype=batch.dtype)
        return batch, sizes

    @staticmethod
    def pad_targets(targets: list[dict[str, Tensor]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Per-image targets -> boxes (N, G, 4), labels (N, G), validity mask (N, G)."""
        g = max((len(t["boxes"]) for t in targets), default=0)
        n = len(targets)
        boxes = torch.zeros((n, g, 4), device=device)
        labels = torch.zeros((n, g), dtype=torch.int64, device=device)
        valid = torch.zeros((n, g), dtype=torch.bool, device=device)
        for i, target in enumerate(targets):
            count = len(target["boxes"])
            boxes[i, :count] = target["boxes"]
            labels[i, :count] = target["labels"]
            valid[i, :count] = True
        return boxes, labels, valid

    def gradient_probes(self) -> tuple[GradientProbe, ...]:
        """The probes on the regression outputs of the box head and the RPN (gradients.csv)."""
        return (self.roi_heads.gradient_probe, self.rpn.gradient_probe)

    def regression_loss_records(self) -> dict[str, Any]:
        """Name, space, every parameter and the weight of each stage's regression loss."""
        return {"box_head": _loss_record(self.roi_heads), "rpn": _loss_record(self.rpn)}

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Training (targets given): dict of the four losses. Inference: per-image detections
        with boxes in the input image's pixels."""
        batch, image_sizes = self.preprocess(images)
        features = self.backbone(batch)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            gt_boxes, gt_labels, gt_valid = self.pad_targets(targets, batch.device)
            proposals, valid, rpn_losses = self.rpn(features, image_sizes, gt_boxes, gt_valid)
            roi_losses = self.roi_heads(features, proposals, valid, image_sizes, gt_boxes, gt_labels, gt_valid)
            return {**rpn_losses, **roi_losses}
        proposals, valid, _ = self.rpn(features, image_sizes)
        return self.roi_heads(features, proposals, valid, image_sizes)


def regression_losses(cfg: Config) -> tuple[tuple[RegressionLoss, float], tuple[RegressionLoss, float]]:
    """(loss, weight) of the box head and of the RPN. The RPN shares the box head's loss,
    parameters and weight unless loss.rpn_name names its own."""
    head = build_loss(cfg.loss.name, cfg.loss.args)
    head_weight = cfg.loss.weight if cfg.loss.weight is not None else head.default_weight
    if cfg.loss.rpn_name is None:
        return (head, head_weight), (head, head_weight)
    rpn = build_loss(cfg.loss.rpn_name, cfg.loss.rpn_args)
    rpn_weight = cfg.loss.rpn_weight if cfg.loss.rpn_weight is not None else rpn.default_weight
    return (head, head_weight), (rpn, rpn_weight)


def _loss_record(head: RoIHeads | RegionProposalNetwork) -> dict[str, Any]:
    loss = head.regression_loss
    return {"name": loss.name, "space": loss.space, "params": loss.params, "weight": head.regression_weight}


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """Our detector, or torchvision's configured like it when model.implementation is torchvision."""
    m = cfg.model
    if m.implementation == "torchvision":
        from detector.reference import TorchvisionFasterRCNN  # the reference imports this module

        return TorchvisionFasterRCNN(cfg, num_classes)
    (head_loss, head_weight), (rpn_loss, rpn_weight) = regression_losses(cfg)
    backbone = Backbone(name=m.backbone, out_channels=m.feature_channels, weights=m.weights)
    anchors = AnchorGenerator(sizes=m.anchor_sizes, aspect_ratios=m.aspect_ratios, stride=backbone.stride,
                              offset=m.anchor_offset)
    rpn = RegionProposalNetwork(
        in_channels=backbone.out_channels, anchor_generator=anchors, regression_loss=rpn_loss,
        regression_weight=rpn_weight,
        fg_iou_thresh=m.rpn_fg_iou_thresh, bg_iou_thresh=m.rpn_bg_iou_thresh,
        batch_size_per_image=m.rpn_batch_size_per_image, positive_fraction=m.rpn_positive_fraction,
        pre_nms_top_n={"train": m.rpn_pre_nms_top_n_train, "test": m.rpn_pre_nms_top_n_test},
        post_nms_top_n={"train": m.rpn_post_nms_top_n_train, "test": m.rpn_post_nms_top_n_test},
        nms_thresh=m.rpn_nms_thresh, min_size=m.rpn_min_size,
    )
    roi_heads = RoIHeads(
        in_channels=backbone.out_channels, num_classes=num_classes, spatial_scale=1.0 / backbone.stride,
        output_size=m.roi_output_size, sampling_ratio=m.roi_sampling_ratio, aligned=m.roi_aligned,
        representation_size=m.representation_size, predictor_init=m.predictor_init, regression_loss=head_loss,
        regression_weight=head_weight,
        fg_iou_thresh=m.box_fg_iou_thresh, bg_iou_thresh=m.box_bg_iou_thresh,
        batch_size_per_image=m.box_batch_size_per_image, positive_fraction=m.box_positive_fraction,
        score_thresh=m.box_score_thresh, nms_thresh=m.box_nms_thresh,
        detections_per_image=m.detections_per_image,
    )
    return FasterRCNN(backbone=backbone, rpn=rpn, roi_heads=roi_heads)
