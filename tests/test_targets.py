import pytest
import torch
import torchvision
from torchvision.models.detection._utils import Matcher

from detector.model.boxes import batched_box_iou
from detector.model.targets import assign, match, matched_flags, sample_balanced


def make_batch(seed, n=4, r=60, g=5):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, r, 2, generator=gen) * 80
    candidates = torch.cat((xy, xy + torch.rand(n, r, 2, generator=gen) * 40 + 4), dim=-1)
    gxy = torch.rand(n, g, 2, generator=gen) * 80
    gt = torch.cat((gxy, gxy + torch.rand(n, g, 2, generator=gen) * 40 + 4), dim=-1)
    counts = torch.tensor([g, 2, 0, 3])[:n]  # image 2 has no ground truth
    valid = torch.arange(g)[None, :] < counts[:, None]
    return candidates, gt, valid, counts


@pytest.mark.parametrize("low_quality", [False, True])
@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5)])
def test_match_equals_torchvision_matcher(low_quality, thresholds):
    high, low = thresholds
    candidates, gt, valid, counts = make_batch(0)
    ours = match(batched_box_iou(candidates, gt), valid, high_threshold=high, low_threshold=low,
                 allow_low_quality_matches=low_quality)
    matcher = Matcher(high, low, allow_low_quality_matches=low_quality)
    for i, count in enumerate(counts.tolist()):
        if count == 0:  # torchvision's RPN/RoIHeads handle empty ground truth outside the Matcher
            assert (ours[i] == -1).all()
            continue
        quality = torchvision.ops.box_iou(gt[i, :count], candidates[i])  # (G, R) as torchvision wants
        assert torch.equal(ours[i], matcher(quality))


def test_match_low_quality_promotes_best_anchor():
    # One ground truth [0,0,10,10]; candidates with IoU 0.5 and 0.25 -> both below 0.7.
    gt = torch.tensor([[[0.0, 0, 10, 10]]])
    candidates = torch.tensor([[[0.0, 0, 10, 5], [0.0, 0, 5, 5]]])
    valid = torch.tensor([[True]])
    without = match(batched_box_iou(candidates, gt), valid, high_threshold=0.7, low_threshold=0.3,
                    allow_low_quality_matches=False)
    with_lq = match(batched_box_iou(candidates, gt), valid, high_threshold=0.7, low_threshold=0.3,
                    allow_low_quality_matches=True)
    assert without.tolist() == [[-2, -1]]  # 0.5 between thresholds, 0.25 below
    assert with_lq.tolist() == [[0, -1]]  # the best candidate of the ground truth is promoted


def test_assign_labels_and_ignores_invalid_candidates():
    gt = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60]]])
    labels_gt = torch.tensor([[3, 5]])
    gt_valid = torch.tensor([[True, True]])
    candidates = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 61], [20, 20, 30, 30], [0, 0, 10, 10]]])
    candidate_valid = torch.tensor([[True, True, True, False]])
    labels, matched, index = assign(candidates, candidate_valid, gt, labels_gt, gt_valid, fg_iou_thresh=0.5,
                                    bg_iou_thresh=0.5, allow_low_quality_matches=False)
    assert labels.tolist() == [[3, 5, 0, -1]]
    assert matched[0, 1].tolist() == [50.0, 50.0, 60.0, 60.0]
    assert index[0, :2].tolist() == [0, 1]  # the foreground candidates' ground-truth boxes
    displaced = torch.tensor([[False, True]])  # per ground-truth box
    assert matched_flags(displaced, index)[0, :2].tolist() == [False, True]
    assert matched_flags(torch.zeros(1, 0, dtype=torch.bool), index).tolist() == [[False] * 4]


def test_assign_with_no_ground_truth_in_batch():
    candidates = torch.rand(2, 6, 4) * 10
    candidates[..., 2:] += candidates[..., :2] + 1
    labels, matched, _ = assign(candidates, None, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long),
                                torch.zeros(2, 0, dtype=torch.bool), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                                allow_low_quality_matches=True)
    assert (labels == 0).all() and matched.shape == (2, 6, 4)


def test_sampler_draws_exact_counts_and_never_ignored():
    gen = torch.Generator().manual_seed(3)
    labels = torch.full((3, 200), 0)
    labels[0, :10] = 1  # few positives: all 10 taken, 54 negatives
    labels[1, :150] = 2  # many positives: capped at 64 * 0.25 = 16, then 48 negatives
    labels[2, :] = -1  # nothing eligible
    labels[0, 100:] = -1  # ignored half of image 0 must never be drawn
    pos, neg, pos_index, pos_valid = sample_balanced(labels, batch_size_per_image=64, positive_fraction=0.25,
                                                     generator=gen)
    assert pos.sum(1).tolist() == [10, 16, 0]
    assert neg.sum(1).tolist() == [54, 48, 0]
    assert not (pos | neg)[labels == -1].any()
    assert not (pos & neg).any()
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    # the index lists exactly the sampled positives, padded to 64 * 0.25 = 16 entries
    assert pos_index.shape == (3, 16) and pos_valid.sum(1).tolist() == [10, 16, 0]
    for image in range(3):
        assert sorted(pos_index[image][pos_valid[image]].tolist()) == pos[image].nonzero().flatten().tolist()


def test_sampler_is_uniform_over_positives():
    labels = torch.zeros(1, 40, dtype=torch.long)
    labels[0, :20] = 1
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(40)
    for _ in range(400):
        pos, *_ = sample_balanced(labels, batch_size_per_image=20, positive_fraction=0.25, generator=gen)
        hits += pos[0].float()
    # each of the 20 positives is drawn with probability 5/20: expected 100 of 400 draws
    assert hits[:20].min() > 60 and hits[:20].max() < 140 and hits[20:].sum() == 0


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("low_quality", [False, True])
@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5)])
def test_sparse_anchor_matching_equals_torchvision_matcher(low_quality, thresholds, pruned):
    """The RPN's path (non-zero grid-anchor IoUs only) against torchvision's Matcher on the
    dense IoU of the same anchors, image by image. The boxes include ones larger than every
    anchor (whose best IoU is shared by many anchors: ties), ones partly outside the image,
    tiny ones, and an image without ground truth."""
    from detector.model.anchors import AnchorGenerator
    from detector.model.targets import label_sparse, matched_box

    high, low = thresholds
    generator = AnchorGenerator(sizes=[8, 16, 32, 64], aspect_ratios=[0.5, 1.0, 2.0], stride=8)
    h, w = 12, 15
    anchors = generator.grid_anchors(h, w, torch.device("cpu"), torch.float32)
    gen = torch.Generator().manual_seed(1)
    gxy = torch.rand(4, 6, 2, generator=gen) * 100
    gt = torch.cat((gxy, gxy + torch.rand(4, 6, 2, generator=gen) * 60 + 2), dim=-1)
    gt[0, 0] = torch.tensor([0.0, 0.0, 120.0, 96.0])  # the whole image: many tied anchors
    gt[1, 1] = torch.tensor([-30.0, 50.0, 20.0, 140.0])  # partly outside
    gt[3, 2] = torch.tensor([40.0, 40.0, 41.0, 41.5])  # tiny
    counts = torch.tensor([6, 3, 0, 4])
    valid = torch.arange(6)[None, :] < counts[:, None]
    overlaps = generator.nonzero_iou(gt, valid, h, w, low_threshold=low if pruned else None)
    positive, negative, best = label_sparse(overlaps, valid, len(anchors), high_threshold=high,
                                            low_threshold=low, allow_low_quality_matches=low_quality)
    # in Matcher's terms: the matched box for positives, -1 below the low threshold, -2 between
    ours = torch.where(positive, matched_box(best), torch.where(negative, -1, -2))
    dense = match(batched_box_iou(anchors[None].expand(4, -1, -1), gt), valid, high_threshold=high,
                  low_threshold=low, allow_low_quality_matches=low_quality)
    assert torch.equal(ours, dense)
    matcher = Matcher(high, low, allow_low_quality_matches=low_quality)
    for i, count in enumerate(counts.tolist()):
        if count == 0:
            assert (ours[i] == -1).all()
            continue
        assert torch.equal(ours[i], matcher(torchvision.ops.box_iou(gt[i, :count], anchors)))
    if low_quality:  # the whole-image box really produced a tie of several promoted anchors
        assert (ours[0] == 0).sum() > 1
    if pruned:  # small anchors inside the whole-image box were skipped
        assert len(overlaps.iou) < len(generator.nonzero_iou(gt, valid, h, w).iou)


def test_rpn_labels_equal_torchvision_on_the_benchmark_inputs():
    """The benchmark's inputs (anchors of 800x1333 images, 200,400 per image, and up to 20
    random boxes of 16-400 px): the RPN's labels and matched boxes equal torchvision's Matcher
    on every anchor, so the speed-up compares equal work."""
    from detector.engine.build import build_model
    from detector.engine.config import Config
    from detector.lab.benchmark import assignment_inputs
    from detector.model import FasterRCNN
    from detector.model.targets import label_sparse, matched_box

    inputs = assignment_inputs(2, "cpu", seed=3)
    rpn = build_model(Config(), num_classes=80).rpn
    gt_boxes, _, gt_valid = FasterRCNN.pad_targets(inputs["targets"], torch.device("cpu"))
    overlaps = rpn.anchor_generator.nonzero_iou(gt_boxes, gt_valid, 100, 167, low_threshold=0.3)
    positive, negative, best = label_sparse(overlaps, gt_valid, len(inputs["anchors"]), high_threshold=0.7,
                                            low_threshold=0.3, allow_low_quality_matches=True)
    ours = torch.where(positive, matched_box(best), torch.where(negative, -1, -2))
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    for i, target in enumerate(inputs["targets"]):
        expected = matcher(torchvision.ops.box_iou(target["boxes"], inputs["anchors"]))
        assert torch.equal(ours[i], expected)
        assert (expected >= 0).sum() > 0
