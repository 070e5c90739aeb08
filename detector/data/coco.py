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

Unusable files are errors that name the file and the problem: DataError for a malformed or
inconsistent instances file or an undecodable image, FileNotFoundError for a missing one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from detector.data.errors import DataError

logger = logging.getLogger(__name__)

# (image, boxes, generator for random choices) -> (image, boxes, scale)
Transform = Callable[[Tensor, Tensor, "torch.Generator | None"], tuple[Tensor, Tensor, float]]


@dataclass(frozen=True)
class ImageRecord:
    """One image and its training targets (crowd / difficult objects already left out)."""

    path: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray  # (G, 4) float32 xyxy, absolute pixels of the stored image (readers may pass float64)
    labels: np.ndarray  # (G,) int64 in 1..K


class DetectionDataset(Dataset):
    """Images decoded to uint8 (3, H, W) plus targets; see ``__getitem__`` for the format.

    Subclasses parse their annotation format into ``records`` and a COCO-format ground-truth
    dict; this class cleans the training boxes, builds the pycocotools object and decodes.
    ``source`` is the annotation file that log lines and errors name.
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
        self.source = source
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

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        """``key``: an index, or (index, draw) from :class:`~detector.data.sampler.EpochSampler`,
        whose draw seeds this image's random augmentation. Returns image uint8 (3, H, W) and a
        target dict:

        boxes float32 (G, 4) xyxy in pixels of the returned image; labels int64 (G,) in 1..K;
        image_id (the id in ``coco``); scale (returned size / stored size, 1.0 without
        resizing); orig_size (h, w) of the stored image.
        """
        index, draw = key if isinstance(key, tuple) else (key, None)
        record = self.records[index]
        try:
            image = load_image(record.path)
        except DataError as exc:
            raise DataError(f"{exc} (set data.skip_bad_images=true to leave out such images)") from None
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise DataError(
                f"{record.path}: image is {image.shape[-1]}x{image.shape[-2]} pixels but "
                f"{self.annotation_file(record)} says {record.width}x{record.height}"
            )
        boxes = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)  # a copy: never alias the records
        scale = 1.0
        if self.transform is not None:
            generator = torch.Generator().manual_seed(draw) if draw is not None else None
            image, boxes, scale = self.transform(image, boxes, generator)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(record.labels, dtype=torch.int64),
            "image_id": record.image_id,
            "scale": scale,
            "orig_size": (record.height, record.width),
        }
        return image, target

    def annotation_file(self, record: ImageRecord) -> str:
        """The file that holds ``record``'s annotations."""
        return self.source

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {len(self.class_names)} classes, "
                f"transform={self.transform!r})")


class CocoDetection(DetectionDataset):
    """A split of a COCO-format dataset: ``root/annotations/instances_{split}.json`` and
    images in ``root/{split}/``.

    ``categories``: subset of category names (empty = all). Contiguous labels 1..K follow
    ascending category id. ``max_images``: keep the first N image ids in ascending order.
    Images without (selected) annotations stay in as negatives. A missing image file is a
    FileNotFoundError; with ``skip_bad_images`` every image is decoded once instead, and those
    missing or undecodable are left out with a warning.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        categories: Sequence[str] = (),
        max_images: int | None = None,
        transform: Transform | None = None,
        skip_bad_images: bool = False,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"COCO dataset folder not found: {root}")
        ann_file = root / "annotations" / f"instances_{split}.json"
        if not ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {ann_file}{_available_splits(root)}")
        image_dir = root / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {image_dir}")
        data = _load_json(ann_file)
        cats, images, annotations = _select(data, categories, max_images, ann_file)

        if skip_bad_images:
            bad = find_bad_images([image_dir / image["file_name"] for image in images], str(ann_file))
            images = [image for image in images if str(image_dir / image["file_name"]) not in bad]
            kept_ids = {image["id"] for image in images}
            annotations = [ann for ann in annotations if ann["image_id"] in kept_ids]
        else:
            _require_files(images, image_dir, ann_file)

        label_of = {cat["id"]: label for label, cat in enumerate(cats, start=1)}
        per_image: dict[int, list[dict]] = {image["id"]: [] for image in images}
        for ann in annotations:
            if not ann["iscrowd"]:
                per_image[ann["image_id"]].append(ann)
        records = []
        for image in images:
            anns = per_image[image["id"]]
            # float64 until clipped, so x + w rounds once, to the float32 nearest the true corner.
            xywh = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
            records.append(ImageRecord(
                path=str(image_dir / image["file_name"]),
                image_id=image["id"],
                height=int(image["height"]),
                width=int(image["width"]),
                boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
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


# A side beyond PNG's limit (JPEG stops at 65535) is a corrupt value, not an image.
MAX_IMAGE_SIDE = 2**31 - 1


def select_categories(requested: Sequence[str], available: Sequence[str], source: str) -> set[str]:
    """Validate a category subset by name; empty means all. Errors list the valid names."""
    if not requested:
        return set(available)
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise DataError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
            f"for {source}; valid names: {', '.join(available)}"
        )
    return set(requested)


def _is_finite_number(value: Any) -> bool:
    """An int or a float (not a bool) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _available_splits(root: Path) -> str:
    """A hint for a mistyped split: the splits that ``root/annotations`` holds."""
    splits = sorted(path.name[len("instances_"):-len(".json")]
                    for path in (root / "annotations").glob("instances_*.json"))
    return f" (splits found: {', '.join(splits)})" if splits else ""


# Fields this reader and pycocotools rely on, per section of an instances file.
_REQUIRED_FIELDS = {
    "categories": ("id", "name"),
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
}


def _load_json(path: Path) -> dict:
    """Read an instances file; any structural problem is a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as exc:  # bad syntax or UTF-8, a 5000-digit int, deep nesting
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in _REQUIRED_FIELDS):
        raise DataError(f"{path}: not a COCO instances file (needs lists {', '.join(_REQUIRED_FIELDS)})")
    for key, fields in _REQUIRED_FIELDS.items():
        for entry in data[key]:
            if not isinstance(entry, dict) or any(name not in entry for name in fields):
                raise DataError(f"{path}: every entry of '{key}' needs {', '.join(fields)}; got {entry!r:.200}")
    if not data["images"]:
        raise DataError(f"{path}: lists no images")
    _check_fields(data, path)
    return data


def _check_fields(data: dict, path: Path) -> None:
    """Types, unique ids and cross-references; a failure names the entry (by its id once that
    is valid) and the field."""

    def wrong(entry: str, field: str, value: Any, expected: str) -> DataError:
        return DataError(f"{path}: {entry}: '{field}' is {value!r:.100}; expected {expected}")

    def unique_ids(key: str, singular: str) -> set[int]:
        seen: set[int] = set()
        for index, entry in enumerate(data[key]):
            if not _is_int(entry["id"]):
                raise wrong(f"{key}[{index}]", "id", entry["id"], "an integer")
            if entry["id"] in seen:
                raise DataError(f"{path}: {singular} id {entry['id']} occurs more than once in '{key}'")
            seen.add(entry["id"])
        return seen

    category_ids = unique_ids("categories", "category")
    image_ids = unique_ids("images", "image")
    unique_ids("annotations", "annotation")  # pycocotools keeps one annotation per id
    for cat in data["categories"]:
        if not isinstance(cat["name"], str):
            raise wrong(f"category {cat['id']}", "name", cat["name"], "a string")
    for image in data["images"]:
        name = image["file_name"]
        if not isinstance(name, str) or not name or "\0" in name:
            raise wrong(f"image {image['id']}", "file_name", name, "a file name")
        for side in ("width", "height"):
            value = image[side]
            if not (_is_finite_number(value) and value == int(value) and 1 <= value <= MAX_IMAGE_SIDE):
                raise wrong(f"image {image['id']}", side, value, f"a whole number of pixels from 1 to {MAX_IMAGE_SIDE}")
    for ann in data["annotations"]:
        entry = f"annotation {ann['id']}"
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_finite_number, bbox))):
            raise wrong(entry, "bbox", bbox, "[x, y, w, h], 4 finite numbers")
        if not (_is_int(ann["image_id"]) and ann["image_id"] in image_ids):
            raise wrong(entry, "image_id", ann["image_id"], "the id of an entry of 'images'")
        if not (_is_int(ann["category_id"]) and ann["category_id"] in category_ids):
            raise wrong(entry, "category_id", ann["category_id"], "the id of an entry of 'categories'")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise wrong(entry, "iscrowd", ann["iscrowd"], "0 or 1")
        if "area" in ann and not _is_finite_number(ann["area"]):
            raise wrong(entry, "area", ann["area"], "a finite number")


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


def _require_files(images: list[dict], image_dir: Path, ann_file: Path) -> None:
    """Every image file must exist (one directory listing, not a stat per file)."""
    listed = set(os.listdir(image_dir))
    missing = [image for image in images
               if not (image["file_name"] in listed or (image_dir / image["file_name"]).is_file())]
    if missing:
        raise FileNotFoundError(
            f"image file not found: {image_dir / missing[0]['file_name']} ({len(missing)} of {len(images)} "
            f"images listed in {ann_file} are missing; set data.skip_bad_images=true to leave them out)"
        )


_PROGRESS_EVERY_S = 30.0


def find_bad_images(paths: Sequence[Path], source: str) -> set[str]:
    """Decode every image once; returns the paths of those missing or undecodable, counted in
    one warning that shows the first problem. When none is readable: DataError."""
    problems: dict[str, str] = {}
    reported = time.monotonic()
    for done, path in enumerate(paths, start=1):
        try:
            load_image(str(path))
        except (DataError, FileNotFoundError) as exc:
            problems[str(path)] = str(exc)
        if time.monotonic() - reported > _PROGRESS_EVERY_S:
            logger.info("%s: checked %d of %d images", source, done, len(paths))
            reported = time.monotonic()
    if problems:
        first = next(iter(problems.values()))
        if len(problems) == len(paths):
            raise DataError(f"{source}: none of its {len(paths)} images can be read (first: {first})")
        logger.warning("%s: leaving out %d of %d images whose files are missing or cannot be decoded "
                       "(first: %s)", source, len(problems), len(paths), first)
    return set(problems)


def _clean_boxes(records: Sequence[ImageRecord], source: str) -> list[ImageRecord]:
    """Clip training boxes to their image and drop those with no width or height.

    Dropped boxes are counted and reported in one warning per dataset, naming the files.
    """
    cleaned, dropped, files = [], 0, []
    for record in records:
        # Clipped in float64: a huge coordinate would overflow float32 to inf.
        boxes = record.boxes.astype(np.float64)
        np.clip(boxes[:, 0::2], 0, record.width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, record.height, out=boxes[:, 1::2])
        boxes = boxes.astype(np.float32)
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# torchvision's errors start with the C++ function and source line: "decode_jpeg, /.../decode_jpeg.cpp:171, ".
_CPP_LOCATION = re.compile(r"^[^,\n]*, \S+\.(?:cpp|h):\d+, ")


def load_image(path: str) -> Tensor:
    """Decode to uint8 (3, H, W) RGB. A missing file is a FileNotFoundError, any other problem
    a DataError, both naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (OSError, ValueError) as exc:  # a folder, no permission, a NUL in the name
        raise DataError(f"{path}: cannot read image: {getattr(exc, 'strerror', None) or exc}") from None
    problem = "the file is empty" if not data else _png_problem(data) if data.startswith(_PNG_SIGNATURE) else None
    if problem is None:
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            # 16-bit PNGs decode to uint16; the model's normalisation expects 0-255.
            return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)
        except RuntimeError as exc:
            problem = _CPP_LOCATION.sub("", str(exc))
    raise DataError(f"{path}: cannot decode image: {problem}")


def _png_problem(data: bytes) -> str | None:
    """What is wrong with a PNG's chunk structure (lengths, types, CRCs, the final IEND), or None.

    torchvision 0.29's decode_png crashes the process (segfault) when libpng reports damage
    inside the pixel data, as one flipped byte causes; the chunk CRCs reveal such damage first.
    A PNG crafted with valid CRCs around a broken zlib stream would still crash it.
    """
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            break
        if not kind.isalpha():
            return f"invalid PNG chunk type {kind!r} at byte {pos + 4}"
        if zlib.crc32(view[pos + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return f"PNG chunk {kind.decode()} at byte {pos} is corrupt (CRC mismatch)"
        if kind == b"IEND":
            return None
        pos = end
    return "the PNG file is truncated (it ends before its IEND chunk)"
