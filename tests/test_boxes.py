import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from detector.model.boxes import BoxCoder, batched_box_iou, box_area, box_iou, clip_boxes, enclosing_box, paired_box_iou


def random_boxes(*shape, size=100.0, generator=None):
    xy = torch.rand(*shape, 2, generator=generator) * size
    wh = torch.rand(*shape, 2, generator=generator) * size / 2 + 1
    return torch.cat((xy, xy + wh), dim=-1)


def test_batched_iou_matches_torchvision_per_image():
    g = torch.Generator().manual_seed(0)
    boxes1, boxes2 = random_boxes(3, 7, generator=g), random_boxes(3, 5, generator=g)
    iou = batched_box_iou(boxes1, boxes2)
    assert iou.shape == (3, 7, 5)
    for i in range(3):
        torch.testing.assert_close(iou[i], torchvision.ops.box_iou(boxes1[i], boxes2[i]))


def test_flat_and_paired_iou_are_the_same_iou():
    g = torch.Generator().manual_seed(1)
    boxes1, boxes2 = random_boxes(6, generator=g), random_boxes(6, generator=g)
    torch.testing.assert_close(box_iou(boxes1, boxes2), torchvision.ops.box_iou(boxes1, boxes2))
    torch.testing.assert_close(paired_box_iou(boxes1, boxes2, eps=0.0), box_iou(boxes1, boxes2).diagonal())
    # [0,0,10,10] vs [5,0,15,10]: IoU 50 / 150; with eps, 50 / (150 + eps); enclosure [0,0,15,10]
    a, b = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 0, 15, 10]])
    torch.testing.assert_close(paired_box_iou(a, b, eps=50.0), torch.tensor([0.25]))
    torch.testing.assert_close(enclosing_box(a, b), torch.tensor([[0.0, 0, 15, 10]]))


def test_iou_hand_worked_and_degenerate():
    # [0,0,10,10] vs [5,0,15,10]: intersection 5*10 = 50, union 100 + 100 - 50 = 150 -> 1/3
    a = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 0, 0]]])
    b = torch.tensor([[[5.0, 0, 15, 10], [0, 0, 0, 0]]])
    iou = batched_box_iou(a, b)
    assert iou[0, 0, 0].item() == pytest.approx(1 / 3)
    # zero-area against zero-area is defined as 0, not nan
    assert iou[0, 1, 1].item() == 0.0
    assert torch.isfinite(iou).all()


def test_box_area_never_negative():
    assert box_area(torch.tensor([[0.0, 0, 4, 5], [5, 5, 1, 1]])).tolist() == [20.0, 0.0]


def test_clip_boxes_per_image_sizes():
    boxes = torch.tensor([[[-5.0, -5, 50, 50]], [[10.0, 10, 300, 300]]])
    sizes = torch.tensor([[40.0, 30.0], [100.0, 200.0]])  # (height, width)
    clipped = clip_boxes(boxes, sizes[:, None, 0], sizes[:, None, 1])
    assert clipped.tolist() == [[[0.0, 0.0, 30.0, 40.0]], [[10.0, 10.0, 200.0, 100.0]]]


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_matches_torchvision_and_round_trips(weights):
    g = torch.Generator().manual_seed(1)
    reference, boxes = random_boxes(50, generator=g), random_boxes(50, generator=g)
    ours = BoxCoder(weights=weights)
    theirs = TorchvisionBoxCoder(weights)
    deltas = ours.encode(boxes, reference)
    torch.testing.assert_close(deltas, theirs.encode_single(boxes, reference))
    torch.testing.assert_close(ours.decode(deltas, reference), boxes, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.decode(deltas, reference), theirs.decode_single(deltas, reference))


def test_box_coder_hand_worked_and_clamped():
    coder = BoxCoder()
    # reference centre (5, 5), size 10x10; target centre (7, 5), size 20x10
    deltas = coder.encode(torch.tensor([[-3.0, 0, 17, 10]]), torch.tensor([[0.0, 0, 10, 10]]))
    torch.testing.assert_close(deltas, torch.tensor([[0.2, 0.0, math.log(2.0), 0.0]]))
    # a wild dw is clamped at log(1000/16): width at most 10 * 1000/16 = 625
    decoded = coder.decode(torch.tensor([[0.0, 0.0, 50.0, 0.0]]), torch.tensor([[0.0, 0, 10, 10]]))
    assert decoded[0, 2] - decoded[0, 0] == pytest.approx(625.0)
