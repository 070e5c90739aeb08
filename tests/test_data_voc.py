"""PASCAL VOC reader on a small generated VOC year folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from detector.data import DataError, Holdout, VocDetection
from detector.data.voc import VOC_CLASSES
from detector.engine.build import build_dataset
from detector.engine.config import DataConfig


def _object(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _annotation(name: str, width: int, height: int, objects: list[str], size: bool = True) -> str:
    size_xml = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if size else ""
    return (f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>{size_xml}"
            f"<segmented>0</segmented>{''.join(objects)}</annotation>")


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """VOC2007-style folder with three train images (the middle one without <size>)."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    items = {
        "000005": (50, 40, [_object("dog", (3, 4, 30, 25)), _object("person", (20, 10, 48, 39), difficult=1),
                            _object("chair", (0, 0, 60, 12))], True),  # chair runs past the right edge
        "000007": (32, 24, [_object("person", (5, 6, 15, 20))], False),
        "000009": (20, 20, [], True),
    }
    for name, (width, height, objects, size) in items.items():
        Image.new("RGB", (width, height), (120, 60, 30)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(_annotation(name, width, height, objects, size))
    (root / "ImageSets" / "Main" / "train.txt").write_text("000005\n000007\n000009\n")
    return root


def test_boxes_and_labels_are_parsed_exactly(voc_root):
    ds = VocDetection(voc_root, "train", classes=VOC_CLASSES)
    assert ds.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert ds.label_to_category_id == {i: i for i in range(1, 21)}
    assert ds.image_ids == [1, 2, 3]  # line numbers in train.txt

    image, target = ds[0]
    assert tuple(image.shape) == (3, 40, 50) and image.dtype == torch.uint8
    assert target["orig_size"] == (40, 50) and target["image_id"] == 1 and target["scale"] == 1.0
    # VOC pixel coordinates are used as xyxy unchanged; the chair is clipped to the 50 px width.
    assert target["boxes"].tolist() == [[3.0, 4.0, 30.0, 25.0], [0.0, 0.0, 50.0, 12.0]]
    dog, chair = VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("chair") + 1
    assert target["labels"].tolist() == [dog, chair]

    image, target = ds[1]  # size read from the JPEG header
    assert tuple(image.shape) == (3, 24, 32) and target["orig_size"] == (24, 32)
    assert target["boxes"].tolist() == [[5.0, 6.0, 15.0, 20.0]]
    assert target["labels"].tolist() == [VOC_CLASSES.index("person") + 1]

    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_difficult_objects_are_ignored_ground_truth(voc_root):
    ds = VocDetection(voc_root, "train", classes=VOC_CLASSES)
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=1))
    assert [(a["bbox"], a["iscrowd"]) for a in anns] == [
        ([3.0, 4.0, 27.0, 21.0], 0), ([20.0, 10.0, 28.0, 29.0], 1), ([0.0, 0.0, 60.0, 12.0], 0),
    ]
    assert [a["area"] for a in anns] == [27.0 * 21.0, 28.0 * 29.0, 60.0 * 12.0]
    assert ds.coco.imgs[2] == {"id": 2, "file_name": "000007.jpg", "width": 32, "height": 24}
    _, target = ds[0]
    assert [20.0, 10.0, 48.0, 39.0] not in target["boxes"].tolist()


def test_category_subset_skips_other_objects(voc_root):
    ds = VocDetection(voc_root, "train", classes=VOC_CLASSES, categories=["person", "dog"], max_images=2)
    assert ds.class_names == ["dog", "person"]  # standard VOC order
    assert ds.label_to_category_id == {1: 12, 2: 15}
    assert ds.image_ids == [1, 2]
    assert ds[0][1]["labels"].tolist() == [1]  # dog; the person is difficult, the chair skipped
    assert ds[1][1]["labels"].tolist() == [2]
    assert ds.coco.getCatIds() == [12, 15]
    assert sorted(a["category_id"] for a in ds.coco.dataset["annotations"]) == [12, 15, 15]


def test_classes_default_to_the_names_found_sorted(voc_root):
    # chair, dog and person are PASCAL names, but not all 20 of them: the dataset's own list.
    ds = VocDetection(voc_root, "train")
    assert ds.class_names == ["chair", "dog", "person"]
    assert ds.label_to_category_id == {1: 1, 2: 2, 3: 3}
    assert ds[0][1]["labels"].tolist() == [2, 1]  # dog, chair (the person is difficult)
    assert [c["name"] for c in ds.coco.dataset["categories"]] == ["chair", "dog", "person"]


def test_class_list_rule():
    from detector.data.voc import class_list

    assert class_list(["WBC", "RBC", "Platelets", "RBC"]) == ["Platelets", "RBC", "WBC"]
    assert class_list(["b", "B", "a"]) == ["B", "a", "b"]  # code point order: upper case first
    assert class_list(["person", "car"]) == ["car", "person"]  # PASCAL names, but not PASCAL VOC
    assert class_list(list(reversed(VOC_CLASSES))) == list(VOC_CLASSES)  # PASCAL VOC: the standard order


def test_object_outside_the_class_list_names_the_file_and_class(voc_root):
    xml = voc_root / "Annotations" / "000007.xml"
    xml.write_text(_annotation("000007", 32, 24, [_object("unicorn", (1, 1, 5, 5))]))
    with pytest.raises(DataError) as info:
        VocDetection(voc_root, "train", classes=VOC_CLASSES)
    assert str(info.value) == f"{xml}: class 'unicorn' is not in the class list ({', '.join(VOC_CLASSES)})"
    assert VocDetection(voc_root, "train").class_names == ["chair", "dog", "person", "unicorn"]


def test_unknown_requested_category_lists_valid_names(voc_root):
    with pytest.raises(DataError, match="'people'.*valid names: chair, dog, person"):
        VocDetection(voc_root, "train", categories=["people"])


@pytest.mark.parametrize("text, message", [
    ("<annotation><object><name>dog</name>", "malformed XML"),
    ("<annotation><object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object></annotation>",
     "missing <bndbox/ymin>"),
    ("<annotation><object><name>dog</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>3</xmax>"
     "<ymax>4</ymax></bndbox></object></annotation>", "not a number"),
])
def test_malformed_xml_names_the_file(voc_root, text, message):
    xml = voc_root / "Annotations" / "000009.xml"
    xml.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        VocDetection(voc_root, "train")
    assert str(xml) in str(info.value)


def test_missing_files_are_named(voc_root, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VocDetection(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match=r"Main/test\.txt"):
        VocDetection(voc_root, "test")
    (voc_root / "JPEGImages" / "000007.jpg").unlink()
    split_file = voc_root / "ImageSets" / "Main" / "train.txt"
    with pytest.raises(DataError) as info:
        VocDetection(voc_root, "train")
    assert str(info.value) == (
        f"{split_file}: 1 of 3 images cannot be used: image file not found for {voc_root / 'Annotations' / '000007.xml'}: "
        f"no 000007 or <filename> '000007.jpg' with suffix .jpg, .jpeg, .png, .webp, .gif (any case) in "
        f"{voc_root / 'JPEGImages'} (set data.skip_bad_images=true to leave out such images)")
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        ds = VocDetection(voc_root, "train", skip_bad_images=True)
    assert ds.image_ids == [1, 3] and sorted(ds.coco.getImgIds()) == [1, 3]
    assert [r.getMessage() for r in caplog.records if "leaving out" in r.getMessage()] == [
        f"{split_file}: leaving out 1 of 3 images whose files are missing or "
        f"cannot be decoded (first: image file not found for {voc_root / 'Annotations' / '000007.xml'}: no 000007 or "
        f"<filename> '000007.jpg' with suffix .jpg, .jpeg, .png, .webp, .gif (any case) in {voc_root / 'JPEGImages'})"
    ]
    (voc_root / "Annotations" / "000009.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"000009\.xml"):  # never skipped: the image is there
        VocDetection(voc_root, "train", skip_bad_images=True)


def test_build_dataset_reads_voc_with_flip(voc_root):
    cfg = DataConfig(name="voc", root=str(voc_root), train_split="train", val_split="train",
                     categories=["dog"], min_size=80, max_size=100)
    ds = build_dataset(cfg, "train", train=True)
    assert ds.transform.hflip and ds.class_names == ["dog"]
    image, target = ds[0]
    # 40x50 -> shorter side 80 would make the longer 100: exactly at the cap, scale 2.
    assert tuple(image.shape) == (3, 80, 100) and target["scale"] == 2.0
    assert target["boxes"].tolist() in ([[6.0, 8.0, 60.0, 50.0]], [[40.0, 8.0, 94.0, 50.0]])


def test_detections_of_difficult_objects_are_neither_rewarded_nor_penalised(voc_root):
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    ds = VocDetection(voc_root, "train", classes=VOC_CLASSES)
    results = []
    for index in range(len(ds)):
        _, target = ds[index]
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            results.append({"image_id": target["image_id"], "category_id": ds.label_to_category_id[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.9})
    # A confident detection of the difficult person in image 1 must not count as a false positive.
    person = VOC_CLASSES.index("person") + 1
    results.append({"image_id": 1, "category_id": person, "bbox": [20.0, 10.0, 28.0, 29.0], "score": 1.0})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # The chair's ground truth is [0, 0, 60, 12] but the target was clipped to the 50 px image:
    # IoU 50*12 / 60*12 = 0.83, so it is found at IoU 0.5 and missed from 0.85 up.
    assert evaluator.stats[1] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- plain folders


def _labelimg_folder(folder: Path, xml_folder: Path | None = None) -> Path:
    """A LabelImg-style folder: each image with an XML of its stem, whose <filename> is stale in
    the ways tools leave it (another suffix, another case, the annotator's path); one image
    without XML; PNG (greyscale, RGBA) and JPEG images."""
    xml_folder = xml_folder or folder
    folder.mkdir(parents=True, exist_ok=True)
    xml_folder.mkdir(parents=True, exist_ok=True)
    items = [  # (image file, mode, XML stem, <filename>, width, height, objects)
        ("cell_01.jpg", "RGB", "cell_01", "cell_01.jpg", 64, 48, [_object("RBC", (4, 5, 30, 33))]),
        ("Cell_02.PNG", "L", "cell_02", "C:\\labelling\\cell_02.jpg", 48, 64,
         [_object("WBC", (10, 12, 40, 50)), _object("RBC", (0, 0, 8, 9), difficult=1)]),
        ("cell_03.png", "RGBA", "cell_03", "cell_03.jpeg", 50, 50, [_object("Platelets", (20, 20, 26, 27))]),
        ("cell_04.jpeg", "RGB", "cell_04", "/home/me/cell_04.jpeg", 40, 30, []),
        ("cell_05.jpg", "RGB", "cell_05", "cell_05.jpg", 40, 30, [_object("RBC", (1, 2, 21, 22))]),
    ]
    for image_name, mode, stem, filename, width, height, objects in items:
        Image.new(mode, (width, height), 128).save(folder / image_name)
        (xml_folder / f"{stem}.xml").write_text(_annotation(stem, width, height, objects).replace(
            f"<filename>{stem}.jpg</filename>", f"<filename>{filename}</filename>"))
    Image.new("RGB", (20, 20)).save(folder / "unlabelled.jpg")  # no XML: not read
    return folder


def test_plain_folder_with_xml_beside_each_image(tmp_path, caplog):
    root = _labelimg_folder(tmp_path / "cells")
    with caplog.at_level(logging.INFO, logger="detector.data"):
        ds = VocDetection(root, "anything", holdout=Holdout(0.4, 0, "train"))
    held = VocDetection(root, "anything", holdout=Holdout(0.4, 0, "val"))
    assert ds.class_names == held.class_names == ["Platelets", "RBC", "WBC"]
    # 5 XML files sorted by name are ids 1-5; 0.4 of 5 = 2 held out.
    assert len(held) == 2 and sorted(ds.image_ids + held.image_ids) == [1, 2, 3, 4, 5]
    assert f"{root}: 1 image files have no XML file of their name and are not read (e.g. unlabelled)" in caplog.messages
    both = {**{r.image_id: r for r in ds.records}, **{r.image_id: r for r in held.records}}
    assert [Path(both[i].path).name for i in range(1, 6)] == [
        "cell_01.jpg", "Cell_02.PNG", "cell_03.png", "cell_04.jpeg", "cell_05.jpg"]
    assert (both[2].width, both[2].height) == (48, 64)
    assert both[2].boxes.tolist() == [[10, 12, 40, 50]] and both[2].labels.tolist() == [3]  # WBC; the difficult RBC
    assert both[4].boxes.shape == (0, 4)  # an image without objects stays in as a negative
    dataset_of = {i: (ds if i in ds.image_ids else held) for i in both}
    image, target = dataset_of[3][dataset_of[3].image_ids.index(3)]
    assert tuple(image.shape) == (3, 50, 50) and image.dtype == torch.uint8  # RGBA PNG -> RGB
    assert target["labels"].tolist() == [1]  # Platelets
    gt = dataset_of[2].coco
    assert gt.imgs[2]["file_name"] == "Cell_02.PNG"
    assert [(a["bbox"], a["iscrowd"]) for a in gt.loadAnns(gt.getAnnIds(imgIds=2))] == [
        ([10, 12, 30, 38], 0), ([0, 0, 8, 9], 1)]


def test_images_and_xml_in_their_own_folders(tmp_path):
    root = tmp_path / "export"
    _labelimg_folder(root / "train" / "JPEG", xml_folder=root / "train" / "xml")
    _labelimg_folder(root / "valid" / "JPEG", xml_folder=root / "valid" / "xml")
    # Roboflow's layout: a folder per split; these two keep images and XML apart.
    ds = VocDetection(root, "valid", image_folder="JPEG", annotation_folder="xml")
    assert ds.image_ids == [1, 2, 3, 4, 5] and ds.source == str(root / "valid" / "xml")
    assert Path(ds.records[1].path) == root / "valid" / "JPEG" / "Cell_02.PNG"
    with pytest.raises(DataError) as info:
        VocDetection(root, "valid", image_folder="JPEG")  # the XML are not beside the images
    assert str(info.value) == f"{root / 'valid' / 'JPEG'}: no VOC XML files"
    with pytest.raises(DataError) as info:
        VocDetection(root, "valid")
    assert str(info.value) == (f"{root / 'valid'}: no VOC XML files (subfolders: JPEG, xml; if they hold the XML, "
                               f"set data.annotation_folder)")


def test_split_from_a_list_file_in_a_plain_folder(tmp_path):
    root = _labelimg_folder(tmp_path / "cells")
    (root / "val.txt").write_text("cell_05\ncell_02\n")
    ds = VocDetection(root, "val")
    assert ds.source == str(root / "val.txt") and ds.image_ids == [1, 2]  # list order
    assert [Path(r.path).name for r in ds.records] == ["cell_05.jpg", "Cell_02.PNG"]


def test_image_named_only_by_filename(tmp_path):
    root = _labelimg_folder(tmp_path / "cells")
    (root / "cell_01.xml").rename(root / "annotation_01.xml")  # <filename> says cell_01.jpg
    ds = VocDetection(root, "x", holdout=Holdout(0.5, 0, "train"))
    held = VocDetection(root, "x", holdout=Holdout(0.5, 0, "val"))
    paths = {Path(r.path).name for r in ds.records + held.records}
    assert "cell_01.jpg" in paths and len(paths) == 5


def test_holdout_is_reproducible_and_follows_the_seed(tmp_path):
    root = _labelimg_folder(tmp_path / "cells")
    for name in range(6, 21):  # 20 images
        Image.new("RGB", (16, 16)).save(root / f"cell_{name:02d}.jpg")
        (root / f"cell_{name:02d}.xml").write_text(_annotation(f"cell_{name:02d}", 16, 16, []))

    def held(seed: int) -> list[int]:
        return VocDetection(root, "x", holdout=Holdout(0.25, seed, "val")).image_ids

    assert held(0) == held(0) and len(held(0)) == 5
    assert held(1) != held(0)
    assert sorted(held(0) + VocDetection(root, "x", holdout=Holdout(0.25, 0, "train")).image_ids) == list(range(1, 21))


def test_missing_split_in_a_plain_folder_is_named(tmp_path):
    root = _labelimg_folder(tmp_path / "cells")
    with pytest.raises(FileNotFoundError, match=r"VOC split 'val' not found in .*set data.val_fraction"):
        VocDetection(root, "val")


def test_two_images_for_one_xml_are_an_error(tmp_path):
    root = _labelimg_folder(tmp_path / "cells")
    Image.new("RGB", (64, 48)).save(root / "cell_01.png")
    with pytest.raises(DataError) as info:
        VocDetection(root, "x", holdout=Holdout(0.5, 0, "train"))
    assert str(info.value) == (f"{root / 'cell_01.xml'}: several image files match 'cell_01' in {root}: "
                               f"cell_01.jpg, cell_01.png; keep one")


# ----------------------------------------------------------------------------- BCCD (real photos)

BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd" / "BCCD"


@pytest.fixture
def bccd() -> Path:
    if not (BCCD / "ImageSets" / "Main" / "train.txt").is_file():
        pytest.skip(f"BCCD not found at {BCCD}")
    return BCCD


def _xml_objects(root: Path, split: str) -> list[tuple[str, str, list[float]]]:
    """(image id, class, box) of every object of a split, read with ElementTree: the reference."""
    import xml.etree.ElementTree as ET

    found = []
    for name in (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
        for obj in ET.parse(root / "Annotations" / f"{name}.xml").getroot().iter("object"):
            box = [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            found.append((name, obj.find("name").text.strip(), box))
    return found


def test_bccd_with_its_own_classes(bccd):
    cfg = DataConfig(name="voc", root=str(bccd), train_split="train", val_split="val",
                     categories=["RBC", "WBC", "Platelets"])
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    assert train.class_names == val.class_names == ["Platelets", "RBC", "WBC"]  # sorted, not the requested order
    assert (len(train), len(val)) == (205, 87)
    for ds, split in ((train, "train"), (val, "val")):
        objects = _xml_objects(bccd, split)
        assert len(ds.coco.dataset["annotations"]) == len(objects)  # the ground truth keeps every object
        degenerate = [o for o in objects if o[2][2] <= o[2][0] or o[2][3] <= o[2][1]]
        assert sum(len(r.boxes) for r in ds.records) == len(objects) - len(degenerate)
    # The two boxes of zero size: 00343 is a training image, 00338 a validation image.
    assert [o[0] for o in _xml_objects(bccd, "train") if o[2][0] == o[2][2] or o[2][1] == o[2][3]] == ["BloodImage_00343"]
    first = train.records[0]
    reference = [(c, b) for n, c, b in _xml_objects(bccd, "train") if n == Path(first.path).stem]
    assert first.boxes.tolist() == [b for _, b in reference]
    assert [train.class_names[label - 1] for label in first.labels] == [c for c, _ in reference]
