"""What a dataset folder looks like: the annotation formats whose files it holds (``sniff``, for
messages such as the shapes generator's refusal of a folder it did not make), and the dataset
layouts it holds, with the options that read them (``detect``, for --data-root alone).

A look at names, folders and the first megabyte of JSON files; no annotation is parsed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The formats data/images.py decodes, matched case-insensitively.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")

# How deep to look for annotation files below the root (root/<split>/<folder>/file).
DEPTH = 3
SHOWN = 3  # example names in a message
HEAD = 1 << 20  # bytes of a JSON file searched for COCO's "images" key (it comes before the annotations)


def sniff(root: str | Path) -> list[tuple[str, str]]:
    """(format, evidence) for each format whose files ``root`` holds: ``coco`` (JSON files with
    an "images" list), ``voc`` (XML files), ``yolo`` (a labels folder of .txt files, or a data.yaml)."""
    root = Path(root)
    files = [p for p in _walk(root, DEPTH) if p.is_file()]
    found = []
    jsons = [p for p in files if p.suffix.lower() == ".json" and _has_images_key(p)]
    if jsons:
        found.append(("coco", f"has {_names(jsons, root)}"))
    xmls = [p for p in files if p.suffix.lower() == ".xml"]
    if xmls:
        found.append(("voc", f"has {len(xmls)} XML file{'s' if len(xmls) > 1 else ''} ({_names(xmls, root)})"))
    labels = [p for p in files if p.suffix.lower() == ".txt" and "labels" in p.relative_to(root).parts[:-1]]
    yamls = [p for p in files if p.name.lower() in ("data.yaml", "data.yml")]
    if labels or yamls:
        found.append(("yolo", f"has {_names(yamls + labels, root)}"))
    return found


def folder_hint(root: str | Path) -> str:
    """One phrase on what ``root`` holds and the option that reads it, e.g. "it has
    annotations/instances_train.json: a COCO dataset? add --data coco"."""
    root = Path(root)
    if not root.is_dir():
        return "it is a file, not a folder"
    found = sniff(root)
    readable = [(fmt, evidence) for fmt, evidence in found if fmt in ("coco", "voc")]
    if readable:
        return "; ".join(f"it {evidence}: a {fmt.upper()} dataset? add --data {fmt}" for fmt, evidence in readable)
    if found:
        return f"it {found[0][1]}: YOLO-format labels, which this version does not read"
    entries = sorted(p.name for p in root.iterdir())
    return (f"it holds {len(entries)} entr{'ies' if len(entries) > 1 else 'y'} ({', '.join(entries[:SHOWN])}"
            f"{', ...' if len(entries) > SHOWN else ''}); give a new or empty folder as --data-root for the "
            f"generated data, or the dataset's format with --data coco or --data voc")


def _has_images_key(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return b'"images"' in handle.read(HEAD)
    except OSError:
        return False


def _walk(folder: Path, depth: int):
    for entry in sorted(folder.iterdir()):
        yield entry
        if depth > 1 and entry.is_dir() and not entry.name.startswith("."):
            yield from _walk(entry, depth - 1)


def _names(paths: list[Path], root: Path) -> str:
    names = [str(p.relative_to(root)) for p in paths[:SHOWN]]
    return ", ".join(names) + (", ..." if len(paths) > SHOWN else "")


# ----------------------------------------------------------------------------- detection

TRAIN_SPLITS = ("train", "training", "trainval")
VAL_SPLITS = ("val", "valid", "validation", "test")  # test only when nothing else is there
HELD_OUT = 0.2  # the fraction held out for validation when a dataset has no validation split
# The data options (without "data.") a Layout sets, besides data.root for a dataset one folder down.
LAYOUT_OPTIONS = ("train_split", "val_split", "val_fraction", "train_annotations", "train_images", "val_annotations",
                  "val_images", "image_folder", "annotation_folder")


@dataclass(frozen=True)
class Layout:
    """A dataset found in a folder: its format (data.name), what it looks like, and the data.*
    options that read it (data.root among them when the dataset sits one folder down)."""

    format: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def held_out(self) -> bool:
        return self.options.get("val_fraction", 0) > 0

    @property
    def label(self) -> str:
        return {"coco": "COCO", "voc": "VOC XML", "yolo": "YOLO txt"}[self.format]


def detect(root: str | Path) -> list[Layout]:
    """Every dataset layout that ``root`` holds (README "Train on your own data"): COCO (an
    annotations/*.json with image folders, Roboflow's <split>/_annotations.coco.json, one JSON
    beside an image folder), VOC XML (a VOCdevkit year, maybe one folder down; a folder per
    split; XML beside the photos; an images folder and an XML folder under any names) and YOLO
    (Ultralytics' images/<split> + labels/<split>, Roboflow's <split>/images + <split>/labels,
    one images/ + labels/ pair). A split called train and one called val, valid or validation
    become data.train_split and data.val_split; without the latter, HELD_OUT of the training
    images are held out (data.val_fraction)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [*_coco_layouts(root), *_voc_layouts(root), *_yolo_layouts(root)]
    return found


def _splits(names: list[str]) -> dict[str, Any]:
    """data.train_split / val_split of the split names a dataset has, or a held-out fraction."""
    lowered = {name.lower(): name for name in names}
    train = next((lowered[n] for n in TRAIN_SPLITS if n in lowered), None) or next(
        (name for name in sorted(names) if "train" in name.lower()), None)
    val = next((lowered[n] for n in VAL_SPLITS[:-1] if n in lowered), None) or next(
        (name for name in sorted(names) if "val" in name.lower() and name != train), None)
    if train == lowered.get("trainval") and "test" in lowered and val is None:
        val = lowered["test"]  # PASCAL VOC: trainval, scored on test
    if train is None:
        return {}
    return {"train_split": train, "val_split": val} if val else {"train_split": train, "val_fraction": HELD_OUT}


def _split_note(options: dict[str, Any]) -> str:
    if options.get("val_fraction"):
        return f"splits: {options['train_split']}, no validation split"
    return f"splits: {options['train_split']} / {options['val_split']}"


def _coco_layouts(root: Path) -> list[Layout]:
    layouts = []
    instances = sorted((root / "annotations").glob("instances_*.json"))
    splits = [p.stem[len("instances_"):] for p in instances if (root / p.stem[len("instances_"):]).is_dir()]
    if splits and _splits(splits):
        options = _splits(splits)
        layouts.append(Layout("coco", f"COCO layout: annotations/instances_<split>.json + <split>/ ({_split_note(options)})",
                              options))
    roboflow = sorted(p.parent.name for p in root.glob("*/_annotations.coco.json"))
    if roboflow and _splits(roboflow):
        options = _splits(roboflow)
        layouts.append(Layout("coco", f"COCO, Roboflow export: <split>/_annotations.coco.json ({_split_note(options)})",
                              options))
    if not layouts:  # one annotation file beside (or above) an image folder: CVAT, Label Studio
        files = [p for p in [*sorted(root.glob("*.json")), *sorted((root / "annotations").glob("*.json"))]
                 if _has_images_key(p)]
        image_dir = next((d for d in (root / "images", root) if d.is_dir() and _has_images(d)), None)
        if len(files) == 1 and image_dir is not None:
            relative = str(files[0].relative_to(root))
            images = str(image_dir.relative_to(root)) if image_dir != root else "."
            layouts.append(Layout("coco", f"COCO, one annotation file: {relative} + {images}/",
                                  {"train_annotations": relative, "train_images": images, "val_fraction": HELD_OUT}))
    return layouts


def _voc_layouts(root: Path) -> list[Layout]:
    devkits = [root] if (root / "ImageSets" / "Main").is_dir() else sorted(
        {p.parent.parent for p in [*root.glob("*/ImageSets/Main"), *root.glob("*/*/ImageSets/Main")]})
    layouts = []
    for devkit in devkits[:1]:
        options = _splits(sorted(p.stem for p in (devkit / "ImageSets" / "Main").glob("*.txt")))
        if options:
            where = "" if devkit == root else f" in {devkit.relative_to(root)}/"
            layouts.append(Layout("voc", f"VOC XML, VOCdevkit{where}: JPEGImages/ + Annotations/ + ImageSets/Main "
                                         f"({_split_note(options)})", {**options, "root": str(devkit)} if devkit != root
                                  else options))
    if layouts:
        return layouts
    per_split = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.xml")))
    options = _splits(per_split)
    if options:
        return [Layout("voc", f"VOC XML, a folder per split with the XML beside the photos ({_split_note(options)})",
                       options)]
    if any(root.glob("*.xml")) and _has_images(root):
        return [Layout("voc", "VOC XML, plain folder: the XML beside the photos",
                       {"train_split": "train", "val_fraction": HELD_OUT})]
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    xml_folders = [d for d in folders if any(d.glob("*.xml"))]
    image_folders = [d for d in folders if _has_images(d) and d not in xml_folders]
    if len(xml_folders) == 1 and len(image_folders) == 1:
        images, annotations = image_folders[0].name, xml_folders[0].name
        return [Layout("voc", f"VOC XML, plain folder: {images}/ + {annotations}/",
                       {"train_split": "train", "val_fraction": HELD_OUT, "image_folder": images,
                        "annotation_folder": annotations})]
    return []


def _yolo_layouts(root: Path) -> list[Layout]:
    if not any((root / name).is_file() for name in ("data.yaml", "data.yml", "classes.txt")):
        return []
    ultralytics = sorted(d.name for d in (root / "images").iterdir() if d.is_dir()) if (root / "images").is_dir() else []
    ultralytics = [split for split in ultralytics if (root / "labels" / split).is_dir()]
    options = _splits(ultralytics)
    if options:
        return [Layout("yolo", f"YOLO txt, Ultralytics layout: images/<split>/ + labels/<split>/ ({_split_note(options)})",
                       options)]
    roboflow = sorted(d.name for d in root.iterdir() if (d / "images").is_dir() and (d / "labels").is_dir())
    options = _splits(roboflow)
    if options:
        return [Layout("yolo", f"YOLO txt, Roboflow export: <split>/images/ + <split>/labels/ ({_split_note(options)})",
                       options)]
    if (root / "images").is_dir() and (root / "labels").is_dir() and _has_images(root / "images"):
        return [Layout("yolo", "YOLO txt, one folder: images/ + labels/", {"train_split": "train",
                                                                            "val_fraction": HELD_OUT})]
    return []


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())
