"""The model room on its own: the RPN, the RoI heads and the detector built from plain
constructor arguments, no configuration, with hand-worked losses.

Zeroed prediction layers make the losses exact: zero objectness logits give every sampled anchor
a binary cross-entropy of ln 2, zero class logits every sampled RoI a cross-entropy of
ln(K + 1), and zero deltas leave proposals and detections on their anchors and RoIs.
"""

import math

import pytest
import torch
from torch import nn

from detector.model import AnchorGenerator, Backbone, FasterRCNN, RegionProposalNetwork, RoIHeads, build_loss

IN_CHANNELS = 4


def _zero(*layers: nn.Module) -> None:
    for layer in layers:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def make_rpn(loss: str = "l1", zeroed: bool = True) -> RegionProposalNetwork:
    rpn = RegionProposalNetwork(
        in_channels=IN_CHANNELS, anchor_generator=AnchorGenerator(sizes=[16], aspect_ratios=[1.0], stride=8),
        regression_loss=build_loss(loss), regression_weight=1.0, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
        batch_size_per_image=8, positive_fraction=0.5, pre_nms_top_n={"train": 50, "test": 50},
        post_nms_top_n={"train": 5, "test": 5}, nms_thresh=0.7, min_size=1.0)
    if zeroed:
        _zero(rpn.head.objectness, rpn.head.deltas)
    return rpn


def make_roi_heads(loss: str = "l1", zeroed: bool = True) -> RoIHeads:
    heads = RoIHeads(
        in_channels=IN_CHANNELS, num_classes=2, spatial_scale=1 / 8, output_size=2, sampling_ratio=2,
        aligned=True, representation_size=8, predictor_init="detectron", regression_loss=build_loss(loss),
        regression_weight=1.0, fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=4, positive_fraction=0.5,
        score_thresh=0.0, nms_thresh=0.5, detections_per_image=10)
    if zeroed:
        _zero(heads.cls_score, heads.bbox_pred)
    return heads


def test_the_rpn_from_plain_arguments_gives_the_hand_worked_losses_and_its_anchors_as_proposals():
    rpn = make_rpn().train()
    features = torch.randn(1, IN_CHANNELS, 4, 4)  # a 32 x 32 image at stride 8
    # Anchor of cell (1, 1): centre (12, 12), 16 px: a ground-truth box on it has IoU 1.
    gt_boxes, gt_valid = torch.tensor([[[4.0, 4.0, 20.0, 20.0]]]), torch.tensor([[True]])
    proposals, valid, losses = rpn(features, torch.tensor([[32.0, 32.0]]), gt_boxes, gt_valid)
    assert set(losses) == {"loss_objectness", "loss_rpn_box"}
    # Zero logits: BCE = ln 2 for every sampled anchor, positive or negative, and the mean is ln 2.
    assert losses["loss_objectness"].item() == pytest.approx(math.log(2), abs=1e-6)
    # The positive anchor is the box itself: zero target deltas, zero predicted deltas.
    assert losses["loss_rpn_box"].item() == 0.0
    # Zero deltas and equal scores: the proposals are anchors, clipped to the image; anchors one
    # cell apart overlap with IoU 128 / 384 = 1/3 < 0.7, so NMS keeps them all.
    assert proposals.shape == (1, 5, 4) and valid.all()
    anchors = rpn.anchor_generator.grid_anchors(4, 4, torch.device("cpu"), torch.float32).clamp(0, 32)
    assert all((anchors == box).all(dim=1).any() for box in proposals[0])


def test_the_roi_heads_from_plain_arguments_give_the_hand_worked_losses():
    heads = make_roi_heads().train()
    features = torch.randn(1, IN_CHANNELS, 8, 8)
    gt_boxes, gt_labels, gt_valid = torch.tensor([[[10.0, 10.0, 30.0, 30.0]]]), torch.tensor([[1]]), torch.tensor([[True]])
    # A proposal 2 px right of the box (IoU 18/22: positive) and one far away (IoU 0: negative);
    # the ground truth joins them as a third candidate, so all three are sampled.
    proposals = torch.tensor([[[12.0, 10.0, 32.0, 30.0], [40.0, 40.0, 60.0, 60.0]]])
    losses = heads(features, proposals, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[64.0, 64.0]]),
                   gt_boxes, gt_labels, gt_valid)
    # Zero logits over K + 1 = 3 classes: cross-entropy ln 3 for each sampled RoI.
    assert losses["loss_classifier"].item() == pytest.approx(math.log(3), abs=1e-6)
    # L1 of zero deltas against the shifted proposal's target: dx = 10 * (20 - 22) / 20 = -1, the
    # rest 0; the ground truth's own target is 0. Sum 1 over 3 sampled RoIs.
    assert losses["loss_box_reg"].item() == pytest.approx(1 / 3, abs=1e-6)


def test_the_roi_heads_detect_every_class_on_every_proposal_with_zero_predictions():
    heads = make_roi_heads().eval()
    proposals = torch.tensor([[[4.0, 4.0, 20.0, 24.0], [30.0, 30.0, 60.0, 50.0]]])
    (detections,) = heads(torch.randn(1, IN_CHANNELS, 8, 8), proposals, torch.ones(1, 2, dtype=torch.bool),
                          torch.tensor([[64.0, 64.0]]))
    # softmax of zeros: 1/3 for each of the 2 classes, above the threshold; the boxes are
    # the proposals (zero deltas) and NMS runs per class, so all four survive.
    assert detections["scores"].tolist() == pytest.approx([1 / 3] * 4)
    assert sorted(detections["labels"].tolist()) == [1, 1, 2, 2]
    assert sorted(map(tuple, detections["boxes"].tolist())) == sorted(map(tuple, proposals[0].repeat(2, 1).tolist()))


def test_the_detector_from_plain_arguments_trains_and_detects_inside_each_image():
    torch.manual_seed(0)
    backbone = Backbone(name="resnet18", out_channels=IN_CHANNELS)
    detector = FasterRCNN(backbone=backbone, rpn=make_rpn("smooth_l1", zeroed=False),
                          roi_heads=make_roi_heads("giou", zeroed=False))
    images = [torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8), torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 28.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # an image without objects
    losses = detector.train()(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert backbone.stem[0].weight.grad.abs().sum() > 0  # the losses reach the trunk
    with torch.no_grad():
        detections = detector.eval()(images)
    for image, found in zip(images, detections):
        height, width = image.shape[1:]
        boxes = found["boxes"]
        assert len(boxes) > 0  # a score threshold of 0 keeps every proposal's best classes
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


def test_both_implementations_name_their_losses_alike():
    from detector.engine import build_model
    from detector.engine import config as config_lib

    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    keys = {}
    for implementation in ("ours", "torchvision"):
        cfg = config_lib.load(overrides=[f"model.implementation={implementation}", "train.gradient_stats=false"])
        keys[implementation] = set(build_model(cfg, num_classes=2).train()(images, targets))
    assert keys["ours"] == keys["torchvision"] == {"loss_objectness", "loss_rpn_box", "loss_classifier", "loss_box_reg"}
