"""The detector as nn.Modules: trunk, anchors, box arithmetic, target assignment, RPN, RoIAlign,
RoI heads, the regression-loss registry, the gradient probe and torchvision's detector
configured like ours. Built from plain constructor arguments; it knows nothing of the
configuration, files, Lightning or the command line (``detector/engine/build.py`` maps the
configuration onto it)."""

from detector.model.anchors import AnchorGenerator
from detector.model.backbone import TRUNK_CHANNELS, Backbone, load_trunk_state, named_weights
from detector.model.boxes import BoxCoder, batched_box_iou, box_iou
from detector.model.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, FasterRCNN
from detector.model.gradients import COLUMNS as GRADIENT_COLUMNS
from detector.model.gradients import GradientProbe
from detector.model.losses import REGISTRY, RegressionLoss, build_loss
from detector.model.reference import TORCHVISION_LOSS, TorchvisionFasterRCNN
from detector.model.roi_heads import ROI_ALIGN_KERNELS, RoIHeads
from detector.model.rpn import RegionProposalNetwork

__all__ = [
    "GRADIENT_COLUMNS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REGISTRY",
    "ROI_ALIGN_KERNELS",
    "TORCHVISION_LOSS",
    "TRUNK_CHANNELS",
    "AnchorGenerator",
    "Backbone",
    "BoxCoder",
    "FasterRCNN",
    "GradientProbe",
    "RegionProposalNetwork",
    "RegressionLoss",
    "RoIHeads",
    "TorchvisionFasterRCNN",
    "batched_box_iou",
    "box_iou",
    "build_loss",
    "load_trunk_state",
    "named_weights",
]
