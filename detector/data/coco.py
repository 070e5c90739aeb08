"""COCO-format detection datasets (the bundled shapes dataset, real COCO, any COCO export).

Where a split's files are (:func:`split_files`)::

    root/annotations/instances_{split}.json     COCO's layout
    root/{split}/<file_name of each image>

    root/{split}/_annotations.coco.json         Roboflow's COCO export, images beside it

or any instances file and image folder given by name (CVAT, Label Studio). An image's
``file_name`` is found in the image folder as it is, else by its last path component (exports
prefix folders such as ``images/``), else by its stem (:class:`~detector.data.images.ImageFolder`).

Training targets and the ground truth are built by :class:`~detector.data.dataset.DetectionDataset`.

Unusable files are errors that name the file and the problem: DataError for a malformed or
inconsistent instances file or an undecodable image, FileNotFoundError for a missing one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detector.data.dataset import (
    MAX_IMAGE_SIDE,
    DetectionDataset,
    Holdout,
    ImageRecord,
    Transform,
    part_source,
    select_categories,
)
from detector.data.errors import DataError
from detector.data.images import ImageFolder, base_name
from detector.data.preflight import check_images

logger = logging.getLogger(__name__)

ROBOFLOW_FILE = "_annotations.coco.json"


def split_files(root: str | Path, split: str, annotation_file: str | None = None,
                image_folder: str | None = None) -> tuple[Path, Path]:
    """The instances file and image folder of ``split``: ``annotation_file`` and ``image_folder``
    when given (relative to ``root`` unless absolute), else COCO's layout, else Roboflow's."""
    root = Path(root)
    if annotation_file:
        ann_file = root / annotation_file
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"COCO dataset folder not found: {root}")
        ann_file = root / "annotations" / f"instances_{split}.json"
        if not ann_file.is_file() and (root / split / ROBOFLOW_FILE).is_file():
            ann_file = root / split / ROBOFLOW_FILE
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}{_available_splits(root)}")
    image_dir = root / (image_folder or split)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder not found: {image_dir}")
    return ann_file, image_dir


def read_classes(ann_files: Sequence[Path]) -> list[str]:
    """The class list of a dataset whose splits are ``ann_files``: category names in ascending id
    (categories that only a later file lists come after), without the categories that no
    annotation of any file uses. Exports list such placeholders: Roboflow a category named after
    the dataset (id 0) as the supercategory of the real ones. They are named in the log."""
    first_seen: dict[str, tuple[int, int]] = {}  # name -> (file, category id)
    used: set[str] = set()
    for index, path in enumerate(dict.fromkeys(ann_files)):
        data = _load_json(path)
        name_of = {cat["id"]: cat["name"] for cat in data["categories"]}
        for cat_id, name in name_of.items():
            first_seen.setdefault(name, (index, cat_id))
        used.update(name_of[ann["category_id"]] for ann in data["annotations"])
    files = " and ".join(map(str, dict.fromkeys(ann_files)))
    unused = [f"{name!r} (id {first_seen[name][1]})" for name in sorted(first_seen, key=first_seen.get)
              if name not in used]
    if unused:
        logger.info("%s: categories without annotations are not classes: %s", files, ", ".join(unused))
    if not used:
        raise DataError(f"{files}: no annotations, so no classes to train")
    return [name for name in sorted(first_seen, key=first_seen.get) if name in used]


class CocoDetection(DetectionDataset):
    """A split of a COCO-format dataset (where its files are: :func:`split_files`).

    ``classes``: the category names in label order (labels 1..K); None: every category of the
    file in ascending id. Each must be a category of the file, and a category with annotations
    must be one of them. ``categories``: a subset of the classes (empty = all), in class-list
    order. The ground truth keeps the file's category ids. ``holdout``: only that part of the
    file's images (divided by file stem). ``max_images``: then the first N image ids in
    ascending order. Images without (selected) annotations stay in as negatives. Every image is
    decoded once (data/preflight.py): missing or undecodable ones are a DataError listing them
    all, or with ``skip_bad_images`` left out with a warning.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        annotation_file: str | None = None,
        image_folder: str | None = None,
        classes: Sequence[str] | None = None,
        categories: Sequence[str] = (),
        holdout: Holdout | None = None,
        max_images: int | None = None,
        transform: Transform | None = None,
        skip_bad_images: bool = False,
    ):
        ann_file, image_dir = split_files(root, split, annotation_file, image_folder)
        data = _load_json(ann_file)
        cats, images, annotations = _select(data, classes, categories, holdout, max_images, ann_file)

        folder = ImageFolder(image_dir)
        # A file that cannot be found is a bad image like one that cannot be decoded.
        found = {image["id"]: folder.named(image["file_name"], str(ann_file)) for image in images}
        paths = {image["id"]: found[image["id"]] or image_dir / image["file_name"] for image in images}
        missing = {str(paths[i]): f"image file not found: {paths[i]}" for i, path in found.items() if path is None}
        bad = check_images(list(paths.values()), part_source(str(ann_file), holdout), skip_bad_images=skip_bad_images,
                           known=missing)
        images = [image for image in images if str(paths[image["id"]]) not in bad]
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
            # float64 until clipped, so x + w rounds once, to the float32 nearest the true corner.
            xywh = np.array([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
            records.append(ImageRecord(
                path=str(paths[image["id"]]),
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
    """A hint for a mistyped split: the splits that ``root`` holds in either layout."""
    splits = sorted([path.name[len("instances_"):-len(".json")]
                     for path in (root / "annotations").glob("instances_*.json")]
                    + [path.parent.name for path in root.glob(f"*/{ROBOFLOW_FILE}")])
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
    category_ids = _unique_ids(data, "categories", "category", path)
    image_ids = _unique_ids(data, "images", "image", path)
    _unique_ids(data, "annotations", "annotation", path)  # pycocotools keeps one annotation per id
    _check_categories(data["categories"], path)
    _check_images(data["images"], path)
    _check_annotations(data["annotations"], image_ids, category_ids, path)


def _wrong(path: Path, entry: str, field: str, value: Any, expected: str) -> DataError:
    return DataError(f"{path}: {entry}: '{field}' is {value!r:.100}; expected {expected}")


def _unique_ids(data: dict, key: str, singular: str, path: Path) -> set[int]:
    seen: set[int] = set()
    for index, entry in enumerate(data[key]):
        if not _is_int(entry["id"]):
            raise _wrong(path, f"{key}[{index}]", "id", entry["id"], "an integer")
        if entry["id"] in seen:
            raise DataError(f"{path}: {singular} id {entry['id']} occurs more than once in '{key}'")
        seen.add(entry["id"])
    return seen


def _check_categories(categories: list[dict], path: Path) -> None:
    for cat in categories:
        if not isinstance(cat["name"], str):
            raise _wrong(path, f"category {cat['id']}", "name", cat["name"], "a string")
    repeated = [name for name, count in Counter(cat["name"] for cat in categories).items() if count > 1]
    if repeated:  # classes are chosen and reported by name
        raise DataError(f"{path}: more than one category is named {repeated[0]!r:.100}; names must be unique")


def _check_images(images: list[dict], path: Path) -> None:
    for image in images:
        name = image["file_name"]
        if not isinstance(name, str) or not name or "\0" in name:
            raise _wrong(path, f"image {image['id']}", "file_name", name, "a file name")
        for side in ("width", "height"):
            value = image[side]
            if not (_is_finite_number(value) and value == int(value) and 1 <= value <= MAX_IMAGE_SIDE):
                raise _wrong(path, f"image {image['id']}", side, value, f"a whole number of pixels from 1 to {MAX_IMAGE_SIDE}")


def _check_annotations(annotations: list[dict], image_ids: set[int], category_ids: set[int], path: Path) -> None:
    for ann in annotations:
        entry = f"annotation {ann['id']}"
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_finite_number, bbox))):
            raise _wrong(path, entry, "bbox", bbox, "[x, y, w, h], 4 finite numbers")
        if not (_is_int(ann["image_id"]) and ann["image_id"] in image_ids):
            raise _wrong(path, entry, "image_id", ann["image_id"], "the id of an entry of 'images'")
        if not (_is_int(ann["category_id"]) and ann["category_id"] in category_ids):
            raise _wrong(path, entry, "category_id", ann["category_id"], "the id of an entry of 'categories'")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise _wrong(path, entry, "iscrowd", ann["iscrowd"], "0 or 1")
        if "area" in ann and not _is_finite_number(ann["area"]):
            raise _wrong(path, entry, "area", ann["area"], "a finite number")


def _select(data: dict, classes: Sequence[str] | None, categories: Sequence[str], holdout: Holdout | None,
            max_images: int | None, ann_file: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """Apply the class list and the category and image subsets; returns (categories in label
    order, images sorted by id, annotations)."""
    by_id = sorted(data["categories"], key=lambda cat: cat["id"])
    by_name = {cat["name"]: cat for cat in by_id}
    classes = [cat["name"] for cat in by_id] if classes is None else list(classes)
    absent = [name for name in classes if name not in by_name]
    if absent:
        raise DataError(f"{ann_file}: no category named {absent[0]!r:.100} (from the class list); its categories: "
                        f"{', '.join(by_name)}")
    counts = Counter(ann["category_id"] for ann in data["annotations"])
    for cat in by_id:
        if cat["name"] not in classes and counts[cat["id"]]:
            raise DataError(f"{ann_file}: category {cat['name']!r:.100} (id {cat['id']}) has {counts[cat['id']]} "
                            f"annotations but is not in the class list ({', '.join(classes)})")
    wanted = select_categories(categories, classes, str(ann_file))
    cats = [by_name[name] for name in classes if name in wanted]
    cat_ids = {cat["id"] for cat in cats}

    images = sorted(data["images"], key=lambda image: image["id"])
    if holdout is not None:
        # Divided by file stem, as a VOC folder is by XML stem: the same images in either format
        # are divided the same way.
        stems = [os.path.splitext(base_name(image["file_name"]))[0] for image in images]
        images = [images[i] for i in holdout.select(stems, str(ann_file))]
    images = images[:max_images]
    image_ids = {image["id"] for image in images}

    # COCOeval reads area and iscrowd; some COCO-format exporters omit them.
    annotations = [
        {"area": ann["bbox"][2] * ann["bbox"][3], "iscrowd": 0, **ann}
        for ann in data["annotations"]
        if ann["image_id"] in image_ids and ann["category_id"] in cat_ids
    ]
    return cats, images, annotations
