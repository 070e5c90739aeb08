"""Grid anchors for one feature map.

Shapes: A anchors per location (len(sizes) * len(aspect_ratios)), H x W feature locations,
R = H * W * A anchors per image, ordered location-major (the order the RPN head's outputs are
flattened in: ``(N, A*4, H, W) -> (N, H*W*A, 4)``).
"""

from __future__ import annotations

import torch
from torch import Tensor


class AnchorGenerator:
    """Anchors of every size and aspect ratio centred on each cell of a stride-``stride`` grid.

    Aspect ratio is height / width at constant area, as in torchvision. Anchors are centred
    on the cell centre ``(i + 0.5) * stride`` (torchvision uses the cell corner ``i * stride``,
    which shifts every anchor half a stride up and left). They are cached per
    (grid size, device, dtype): the grid of a batch only changes with the padded input size.
    """

    def __init__(self, *, sizes: list[int], aspect_ratios: list[float], stride: int):
        self.sizes = list(sizes)
        self.aspect_ratios = list(aspect_ratios)
        self.stride = stride
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def base_anchors(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """(A, 4) anchors centred on (0, 0), ratio-major as torchvision orders them."""
        sizes = torch.as_tensor(self.sizes, dtype=dtype, device=device)
        ratios = torch.as_tensor(self.aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        widths = (w_ratios[:, None] * sizes[None, :]).reshape(-1)  # (A,)
        heights = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
        return torch.stack((-widths, -heights, widths, heights), dim=1) / 2

    def grid_anchors(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(H*W*A, 4) anchors for an H x W feature map, in input-image pixels."""
        key = (height, width, str(device), dtype)
        if key not in self._cache:
            centres_x = (torch.arange(width, dtype=dtype, device=device) + 0.5) * self.stride
            centres_y = (torch.arange(height, dtype=dtype, device=device) + 0.5) * self.stride
            cy, cx = torch.meshgrid(centres_y, centres_x, indexing="ij")  # (H, W)
            shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
            base = self.base_anchors(dtype, device)[None]  # (1, A, 4)
            self._cache[key] = (shifts + base).reshape(-1, 4)
        return self._cache[key]
