"""YOLO-format detection datasets: one text file of normalised boxes per image, as Ultralytics
and Roboflow write them.

Layouts (:func:`find_split`)::

    root/images/{split}/<name>.jpg   root/labels/{split}/<name>.txt     Ultralytics
    root/{split}/images/<name>.jpg   root/{split}/labels/<name>.txt     Roboflow's YOLO export
    root/images/<name>.jpg           root/labels/<name>.txt             one folder (held out by data.val_fraction)

with the class names in ``root/data.yaml`` (``names:`` as a list, or a mapping from index to
name) or ``root/classes.txt`` (one name per line).

Conventions:
- a row is ``class cx cy w h``, the centre and size divided by the image's width and height,
  converted once, here, to xyxy pixels of the image as decoded (EXIF orientation applied,
  as Ultralytics reads it); a row of more than five numbers is a polygon (``class x1 y1 x2 y2
  ...``, segmentation exports) and becomes its bounding box;
- an image without a label file, or with an empty one, is an image without objects;
- a row with a class index outside the names, a value that is not a number, or a box outside
  [0, 1] beyond rounding (TOLERANCE) is an error naming the file and the line, or with
  ``skip_bad_images`` is left out and counted;
- image ids are 1-based positions in the sorted list of the split's images; category ids are
  the class index + 1.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from detector.data.dataset import DetectionDataset, Holdout, ImageRecord, Transform, part_source, select_categories
from detector.data.errors import DataError
from detector.data.images import read_image_size
from detector.data.layout import IMAGE_SUFFIXES
from detector.data.preflight import check_images

logger = logging.getLogger(__name__)

NAME_FILES = ("data.yaml", "data.yml", "classes.txt")
TOLERANCE = 1e-3  # normalised coordinates this far beyond [0, 1] are rounding, and clipped


@dataclass(frozen=True)
class YoloSplit:
    images: list[Path]  # sorted by name
    label_dir: Path
    source: Path  # the images' folder, what messages name


def find_split(root: str | Path, split: str, *, whole_folder: bool = False) -> YoloSplit:
    """The images and the label folder of ``split`` (layouts: the module docstring);
    ``whole_folder``: without a split of that name, the root's one images/ + labels/ pair."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"YOLO dataset folder not found: {root}")
    for image_dir, label_dir in ((root / "images" / split, root / "labels" / split),
                                 (root / split / "images", root / split / "labels")):
        if image_dir.is_dir():
            return YoloSplit(_images(image_dir), label_dir, image_dir)
    if whole_folder and (root / "images").is_dir():
        return YoloSplit(_images(root / "images"), root / "labels", root / "images")
    found = sorted({p.name for p in (root / "images").iterdir() if p.is_dir()} if (root / "images").is_dir() else set()
                   | {p.parent.name for p in root.glob("*/images")})
    raise FileNotFoundError(f"YOLO split '{split}' not found in {root}: no images/{split}/ (Ultralytics) and no "
                            f"{split}/images/ (Roboflow)" + (f"; splits found: {', '.join(found)}" if found else "")
                            + "; to hold out part of one folder's images for validation, set data.val_fraction")


def _images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return images


def read_classes(root: str | Path) -> list[str]:
    """The class names of ``root``: data.yaml's ``names`` (a list, or a mapping from index to
    name, which must cover 0..K-1), else classes.txt's lines."""
    root = Path(root)
    for name in NAME_FILES:
        path = root / name
        if not path.is_file():
            continue
        if path.suffix == ".txt":
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            try:
                names = (yaml.safe_load(path.read_text()) or {}).get("names")
            except (yaml.YAMLError, AttributeError) as exc:
                raise DataError(f"{path}: not a YAML mapping with 'names': {exc}") from None
            if isinstance(names, dict):
                if sorted(names) != list(range(len(names))):
                    raise DataError(f"{path}: 'names' maps the indices {sorted(names)}; expected 0 to {len(names) - 1}")
                names = [names[i] for i in range(len(names))]
        if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
            raise DataError(f"{path}: expected a non-empty list of class names, got {names!r:.100}")
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            raise DataError(f"{path}: a class name occurs more than once: {names}")
        return names
    raise DataError(f"{root}: no class names for the YOLO labels: expected {' or '.join(NAME_FILES)}")


class YoloDetection(DetectionDataset):
    """A split of a YOLO-format dataset (layouts and rules: the module docstring).

    ``classes``: must be the names file's list when given (a YOLO class is its index);
    ``categories``: a subset of them (empty = all). ``holdout``: only that part of the split's
    images (divided by file stem, as VOC and COCO folders are). ``max_images``: then the first N."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        classes: Sequence[str] | None = None,
        categories: Sequence[str] = (),
        holdout: Holdout | None = None,
        max_images: int | None = None,
        transform: Transform | None = None,
        skip_bad_images: bool = False,
    ):
        found = find_split(root, split, whole_folder=holdout is not None)
        names = read_classes(root)
        if classes is not None and list(classes) != names:
            raise DataError(f"{Path(root) / 'data.yaml'}: its class names {names} are not data.classes {list(classes)}; "
                            f"a YOLO class is its index in that list, so leave data.classes empty")
        wanted = select_categories(categories, names, str(found.source))
        labels = [name for name in names if name in wanted]
        label_of = {names.index(name): label for label, name in enumerate(labels, start=1)}
        images = found.images
        indices = holdout.select([p.stem for p in images], str(found.source)) if holdout else range(len(images))
        chosen = [(index + 1, images[index]) for index in indices][:max_images]  # image id: 1-based position
        bad = check_images([path for _, path in chosen], part_source(str(found.source), holdout),
                           skip_bad_images=skip_bad_images)
        skipped_rows = 0
        records, coco_images, annotations = [], [], []
        for image_id, path in chosen:
            if str(path) in bad:
                continue
            width, height = read_image_size(path)
            rows, skipped = read_label_file(found.label_dir / f"{path.stem}.txt", len(names), skip_bad_images)
            skipped_rows += skipped
            boxes, box_labels = [], []
            for class_index, (cx, cy, w, h) in rows:
                if class_index not in label_of:
                    continue  # a class outside data.categories
                box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": class_index + 1,
                                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                    "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0})
                boxes.append(box)
                box_labels.append(label_of[class_index])
            coco_images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
            records.append(ImageRecord(str(path), image_id, height, width,
                                       np.array(boxes, dtype=np.float64).reshape(-1, 4),
                                       np.array(box_labels, dtype=np.int64)))
        if skipped_rows:
            logger.warning("%s: left out %d label rows that are not valid boxes (data.skip_bad_images)",
                           found.label_dir, skipped_rows)
        super().__init__(
            records=records,
            class_names=labels,
            label_to_category_id={label: index + 1 for index, label in label_of.items()},
            coco_dataset={"images": coco_images, "annotations": annotations,
                          "categories": [{"id": names.index(name) + 1, "name": name} for name in labels]},
            transform=transform,
            source=str(found.source),
        )


def read_label_file(path: Path, num_classes: int, skip_bad_rows: bool) -> tuple[list[tuple[int, tuple]], int]:
    """The (class index, (cx, cy, w, h)) rows of one label file ([] when there is none), and how
    many bad rows ``skip_bad_rows`` left out; otherwise a bad row is a DataError naming the file
    and the line."""
    if not path.is_file():
        return [], 0
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a text file of YOLO labels: {exc}") from None
    rows, skipped = [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(_row(line, num_classes))
        except ValueError as exc:
            if not skip_bad_rows:
                raise DataError(f"{path}, line {number}: {exc} (set data.skip_bad_images=true to leave out such rows)") \
                    from None
            skipped += 1
    return rows, skipped


def _row(line: str, num_classes: int) -> tuple[int, tuple[float, float, float, float]]:
    fields = line.split()
    try:
        values = [float(field) for field in fields]
    except ValueError:
        raise ValueError(f"{line.strip()!r:.80} holds a value that is not a number") from None
    if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
        raise ValueError(f"{line.strip()!r:.80} is not 'class cx cy w h' (or 'class x1 y1 x2 y2 ...' for a polygon)")
    if not all(math.isfinite(v) for v in values) or values[0] != int(values[0]) or not 0 <= values[0] < num_classes:
        raise ValueError(f"class {fields[0]!r:.20} is not an index of the {num_classes} class names")
    coords = values[1:]
    if any(v < -TOLERANCE or v > 1 + TOLERANCE for v in coords):
        raise ValueError(f"{line.strip()!r:.80} has a coordinate outside [0, 1]: YOLO coordinates are divided by the "
                         f"image's size")
    if len(coords) == 4:
        cx, cy, w, h = coords
    else:  # a polygon: its bounding box
        xs, ys = coords[0::2], coords[1::2]
        cx, cy, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
    return int(values[0]), (cx, cy, w, h)
