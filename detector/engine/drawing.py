"""Detections drawn on images: boxes by ``torchvision.utils.draw_bounding_boxes``, one colour per
class (the same colours as the report's example grid), labels with the class name and score by
Pillow above each box, in a font sized to the image.

Shape letters as in the ``detector`` package docstring (D detections of one image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps, font_manager
from matplotlib.colors import to_hex, to_rgb
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

# tab20's strong colours (tab10's) first, then its light ones: 20 distinct classes before a repeat.
CLASS_COLOURS = [to_hex(c) for c in colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2]]
# draw_bounding_boxes needs a TrueType font for a size other than PIL's tiny default; matplotlib
# ships DejaVu Sans, so it is there wherever this project is installed.
FONT = font_manager.findfont("DejaVu Sans")
# Label height as a fraction of the drawn image's longer side (and its minimum in pixels).
FONT_FRACTION = 1 / 45
MIN_FONT_PX = 9


def class_colour(label: int) -> str:
    """The colour of contiguous class label 1..K (hex)."""
    return CLASS_COLOURS[(label - 1) % len(CLASS_COLOURS)]


def text_colour(colour: str) -> str:
    """Black or white, whichever reads better on ``colour`` (by its luminance)."""
    red, green, blue = to_rgb(colour)
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def draw_detections(image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor, class_names: Sequence[str],
                    shorter_side: int | None = None) -> Tensor:
    """``image`` uint8 (3, H, W) with ``boxes`` (D, 4) xyxy in its pixels, ``labels`` (D,) 1..K
    and ``scores`` (D,) drawn on it, at its own size or resized to ``shorter_side``; returns
    uint8 (3, H', W'). Each label ("class score") sits above its box where it fits, else inside
    it at the top; the best detections are drawn last, on top."""
    height, width = image.shape[-2:]
    if shorter_side is not None and shorter_side != min(height, width):
        scale = shorter_side / min(height, width)
        image = F.resize(image, [round(height * scale), round(width * scale)], antialias=True)
        boxes = boxes * boxes.new_tensor([image.shape[-1] / width, image.shape[-2] / height] * 2)
    if len(boxes) == 0:
        return image
    font_size = max(MIN_FONT_PX, round(max(image.shape[-2:]) * FONT_FRACTION))
    order = torch.argsort(scores).tolist()
    colours = [class_colour(int(labels[i])) for i in order]
    drawn = draw_bounding_boxes(image, boxes[order], colors=colours, width=max(1, round(font_size / 7)))
    picture = Image.fromarray(drawn.permute(1, 2, 0).numpy())
    pen, font = ImageDraw.Draw(picture), ImageFont.truetype(FONT, font_size)
    for i, colour in zip(order, colours):
        x1, y1 = float(boxes[i, 0]), float(boxes[i, 1])
        text = f"{class_names[int(labels[i]) - 1]} {float(scores[i]):.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1  # above the box where it fits
        pen.rectangle((x1, y, x1 + right - left + 2, y + bottom - top + 2), fill=colour)
        pen.text((x1 + 1 - left, y + 1 - top), text, fill=text_colour(colour), font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)
