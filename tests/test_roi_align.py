import pytest
import torch
import torchvision

from detector.model.roi_align import roi_align


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_values_and_gradients_equal_torchvision(aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 12, 10, dtype=torch.float64, generator=gen, requires_grad=True)
    xy = torch.rand(3, 9, 2, generator=gen, dtype=torch.float64) * 100 - 10
    rois = torch.cat((xy, xy + torch.rand(3, 9, 2, generator=gen, dtype=torch.float64) * 60), dim=-1)
    rois[0, 0] = torch.tensor([0.0, 0, 0, 0])  # degenerate
    rois[0, 1] = torch.tensor([70.0, 90, 200, 200])  # mostly outside the 80x96 map
    rois[1, 2] = torch.tensor([-30.0, -30, -12, -12])  # entirely outside: zeros
    ours = roi_align(features, rois, output_size=7, spatial_scale=1 / 8, sampling_ratio=sampling_ratio,
                     aligned=aligned)
    theirs = torchvision.ops.roi_align(features, list(rois), 7, 1 / 8, sampling_ratio, aligned)
    torch.testing.assert_close(ours, theirs)
    weights = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), features)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), features)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_constant_map_pools_to_constant():
    # Bilinear weights of in-range samples sum to 1: a constant map pools to the constant.
    features = torch.full((1, 2, 8, 8), 3.0)
    rois = torch.tensor([[[8.0, 8.0, 40.0, 24.0]]])
    out = roi_align(features, rois, output_size=4, spatial_scale=1 / 8, sampling_ratio=2)
    torch.testing.assert_close(out, torch.full((1, 2, 4, 4), 3.0))


def test_adaptive_sampling_ratio_rejected():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4), output_size=2, spatial_scale=1, sampling_ratio=0)
