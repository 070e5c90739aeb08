"""torchvision's FasterRCNN, configured like ours: the reference of the benchmark and of the
accuracy-parity check (``model.implementation: torchvision``).

Same trunk (:class:`~detector.backbone.Backbone`, one stride-8 map), anchors, proposal counts,
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

from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNNModel
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from detector.backbone import Backbone
from detector.config import Config
from detector.gradients import GradientProbe
from detector.model import IMAGENET_MEAN, IMAGENET_STD, SIZE_DIVISIBLE

# torchvision's RPN and RoI heads call F.smooth_l1_loss(beta=1/9) directly.
TORCHVISION_LOSS = {"name": "smooth_l1", "space": "deltas", "params": {"beta": 1 / 9}, "weight": 1.0}


class _NoResize(GeneralizedRCNNTransform):
    """Normalise and pad only: resizing is the DataLoader's job in this project."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


class TorchvisionFasterRCNN(nn.Module):
    """torchvision's detector behind this project's model interface: uint8 (3, H, W) images in,
    the same loss dict keys' meaning and the same per-image detections out."""

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__()
        m = cfg.model
        backbone = Backbone(name=m.backbone, out_channels=m.feature_channels, weights=m.weights)
        self.detector = TorchvisionFasterRCNNModel(
            backbone,
            num_classes=None,  # given by box_predictor
            rpn_anchor_generator=AnchorGenerator(sizes=(tuple(m.anchor_sizes),),
                                                 aspect_ratios=(tuple(m.aspect_ratios),)),
            rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=m.rpn_post_nms_top_n_test,
            rpn_nms_thresh=m.rpn_nms_thresh, rpn_fg_iou_thresh=m.rpn_fg_iou_thresh,
            rpn_bg_iou_thresh=m.rpn_bg_iou_thresh, rpn_batch_size_per_image=m.rpn_batch_size_per_image,
            rpn_positive_fraction=m.rpn_positive_fraction,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=m.roi_output_size,
                                            sampling_ratio=m.roi_sampling_ratio),
            box_head=TwoMLPHead(m.feature_channels * m.roi_output_size ** 2, m.representation_size),
            box_predictor=FastRCNNPredictor(m.representation_size, num_classes + 1),
            box_score_thresh=m.box_score_thresh, box_nms_thresh=m.box_nms_thresh,
            box_detections_per_img=m.detections_per_image, box_fg_iou_thresh=m.box_fg_iou_thresh,
            box_bg_iou_thresh=m.box_bg_iou_thresh, box_batch_size_per_image=m.box_batch_size_per_image,
            box_positive_fraction=m.box_positive_fraction,
        )
        self.detector.transform = _NoResize(min_size=1, max_size=1, image_mean=list(IMAGENET_MEAN),
                                            image_std=list(IMAGENET_STD), size_divisible=SIZE_DIVISIBLE)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        floats = [image.float() / 255 for image in images]
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            return self.detector(floats, targets)
        return self.detector(floats)

    def gradient_probes(self) -> tuple[GradientProbe, ...]:
        return ()  # torchvision's losses are inside its heads; there is nothing to hook

    def regression_loss_records(self) -> dict[str, Any]:
        return {"box_head": dict(TORCHVISION_LOSS), "rpn": dict(TORCHVISION_LOSS)}


def check_reference_loss(cfg: Config) -> str | None:
    """Why ``cfg``'s loss cannot be torchvision's hard-wired one, or None if it is."""
    beta = cfg.loss.args.get("beta", 1 / 9)
    if cfg.loss.name != "smooth_l1" or cfg.loss.rpn_name is not None or set(cfg.loss.args) - {"beta"} \
            or abs(float(beta) - 1 / 9) > 1e-3 or cfg.loss.weight not in (None, 1.0):
        return ("torchvision's FasterRCNN has its regression loss hard-wired (smooth_l1, beta 1/9, weight 1, "
                "both stages); use --loss smooth_l1 with model.implementation=torchvision")
    return None
