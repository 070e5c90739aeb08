"""Detections drawn on images with ``torchvision.utils.draw_bounding_boxes``: one colour per class
(the same colours as the report's example grid), labels with the class name and score in a
font sized to the image.

Shape letters as in the ``detector`` package docstring (D detections of one image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib import colormaps, font_manager
from matplotlib.colors import to_hex, to_rgb
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

# tab20's strong colours (tab10's) first, then its light ones: 20 distinct classes before a repeat.
CLASS_COLOURS = [to_hex(c) for c in colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2]]
# draw_bounding_boxes needs a TrueType font for a size other than PIL's tiny default; matplotlib
# ships DejaVu Sans, so it is there wherever this project is installed.
FONT = font_manager.findfont("DejaVu Sans")
# Images are drawn with their shorter side at least this long: on a 128 px image a readable
# label would cover most objects.
MIN_DRAWN_SIDE = 512
# Label height as a fraction of the drawn image's longer side (and its minimum in pixels).
FONT_FRACTION = 1 / 45
MIN_FONT_PX = 13


def class_colour(label: int) -> str:
    """The colour of contiguous class label 1..K (hex)."""
    return CLASS_COLOURS[(label - 1) % len(CLASS_COLOURS)]


def text_colour(colour: str) -> str:
    """Black or white, whichever reads better on ``colour`` (by its luminance)."""
    red, green, blue = to_rgb(colour)
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def draw_detections(image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor,
                    class_names: Sequence[str]) -> Tensor:
    """``image`` uint8 (3, H, W) with ``boxes`` (D, 4) xyxy in its pixels, ``labels`` (D,) 1..K
    and ``scores`` (D,) drawn on it; returns uint8 (3, H', W'), enlarged when the shorter side
    is below MIN_DRAWN_SIDE. The best detections are drawn last, on top."""
    height, width = image.shape[-2:]
    scale = max(1.0, MIN_DRAWN_SIDE / min(height, width))
    if scale > 1:
        image = F.resize(image, [round(height * scale), round(width * scale)], antialias=True)
        boxes = boxes * boxes.new_tensor([image.shape[-1] / width, image.shape[-2] / height] * 2)
    if len(boxes) == 0:
        return image
    font_size = max(MIN_FONT_PX, round(max(image.shape[-2:]) * FONT_FRACTION))
    order = torch.argsort(scores)
    colours = [class_colour(int(labels[i])) for i in order]
    return draw_bounding_boxes(
        image, boxes[order], labels=[f"{class_names[int(labels[i]) - 1]} {float(scores[i]):.2f}" for i in order],
        colors=colours, width=max(2, round(font_size / 7)), font=FONT, font_size=font_size, fill_labels=True,
        label_colors=[text_colour(c) for c in colours])
