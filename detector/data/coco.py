"""COCO-format detection datasets (the bundled shapes dataset and real COCO), and the shared
:class:`DetectionDataset` base that the VOC reader also builds on.

Layout on disk::

    root/annotations/instances_{split}.json
    root/{split}/<file_name of each image>

Tensor shapes: G boxes of one image; K foreground classes.

Every dataset carries two views of the same annotations:
- training targets per image: crowd objects removed, boxes clipped to the image, boxes with
  no width or height dropped, categories mapped to contiguous labels 1..K;
- ``coco``: an in-memory pycocotools ground truth restricted to this dataset's images and
  categories, with crowd annotations kept (COCOeval ignores detections matched to them), which
  the evaluator hands to COCOeval unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

logger = logging.getLogger(__name__)

Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, float]]  # (image, boxes) -> (image, boxes, scale)


@dataclass(frozen=True)
class ImageRecord:
    """One image and its training targets (crowd / difficult objects already left out)."""

    path: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray  # (G, 4) float32 xyxy, absolute pixels of the stored image
    labels: np.ndarray  # (G,) int64 in 1..K


class DetectionDataset(Dataset):
    """Images decoded to uint8 (3, H, W) plus targets; see ``__getitem__`` for the format.

    Subclasses parse their annotation format into ``records`` and a COCO-format ground-truth
    dict; this class cleans the training boxes, builds the pycocotools object and decodes.
    """

    def __init__(
        self,
        *,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        label_to_category_id: dict[int, int],
        coco_dataset: dict[str, Any],
        transform: Transform | None,
        source: str,
    ):
        self.records = _clean_boxes(records, source)
        self.class_names = list(class_names)
        self.label_to_category_id = dict(label_to_category_id)
        self.image_ids = [record.image_id for record in self.records]
        self.transform = transform
        self.coco = COCO()
        self.coco.dataset = coco_dataset
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
            self.coco.createIndex()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        """Returns image uint8 (3, H, W) and a target dict:

        boxes float32 (G, 4) xyxy in pixels of the returned image; labels int64 (G,) in 1..K;
        image_id (the id in ``coco``); scale (returned size / stored size, 1.0 without
        resizing); orig_size (h, w) of the stored image.
        """
        record = self.records[index]
        image = _decode(record.path)
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise ValueError(
                f"{record.path}: image is {image.shape[-1]}x{image.shape[-2]} pixels but its "
                f"annotations say {record.width}x{record.height}"
            )
        boxes = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)  # a copy: never alias the records
        scale = 1.0
        if self.transform is not None:
            image, boxes, scale = self.transform(image, boxes)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(record.labels, dtype=torch.int64),
            "image_id": record.image_id,
            "scale": scale,
            "orig_size": (record.height, record.width),
        }
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {len(self.class_names)} classes, "
                f"transform={self.transform!r})")


class CocoDetection(DetectionDataset):
    """A split of a COCO-format dataset: ``root/annotations/instances_{split}.json`` and
    images in ``root/{split}/``.

    ``categories``: subset of category names (empty = all). Contiguous labels 1..K follow
    ascending category id. ``max_images``: keep the first N image ids in ascending order.
    Images without (selected) annotations stay in as negatives. ``skip_missing_images``: leave
    out images whose file is missing, with a warning, instead of raising FileNotFoundError.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        categories: Sequence[str] = (),
        max_images: int | None = None,
        transform: Transform | None = None,
        skip_missing_images: bool = False,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"COCO dataset folder not found: {root}")
        ann_file = root / "annotations" / f"instances_{split}.json"
        if not ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
        image_dir = root / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {image_dir}")
        data = _load_json(ann_file)
        cats, images, annotations = _select(data, categories, max_images, ann_file)

        images = _drop_missing(images, image_dir, skip_missing_images, ann_file)
        kept_ids = {image["id"] for image in images}
        annotations = [ann for ann in annotations if ann["image_id"] in kept_ids]

        label_of = {cat["id"]: label for label, cat in enumerate(cats, start=1)}
        per_image: dict[int, list[dict]] = {image["id"]: [] for image in images}
        for ann in annotations:
            if not ann["iscrowd"]:
                per_image[ann["image_id"]].append(ann)
        records = []
        for image in images:
            anns = per_image[image["id"]]
            # float64 until the sum, so x + w is the float32 nearest to the true corner.
            xywh = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
            records.append(ImageRecord(
                path=str(image_dir / image["file_name"]),
                image_id=image["id"],
                height=int(image["height"]),
                width=int(image["width"]),
                boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32),
                labels=np.array([label_of[ann["category_id"]] for ann in anns], dtype=np.int64),
            ))
        super().__init__(
            records=records,
            class_names=[cat["name"] for cat in cats],
            label_to_category_id={label: cat_id for cat_id, label in label_of.items()},
            coco_dataset={"images": images, "annotations": annotations, "categories": cats},
            transform=transform,
            source=str(ann_file),
        )


# ----------------------------------------------------------------------------- helpers


def select_categories(requested: Sequence[str], available: Sequence[str], source: str) -> set[str]:
    """Validate a category subset by name; empty means all. Errors list the valid names."""
    if not requested:
        return set(available)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
            f"for {source}; valid names: {', '.join(available)}"
        )
    return set(requested)


# Fields this reader and pycocotools rely on, per section of an instances file.
_REQUIRED_FIELDS = {
    "categories": ("id", "name"),
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
}


def _load_json(path: Path) -> dict:
    """Read an instances file; any structural problem is a ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in _REQUIRED_FIELDS):
        raise ValueError(f"{path}: not a COCO instances file (needs lists {', '.join(_REQUIRED_FIELDS)})")
    for key, fields in _REQUIRED_FIELDS.items():
        for entry in data[key]:
            if not isinstance(entry, dict) or any(name not in entry for name in fields):
                raise ValueError(f"{path}: every entry of '{key}' needs {', '.join(fields)}; got {entry!r:.200}")
    for ann in data["annotations"]:
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{path}: annotation {ann['id']} has bbox {bbox!r}; expected [x, y, w, h]")
    return data


def _select(data: dict, categories: Sequence[str], max_images: int | None,
            ann_file: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """Apply the category and image subsets; returns (categories, images, annotations),
    categories and images sorted by id."""
    all_cats = sorted(data["categories"], key=lambda cat: cat["id"])
    wanted = select_categories(categories, [cat["name"] for cat in all_cats], str(ann_file))
    cats = [cat for cat in all_cats if cat["name"] in wanted]
    cat_ids = {cat["id"] for cat in cats}

    images = sorted(data["images"], key=lambda image: image["id"])
    if max_images is not None:
        images = images[:max_images]
    image_ids = {image["id"] for image in images}

    # COCOeval reads area and iscrowd; some COCO-format exporters omit them.
    annotations = [
        {"area": ann["bbox"][2] * ann["bbox"][3], "iscrowd": 0, **ann}
        for ann in data["annotations"]
        if ann["image_id"] in image_ids and ann["category_id"] in cat_ids
    ]
    return cats, images, annotations


def _drop_missing(images: list[dict], image_dir: Path, skip: bool, ann_file: Path) -> list[dict]:
    """Check every image file exists (one directory listing, not a stat per file)."""
    listed = set(os.listdir(image_dir))
    missing = [image for image in images
               if not (image["file_name"] in listed or (image_dir / image["file_name"]).is_file())]
    if not missing:
        return images
    first = image_dir / missing[0]["file_name"]
    if not skip:
        raise FileNotFoundError(
            f"image file not found: {first} ({len(missing)} of {len(images)} images listed in "
            f"{ann_file} are missing; set data.skip_bad_images=true to leave them out)"
        )
    logger.warning("%s: leaving out %d of %d images whose files are missing (first: %s)",
                   ann_file, len(missing), len(images), first)
    missing_ids = {image["id"] for image in missing}
    return [image for image in images if image["id"] not in missing_ids]


def _clean_boxes(records: Sequence[ImageRecord], source: str) -> list[ImageRecord]:
    """Clip training boxes to their image and drop those with no width or height.

    Dropped boxes are counted and reported in one warning per dataset, naming the files.
    """
    cleaned, dropped, files = [], 0, []
    for record in records:
        boxes = record.boxes.copy()
        np.clip(boxes[:, 0::2], 0, record.width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, record.height, out=boxes[:, 1::2])
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not valid.all():
            dropped += int((~valid).sum())
            files.append(os.path.basename(record.path))
        cleaned.append(ImageRecord(record.path, record.image_id, record.height, record.width,
                                   boxes[valid], record.labels[valid]))
    if dropped:
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        logger.warning("%s: dropped %d training boxes with zero or negative width or height "
                       "(after clipping to the image), in %s", source, dropped, shown)
    return cleaned


def _decode(path: str) -> Tensor:
    """Decode to uint8 (3, H, W) RGB, naming the file in any error."""
    try:
        return decode_image(path, mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except RuntimeError as exc:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}") from None
        raise RuntimeError(f"{path}: cannot decode image: {exc}") from exc
