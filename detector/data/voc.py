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

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from detector.data.dataset import MAX_IMAGE_SIDE, DetectionDataset, ImageRecord, Transform, select_categories
from detector.data.errors import DataError
from detector.data.images import find_bad_images

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class VocDetection(DetectionDataset):
    """A split of a VOC year folder (e.g. VOCdevkit/VOC2007, split ``trainval`` or ``test``).

    ``categories``: subset of VOC class names (empty = all 20); labels 1..K follow the standard
    VOC order, and objects of other classes are skipped. ``max_images``: the first N ids of the
    split file. A missing JPEG is a FileNotFoundError; with ``skip_bad_images`` every image is
    decoded once instead, and ids whose JPEG is missing or undecodable are left out with a warning.
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
            raise FileNotFoundError(f"VOC folder not found: {root}")
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"VOC split file not found: {split_file}")
        names = _read_split(split_file)
        if max_images is not None:
            names = names[:max_images]

        wanted = select_categories(categories, VOC_CLASSES, str(root))
        classes = [name for name in VOC_CLASSES if name in wanted]
        label_of = {name: label for label, name in enumerate(classes, start=1)}
        category_of = {name: VOC_CLASSES.index(name) + 1 for name in classes}

        image_paths = [root / "JPEGImages" / f"{name}.jpg" for name in names]
        bad = find_bad_images(image_paths, str(split_file)) if skip_bad_images else set()
        records, images, annotations = [], [], []
        self._xml_files: dict[int, str] = {}
        for line_number, (name, image_path) in enumerate(zip(names, image_paths), start=1):
            if str(image_path) in bad:
                continue
            if not image_path.is_file():
                raise FileNotFoundError(
                    f"image file not found: {image_path} (listed in {split_file}; set "
                    f"data.skip_bad_images=true to leave out missing images)"
                )
            xml_path = root / "Annotations" / f"{name}.xml"
            width, height, objects = parse_annotation(xml_path, image_path)
            self._xml_files[line_number] = str(xml_path)
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
                boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
                labels=np.array(labels, dtype=np.int64),
            ))

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

    def annotation_file(self, record: ImageRecord) -> str:
        return self._xml_files[record.image_id]


def _read_split(split_file: Path) -> list[str]:
    """The image ids of a split file. Class-specific split files carry a second column
    (id, 1/-1); the id is always first."""
    try:
        lines = split_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{split_file}: not a text file of image ids: {exc}") from None
    names = [line.split()[0] for line in lines if line.strip()]
    if not names:
        raise DataError(f"{split_file}: lists no image ids")
    return names


def parse_annotation(xml_path: Path, image_path: Path) -> tuple[int, int, list[tuple[str, bool, list[float]]]]:
    """Parse one VOC XML: returns (width, height, [(class name, difficult, [x1, y1, x2, y2])]).

    Every object's class must be one of the 20 VOC classes. The image size comes from
    ``<size>``, or from the image header when the XML leaves it out or gives 0. Any problem is
    a DataError naming the file.
    """
    if not xml_path.is_file():
        raise FileNotFoundError(f"VOC annotation file not found: {xml_path}")
    try:
        # expat refuses entity expansions that amplify the input (billion laughs) as a ParseError.
        annotation = ET.parse(xml_path).getroot()
    except (ET.ParseError, LookupError) as exc:  # LookupError: an unknown encoding in <?xml ...?>
        raise DataError(f"{xml_path}: malformed XML: {exc}") from None
    if annotation.tag != "annotation":
        raise DataError(f"{xml_path}: not a VOC annotation: the root element is <{annotation.tag:.50}>, "
                        f"not <annotation>")
    width = _side(annotation, "size/width", xml_path)
    height = _side(annotation, "size/height", xml_path)
    objects = []
    for obj in annotation.findall("object"):
        class_name = (obj.findtext("name") or "").strip()
        if class_name not in VOC_CLASSES:
            raise DataError(f"{xml_path}: unknown class {class_name!r:.100}; VOC classes: {', '.join(VOC_CLASSES)}")
        difficult = _number(obj, "difficult", xml_path, default=0) == 1
        box = [_number(obj, f"bndbox/{key}", xml_path) for key in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((class_name, difficult, box))
    if width == 0 or height == 0:
        try:
            with Image.open(image_path) as image:  # reads the header only
                width, height = image.size
        except (OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"{image_path}: cannot read the image size, which {xml_path} leaves out: {exc}") from None
    return width, height, objects


def _side(element: ET.Element, path: str, xml_path: Path) -> int:
    """An image side in pixels; 0 when the XML leaves it out."""
    value = _number(element, path, xml_path, default=0)
    if value != int(value) or not 0 <= value <= MAX_IMAGE_SIDE:
        raise DataError(f"{xml_path}: <{path}> is {value:g}; expected a whole number of pixels")
    return int(value)


def _number(element: ET.Element, path: str, xml_path: Path, default: float | None = None) -> float:
    """The finite number in ``element``'s child at ``path``; missing or not one -> DataError."""
    text = element.findtext(path)
    if text is None or not text.strip():
        if default is None:
            raise DataError(f"{xml_path}: an object is missing <{path}>")
        return default
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{xml_path}: <{path}> is {text.strip()!r:.100}, not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{xml_path}: <{path}> is {text.strip()!r:.100}, not a finite number")
    return value
