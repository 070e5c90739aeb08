"""Datasets as other tools export them, generated for the tests: one set of labelled photos
written as a COCO export, a VOC (LabelImg) folder and a YOLO (Ultralytics) export, and a digest
of a folder tree to prove that a command left it byte for byte as it was."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog")


@dataclass(frozen=True)
class Photo:
    name: str  # file name, e.g. "a.jpg"
    width: int
    height: int
    objects: tuple[tuple[str, float, float, float, float], ...]  # (class, x1, y1, x2, y2) in pixels


# Boxes on a grid of 1/8 px, so that YOLO's normalised numbers convert back exactly.
PHOTOS = {
    "train": (Photo("a.jpg", 64, 48, (("cat", 4, 6, 36, 30), ("dog", 40, 8, 60, 44))),
              Photo("b.jpg", 80, 64, (("dog", 10, 10, 50, 40),)),
              Photo("c.jpg", 64, 64, (("cat", 8, 8, 24, 40), ("cat", 30, 20, 62, 60)))),
    "val": (Photo("d.jpg", 64, 48, (("dog", 2, 2, 30, 40),)),
            Photo("e.jpg", 48, 64, (("cat", 12, 16, 40, 56),))),
}


def jpeg(photo: Photo, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (photo.height, photo.width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_coco_export(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """``annotations/instances_<split>.json`` and the images in ``<split>/`` (COCO's own layout)."""
    (root / "annotations").mkdir(parents=True)
    for split, items in photos.items():
        (root / split).mkdir()
        images, annotations = [], []
        for index, photo in enumerate(items, start=1):
            (root / split / photo.name).write_bytes(jpeg(photo, index))
            images.append({"id": index, "file_name": photo.name, "width": photo.width, "height": photo.height})
            for name, x1, y1, x2, y2 in photo.objects:
                annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": CLASSES.index(name) + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        categories = [{"id": i, "name": name} for i, name in enumerate(CLASSES, start=1)]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def voc_xml(photo: Photo) -> str:
    objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for name, x1, y1, x2, y2 in photo.objects)
    return (f"<annotation><filename>{photo.name}</filename><size><width>{photo.width}</width>"
            f"<height>{photo.height}</height><depth>3</depth></size>{objects}</annotation>")


def write_voc_folder(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """A LabelImg folder: every photo with its XML beside it, all splits in one folder."""
    root.mkdir(parents=True)
    for index, photo in enumerate((p for items in photos.values() for p in items), start=1):
        (root / photo.name).write_bytes(jpeg(photo, index))
        (root / photo.name).with_suffix(".xml").write_text(voc_xml(photo))
    return root


def yolo_rows(photo: Photo) -> str:
    rows = []
    for name, x1, y1, x2, y2 in photo.objects:
        cx, cy = (x1 + x2) / 2 / photo.width, (y1 + y2) / 2 / photo.height
        w, h = (x2 - x1) / photo.width, (y2 - y1) / photo.height
        rows.append(f"{CLASSES.index(name)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(rows)


def write_yolo_export(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """Ultralytics' layout: ``images/<split>/``, ``labels/<split>/*.txt`` and ``data.yaml``."""
    for split, items in photos.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for index, photo in enumerate(items, start=1):
            (root / "images" / split / photo.name).write_bytes(jpeg(photo, index))
            (root / "labels" / split / photo.name).with_suffix(".txt").write_text(yolo_rows(photo))
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return root


def tree_digest(root: Path) -> str:
    """SHA-256 over every path under ``root`` (folders too), file contents and permissions."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + oct(path.stat().st_mode).encode())
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def write_roboflow_coco(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """Roboflow's COCO export: ``<split>/_annotations.coco.json`` beside the split's images
    (``valid`` for the validation split), with Roboflow's placeholder category 0."""
    for split, items in photos.items():
        folder = root / ("valid" if split == "val" else split)
        folder.mkdir(parents=True)
        images, annotations = [], []
        for index, photo in enumerate(items, start=1):
            (folder / photo.name).write_bytes(jpeg(photo, index))
            images.append({"id": index, "file_name": photo.name, "width": photo.width, "height": photo.height})
            for name, x1, y1, x2, y2 in photo.objects:
                annotations.append({"id": len(annotations) + 1, "image_id": index, "category_id": CLASSES.index(name) + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        categories = [{"id": 0, "name": "pets", "supercategory": "none"},
                      *({"id": i, "name": name, "supercategory": "pets"} for i, name in enumerate(CLASSES, start=1))]
        (folder / "_annotations.coco.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def write_one_coco_file(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """One COCO file beside an images/ folder (CVAT, Label Studio), every split's photos in it."""
    everything = {"all": tuple(p for items in photos.values() for p in items)}
    write_coco_export(root / "tmp", everything)
    (root / "tmp" / "all").rename(root / "images")
    (root / "tmp" / "annotations" / "instances_all.json").rename(root / "result.json")
    (root / "tmp" / "annotations").rmdir()
    (root / "tmp").rmdir()
    return root


def write_voc_devkit(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """A VOCdevkit year folder: JPEGImages/, Annotations/, ImageSets/Main/<split>.txt."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    index = 0
    for split, items in photos.items():
        for photo in items:
            index += 1
            (root / "JPEGImages" / photo.name).write_bytes(jpeg(photo, index))
            (root / "Annotations" / photo.name).with_suffix(".xml").write_text(voc_xml(photo))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{p.name[:-4]}\n" for p in items))
    return root


def write_voc_per_split(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """Roboflow's Pascal VOC export: a folder per split (train/, valid/) of photos and their XML."""
    for split, items in photos.items():
        write_voc_folder(root / ("valid" if split == "val" else split), {split: items})
    return root


def write_voc_two_folders(root: Path, images: str = "images", annotations: str = "annots",
                          photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """A plain folder with the photos in one subfolder and their XML in another."""
    (root / images).mkdir(parents=True)
    (root / annotations).mkdir()
    for index, photo in enumerate((p for items in photos.values() for p in items), start=1):
        (root / images / photo.name).write_bytes(jpeg(photo, index))
        (root / annotations / photo.name).with_suffix(".xml").write_text(voc_xml(photo))
    return root


def write_roboflow_yolo(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """Roboflow's YOLO export: ``<split>/images``, ``<split>/labels``, data.yaml with a names list."""
    for split, items in photos.items():
        folder = root / ("valid" if split == "val" else split)
        (folder / "images").mkdir(parents=True)
        (folder / "labels").mkdir()
        for index, photo in enumerate(items, start=1):
            (folder / "images" / photo.name).write_bytes(jpeg(photo, index))
            (folder / "labels" / photo.name).with_suffix(".txt").write_text(yolo_rows(photo))
    (root / "data.yaml").write_text(f"train: ../train/images\nval: ../valid/images\nnc: {len(CLASSES)}\n"
                                    f"names: [{', '.join(CLASSES)}]\n")
    return root


def write_flat_yolo(root: Path, photos: dict[str, tuple[Photo, ...]] = PHOTOS) -> Path:
    """One images/ + labels/ pair and classes.txt, no splits."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index, photo in enumerate((p for items in photos.values() for p in items), start=1):
        (root / "images" / photo.name).write_bytes(jpeg(photo, index))
        (root / "labels" / photo.name).with_suffix(".txt").write_text(yolo_rows(photo))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root
