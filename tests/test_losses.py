import pytest
import torch
import torch.nn.functional as F

from detector.model.boxes import BoxCoder
from detector.model.losses import REGISTRY, box_regression_loss, build_loss

DELTA_REFERENCES = {
    "l1": lambda p, t: F.l1_loss(p, t, reduction="none"),
    "l2": lambda p, t: F.mse_loss(p, t, reduction="none"),
    "smooth_l1": lambda p, t: F.smooth_l1_loss(p, t, reduction="none", beta=1 / 9),
}


@pytest.mark.parametrize("name", sorted(DELTA_REFERENCES))
def test_delta_losses_equal_torch_functional(name):
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(50, 4, generator=gen) * 2, torch.randn(50, 4, generator=gen)
    torch.testing.assert_close(build_loss(name)(pred, target), DELTA_REFERENCES[name](pred, target))


def test_smooth_l1_beta_parameter_and_hand_values():
    loss = build_loss("smooth_l1", {"beta": 0.5})
    x = torch.tensor([[0.25, 1.0, -2.0, 0.0]])
    # |x| < 0.5: 0.5 * 0.0625 / 0.5 = 0.0625; beyond: |x| - 0.25 -> 0.75, 1.75; 0 -> 0
    torch.testing.assert_close(loss(x, torch.zeros_like(x)), torch.tensor([[0.0625, 0.75, 1.75, 0.0]]))


def gradient(name, x, **params):
    x = x.clone().requires_grad_(True)
    build_loss(name, params)(x, torch.zeros_like(x)).sum().backward()
    return x.grad


def test_derivatives_textbook():
    x = torch.tensor([[-3.0, -0.05, 0.05, 2.0]])
    torch.testing.assert_close(gradient("l2", x), 2 * x)
    torch.testing.assert_close(gradient("l1", x), torch.sign(x))
    beta = 0.1  # x / beta inside (-beta, beta), +-1 beyond
    torch.testing.assert_close(gradient("smooth_l1", x, beta=beta), torch.tensor([[-1.0, -0.5, 0.5, 1.0]]))


def test_unknown_name_and_parameter_list_the_valid_ones():
    with pytest.raises(KeyError, match="valid losses: .*l1.*l2.*smooth_l1"):
        build_loss("huber2")
    with pytest.raises(TypeError, match="its parameters: beta"):
        build_loss("smooth_l1", {"gamma": 1.0})
    with pytest.raises(TypeError, match="parameters: none"):
        build_loss("l2", {"beta": 1.0})


def test_user_loss_from_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_losses.py").write_text(
        "def cubic(pred, target, scale=1.0):\n    return scale * (pred - target).abs() ** 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loss = build_loss("my_losses:cubic", {"scale": 2.0})
    assert loss.space == "deltas" and loss.default_weight == 1.0
    assert loss(torch.tensor([[2.0]]), torch.tensor([[0.0]])).item() == 16.0
    with pytest.raises(KeyError, match="cannot load"):
        build_loss("my_losses:missing")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_box_regression_loss_masks_background_and_stays_finite(name):
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    # Rows 1-3 are not foreground, with the boxes such rows really carry: zero-area padding as
    # reference and target (0/0 in encode), an inverted reference (log of a negative), and a
    # zero-area target on a real reference (log 0); row 4 predicts a huge offset.
    reference = torch.tensor([[0.0, 0, 10, 10], [0, 0, 0, 0], [20, 20, 5, 5], [5, 5, 20, 20], [5, 5, 20, 20],
                              [0, 0, 10, 10]])
    target = torch.tensor([[1.0, 1, 11, 12], [0, 0, 0, 0], [0, 0, 0, 0], [3, 3, 3, 3], [0, 0, 1, 1], [0, 0, 10, 10]])
    pred = torch.randn(6, 4)
    pred[4] = 1e4
    pred.requires_grad_(True)
    foreground = torch.tensor([True, False, False, False, False, True])
    loss = build_loss(name)
    total = box_regression_loss(loss, pred, target, reference, coder, foreground)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pred.grad).all()
    assert (pred.grad[1:5] == 0).all()  # rows that are not foreground contribute nothing
    rows = [0, 5]
    if loss.space == "deltas":
        expected = loss(pred[rows], coder.encode(target[rows], reference[rows])).sum()
    else:
        expected = loss(coder.decode(pred[rows], reference[rows]), target[rows]).sum()
    torch.testing.assert_close(total, expected)


def test_box_regression_loss_of_empty_input_is_zero():
    coder = BoxCoder()
    empty = torch.zeros(0, 4, requires_grad=True)
    total = box_regression_loss(build_loss("l2"), empty, torch.zeros(0, 4), torch.zeros(0, 4), coder,
                                torch.zeros(0, dtype=torch.bool))
    total.backward()
    assert total.item() == 0.0


# --- the rest of the registry: balanced L1 and the box-space family ------------------------

def test_balanced_l1_hand_worked():
    # alpha 0.5, gamma 1.5, beta 1: b = e^3 - 1 = 19.0855
    # x = 0.5: 0.5/b * (0.5 b + 1) * ln(0.5 b + 1) - 0.25 = 0.276199 * 2.355446 - 0.25 = 0.400573
    # x = 2:   1.5 * 2 + 1.5 / b - 0.5 = 2.578594;  x = 0: 0
    x = torch.tensor([[0.5, 2.0, 0.0, -2.0]])
    values = build_loss("balanced_l1")(x, torch.zeros_like(x))
    torch.testing.assert_close(values, torch.tensor([[0.400573, 2.578594, 0.0, 2.578594]]), atol=1e-5, rtol=0)
    # gradient alpha * ln(b x / beta + 1) inside, gamma beyond: at x = 0.5, 0.5 * ln(10.5428) = 1.177723
    grad = gradient("balanced_l1", torch.tensor([[0.5, 2.0, -2.0]]))
    torch.testing.assert_close(grad, torch.tensor([[1.177723, 1.5, -1.5]]), atol=1e-5, rtol=0)
    assert build_loss("balanced_l1", {"gamma": 2.0}).gradient_bound == 2.0


BOX_A = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
BOX_B = torch.tensor([[5.0, 0, 15, 10], [0, 0, 20, 10], [20, 0, 30, 10]])


def test_iou_losses_hand_worked():
    # pair 1: IoU 50 / 150 = 1/3; pair 2: 100 / 200 = 1/2; pair 3: disjoint, IoU 0
    torch.testing.assert_close(build_loss("iou")(BOX_A, BOX_B), torch.tensor([2 / 3, 0.5, 1.0]))
    log_values = build_loss("iou", {"mode": "log"})(BOX_A[:2], BOX_B[:2])
    torch.testing.assert_close(log_values, torch.tensor([1.098612, 0.693147]))  # ln 3, ln 2
    # GIoU pair 3: enclosure 300, union 200 -> GIoU = 0 - 100/300, loss 4/3
    torch.testing.assert_close(build_loss("giou")(BOX_A, BOX_B), torch.tensor([2 / 3, 0.5, 4 / 3]))


def test_eiou_hand_worked():
    # pair 1: 1 - 1/3 + centre distance 5^2 / enclosure diagonal (15^2 + 10^2) = 0.666667 + 0.076923
    # pair 2: 1 - 1/2 + 5^2 / (20^2 + 10^2) + width (10 - 20)^2 / 20^2 = 0.5 + 0.05 + 0.25
    torch.testing.assert_close(build_loss("eiou")(BOX_A[:2], BOX_B[:2]), torch.tensor([0.743590, 0.8]))


@pytest.mark.parametrize("name, reference", [
    ("giou", "generalized_box_iou_loss"), ("diou", "distance_box_iou_loss"), ("ciou", "complete_box_iou_loss")])
def test_box_losses_equal_torchvision_ops(name, reference):
    import torchvision

    gen = torch.Generator().manual_seed(5)
    xy = torch.rand(2, 200, 2, generator=gen) * 50
    boxes = torch.cat((xy, xy + torch.rand(2, 200, 2, generator=gen) * 30 + 1), dim=-1)
    expected = getattr(torchvision.ops, reference)(boxes[0], boxes[1], reduction="none")
    torch.testing.assert_close(build_loss(name)(boxes[0], boxes[1]), expected)


CASES = {
    "empty": (torch.zeros(0, 4), torch.zeros(0, 4)),
    "identical": (torch.tensor([[1.0, 2, 8, 9]]), torch.tensor([[1.0, 2, 8, 9]])),
    "zero_area": (torch.tensor([[5.0, 5, 5, 5]]), torch.tensor([[5.0, 5, 5, 5]])),
    "zero_area_vs_box": (torch.tensor([[5.0, 5, 5, 5]]), torch.tensor([[1.0, 2, 8, 9]])),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_loss_finite_on_edge_cases(name, case):
    pred, target = CASES[case]
    pred = pred.clone().requires_grad_(True)
    values = build_loss(name)(pred, target)
    values.sum().backward()
    assert torch.isfinite(values).all() and torch.isfinite(pred.grad).all()
    if case == "identical":
        assert values.abs().max().item() < 1e-6
    if case == "empty":
        assert values.numel() == 0


def test_registry_declares_spaces_and_published_weights():
    for name in ("l1", "l2", "smooth_l1", "balanced_l1"):
        assert build_loss(name).space == "deltas" and build_loss(name).default_weight == 1.0
    for name in ("iou", "giou", "diou", "ciou", "eiou"):
        assert build_loss(name).space == "boxes" and build_loss(name).default_weight == 10.0
    assert build_loss("smooth_l1").params == {"beta": pytest.approx(1 / 9)}  # defaults recorded


def test_parameters_are_coerced_to_their_defaults_type():
    # YAML 1.1 reads "1e-6" as a string; a loss must still get a number
    assert build_loss("giou", {"eps": "1e-6"}).params == {"eps": 1e-6}
    assert build_loss("smooth_l1", {"beta": 1}).params == {"beta": 1.0}
    with pytest.raises(ValueError, match="parameter 'beta' must be a number, got 'wide'"):
        build_loss("smooth_l1", {"beta": "wide"})
