import pytest
import torch
import torch.nn.functional as F

from detector.boxes import BoxCoder
from detector.losses import REGISTRY, box_regression_loss, build_loss

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
    reference = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 10, 10]])
    target = torch.tensor([[1.0, 1, 11, 12], [0, 0, 0, 0], [0, 0, 10, 10]])  # row 2: zero-area padding
    pred = torch.randn(3, 4, requires_grad=True)
    foreground = torch.tensor([True, False, True])
    loss = build_loss(name)
    total = box_regression_loss(loss, pred, target, reference, coder, foreground)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pred.grad).all()
    assert (pred.grad[1] == 0).all()  # background contributes nothing
    expected = loss(pred[[0, 2]], coder.encode(target[[0, 2]], reference[[0, 2]])).sum()
    torch.testing.assert_close(total, expected)


def test_box_regression_loss_of_empty_input_is_zero():
    coder = BoxCoder()
    empty = torch.zeros(0, 4, requires_grad=True)
    total = box_regression_loss(build_loss("l2"), empty, torch.zeros(0, 4), torch.zeros(0, 4), coder,
                                torch.zeros(0, dtype=torch.bool))
    total.backward()
    assert total.item() == 0.0
