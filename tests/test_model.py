import pytest
import torch

from detector.engine import config as config_lib
from detector.engine.build import build_model
from detector.model.losses import REGISTRY

SMALL = ["model.feature_channels=32", "model.representation_size=64", "model.box_batch_size_per_image=32",
         "model.rpn_pre_nms_top_n_train=200", "model.rpn_post_nms_top_n_train=50"]


def batch(seed=0, empty_last=True):
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=gen),
              torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=gen)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 52.0, 20.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([3])}]
    if empty_last:
        targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    return images, targets


def test_preprocess_pads_to_16_and_keeps_sizes():
    model = build_model(config_lib.load(overrides=SMALL), num_classes=3)
    images, _ = batch()
    padded, sizes = model.preprocess(images)
    assert padded.shape == (2, 3, 64, 80)  # 64x80 and 48x64 -> common 64x80, multiples of 16
    assert sizes.tolist() == [[64.0, 80.0], [48.0, 64.0]]
    assert (padded[1, :, 48:, :] == 0).all()  # padding is zero after normalisation
    expected = (images[0][0, 0, 0].float() - model.pixel_mean[0, 0, 0, 0]) / model.pixel_std[0, 0, 0, 0]
    torch.testing.assert_close(padded[0, 0, 0, 0], expected)


def test_pad_targets_masks_padding():
    _, targets = batch(empty_last=True)
    boxes, labels, valid = build_model(config_lib.load(overrides=SMALL), num_classes=3).pad_targets(targets, "cpu")
    assert boxes.shape == (2, 2, 4) and valid.tolist() == [[True, True], [False, False]]
    assert labels.tolist() == [[1, 2], [0, 0]]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_loss_trains_a_few_steps_with_finite_values(name):
    torch.manual_seed(0)
    model = build_model(config_lib.load(overrides=SMALL + [f"loss.name={name}"]), num_classes=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(3):
        images, targets = batch(step, empty_last=step == 1)  # an image without boxes, too
        losses = model(images, targets)
        assert set(losses) == {"loss_objectness", "loss_rpn_box", "loss_classifier", "loss_box_reg"}
        total = sum(losses.values())
        assert torch.isfinite(total), (name, step, losses)
        optimizer.zero_grad()
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()


def test_inference_returns_boxes_inside_each_image():
    model = build_model(config_lib.load(overrides=SMALL + ["model.box_score_thresh=0.0"]), num_classes=3).eval()
    images, _ = batch()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for image, det in zip(images, detections):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])
        assert 0 < len(det["boxes"]) <= 100
        assert (det["boxes"][:, 2] <= image.shape[2]).all() and (det["boxes"][:, 3] <= image.shape[1]).all()
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()  # best first


def test_training_requires_targets():
    model = build_model(config_lib.load(overrides=SMALL), num_classes=3)
    with pytest.raises(ValueError, match="targets are required"):
        model(batch()[0])


def test_rpn_loss_has_its_own_parameters_and_weight():
    cfg = config_lib.load(overrides=SMALL + ["loss.name=smooth_l1", "loss.args={beta: 0.5}", "loss.rpn_name=giou"])
    model = build_model(cfg, num_classes=3)
    assert model.roi_heads.regression_loss.params == {"beta": 0.5} and model.roi_heads.regression_weight == 1.0
    assert model.rpn.regression_loss.name == "giou" and model.rpn.regression_weight == 10.0  # giou's default
    cfg = config_lib.load(overrides=SMALL + ["loss.name=l1", "loss.weight=2", "loss.rpn_name=smooth_l1",
                                             "loss.rpn_args={beta: 0.2}", "loss.rpn_weight=3"])
    model = build_model(cfg, num_classes=3)
    assert model.roi_heads.regression_weight == 2.0
    assert model.rpn.regression_loss.params == {"beta": 0.2} and model.rpn.regression_weight == 3.0
    shared = build_model(config_lib.load(overrides=SMALL + ["loss.name=l2", "loss.weight=4"]), num_classes=3)
    assert shared.rpn.regression_loss.name == "l2" and shared.rpn.regression_weight == 4.0


@pytest.mark.parametrize("aligned", [True, False])
def test_torchvision_conventions_reach_anchors_and_roi_align(aligned):
    import torchvision

    offset = 0.5 if aligned else 0.0
    cfg = config_lib.load(overrides=SMALL + [f"model.anchor_offset={offset}", f"model.roi_aligned={aligned}"])
    model = build_model(cfg, num_classes=3).eval()
    anchors = model.rpn.anchor_generator.grid_anchors(2, 3, torch.device("cpu"), torch.float32)
    # cell (0, 0), the first square anchor (ratio 1 is the second ratio: index 4 of 12), size 8
    assert anchors[4].tolist() == [8 * offset - 4, 8 * offset - 4, 8 * offset + 4, 8 * offset + 4]
    features = torch.randn(2, 32, 8, 10)
    rois = torch.tensor([[[0.0, 0.0, 30.0, 30.0]], [[10.0, 5.0, 60.0, 40.0]]])
    logits, _ = model.roi_heads.predict(features, rois)
    pooled = torchvision.ops.roi_align(features, list(rois), 7, 1 / 8, 2, aligned)
    heads = model.roi_heads
    torch.testing.assert_close(logits.flatten(0, 1), heads.cls_score(heads.box_head(pooled)))


def test_predictor_initialisation_follows_the_option():
    torch.manual_seed(0)
    detectron = build_model(config_lib.load(overrides=SMALL), num_classes=3).roi_heads
    torch.manual_seed(0)
    default = build_model(config_lib.load(overrides=SMALL + ["model.predictor_init=torchvision"]),
                          num_classes=3).roi_heads
    # Detectron: normal(0.01) and normal(0.001) weights, zero biases (64 x 4 and 64 x 16 draws).
    assert abs(detectron.cls_score.weight.std().item() - 0.01) < 0.002
    assert abs(detectron.bbox_pred.weight.std().item() - 0.001) < 0.0002
    assert not detectron.cls_score.bias.any() and not detectron.bbox_pred.bias.any()
    # nn.Linear's default: uniform in +-1/sqrt(64) = +-0.125, standard deviation 0.125/sqrt(3) = 0.072.
    for layer in (default.cls_score, default.bbox_pred):
        assert layer.weight.abs().max().item() <= 0.125 and abs(layer.weight.std().item() - 0.072) < 0.01
        assert layer.bias.abs().max().item() <= 0.125 and layer.bias.any()


def test_every_roi_align_kernel_gives_the_same_predictions(monkeypatch):
    import detector.model.roi_heads as roi_heads

    features = torch.randn(2, 32, 8, 10)
    rois = torch.tensor([[[0.0, 0.0, 30.0, 30.0]], [[10.0, 5.0, 60.0, 40.0]]])
    models, predictions = {}, {}
    for kernel in ("auto", "separable", "torchvision"):
        torch.manual_seed(0)
        models[kernel] = build_model(config_lib.load(overrides=[*SMALL, f"model.roi_align_kernel={kernel}"]),
                                     num_classes=3).eval()
        predictions[kernel] = models[kernel].roi_heads.predict(features, rois)
    torch.testing.assert_close(predictions["separable"], predictions["torchvision"])
    torch.testing.assert_close(predictions["auto"], predictions["separable"])  # small maps: separable
    # Large feature maps: "auto" falls back to torchvision's kernel.
    monkeypatch.setattr(roi_heads, "SEPARABLE_ROI_ALIGN_MAX_ELEMENTS", 0)
    torch.testing.assert_close(models["auto"].roi_heads.predict(features, rois), predictions["torchvision"])


@pytest.mark.parametrize("name", ["smooth_l1", "giou"])
def test_mixed_precision_keeps_boxes_and_losses_in_fp32(name):
    """Under bf16 autocast (the GPU preset's precision; the CPU runs the same code path) the
    convolutions and matmuls run in bf16, but anchors, proposals, losses and detections stay
    fp32: bf16 has an 8-bit mantissa, so a coordinate near 100 px would be rounded to 0.5 px."""
    torch.manual_seed(0)
    model = build_model(config_lib.load(overrides=SMALL + [f"loss.name={name}"]), num_classes=3).train()
    images, targets = batch(0, empty_last=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.backbone(model.preprocess(images)[0])
        proposals, _, _ = model.rpn(features, model.preprocess(images)[1])
        detections = model(images)
    assert features.dtype == torch.bfloat16  # autocast is really on
    assert proposals.dtype == torch.float32
    # fp32 proposals are not confined to the bf16 grid (multiples of 0.25 px between 32 and 64 px)
    assert ((proposals * 4) != (proposals * 4).round()).any()
    assert all(d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32 for d in detections)


@pytest.mark.parametrize("name", ["smooth_l1", "giou"])
def test_rpn_losses_equal_the_dense_computation(name):
    """The RPN gathers its sampled positives and uses the separable anchor IoU; the result
    equals labelling every anchor with the generic IoU and masking the regression loss."""
    from detector.model.losses import box_regression_loss
    from detector.model.targets import assign, sample_balanced

    torch.manual_seed(0)
    rpn = build_model(config_lib.load(overrides=SMALL + [f"loss.name={name}"]), num_classes=3).rpn
    n, h, w = 2, 6, 8
    r = h * w * rpn.anchor_generator.num_anchors_per_location
    objectness, deltas = torch.randn(n, r), torch.randn(n, r, 4) * 0.1
    gt_boxes = torch.tensor([[[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 52.0, 20.0]], [[10.0, 10.0, 20.0, 30.0], [0, 0, 0, 0]]])
    gt_valid = torch.tensor([[True, True], [True, False]])
    torch.manual_seed(1)
    losses = rpn.losses(objectness, deltas, (h, w), gt_boxes, gt_valid)

    anchors = rpn.anchor_generator.grid_anchors(h, w, torch.device("cpu"), torch.float32)[None].expand(n, -1, -1)
    labels, matched, _ = assign(anchors, None, gt_boxes, gt_valid.long(), gt_valid, fg_iou_thresh=0.7,
                             bg_iou_thresh=0.3, allow_low_quality_matches=True)
    torch.manual_seed(1)
    positive, negative, _, _ = sample_balanced(labels, batch_size_per_image=256, positive_fraction=0.5)
    num_sampled = (positive | negative).sum()
    expected = box_regression_loss(rpn.regression_loss, deltas, matched, anchors, rpn.coder, positive)
    assert positive.sum() > 0
    torch.testing.assert_close(losses["loss_rpn_box"], rpn.regression_weight * expected / num_sampled)


def crowded_batch(seed=0):
    """Images almost covered by ground truth (cells in a blood smear), with different box counts
    per image, so the padded ground truth has zero-area rows and negatives are scarce."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=gen) for _ in range(2)]
    grid = [[x, y, x + 16.0, y + 16.0] for x in range(0, 64, 16) for y in range(0, 64, 16)]  # 16 boxes tile the image
    targets = [{"boxes": torch.tensor(grid), "labels": torch.randint(1, 4, (16,), generator=gen)},
               {"boxes": torch.tensor(grid[:5]), "labels": torch.randint(1, 4, (5,), generator=gen)}]
    return images, targets


CROWDED = SMALL + ["model.box_batch_size_per_image=64", "model.rpn_post_nms_top_n_train=8"]


def test_crowded_images_sample_padding_rows():
    model = build_model(config_lib.load(overrides=CROWDED), num_classes=3).train()
    images, targets = crowded_batch()
    gt_boxes, gt_labels, gt_valid = model.pad_targets(targets, "cpu")
    proposals = torch.tensor([[0.0, 0, 16, 16]]).repeat(2, 8, 1)  # (N, P, 4): all on one cell
    proposal_valid = torch.zeros(2, 8, dtype=torch.bool)
    proposal_valid[:, 0] = True
    rois, labels, matched, _ = model.roi_heads.sample_rois(proposals, proposal_valid, gt_boxes, gt_labels, gt_valid)
    padding = (labels == -1) & (rois == 0).all(-1) & (rois[..., 2] - rois[..., 0] == 0)
    assert padding[1].sum() == 11  # image 1's 11 padded ground-truth rows are drawn, as zero-area boxes
    assert (labels[1] == 0).sum() == 0  # and no negative exists there


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_padding_and_background_rows_keep_every_loss_and_gradient_finite(name):
    """Through the real path: RPN and box-head sampling on crowded images draw padding rows whose
    boxes are (0, 0, 0, 0); every loss and every gradient must stay finite."""
    torch.manual_seed(0)
    model = build_model(config_lib.load(overrides=CROWDED + [f"loss.name={name}"]), num_classes=3).train()
    for seed in range(3):
        images, targets = crowded_batch(seed)
        losses = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values()), (name, losses)
        model.zero_grad()
        sum(losses.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
