"""PASCAL VOC-format detection datasets: one XML file per image, in one of two layouts.

VOCdevkit (PASCAL VOC, CVAT's "PASCAL VOC" export), recognised by its ``ImageSets/Main`` folder::

    root/JPEGImages/<id>.jpg
    root/Annotations/<id>.xml
    root/ImageSets/Main/{split}.txt      (one image id per line)

A plain folder (LabelImg, Roboflow's "Pascal VOC" export): the XML beside each image, or images
and XML in two folders (``image_folder``, ``annotation_folder``). A split is the subfolder
``root/{split}/`` (Roboflow: train/, valid/, test/), or the list file ``root/{split}.txt``, or,
when a :class:`~detector.data.dataset.Holdout` divides it, the whole folder.

Conventions (documented in data/README.md):
- the image of ``<stem>.xml`` is the file of that stem in the image folder (any case, any image
  suffix); only when there is none, the one named by ``<filename>`` (by its last path component,
  then by its stem): tools write stale or absolute ``<filename>`` values;
- classes: ``classes`` (label order), or when not given the names found (:func:`class_list`);
- boxes are VOC's pixel coordinates taken as xyxy floats unchanged (xmin, ymin, xmax, ymax);
- image ids are 1-based positions in the split (the line in the split file, the place in the
  sorted listing of a folder), used both in targets and in ``coco``;
- category ids in ``coco`` are positions in the class list (1..K), also for subsets;
- ``difficult`` objects are left out of the training targets and kept in ``coco`` with
  iscrowd=1, so that COCOeval neither rewards nor penalises detections of them, as VOC does.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

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
from detector.data.images import ImageFolder, read_image_size
from detector.data.layout import IMAGE_SUFFIXES
from detector.data.preflight import check_images

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def class_list(names: Sequence[str]) -> list[str]:
    """The class list of a dataset whose objects carry ``names``: the 20 PASCAL classes in their
    standard order when exactly those are found (so PASCAL VOC keeps its usual category ids and
    per-class tables), otherwise the names sorted by code point (upper case before lower)."""
    found = set(names)
    return list(VOC_CLASSES) if found == set(VOC_CLASSES) else sorted(found)


@dataclass(frozen=True)
class VocSplit:
    """Where one split's annotations and images are."""

    names: list[str]  # image ids (XML stems) in split order
    xml_files: list[Path]  # names[i]'s annotation
    image_dir: Path
    source: Path  # what lists the split: its split file, or the folder of its XML files
    listed_folder: bool  # the split is every XML file of a folder (not a list file)


def find_split(root: str | Path, split: str, *, image_folder: str | None = None,
               annotation_folder: str | None = None, whole_folder: bool = False) -> VocSplit:
    """The files of ``split`` under ``root`` (layouts: the module docstring). ``image_folder`` and
    ``annotation_folder`` replace JPEGImages/ and Annotations/ in a VOCdevkit; in a plain folder
    they are subfolders of the split's folder, the XML beside the images by default.
    ``whole_folder``: a plain folder without a subfolder or list file named ``split`` is read
    whole (for a held-out division), instead of being an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC folder not found: {root}")
    if (root / "ImageSets" / "Main").is_dir():
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            found = sorted(path.stem for path in (root / "ImageSets" / "Main").glob("*.txt"))
            raise FileNotFoundError(f"VOC split file not found: {split_file}"
                                    + (f" (splits found: {', '.join(found)})" if found else ""))
        names = _read_split(split_file)
        annotation_dir = root / (annotation_folder or "Annotations")
        return VocSplit(names, [annotation_dir / f"{name}.xml" for name in names],
                        root / (image_folder or "JPEGImages"), split_file, listed_folder=False)
    if (root / split).is_dir():
        base, list_file = root / split, None
    elif (root / f"{split}.txt").is_file():
        base, list_file = root, root / f"{split}.txt"
    elif whole_folder:
        base, list_file = root, None
    else:
        raise FileNotFoundError(
            f"VOC split '{split}' not found in {root}: no ImageSets/Main/{split}.txt (VOCdevkit layout), no "
            f"folder {split}/ and no list file {split}.txt (plain folder); to hold out part of a folder's "
            f"images for validation, set data.val_fraction")
    image_dir = base / image_folder if image_folder else base
    annotation_dir = base / annotation_folder if annotation_folder else image_dir
    if list_file is not None:
        names = _read_split(list_file)
        return VocSplit(names, [annotation_dir / f"{name}.xml" for name in names], image_dir, list_file,
                        listed_folder=False)
    if not annotation_dir.is_dir():
        raise FileNotFoundError(f"VOC annotation folder not found: {annotation_dir}")
    xml_names = sorted(name for name in os.listdir(annotation_dir) if name.lower().endswith(".xml"))
    if not xml_names:
        subfolders = sorted(path.name for path in annotation_dir.iterdir() if path.is_dir())
        raise DataError(f"{annotation_dir}: no VOC XML files"
                        + (f" (subfolders: {', '.join(subfolders)}; if they hold the XML, set "
                           f"data.annotation_folder)" if subfolders else ""))
    return VocSplit([name[:-len(".xml")] for name in xml_names], [annotation_dir / name for name in xml_names],
                    image_dir, annotation_dir, listed_folder=True)


def read_classes(splits: Sequence[VocSplit]) -> list[str]:
    """:func:`class_list` of the object names in every XML file of ``splits`` (each file read once)."""
    xml_files = list(dict.fromkeys(xml for split in splits for xml in split.xml_files))
    names = {name for xml_file in xml_files for name, _, _ in parse_annotation(xml_file).objects}
    if not names:
        raise DataError(f"{', '.join(str(split.source) for split in splits)}: no objects in {len(xml_files)} XML files, "
                        f"so no classes to train")
    return class_list(names)


class VocDetection(DetectionDataset):
    """A split of a VOC-format dataset (layouts: the module docstring).

    ``classes``: the class names in label order (labels 1..K); None: :func:`read_classes` of the
    split (all its XML files, also when ``holdout`` or ``max_images`` read fewer). An object of
    a class not in ``classes`` is an error naming the file. ``categories``: a subset of the
    classes (empty = all), in class-list order; objects of other classes are skipped.
    ``holdout``: read only that part of the split (with a plain folder: of the whole folder when
    no split of that name exists). ``max_images``: then the first N images. Every image is
    decoded once (data/preflight.py): missing or undecodable ones are a DataError listing them
    all, or with ``skip_bad_images`` left out with a warning.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        classes: Sequence[str] | None = None,
        categories: Sequence[str] = (),
        image_folder: str | None = None,
        annotation_folder: str | None = None,
        holdout: Holdout | None = None,
        max_images: int | None = None,
        transform: Transform | None = None,
        skip_bad_images: bool = False,
    ):
        found = find_split(root, split, image_folder=image_folder, annotation_folder=annotation_folder,
                           whole_folder=holdout is not None)
        indices = holdout.select(found.names, str(found.source)) if holdout else range(len(found.names))
        ids = [index + 1 for index in indices][:max_images]  # image id: 1-based position in the split
        folder = ImageFolder(found.image_dir)
        if found.listed_folder and (holdout is None or holdout.part == "train"):
            _log_images_without_xml(folder, found)
        parsed = {image_id: parse_annotation(found.xml_files[image_id - 1]) for image_id in ids}
        classes = list(read_classes([found]) if classes is None else classes)
        wanted = select_categories(categories, classes, str(found.source))
        labels = [name for name in classes if name in wanted]
        label_of = {name: label for label, name in enumerate(labels, start=1)}
        category_of = {name: classes.index(name) + 1 for name in labels}

        image_paths = {image_id: _image_of(folder, found, image_id, parsed[image_id]) for image_id in ids}
        missing = {str(image_paths[i]): _missing(folder, found, i, parsed[i]) for i in ids if "*" in image_paths[i].name}
        bad = check_images(list(image_paths.values()), part_source(str(found.source), holdout),
                           skip_bad_images=skip_bad_images, known=missing)
        records, images, annotations = [], [], []
        self._xml_files: dict[int, str] = {}
        for image_id in ids:
            image_path, annotation = image_paths[image_id], parsed[image_id]
            if str(image_path) in bad:
                continue
            xml_path = found.xml_files[image_id - 1]
            width, height = annotation.width, annotation.height
            if width == 0 or height == 0:
                try:
                    width, height = read_image_size(image_path)
                except (OSError, Image.DecompressionBombError) as exc:
                    raise DataError(f"{image_path}: cannot read the image size, which {xml_path} leaves out: "
                                    f"{exc}") from None
            self._xml_files[image_id] = str(xml_path)
            images.append({"id": image_id, "file_name": image_path.name, "width": width, "height": height})
            boxes, box_labels = [], []
            for class_name, difficult, box in annotation.objects:
                if class_name not in classes:
                    raise DataError(f"{xml_path}: class {class_name!r:.100} is not in the class list "
                                    f"({', '.join(classes)})")
                if class_name not in wanted:
                    continue
                x1, y1, x2, y2 = box
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_of[class_name],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(difficult),
                })
                if not difficult:
                    boxes.append(box)
                    box_labels.append(label_of[class_name])
            records.append(ImageRecord(
                path=str(image_path),
                image_id=image_id,
                height=height,
                width=width,
                boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
                labels=np.array(box_labels, dtype=np.int64),
            ))

        super().__init__(
            records=records,
            class_names=labels,
            label_to_category_id={label_of[name]: category_of[name] for name in labels},
            coco_dataset={
                "images": images,
                "annotations": annotations,
                "categories": [{"id": category_of[name], "name": name} for name in labels],
            },
            transform=transform,
            source=str(found.source),
        )

    def annotation_file(self, record: ImageRecord) -> str:
        return self._xml_files[record.image_id]


def _image_of(folder: ImageFolder, found: VocSplit, image_id: int, annotation: Annotation) -> Path:
    """The image file of one XML (the rule: the module docstring); for a missing one a path that
    does not exist, which the image check reports (or leaves out)."""
    name, xml_path = found.names[image_id - 1], found.xml_files[image_id - 1]
    path = folder.with_stem(name, str(xml_path))
    if path is None and annotation.filename:
        path = folder.named(annotation.filename, str(xml_path))
    return path if path is not None else folder.folder / f"{name}.*"  # any suffix: no such file


def _missing(folder: ImageFolder, found: VocSplit, image_id: int, annotation: Annotation) -> str:
    name, xml_path = found.names[image_id - 1], found.xml_files[image_id - 1]
    named = f" or <filename> {annotation.filename!r:.100}" if annotation.filename else ""
    return (f"image file not found for {xml_path}: no {name}{named} with suffix {', '.join(IMAGE_SUFFIXES)} (any case) "
            f"in {folder.folder}")


def _log_images_without_xml(folder: ImageFolder, found: VocSplit) -> None:
    """Images without an XML file are not read; LabelImg, for one, writes none for an image
    without boxes. Counted in the log, so that a missing annotation folder does not pass unseen."""
    unannotated = folder.stems() - {name.lower() for name in found.names}
    if unannotated:
        logger.info("%s: %d image files have no XML file of their name and are not read (e.g. %s)",
                    found.source, len(unannotated), sorted(unannotated)[0])


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


class Annotation(NamedTuple):
    width: int  # 0 when the XML leaves the size out
    height: int
    filename: str  # <filename>, "" when absent
    objects: list[tuple[str, bool, list[float]]]  # (class name, difficult, [x1, y1, x2, y2])


def parse_annotation(xml_path: Path) -> Annotation:
    """Parse one VOC XML. Any problem is a DataError naming the file (a missing file a
    FileNotFoundError)."""
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
        if not class_name:
            raise DataError(f"{xml_path}: an object has no <name>")
        difficult = _number(obj, "difficult", xml_path, default=0) == 1
        box = [_number(obj, f"bndbox/{key}", xml_path) for key in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((class_name, difficult, box))
    return Annotation(width, height, (annotation.findtext("filename") or "").strip(), objects)


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
