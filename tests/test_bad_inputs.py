"""Bad dataset inputs: every one is a DataError or FileNotFoundError naming the file and the
problem, and the scripts turn those into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import random
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from detector.data import CocoDetection, DataError, VocDetection, collate
from detector.data.errors import error_message
from detector.data.voc import VOC_CLASSES
from detector.engine import cli
from detector.engine import config as config_lib
from detector.engine.config import ConfigError

REPO = Path(__file__).resolve().parents[1]

SKIP_HINT = " (set data.skip_bad_images=true to leave out such images)"
TRUNCATED_PNG = "cannot decode image: the PNG file is truncated (it ends before its IEND chunk)"
PRINTABLE = string.printable.encode()
NUMBER_CHARS = b"0123456789.-e"


def image_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A noisy RGB image (noise keeps the compressed data, and so any damage to it, non-trivial)."""
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, fmt)
    return buffer.getvalue()


def write_coco(root: Path, images: dict[str, tuple[int, int]], annotations: list[dict], split: str = "train") -> Path:
    """A COCO-format split: ``images`` maps file name -> (width, height), ids 1, 2, ... in that
    order; categories cat (id 1) and dog (id 3). Returns the annotation file."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    for index, (name, (width, height)) in enumerate(images.items()):
        (root / split / name).write_bytes(image_bytes(width, height, seed=index))
    data = {
        "images": [{"id": i, "file_name": name, "width": w, "height": h}
                   for i, (name, (w, h)) in enumerate(images.items(), start=1)],
        "annotations": [{"id": k, "iscrowd": 0, **ann} for k, ann in enumerate(annotations, start=1)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path


def voc_object(name: str, box: tuple[float, float, float, float]) -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def write_voc(root: Path, items: dict[str, tuple[int, int, list[str]]]) -> Path:
    """A VOC year folder with split ``train``: ``items`` maps image id -> (width, height, objects)."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for index, (name, (width, height, objects)) in enumerate(items.items()):
        (root / "JPEGImages" / f"{name}.jpg").write_bytes(image_bytes(width, height, "JPEG", seed=index))
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>{width}</width><height>{height}</height></size>{''.join(objects)}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{name}\n" for name in items))
    return root


@pytest.fixture
def coco_root(tmp_path) -> Path:
    write_coco(tmp_path / "coco", {"a.png": (40, 30), "b.png": (24, 20), "c.png": (16, 16)}, [
        {"image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8]},
        {"image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]},
    ])
    return tmp_path / "coco"


@pytest.fixture
def voc_root(tmp_path) -> Path:
    return write_voc(tmp_path / "VOC2007", {
        "000001": (40, 30, [voc_object("dog", (3, 4, 20, 25))]),
        "000002": (24, 20, [voc_object("cat", (1, 2, 10, 12))]),
    })


# ----------------------------------------------------------------------------- missing or empty


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError) as coco:
        CocoDetection(tmp_path / "nowhere", "train")
    assert str(coco.value) == f"COCO dataset folder not found: {tmp_path / 'nowhere'}"
    with pytest.raises(FileNotFoundError) as voc:
        VocDetection(tmp_path / "nowhere", "train")
    assert str(voc.value) == f"VOC folder not found: {tmp_path / 'nowhere'}"


def test_empty_dataset_folder_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as coco:
        CocoDetection(tmp_path, "train")
    assert str(coco.value) == f"COCO annotation file not found: {tmp_path / 'annotations' / 'instances_train.json'}"
    with pytest.raises(FileNotFoundError) as voc:
        VocDetection(tmp_path, "train")
    assert str(voc.value) == (f"VOC split 'train' not found in {tmp_path}: no ImageSets/Main/train.txt (VOCdevkit "
                              f"layout), no folder train/ and no list file train.txt (plain folder); to hold out part "
                              f"of a folder's images for validation, set data.val_fraction")


def test_unknown_split_lists_the_splits_found(coco_root):
    with pytest.raises(FileNotFoundError) as info:
        CocoDetection(coco_root, "train2017")
    assert str(info.value) == (f"COCO annotation file not found: "
                               f"{coco_root / 'annotations' / 'instances_train2017.json'} (splits found: train)")


def test_annotation_file_without_images_is_an_error(coco_root, voc_root):
    path = coco_root / "annotations" / "instances_train.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(DataError) as coco:
        CocoDetection(coco_root, "train")
    assert str(coco.value) == f"{path}: lists no images"
    split = voc_root / "ImageSets" / "Main" / "train.txt"
    split.write_text("\n  \n")
    with pytest.raises(DataError) as voc:
        VocDetection(voc_root, "train")
    assert str(voc.value) == f"{split}: lists no image ids"


def test_split_file_that_is_not_text_is_an_error(voc_root):
    split = voc_root / "ImageSets" / "Main" / "train.txt"
    split.write_bytes(b"000001\n\xff\xfe\n")
    with pytest.raises(DataError) as info:
        VocDetection(voc_root, "train")
    assert str(info.value) == (f"{split}: not a text file of image ids: 'utf-8' codec can't decode byte 0xff "
                               f"in position 7: invalid start byte")


# ----------------------------------------------------------------------------- COCO instances files


def _set(path: tuple, value):
    """An edit of the instances dict: set the entry at ``path`` (keys and indices) to ``value``."""
    def edit(data):
        *parents, last = path
        for key in parents:
            data = data[key]
        data[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set(("annotations", 0, "bbox"), ["2", 3, 10, 8]),
     "annotation 1: 'bbox' is ['2', 3, 10, 8]; expected [x, y, w, h], 4 finite numbers"),
    (_set(("annotations", 0, "bbox"), [2, 3, 10]), "annotation 1: 'bbox' is [2, 3, 10]; expected [x, y, w, h], 4 finite numbers"),
    (_set(("annotations", 0, "bbox"), [2, 3, float("nan"), 8]),
     "annotation 1: 'bbox' is [2, 3, nan, 8]; expected [x, y, w, h], 4 finite numbers"),
    (_set(("annotations", 0, "bbox"), [2, 3, float("inf"), 8]),
     "annotation 1: 'bbox' is [2, 3, inf, 8]; expected [x, y, w, h], 4 finite numbers"),
    (_set(("annotations", 0, "bbox"), [2, 3, True, 8]),
     "annotation 1: 'bbox' is [2, 3, True, 8]; expected [x, y, w, h], 4 finite numbers"),
    (_set(("annotations", 0, "bbox"), [10**400, 3, 10, 8]),
     f"annotation 1: 'bbox' is {str([10**400, 3, 10, 8])[:100]}; expected [x, y, w, h], 4 finite numbers"),
    (_set(("images", 0, "width"), "40"), "image 1: 'width' is '40'; expected a whole number of pixels from 1 to 2147483647"),
    (_set(("images", 0, "height"), 0), "image 1: 'height' is 0; expected a whole number of pixels from 1 to 2147483647"),
    (_set(("images", 0, "width"), 40.5), "image 1: 'width' is 40.5; expected a whole number of pixels from 1 to 2147483647"),
    (_set(("images", 0, "file_name"), 7), "image 1: 'file_name' is 7; expected a file name"),
    (_set(("images", 0, "id"), "1"), "images[0]: 'id' is '1'; expected an integer"),
    (_set(("images", 1, "id"), 1), "image id 1 occurs more than once in 'images'"),
    (_set(("annotations", 1, "id"), 1), "annotation id 1 occurs more than once in 'annotations'"),
    (_set(("annotations", 0, "category_id"), 5), "annotation 1: 'category_id' is 5; expected the id of an entry of 'categories'"),
    (_set(("annotations", 0, "image_id"), 99), "annotation 1: 'image_id' is 99; expected the id of an entry of 'images'"),
    (_set(("annotations", 0, "image_id"), [1]), "annotation 1: 'image_id' is [1]; expected the id of an entry of 'images'"),
    (_set(("annotations", 0, "iscrowd"), 2), "annotation 1: 'iscrowd' is 2; expected 0 or 1"),
    (_set(("annotations", 0, "area"), "big"), "annotation 1: 'area' is 'big'; expected a finite number"),
    (_set(("categories", 0, "name"), None), "category 1: 'name' is None; expected a string"),
    (_set(("categories",), {"1": "cat"}), "not a COCO instances file (needs lists categories, images, annotations)"),
    (_set(("annotations", 0), "bbox"), "every entry of 'annotations' needs id, image_id, category_id, bbox; got 'bbox'"),
])
def test_wrong_field_names_file_entry_and_field(coco_root, edit, message):
    path = coco_root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        CocoDetection(coco_root, "train")
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize("content, message", [
    (b'{"images": [', "Expecting value: line 1 column 13 (char 12)"),
    (b'{"images": "\xff"}', "'utf-8' codec can't decode byte 0xff in position 12: invalid start byte"),
    (b"[" * 100_000, "maximum recursion depth exceeded while decoding a JSON array from a unicode string"),
    (b"1" * 5000, "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; "
                  "use sys.set_int_max_str_digits() to increase the limit"),
])
def test_undecodable_json_names_the_file(coco_root, content, message):
    path = coco_root / "annotations" / "instances_train.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        CocoDetection(coco_root, "train")
    assert str(info.value) == f"{path}: not valid JSON: {message}"


# ----------------------------------------------------------------------------- VOC XML files


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l0 "ha">'
                  + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
                  + "]><annotation><object><name>&l9;</name></object></annotation>")


@pytest.mark.parametrize("xml, message", [
    ("<annotation><object><name>dog</name>", "malformed XML: no element found: line 1, column 36"),
    (b"<annotation><filename>\xff</filename></annotation>", "malformed XML: not well-formed (invalid token): line 1, column 22"),
    ('<?xml version="1.0" encoding="utf-9"?><annotation/>', "malformed XML: unknown encoding: utf-9"),
    pytest.param(BILLION_LAUGHS, "malformed XML: limit on input amplification factor (from DTD and entities) "
                                 "breached: line 1, column 574", id="billion laughs"),
    ("<annotations/>", "not a VOC annotation: the root element is <annotations>, not <annotation>"),
    ("<annotation><size><width>abc</width><height>30</height></size></annotation>", "<size/width> is 'abc', not a number"),
    ("<annotation><size><width>-40</width><height>30</height></size></annotation>",
     "<size/width> is -40; expected a whole number of pixels"),
    ("<annotation><size><width>40</width><height>1e12</height></size></annotation>",
     "<size/height> is 1e+12; expected a whole number of pixels"),
    (f"<annotation>{voc_object('dog', (3, 4, 'x', 25))}</annotation>", "<bndbox/xmax> is 'x', not a number"),
    (f"<annotation>{voc_object('dog', (3, 4, 'nan', 25))}</annotation>", "<bndbox/xmax> is 'nan', not a finite number"),
    (f"<annotation>{voc_object('dog', (3, '-1e999', 20, 25))}</annotation>", "<bndbox/ymin> is '-1e999', not a finite number"),
    ("<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object>"
     "</annotation>", "an object is missing <bndbox/ymax>"),
    (f"<annotation>{voc_object('Dog', (3, 4, 20, 25))}</annotation>",
     "class 'Dog' is not in the class list (aeroplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, "
     "diningtable, dog, horse, motorbike, person, pottedplant, sheep, sofa, train, tvmonitor)"),
    (f"<annotation>{voc_object('', (3, 4, 20, 25))}</annotation>", "an object has no <name>"),
])
def test_bad_xml_names_the_file_and_problem(voc_root, xml, message):
    path = voc_root / "Annotations" / "000002.xml"
    path.write_bytes(xml if isinstance(xml, bytes) else xml.encode())
    with pytest.raises(DataError) as info:
        VocDetection(voc_root, "train", classes=VOC_CLASSES)
    assert str(info.value) == f"{path}: {message}"


def test_an_unreadable_image_is_named_before_its_size_is_needed(voc_root):
    (voc_root / "Annotations" / "000002.xml").write_text("<annotation></annotation>")  # no <size>
    image = voc_root / "JPEGImages" / "000002.jpg"
    image.write_text("not an image")
    with pytest.raises(DataError) as info:
        VocDetection(voc_root, "train")
    assert str(info.value).startswith(f"{voc_root / 'ImageSets' / 'Main' / 'train.txt'}: 1 of 2 images cannot be "
                                      f"used: {image}: cannot decode image: ")
    assert str(info.value).endswith(SKIP_HINT)


# ----------------------------------------------------------------------------- image files


def _damage(kind: str, good: bytes) -> bytes:
    if kind == "truncated":
        return good[:len(good) // 2]
    if kind == "flipped byte":  # inside the compressed pixels: the case that crashed torchvision's decoder
        return good[:60] + bytes([good[60] ^ 0xFF]) + good[61:]
    if kind == "text":
        return b"this is not an image\n"
    return b""  # empty


@pytest.mark.parametrize("kind, problem", [
    ("truncated", "the PNG file is truncated (it ends before its IEND chunk)"),
    ("flipped byte", "PNG chunk IDAT at byte 33 is corrupt (CRC mismatch)"),
    ("text", "Unsupported image file. Only jpeg, png, webp and gif are currently supported. For avif and heic "
             "format, please rely on `decode_avif` and `decode_heic` directly."),
    ("empty", "the file is empty"),
])
def test_a_bad_image_stops_the_dataset_before_any_image_is_read(coco_root, kind, problem):
    image = coco_root / "train" / "b.png"
    image.write_bytes(_damage(kind, image.read_bytes()))
    with pytest.raises(DataError) as info:
        CocoDetection(coco_root, "train")
    ann_file = coco_root / "annotations" / "instances_train.json"
    assert str(info.value) == f"{ann_file}: 1 of 3 images cannot be used: {image}: cannot decode image: {problem}{SKIP_HINT}"


def test_every_bad_image_is_listed_at_once(coco_root):
    a, b = coco_root / "train" / "a.png", coco_root / "train" / "b.png"
    a.write_bytes(b"")
    b.unlink()
    with pytest.raises(DataError) as info:
        CocoDetection(coco_root, "train")
    assert str(info.value) == (f"{coco_root / 'annotations' / 'instances_train.json'}: 2 of 3 images cannot be used: "
                               f"{a}: cannot decode image: the file is empty; image file not found: {b}{SKIP_HINT}")


def test_a_jpeg_cut_short_is_used_as_pillow_completes_it_with_one_warning(voc_root, caplog):
    image = voc_root / "JPEGImages" / "000001.jpg"
    whole = image.read_bytes()
    image.write_bytes(whole[:-20])  # the end marker and the last bytes of the scan are gone
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        ds = VocDetection(voc_root, "train")
    split = voc_root / "ImageSets" / "Main" / "train.txt"
    assert [r.getMessage() for r in caplog.records] == [
        f"{split}: 1 JPEG file ends early (cut short: 000001.jpg); they are used as Pillow completes them, the missing "
        f"part grey"]
    decoded, _ = ds[0]
    reference = torch.from_numpy(np.asarray(Image.open(io.BytesIO(whole)).convert("RGB"))).permute(2, 0, 1)
    assert decoded.shape == reference.shape == (3, 30, 40)
    # The rows before the cut decode as the whole file does (up to JPEG's rounding in another decoder).
    assert (decoded[:, :8].int() - reference[:, :8].int()).abs().max() <= 2
    # A JPEG damaged inside (its header zeroed, its end marker still there) stays an error.
    image.write_bytes(whole[:2] + b"\x00" * 20 + whole[22:])
    with pytest.raises(DataError, match="cannot decode image"):
        VocDetection(voc_root, "train")


def test_bad_images_are_skipped_and_counted_when_asked(coco_root, caplog):
    ann_file = coco_root / "annotations" / "instances_train.json"
    a, b = coco_root / "train" / "a.png", coco_root / "train" / "b.png"
    a.write_bytes(a.read_bytes()[:100])
    b.unlink()
    with caplog.at_level(logging.INFO, logger="detector.data"):
        ds = CocoDetection(coco_root, "train", skip_bad_images=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"{ann_file}: leaving out 2 of 3 images whose files are missing or cannot be decoded "
        f"(first: {a}: {TRUNCATED_PNG})"
    ]
    assert ds.image_ids == [3] and ds.coco.getImgIds() == [3]
    assert ds.coco.dataset["annotations"] == []  # both annotations belonged to the left-out images
    image, target = ds[0]
    assert tuple(image.shape) == (3, 16, 16) and target["boxes"].shape == (0, 4)


def test_images_are_checked_once_until_their_files_change(coco_root, monkeypatch, tmp_path):
    from detector.data import preflight

    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "cache"))
    checked = []
    real = preflight.image_problem
    monkeypatch.setattr(preflight, "image_problem", lambda path: checked.append(path.name) or real(path))
    CocoDetection(coco_root, "train")
    CocoDetection(coco_root, "train")  # a second command, e.g. the next cell of a comparison
    assert sorted(checked) == ["a.png", "b.png", "c.png"]
    b = coco_root / "train" / "b.png"
    b.write_bytes(b.read_bytes()[:-1] + b"\x00")  # same size, new contents and modification time
    with pytest.raises(DataError, match="b.png"):
        CocoDetection(coco_root, "train")
    assert sorted(checked) == ["a.png", "b.png", "b.png", "c.png"]
    assert [p.parent.name for p in (tmp_path / "cache").rglob("*.json")] == ["preflight"]  # never in the dataset


def test_voc_bad_images_are_skipped_when_asked(voc_root, caplog):
    split = voc_root / "ImageSets" / "Main" / "train.txt"
    image = voc_root / "JPEGImages" / "000001.jpg"
    image.write_bytes(b"GIF89a")
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        ds = VocDetection(voc_root, "train", skip_bad_images=True)
    assert ds.image_ids == [2] and [a["image_id"] for a in ds.coco.dataset["annotations"]] == [2]
    (record,) = caplog.records
    assert record.getMessage().startswith(f"{split}: leaving out 1 of 2 images whose files are missing or cannot "
                                          f"be decoded (first: {image}: cannot decode image: ")


def test_no_readable_image_is_an_error_even_when_skipping(coco_root):
    for image in (coco_root / "train").iterdir():
        image.write_text("text")
    ann_file = coco_root / "annotations" / "instances_train.json"
    with pytest.raises(DataError) as info:
        CocoDetection(coco_root, "train", skip_bad_images=True)
    assert str(info.value).startswith(f"{ann_file}: none of its 3 images can be read ({coco_root / 'train' / 'a.png'}: "
                                      f"cannot decode image: Unsupported image file.")
    assert str(info.value).count("cannot decode image") == 3  # every one of them named


# ----------------------------------------------------------------------------- boxes


def test_coco_boxes_are_clipped_dropped_and_counted(tmp_path, caplog):
    ann_file = write_coco(tmp_path / "coco", {"a.png": (40, 30), "b.png": (24, 20)}, [
        {"image_id": 1, "category_id": 1, "bbox": [-5, 10, 20, 30]},  # partly outside: clipped
        {"image_id": 1, "category_id": 3, "bbox": [30, 5, 1e300, 1e300]},  # huge: clipped to the image
        {"image_id": 2, "category_id": 1, "bbox": [3, 4, 0, 6]},  # zero width: dropped
        {"image_id": 2, "category_id": 1, "bbox": [30, 4, 5, 6]},  # outside the 24 px image: dropped
    ])
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        ds = CocoDetection(tmp_path / "coco", "train")
    assert [r.getMessage() for r in caplog.records] == [
        f"{ann_file}: left 2 boxes with zero or negative width or height (after clipping to the image) out of the "
        f"targets, in b.png; the ground truth keeps them"
    ]
    _, a = ds[0]
    assert a["boxes"].tolist() == [[0.0, 10.0, 15.0, 30.0], [30.0, 5.0, 40.0, 30.0]]
    image, b = ds[1]  # kept as a negative
    assert tuple(image.shape) == (3, 20, 24) and b["boxes"].shape == (0, 4) and b["labels"].tolist() == []
    assert len(ds.coco.dataset["annotations"]) == 4  # the ground truth keeps them as annotated


def test_voc_inverted_box_is_dropped_and_counted(tmp_path, caplog):
    root = write_voc(tmp_path / "VOC2007", {
        "000001": (40, 30, [voc_object("dog", (20, 4, 3, 25)), voc_object("cat", (35.5, -2, 50, 12))]),
    })
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        ds = VocDetection(root, "train")
    assert [r.getMessage() for r in caplog.records] == [
        f"{root / 'ImageSets' / 'Main' / 'train.txt'}: left 1 boxes with zero or negative width or height (after "
        f"clipping to the image) out of the targets, in 000001.jpg; the ground truth keeps them"
    ]
    _, target = ds[0]
    assert target["boxes"].tolist() == [[35.5, 0.0, 40.0, 12.0]]
    assert target["labels"].tolist() == [1]  # cat, first of the names found (cat, dog)


# ----------------------------------------------------------------------------- command line


def test_skip_bad_images_flag_sets_the_option():
    parser = argparse.ArgumentParser()
    cli.add_config_arguments(parser)
    assert config_lib.from_args(parser.parse_args(["--skip-bad-images"])).data.skip_bad_images is True
    assert config_lib.from_args(parser.parse_args([])).data.skip_bad_images is False


def _raise(exc: BaseException):
    def main():
        raise exc
    return main


def test_worker_data_error_prints_the_original_message_and_exits_2(coco_root, capsys):
    dataset = CocoDetection(coco_root, "train")
    image = coco_root / "train" / "c.png"
    image.write_bytes(image.read_bytes()[:40])  # damaged after the check, as by a disk failing mid-run
    with pytest.raises(DataError) as raised:
        for _ in DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=collate):
            pass
    exc = raised.value
    assert type(exc) is DataError and str(exc).startswith("Caught DataError in DataLoader worker process 0.")
    message = f"{image}: {TRUNCATED_PNG}{SKIP_HINT}"
    assert error_message(exc) == message
    with pytest.raises(SystemExit) as info:
        cli.run_main(_raise(exc))
    assert info.value.code == 2 and capsys.readouterr().err == f"error: {message}\n"


def test_worker_missing_file_prints_the_original_message_and_exits_2(capsys):
    # As test_worker_data_error_... shows PyTorch's format; a real worker costs 5 s to shut down.
    exc = FileNotFoundError("Caught FileNotFoundError in DataLoader worker process 1.\nOriginal Traceback (most "
                            "recent call last):\n  File \"coco.py\", line 9, in load_image\n    with open(path) as f:\n"
                            "FileNotFoundError: image file not found: /data/b.png\n")
    with pytest.raises(SystemExit) as info:
        cli.run_main(_raise(exc))
    assert info.value.code == 2 and capsys.readouterr().err == "error: image file not found: /data/b.png\n"


def test_other_errors_keep_their_traceback():
    with pytest.raises(ValueError, match="a bug"):
        cli.run_main(_raise(ValueError("a bug")))


def test_config_errors_exit_2_in_scripts_that_never_load_the_data_package(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "detector.data.errors")
    with pytest.raises(SystemExit) as info:
        cli.run_main(_raise(ConfigError("unknown option 'x.y'")))
    assert info.value.code == 2 and capsys.readouterr().err == "error: unknown option 'x.y'\n"


def _two_split_coco(tmp_path) -> Path:
    root = tmp_path / "coco"
    write_coco(root, {"a.png": (64, 64), "b.png": (64, 64)}, [{"image_id": 1, "category_id": 1, "bbox": [8, 8, 20, 20]}])
    write_coco(root, {"v.png": (64, 64)}, [{"image_id": 1, "category_id": 3, "bbox": [4, 4, 30, 30]}], split="val")
    return root


def test_train_script_refuses_a_truncated_image_before_the_run_directory_with_status_2(tmp_path):
    root = _two_split_coco(tmp_path)
    bad = root / "train" / "b.png"
    bad.write_bytes(bad.read_bytes()[:200])
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--data", "coco", "--data-root", str(root), "--out-dir", str(tmp_path / "runs"),
         "--set", "train.progress=false", "data.num_workers=1", "train.max_steps=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    ann_file = root / "annotations" / "instances_train.json"
    assert f"\nerror: {ann_file}: 1 of 2 images cannot be used: {bad}: {TRUNCATED_PNG}{SKIP_HINT}\n" in "\n" + result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_run_that_fails_in_a_dataloader_worker_records_the_cause_in_one_line(tmp_path, monkeypatch):
    from detector.data import coco
    from detector.engine.training import train

    root = _two_split_coco(tmp_path)
    bad = root / "train" / "b.png"
    bad.write_bytes(bad.read_bytes()[:200])
    monkeypatch.setattr(coco, "check_images", lambda *args, **kwargs: set())  # as if damaged after the check
    cfg = config_lib.load(overrides=["data.name=coco", f"data.root={root}", "data.num_workers=1", "data.batch_size=2",
                                     "train.max_steps=2", "train.progress=false", f"train.out_dir={tmp_path / 'runs'}",
                                     "train.run_name=failing", "model.anchor_sizes=[8,16]"])
    with pytest.raises(DataError):
        train(cfg)
    record = json.loads((tmp_path / "runs" / "failing" / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"DataError: {bad}: {TRUNCATED_PNG}{SKIP_HINT}"


# ----------------------------------------------------------------------------- fuzzing


def _read_all(make):
    """Build a dataset and read every item; DataError / FileNotFoundError pass through."""
    ds = make()
    for index in range(len(ds)):
        ds[index]


def _flip_bytes(rng: random.Random, good: bytes) -> bytes:
    """1-4 bytes replaced, mostly by number characters or printable ones: those keep JSON and
    XML parsable often enough to reach the field checks."""
    data = bytearray(good)
    for _ in range(rng.randint(1, 4)):
        pool = rng.choices([NUMBER_CHARS, PRINTABLE, bytes(range(256))], weights=[5, 3, 2])[0]
        data[rng.randrange(len(data))] = rng.choice(pool)
    return bytes(data)


def test_fuzzed_files_give_data_errors_naming_the_file(coco_root, voc_root):
    """Random byte flips in an instances file, a PNG and a VOC XML: each read succeeds or is a
    DataError / FileNotFoundError naming the damaged file, never another exception or a crash."""
    targets = [
        (coco_root / "annotations" / "instances_train.json", lambda: CocoDetection(coco_root, "train")),
        (coco_root / "train" / "a.png", lambda: CocoDetection(coco_root, "train")),
        (voc_root / "Annotations" / "000001.xml", lambda: VocDetection(voc_root, "train")),
    ]
    rng = random.Random(0)
    outcomes = {"read": 0, "error": 0}
    for path, make in targets:
        good = path.read_bytes()
        for _ in range(60):
            path.write_bytes(_flip_bytes(rng, good))
            try:
                _read_all(make)
                outcomes["read"] += 1
            except (DataError, FileNotFoundError) as exc:
                assert str(path) in str(exc), f"{exc!r} does not name {path}"
                outcomes["error"] += 1
        path.write_bytes(good)
    assert outcomes["read"] > 0 and outcomes["error"] > 0


_ODD_VALUES = [None, True, -1, 0, 2.5, 1e308, float("nan"), float("-inf"), 10**30, "", "x", [], [1, 2], {}, {"id": 1}]


def _containers(value, found):
    """Every (container, key) pair inside a JSON value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((value, key))
        _containers(child, found)
    return found


def test_fuzzed_json_values_give_data_errors_naming_the_file(coco_root):
    """Values of an instances file replaced by values of other types and magnitudes."""
    path = coco_root / "annotations" / "instances_train.json"
    good = json.loads(path.read_text())
    rng = random.Random(1)
    outcomes = {"read": 0, "error": 0}
    for _ in range(60):
        data = copy.deepcopy(good)
        for _ in range(rng.randint(1, 2)):
            container, key = rng.choice(_containers(data, []))
            container[key] = copy.deepcopy(rng.choice(_ODD_VALUES))
        path.write_text(json.dumps(data))
        try:
            _read_all(lambda: CocoDetection(coco_root, "train"))
            outcomes["read"] += 1
        except (DataError, FileNotFoundError) as exc:
            assert str(path) in str(exc), f"{exc!r} does not name {path}"
            outcomes["error"] += 1
    assert outcomes["read"] > 0 and outcomes["error"] > 0
