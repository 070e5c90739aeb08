"""The detector as nn.Modules: trunk, anchors, box arithmetic, target assignment, RPN, RoIAlign,
RoI heads, the regression-loss registry, the gradient probe and torchvision's detector
configured like ours. Built from plain constructor arguments; it knows nothing of the
configuration, files, Lightning or the command line (``detector/engine/build.py`` maps the
configuration onto it).

The names below load on first access (``detector/lazy.py``).
"""

from __future__ import annotations

from detector.lazy import lazy_exports

_EXPORTS = {
    "AnchorGenerator": ("detector.model.anchors", "AnchorGenerator"),
    "Backbone": ("detector.model.backbone", "Backbone"),
    "BoxCoder": ("detector.model.boxes", "BoxCoder"),
    "FasterRCNN": ("detector.model.faster_rcnn", "FasterRCNN"),
    "GRADIENT_COLUMNS": ("detector.model.gradients", "COLUMNS"),
    "GradientProbe": ("detector.model.gradients", "GradientProbe"),
    "IMAGENET_MEAN": ("detector.model.faster_rcnn", "IMAGENET_MEAN"),
    "IMAGENET_STD": ("detector.model.faster_rcnn", "IMAGENET_STD"),
    "REGISTRY": ("detector.model.losses", "REGISTRY"),
    "ROI_ALIGN_KERNELS": ("detector.model.choices", "ROI_ALIGN_KERNELS"),
    "RegionProposalNetwork": ("detector.model.rpn", "RegionProposalNetwork"),
    "RegressionLoss": ("detector.model.losses", "RegressionLoss"),
    "RoIHeads": ("detector.model.roi_heads", "RoIHeads"),
    "TORCHVISION_LOSS": ("detector.model.reference", "TORCHVISION_LOSS"),
    "TRUNK_CHANNELS": ("detector.model.backbone", "TRUNK_CHANNELS"),
    "TorchvisionFasterRCNN": ("detector.model.reference", "TorchvisionFasterRCNN"),
    "batched_box_iou": ("detector.model.boxes", "batched_box_iou"),
    "box_iou": ("detector.model.boxes", "box_iou"),
    "build_loss": ("detector.model.losses", "build_loss"),
    "load_trunk_state": ("detector.model.backbone", "load_trunk_state"),
    "named_weights": ("detector.model.backbone", "named_weights"),
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
