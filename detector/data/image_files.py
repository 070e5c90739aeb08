"""Images without annotations, for prediction: files, folders and glob patterns -> a sorted list
of image files, and a dataset that decodes and resizes them as validation images are.

Shape letters as in the ``detector`` package docstring. Image ids are 1-based positions in the
sorted list, so the same inputs always get the same ids.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from detector.data.dataset import Transform
from detector.data.errors import DataError
from detector.data.images import load_image
from detector.data.layout import IMAGE_SUFFIXES

# A folder or a glob pattern contributes its files with IMAGE_SUFFIXES (the formats torchvision
# decodes); a file named on its own is tried whatever its name.


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files of ``inputs`` (files, folders, glob patterns such as ``photos/*.jpg``), each
    once, sorted by path. A folder contributes its own image files (not its subfolders'; a
    pattern with ``**`` reaches those). Nothing found for an input is a FileNotFoundError naming it."""
    found: dict[str, Path] = {}
    for item in map(str, inputs):
        path = Path(item)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not matches:
                raise FileNotFoundError(f"{item}: a folder without image files ({', '.join(IMAGE_SUFFIXES)})")
        elif glob.has_magic(item):
            matches = [Path(p) for p in glob.glob(item, recursive=True)
                       if os.path.isfile(p) and Path(p).suffix.lower() in IMAGE_SUFFIXES]
            if not matches:
                raise FileNotFoundError(f"{item}: no image file matches this pattern")
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder")
        for match in matches:
            found.setdefault(str(match.resolve()), match)
    return sorted(found.values(), key=str)


def relative_names(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the folder that holds all of them: unique names that keep the
    subfolders which tell apart files of the same name."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    return [str(p.relative_to(common)) for p in resolved]


class ImageFiles(Dataset):
    """Image files decoded to uint8 (3, H, W) and transformed (resized) as validation images
    are; item ``i`` is ``(image, info)`` with info ``image_id`` (i + 1), ``path`` and
    ``orig_size`` (h, w) of the file. A file that cannot be read is an error naming it, or,
    with ``skip_bad_images``, ``(None, info)`` with the ``error`` instead of ``orig_size``."""

    def __init__(self, paths: Sequence[Path], *, transform: Transform, skip_bad_images: bool = False):
        self.paths = list(paths)
        self.transform = transform
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, dict[str, Any]]:
        info: dict[str, Any] = {"image_id": index + 1, "path": str(self.paths[index])}
        try:
            image = load_image(str(self.paths[index]))
        except (DataError, FileNotFoundError) as exc:
            if not self.skip_bad_images:
                raise type(exc)(f"{exc} (set data.skip_bad_images=true, --skip-bad-images, to leave out such "
                                "images)") from None
            return None, {**info, "error": str(exc)}
        info["orig_size"] = tuple(image.shape[-2:])
        image, _, _ = self.transform(image, torch.zeros((0, 4)), None)
        return image, info


def collate_images(batch: list[tuple[Tensor | None, dict[str, Any]]]) -> tuple[list[Tensor], list[dict], list[dict]]:
    """[(image or None, info), ...] -> (images, their infos, infos of the images left out)."""
    read = [(image, info) for image, info in batch if image is not None]
    return [image for image, _ in read], [info for _, info in read], [info for image, info in batch if image is None]
