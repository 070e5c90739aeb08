"""RoIAlign as two batched matrix products.

Shape letters as in the ``detector`` package docstring: S RoIs per image, Q x Q output bins;
and g sampling points per bin along each axis.

RoIAlign averages bilinear samples on a regular g x g grid in each bin. Bilinear
interpolation is separable, a regular grid is a product of a row grid and a column grid, and
torchvision's out-of-range rule (a sample is zero when its y OR its x lies outside the map) is
a product too. So for one RoI

    out[c] = Ay @ F[c] @ Ax^T,   Ay: (Q, H) row weights,  Ax: (Q, W) column weights,

which equals ``torchvision.ops.roi_align`` exactly for a fixed ``sampling_ratio``. Forward
and backward are then dense batched matmuls: vectorised and multi-threaded, where
torchvision's CPU kernel scatters its backward one sample at a time and dominated our
training step. The cost grows with H * W, so this suits the small feature maps of this
project; the adaptive sampling ratio (``sampling_ratio <= 0``) is data-dependent per RoI and
is not supported.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _axis_weights(start: Tensor, length: Tensor, size: int, output_size: int, sampling_ratio: int) -> Tensor:
    """Interpolation weights of one axis: (N, S) RoI starts/lengths -> (N, S, Q, size).

    Mirrors torchvision's ``bilinear_interpolate``: samples beyond [-1, size] contribute 0,
    coordinates below 0 clamp to 0, and the last row/column is used for both neighbours.
    """
    bin_size = length / output_size  # (N, S)
    bins = torch.arange(output_size, device=start.device, dtype=start.dtype)
    offsets = (torch.arange(sampling_ratio, device=start.device, dtype=start.dtype) + 0.5) / sampling_ratio
    # (N, S, Q, g) sample coordinates
    coords = start[..., None, None] + (bins[:, None] + offsets[None, :]) * bin_size[..., None, None]
    inside = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0)
    low = coords.floor().clamp(max=size - 1)
    at_edge = low >= size - 1
    coords = torch.where(at_edge, low, coords)
    high = torch.where(at_edge, low, low + 1)
    frac = coords - low
    grid = torch.arange(size, device=start.device, dtype=start.dtype)  # (size,)
    weights = ((grid == low[..., None]) * (1 - frac)[..., None]
               + (grid == high[..., None]) * frac[..., None])  # (N, S, Q, g, size)
    weights = weights * inside[..., None]
    return weights.sum(dim=3) / sampling_ratio  # average over the g samples: (N, S, Q, size)


def roi_align(features: Tensor, rois: Tensor, *, output_size: int, spatial_scale: float,
              sampling_ratio: int, aligned: bool = True) -> Tensor:
    """RoIAlign of per-image RoIs.

    features: (N, C, H, W); rois: (N, S, 4) xyxy in input pixels (no gradient flows to
    them, as in torchvision). Returns (N*S, C, Q, Q), RoIs in image-major order, equal to
    ``torchvision.ops.roi_align(features, list(rois), output_size, spatial_scale,
    sampling_ratio, aligned)``.
    """
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1 for the separable RoIAlign, got {sampling_ratio}")
    n, c, h, w = features.shape
    s = rois.shape[1]
    q = output_size
    rois = rois.detach().to(features.dtype) * spatial_scale
    offset = 0.5 if aligned else 0.0
    start_x, start_y = rois[..., 0] - offset, rois[..., 1] - offset  # (N, S)
    width, height = rois[..., 2] - rois[..., 0], rois[..., 3] - rois[..., 1]
    if not aligned:  # torchvision's legacy mode forces RoIs to be at least 1x1
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    weights_y = _axis_weights(start_y, height, h, q, sampling_ratio)  # (N, S, Q, H)
    weights_x = _axis_weights(start_x, width, w, q, sampling_ratio)  # (N, S, Q, W)

    # Rows first: (N, S*Q, H) @ (N, H, C*W) -> (N, S*Q, C*W)
    rows = torch.bmm(weights_y.reshape(n, s * q, h), features.permute(0, 2, 1, 3).reshape(n, h, c * w))
    # Then columns: (N*S, Q*C, W) @ (N*S, W, Q) -> (N*S, Q*C, Q)
    pooled = torch.bmm(rows.reshape(n * s, q * c, w), weights_x.reshape(n * s, q, w).transpose(1, 2))
    return pooled.reshape(n * s, q, c, q).permute(0, 2, 1, 3)  # (N*S, C, Q, Q)
