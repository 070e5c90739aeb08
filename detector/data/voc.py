"""PASCAL VOC detection datasets, read from one VOC year folder::

    root/JPEGImages/<id>.jpg
    root/Annotations/<id>.xml
    root/ImageSets/Main/{split}.txt      (one image id per line)

Conventions (documented in data/README.md):
- boxes are VOC's pixel coordinates taken as xyxy floats unchanged (xmin, ymin, xmax, ymax);
- image ids are 1-based line numbers in the split file, used both in targets and in ``coco``;
- category ids in ``coco`` are positions in :data:`VOC_CLASSES` (1..20), also for subsets;
- ``difficult`` objects are left out of the training targets and kept in ``coco`` with
  iscrowd=1, so that COCOeval neither rewards nor penalises detections of them, as VOC does.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from detector.data.coco import DetectionDataset, ImageRecord, Transform, select_categories

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class VocDetection(DetectionDataset):
    """A split of a VOC year folder (e.g. VOCdevkit/VOC2007, split ``trainval`` or ``test``).

    ``categories``: subset of VOC class names (empty = all 20); labels 1..K follow the standard
    VOC order, and objects of other classes are skipped. ``max_images``: the first N ids of the
    split file. ``skip_missing_images``: leave out ids whose JPEG is missing, with a warning.
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
            raise FileNotFoundError(f"VOC folder not found: {root}")
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"VOC split file not found: {split_file}")
        # Class-specific split files carry a second column (id, 1/-1); the id is always first.
        names = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        if max_images is not None:
            names = names[:max_images]

        wanted = select_categories(categories, VOC_CLASSES, str(root))
        classes = [name for name in VOC_CLASSES if name in wanted]
        label_of = {name: label for label, name in enumerate(classes, start=1)}
        category_of = {name: VOC_CLASSES.index(name) + 1 for name in classes}

        records, images, annotations, missing = [], [], [], []
        for line_number, name in enumerate(names, start=1):
            image_path = root / "JPEGImages" / f"{name}.jpg"
            if not image_path.is_file():
                if not skip_missing_images:
                    raise FileNotFoundError(
                        f"image file not found: {image_path} (listed in {split_file}; set "
                        f"data.skip_bad_images=true to leave out missing images)"
                    )
                missing.append(image_path)
                continue
            xml_path = root / "Annotations" / f"{name}.xml"
            width, height, objects = parse_annotation(xml_path, image_path)
            images.append({"id": line_number, "file_name": image_path.name, "width": width, "height": height})
            boxes, labels = [], []
            for class_name, difficult, box in objects:
                if class_name not in wanted:
                    continue
                x1, y1, x2, y2 = box
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": line_number,
                    "category_id": category_of[class_name],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(difficult),
                })
                if not difficult:
                    boxes.append(box)
                    labels.append(label_of[class_name])
            records.append(ImageRecord(
                path=str(image_path),
                image_id=line_number,
                height=height,
                width=width,
                boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.array(labels, dtype=np.int64),
            ))
        if missing:
            logger.warning(
                "%s: leaving out %d of %d images whose files are missing (first: %s)",
                split_file, len(missing), len(names), missing[0])

        super().__init__(
            records=records,
            class_names=classes,
            label_to_category_id={label_of[name]: category_of[name] for name in classes},
            coco_dataset={
                "images": images,
                "annotations": annotations,
                "categories": [{"id": category_of[name], "name": name} for name in classes],
            },
            transform=transform,
            source=str(split_file),
        )


def parse_annotation(xml_path: Path, image_path: Path) -> tuple[int, int, list[tuple[str, bool, list[float]]]]:
    """Parse one VOC XML: returns (width, height, [(class name, difficult, [x1, y1, x2, y2])]).

    Every object's class must be one of the 20 VOC classes. The image size comes from
    ``<size>``, or from the image header when the XML leaves it out or gives 0.
    """
    if not xml_path.is_file():
        raise FileNotFoundError(f"VOC annotation file not found: {xml_path}")
    try:
        annotation = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{xml_path}: malformed XML: {exc}") from None
    width = int(_number(annotation, "size/width", xml_path, default=0))
    height = int(_number(annotation, "size/height", xml_path, default=0))
    objects = []
    for obj in annotation.findall("object"):
        class_name = (obj.findtext("name") or "").strip()
        if class_name not in VOC_CLASSES:
            raise ValueError(f"{xml_path}: unknown class '{class_name}'; VOC classes: {', '.join(VOC_CLASSES)}")
        difficult = _number(obj, "difficult", xml_path, default=0) == 1
        box = [_number(obj, f"bndbox/{key}", xml_path) for key in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((class_name, difficult, box))
    if width <= 0 or height <= 0:
        with Image.open(image_path) as image:  # reads the header only
            width, height = image.size
    return width, height, objects


def _number(element: ET.Element, path: str, xml_path: Path, default: float | None = None) -> float:
    """The number in ``element``'s child at ``path``; missing or not numeric -> ValueError."""
    text = element.findtext(path)
    if text is None or not text.strip():
        if default is None:
            raise ValueError(f"{xml_path}: an object is missing <{path}>")
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{xml_path}: <{path}> is {text.strip()!r}, not a number") from None
