"""COCO-format detection datasets (the bundled shapes dataset, real COCO, any COCO export).

Layout on disk::

    root/annotations/instances_{split}.json
    root/{split}/<file_name of each image>

Training targets and the ground truth are built by :class:`~detector.data.dataset.DetectionDataset`.

Unusable files are errors that name the file and the problem: DataError for a malformed or
inconsistent instances file or an undecodable image, FileNotFoundError for a missing one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detector.data.dataset import MAX_IMAGE_SIDE, DetectionDataset, ImageRecord, Transform, select_categories
from detector.data.errors import DataError
from detector.data.images import find_bad_images


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
