"""The detector, wired in paper order.

Shape letters as in the ``detector`` package docstring. The engine builds it from the
configuration (``detector/engine/build.py``); here it takes its parts as constructed modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.model.backbone import Backbone
from detector.model.roi_heads import RoIHeads
from detector.model.rpn import RegionProposalNetwork

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_DIVISIBLE = 16  # the stride of layer3, so the top-down merge lines up exactly


class FasterRCNN(nn.Module):
    """images -> normalise + pad -> backbone -> RPN -> RoI heads -> losses or detections."""

    def __init__(self, *, backbone: Backbone, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 image_mean: tuple[float, float, float] = IMAGENET_MEAN,
                 image_std: tuple[float, float, float] = IMAGENET_STD, channels_last: bool = False):
        """``image_mean``/``image_std``: per-channel normalisation of images scaled to [0, 1].
        ``channels_last``: the trunk runs in channels-last memory layout (same values, up to the
        rounding of another convolution algorithm; faster on CPUs and tensor cores)."""
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone = backbone.to(memory_format=self.memory_format)
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(image_mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(image_std).view(1, 3, 1, 1) * 255, persistent=False)

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
        return batch.contiguous(memory_format=self.memory_format), sizes

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

    @staticmethod
    def pad_flags(targets: list[dict[str, Tensor]], key: str, valid: Tensor) -> Tensor:
        """Per-image (G_i,) bool ``target[key]`` -> (N, G) as pad_targets pads the boxes (False padding)."""
        flags = torch.zeros_like(valid)
        for i, target in enumerate(targets):
            flags[i, : len(target[key])] = target[key]
        return flags

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Training (targets given): dict of the four losses. Inference: per-image detections
        with boxes in the input image's pixels."""
        batch, image_sizes = self.preprocess(images)
        features = self.backbone(batch)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            gt_boxes, gt_labels, gt_valid = self.pad_targets(targets, batch.device)
            # Outlier labels (box noise): only the gradient probes tell them apart.
            gt_displaced = self.pad_flags(targets, "displaced", gt_valid) if "displaced" in targets[0] else None
            proposals, valid, rpn_losses = self.rpn(features, image_sizes, gt_boxes, gt_valid, gt_displaced)
            roi_losses = self.roi_heads(features, proposals, valid, image_sizes, gt_boxes, gt_labels, gt_valid,
                                        gt_displaced)
            return {**rpn_losses, **roi_losses}
        proposals, valid, _ = self.rpn(features, image_sizes)
        return self.roi_heads(features, proposals, valid, image_sizes)
