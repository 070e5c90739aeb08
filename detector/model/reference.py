"""torchvision's FasterRCNN, configured like ours: the reference of the benchmark and of the
accuracy-parity check (``model.implementation: torchvision``).

Same trunk (:class:`~detector.model.backbone.Backbone`, one stride-8 map), anchors, proposal counts,
sampling, RoIAlign size, box-head width, thresholds and normalisation; images are not resized
again (our DataLoader already did) and are padded to the same multiple of 16. What differs is
torchvision's implementation: per-image matching and sampling loops, its RoIAlign kernel (with
aligned=False, where ours by default samples pixel centres, aligned=True), its anchor placement
(cell corners, where ours by default are cell-centred; ``model.roi_aligned=false`` and
``model.anchor_offset=0`` give ours torchvision's two conventions, which this reference always
uses whatever those options say), a fixed 1e-3 px minimum proposal size (ours 1 px), the
predictor's initialisation (nn.Linear's default, where ours is by default Detectron's
normal(0.01) and normal(0.001); ``model.predictor_init=torchvision`` gives ours the default),
its rounding of base anchors to whole pixels, and its hard-wired regression loss (smooth L1,
beta 1/9, in both stages).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNNModel
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from detector.model.backbone import Backbone
from detector.model.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, SIZE_DIVISIBLE
from detector.model.rpn import RPN_REGRESSION_LOSS

# torchvision's RPN and RoI heads call F.smooth_l1_loss(beta=1/9) directly: the regression loss
# of both stages, as the run records write it.
TORCHVISION_LOSS = {"name": "smooth_l1", "space": "deltas", "params": {"beta": 1 / 9}, "weight": 1.0}


class _NoResize(GeneralizedRCNNTransform):
    """Normalise and pad only: resizing is the DataLoader's job in this project."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


class TorchvisionFasterRCNN(nn.Module):
    """torchvision's detector behind this project's model interface: uint8 (3, H, W) images in,
    the same loss dict keys' meaning and the same per-image detections out.

    The keyword arguments carry the names of this project's model options (``RegionProposalNetwork``
    and ``RoIHeads``); the regression loss is not one of them, it is hard-wired."""

    def __init__(self, *, backbone: Backbone, num_classes: int, anchor_sizes: list[int],
                 aspect_ratios: list[float], rpn_pre_nms_top_n: dict[str, int], rpn_post_nms_top_n: dict[str, int],
                 rpn_nms_thresh: float, rpn_fg_iou_thresh: float, rpn_bg_iou_thresh: float,
                 rpn_batch_size_per_image: int, rpn_positive_fraction: float, roi_output_size: int,
                 roi_sampling_ratio: int, representation_size: int, box_score_thresh: float,
                 box_nms_thresh: float, detections_per_image: int, box_fg_iou_thresh: float,
                 box_bg_iou_thresh: float, box_batch_size_per_image: int, box_positive_fraction: float,
                 image_mean: tuple[float, float, float] = IMAGENET_MEAN,
                 image_std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__()
        self.detector = TorchvisionFasterRCNNModel(
            backbone,
            num_classes=None,  # given by box_predictor
            rpn_anchor_generator=AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),)),
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n["train"], rpn_pre_nms_top_n_test=rpn_pre_nms_top_n["test"],
            rpn_post_nms_top_n_train=rpn_post_nms_top_n["train"], rpn_post_nms_top_n_test=rpn_post_nms_top_n["test"],
            rpn_nms_thresh=rpn_nms_thresh, rpn_fg_iou_thresh=rpn_fg_iou_thresh,
            rpn_bg_iou_thresh=rpn_bg_iou_thresh, rpn_batch_size_per_image=rpn_batch_size_per_image,
            rpn_positive_fraction=rpn_positive_fraction,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=roi_output_size,
                                            sampling_ratio=roi_sampling_ratio),
            box_head=TwoMLPHead(backbone.out_channels * roi_output_size ** 2, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            box_score_thresh=box_score_thresh, box_nms_thresh=box_nms_thresh,
            box_detections_per_img=detections_per_image, box_fg_iou_thresh=box_fg_iou_thresh,
            box_bg_iou_thresh=box_bg_iou_thresh, box_batch_size_per_image=box_batch_size_per_image,
            box_positive_fraction=box_positive_fraction,
        )
        self.detector.transform = _NoResize(min_size=1, max_size=1, image_mean=list(image_mean),
                                            image_std=list(image_std), size_divisible=SIZE_DIVISIBLE)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        floats = [image.float() / 255 for image in images]
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            losses = self.detector(floats, targets)
            # Our RPN's name for its regression loss, so that both implementations log the same keys.
            losses[RPN_REGRESSION_LOSS] = losses.pop("loss_rpn_box_reg")
            return losses
        return self.detector(floats)
