import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detector.model.anchors import AnchorGenerator


def test_base_anchors_keep_area_and_ratio():
    gen = AnchorGenerator(sizes=[8, 32], aspect_ratios=[0.5, 1.0, 2.0], stride=8)
    base = gen.base_anchors()
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    # ratio-major: (0.5, 8), (0.5, 32), (1, 8), (1, 32), (2, 8), (2, 32); area = size^2, h/w = ratio
    torch.testing.assert_close(w * h, torch.tensor([64.0, 1024, 64, 1024, 64, 1024]))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 0.5, 1, 1, 2, 2]))
    assert gen.num_anchors_per_location == 6


def test_grid_anchors_are_centred_on_cells_in_head_order():
    gen = AnchorGenerator(sizes=[16], aspect_ratios=[1.0], stride=8)
    anchors = gen.grid_anchors(2, 3, torch.device("cpu"), torch.float32)
    # location-major, row by row: cell (y=0, x=1) is the second anchor, centred at (12, 4)
    assert anchors.shape == (6, 4)
    assert anchors[1].tolist() == [4.0, -4.0, 20.0, 12.0]
    assert anchors[5].tolist() == [12.0, 4.0, 28.0, 20.0]  # cell (1, 2): centre (20, 12)
    assert gen.grid_anchors(2, 3, torch.device("cpu"), torch.float32) is anchors  # cached


def test_same_shapes_as_torchvision_shifted_half_a_stride():
    sizes, ratios, stride = [8, 16, 32], [0.5, 1.0, 2.0], 8
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=stride).grid_anchors(
        4, 5, torch.device("cpu"), torch.float32)
    theirs_gen = TorchvisionAnchorGenerator(sizes=(tuple(sizes),), aspect_ratios=(tuple(ratios),))
    images = ImageList(torch.zeros(1, 3, 32, 40), [(32, 40)])
    (theirs,) = theirs_gen(images, [torch.zeros(1, 1, 4, 5)])
    # torchvision rounds its base anchors to integers and centres them on cell corners
    torch.testing.assert_close(ours - stride / 2, theirs, atol=0.5, rtol=0)


def test_corner_offset_gives_torchvision_anchors():
    # offset 0 puts anchors on cell corners as torchvision does; with integer half-sizes
    # (ratio 1, even sizes) torchvision's rounding changes nothing, so they are equal exactly.
    sizes, stride = [8, 16, 32], 8
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=[1.0], stride=stride, offset=0.0).grid_anchors(
        4, 5, torch.device("cpu"), torch.float32)
    theirs_gen = TorchvisionAnchorGenerator(sizes=(tuple(sizes),), aspect_ratios=((1.0,),))
    (theirs,) = theirs_gen(ImageList(torch.zeros(1, 3, 32, 40), [(32, 40)]), [torch.zeros(1, 1, 4, 5)])
    assert torch.equal(ours, theirs)
    assert ours[3].tolist() == [4.0, -4.0, 12.0, 4.0]  # cell (y=0, x=1), size 8: centre (8, 0)


def random_boxes(n, g, seed, scale=90.0):
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, g, 2, generator=gen) * scale
    return torch.cat((corner, corner + torch.rand(n, g, 2, generator=gen) * scale * 0.7), dim=-1)


@pytest.mark.parametrize("offset", [0.5, 0.0])
def test_nonzero_iou_lists_every_nonzero_entry_bit_for_bit(offset):
    from detector.model.boxes import batched_box_iou

    gen = AnchorGenerator(sizes=[8, 16, 32, 64], aspect_ratios=[0.5, 1.0, 2.0], stride=8, offset=offset)
    boxes = random_boxes(3, 7, seed=0)
    valid = torch.ones(3, 7, dtype=torch.bool)
    boxes[0, 5:] = 0  # padding rows
    valid[0, 5:] = False
    boxes[1, 0, 2] = boxes[1, 0, 0]  # zero width: no overlap with anything
    boxes[2, 1] = torch.tensor([-20.0, -10.0, 300.0, 8.0])  # beyond the image
    anchors = gen.grid_anchors(11, 13, torch.device("cpu"), torch.float32)  # (11*13*12, 4)
    dense = batched_box_iou(anchors[None].expand(3, -1, -1), boxes)  # (3, R, 7)
    dense[~valid[:, None, :].expand_as(dense)] = 0  # padding is not listed
    entries = gen.nonzero_iou(boxes, valid, 11, 13)
    sparse = torch.zeros_like(dense)
    r = anchors.shape[0]
    sparse[entries.candidate // r, entries.candidate % r, entries.box % 7] = entries.iou
    assert torch.equal(entries.candidate // r, entries.box // 7)  # both name the same image
    assert (entries.iou > 0).all()
    assert torch.equal(sparse, dense)  # the same values, and no non-zero entry missing
    empty = gen.nonzero_iou(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), 3, 4)
    assert empty.iou.numel() == 0
