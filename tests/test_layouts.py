"""Any common export from --data-root alone: the layout found, the one line that says so, the
same records whatever the format, YOLO's rules, and what the data cannot support."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from exports import (
    CLASSES,
    PHOTOS,
    Photo,
    write_coco_export,
    write_flat_yolo,
    write_one_coco_file,
    write_roboflow_coco,
    write_roboflow_yolo,
    write_voc_devkit,
    write_voc_folder,
    write_voc_per_split,
    write_voc_two_folders,
    write_yolo_export,
)

from detector.data import DataError, YoloDetection
from detector.data.layout import detect
from detector.engine import build_dataset
from detector.engine import config as config_lib
from detector.engine.build import data_summary, sufficiency_warnings
from detector.engine.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd"

# writer -> (format, the description detect gives, the options it sets)
LAYOUTS = {
    write_coco_export: ("coco", "COCO layout: annotations/instances_<split>.json + <split>/ (splits: train / val)",
                        {"train_split": "train", "val_split": "val"}),
    write_roboflow_coco: ("coco", "COCO, Roboflow export: <split>/_annotations.coco.json (splits: train / valid)",
                          {"train_split": "train", "val_split": "valid"}),
    write_one_coco_file: ("coco", "COCO, one annotation file: result.json + images/",
                          {"train_annotations": "result.json", "train_images": "images", "val_fraction": 0.2}),
    write_voc_devkit: ("voc", "VOC XML, VOCdevkit: JPEGImages/ + Annotations/ + ImageSets/Main (splits: train / val)",
                       {"train_split": "train", "val_split": "val"}),
    write_voc_per_split: ("voc", "VOC XML, a folder per split with the XML beside the photos (splits: train / valid)",
                          {"train_split": "train", "val_split": "valid"}),
    write_voc_folder: ("voc", "VOC XML, plain folder: the XML beside the photos", {"train_split": "train",
                                                                                    "val_fraction": 0.2}),
    write_voc_two_folders: ("voc", "VOC XML, plain folder: images/ + annots/",
                            {"train_split": "train", "val_fraction": 0.2, "image_folder": "images",
                             "annotation_folder": "annots"}),
    write_yolo_export: ("yolo", "YOLO txt, Ultralytics layout: images/<split>/ + labels/<split>/ (splits: train / val)",
                        {"train_split": "train", "val_split": "val"}),
    write_roboflow_yolo: ("yolo", "YOLO txt, Roboflow export: <split>/images/ + <split>/labels/ (splits: train / valid)",
                          {"train_split": "train", "val_split": "valid"}),
    write_flat_yolo: ("yolo", "YOLO txt, one folder: images/ + labels/", {"train_split": "train", "val_fraction": 0.2}),
}


@pytest.mark.parametrize("writer", LAYOUTS, ids=lambda writer: writer.__name__)
def test_each_layout_is_found_from_its_folder_alone_and_read(writer, tmp_path, caplog):
    fmt, description, options = LAYOUTS[writer]
    root = writer(tmp_path / "export")
    (layout,) = detect(root)
    assert (layout.format, layout.description, layout.options) == (fmt, description, options)
    cfg = config_lib.load(overrides=[f"data.root={root}"])
    assert cfg.data.name == fmt and all(getattr(cfg.data, key) == value for key, value in options.items())
    cfg.data.classes = []
    train = build_dataset(cfg.data, cfg.data.train_split, train=True)
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    assert train.class_names == list(CLASSES)
    assert len(train) + len(val) == 5 and len(val) >= 1
    line = data_summary(cfg.data, train, val)
    print(line)  # the line each layout prints (the closing note quotes them)
    assert line.startswith(f"data: {description} in {root}: {len(train)} training and {len(val)} validation images, "
                           f"2 classes")
    if layout.held_out:
        assert line.endswith("; no validation split: 20% of the images held out (data.val_fraction, seed 0)")


def test_a_vocdevkit_one_folder_down_is_found_there(tmp_path):
    write_voc_devkit(tmp_path / "export" / "VOC2012")
    (layout,) = detect(tmp_path / "export")
    assert layout.description.startswith("VOC XML, VOCdevkit in VOC2012/")
    assert layout.options["root"] == str(tmp_path / "export" / "VOC2012")


@pytest.mark.skipif(not BCCD.is_dir(), reason="needs ../shared/data/bccd")
def test_bccd_is_found_from_its_folder(caplog):
    (layout,) = detect(BCCD)
    assert layout.description == ("VOC XML, VOCdevkit in BCCD/: JPEGImages/ + Annotations/ + ImageSets/Main "
                                  "(splits: train / val)")


def test_two_datasets_in_one_folder_are_named_with_the_option_that_picks_one(tmp_path):
    root = write_coco_export(tmp_path / "export")
    write_yolo_export(root)  # also images/<split> + labels/<split> + data.yaml
    with pytest.raises(ConfigError) as info:
        config_lib.load(overrides=[f"data.root={root}"])
    message = str(info.value)
    assert message.startswith(f"{root} holds more than one dataset (COCO: COCO layout") and "YOLO txt:" in message
    assert message.endswith("choose one with --data coco or --data yolo")
    assert config_lib.load(overrides=[f"data.root={root}", "data.name=yolo"]).data.name == "yolo"


def test_a_folder_without_a_dataset_says_what_it_holds(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no dataset layout found \(it holds 1 entry \(a.jpg\)"):
        config_lib.load(overrides=[f"data.root={tmp_path / 'photos'}"])
    with pytest.raises(ConfigError, match="which is not a folder"):
        config_lib.load(overrides=[f"data.root={tmp_path / 'nowhere'}"])


def test_data_other_than_shapes_starts_from_the_real_photo_preset_unless_a_config_is_given(tmp_path):
    import argparse

    from detector.engine import cli

    root = write_yolo_export(tmp_path / "export")
    parser = argparse.ArgumentParser()
    cli.add_config_arguments(parser)
    photo = config_lib.load(config_lib.PHOTO_PRESET)
    cfg = config_lib.from_args(parser.parse_args(["--data-root", str(root), "--set", "data.batch_size=2"]))
    assert cfg.data.name == "yolo" and cfg.data.min_size == photo.data.min_size == 320
    assert cfg.model.anchor_sizes == photo.model.anchor_sizes and cfg.data.batch_size == 2  # the user's own on top
    given = config_lib.from_args(parser.parse_args(["--config", str(REPO / "configs" / "shapes.yaml"),
                                                    "--data-root", str(root)]))
    assert given.data.name == "yolo" and given.data.min_size is None
    assert config_lib.from_args(parser.parse_args([])).data.name == "shapes"


def _records(dataset):
    return [(Path(r.path).name, r.height, r.width, r.labels.tolist(), r.boxes) for r in dataset.records]


def test_the_same_photos_as_yolo_voc_and_coco_give_the_same_records_and_ground_truth(tmp_path):
    datasets = {}
    for name, writer, options in (("coco", write_coco_export, []), ("voc", write_voc_devkit, []),
                                  ("yolo", write_yolo_export, [])):
        root = writer(tmp_path / name)
        cfg = config_lib.load(overrides=[f"data.root={root}", *options])
        datasets[name] = {split: build_dataset(cfg.data, split, train=False) for split in ("train", "val")}
    for split in ("train", "val"):
        reference = _records(datasets["coco"][split])
        truth = datasets["coco"][split].coco
        for name in ("voc", "yolo"):
            found = _records(datasets[name][split])
            assert [r[:4] for r in found] == [r[:4] for r in reference], name
            for (*_, boxes), (*_, expected) in zip(found, reference):
                np.testing.assert_allclose(boxes, expected, atol=1e-4)  # YOLO's six decimals
            other = datasets[name][split].coco
            assert other.getImgIds() == truth.getImgIds() and other.getCatIds() == truth.getCatIds()
            for image_id in truth.getImgIds():
                ours = sorted((a["category_id"], *a["bbox"]) for a in other.loadAnns(other.getAnnIds(imgIds=[image_id])))
                theirs = sorted((a["category_id"], *a["bbox"]) for a in truth.loadAnns(truth.getAnnIds(imgIds=[image_id])))
                np.testing.assert_allclose(ours, theirs, atol=1e-4)


# ----------------------------------------------------------------------------- YOLO's rules


def _yolo(tmp_path, rows: str, names: str = "names: [cat, dog]\n") -> Path:
    root = write_yolo_export(tmp_path / "yolo")
    (root / "data.yaml").write_text(names)
    (root / "labels" / "train" / "a.txt").write_text(rows)
    return root


@pytest.mark.parametrize("row, problem", [
    ("2 0.5 0.5 0.1 0.1", "class '2' is not an index of the 2 class names"),
    ("1 0.5 half 0.1 0.1", "holds a value that is not a number"),
    ("0 0.5 0.5 1.4 0.1", "has a coordinate outside [0, 1]"),
    ("0 0.5 0.5 0.1", "is not 'class cx cy w h'"),
])
def test_a_bad_label_row_names_the_file_and_the_line_or_is_skipped_and_counted(tmp_path, row, problem, caplog):
    root = _yolo(tmp_path, f"0 0.3 0.4 0.2 0.2\n{row}\n")
    label_file = root / "labels" / "train" / "a.txt"
    with pytest.raises(DataError) as info:
        YoloDetection(root, "train")
    assert str(info.value).startswith(f"{label_file}, line 2: ") and problem in str(info.value)
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        dataset = YoloDetection(root, "train", skip_bad_images=True)
    assert len(dataset.records[0].boxes) == 1
    assert f"{root / 'labels' / 'train'}: left out 1 label rows that are not valid boxes" in caplog.text


def test_yolo_names_as_a_mapping_or_classes_txt_empty_files_and_polygons(tmp_path):
    root = _yolo(tmp_path, "", names="names:\n  0: cat\n  1: dog\n")
    dataset = YoloDetection(root, "train")
    assert dataset.class_names == ["cat", "dog"] and dataset.records[0].boxes.shape == (0, 4)  # empty file: no objects
    (root / "labels" / "train" / "b.txt").unlink()  # no label file: no objects either
    (root / "labels" / "train" / "c.txt").write_text("1 0.25 0.25 0.75 0.25 0.75 0.5 0.25 0.5\n")  # a polygon
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("cat\ndog\n")
    dataset = YoloDetection(root, "train")
    assert dataset.records[1].boxes.shape == (0, 4)
    # c.jpg is 64 x 64: the polygon's bounding box 0.25..0.75 x 0.25..0.5
    np.testing.assert_allclose(dataset.records[2].boxes, [[16, 16, 48, 32]])
    assert dataset.records[2].labels.tolist() == [2]
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="no class names for the YOLO labels: expected data.yaml or data.yml or classes.txt"):
        YoloDetection(root, "train")


# ----------------------------------------------------------------------------- what the data supports


def test_too_few_boxes_or_too_many_classes_are_warned_with_the_numbers(tmp_path):
    root = write_coco_export(tmp_path / "export")
    cfg = config_lib.load(overrides=[f"data.root={root}"])
    train = build_dataset(cfg.data, "train", train=True)
    warnings = sufficiency_warnings(train)
    assert warnings[0].startswith("2 of 2 classes have fewer than 10 training boxes (dog 2, cat 3)")
    assert len(warnings) == 1  # 2 classes, 3 images
    many = {"train": (Photo("a.jpg", 64, 48, (("cat", 4, 6, 36, 30),)),), "val": PHOTOS["val"]}
    root = write_coco_export(tmp_path / "one", many)
    train = build_dataset(config_lib.load(overrides=[f"data.root={root}"]).data, "train", train=True)
    assert train.class_names == ["cat", "dog"]  # dog only in the validation split
    assert any(w.startswith("2 classes on 1 training images") for w in sufficiency_warnings(train))


def test_the_preflight_refuses_undecodable_photos_before_a_run_directory_and_uses_a_cut_short_one(tmp_path):
    import subprocess
    import time

    root = write_voc_folder(tmp_path / "photos")
    cut, broken = root / "a.jpg", root / "d.jpg"
    cut.write_bytes(cut.read_bytes()[:-20])
    broken.write_bytes(b"\xff\xd8 not a jpeg \xff\xd9")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--data-root", str(root), "--max-steps",
                             "1", "--out-dir", str(tmp_path / "runs"), "--set", "train.progress=false"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    print(result.stderr[-1500:], f"({time.perf_counter() - started:.1f} s)")
    assert result.returncode == 2
    assert "1 JPEG file ends early (cut short: a.jpg); they are used as Pillow completes them" in result.stderr
    assert f"error: {root} (the 80% kept for training): 1 of 4 images cannot be used: {broken}: cannot decode image" \
        in result.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_photos_of_both_parts_are_listed_at_once_each_with_its_part(tmp_path):
    from detector.engine.build import build_splits

    root = write_voc_folder(tmp_path / "photos")
    cfg = config_lib.load(overrides=[f"data.root={root}"])
    train, val = build_splits(cfg.data)
    (held_out,) = [Path(image["file_name"]).name for image in val.coco.dataset["images"]]
    trained = Path(train.coco.dataset["images"][0]["file_name"]).name
    for name in (held_out, trained):
        (root / name).write_bytes(b"not an image")
    with pytest.raises(DataError) as info:
        build_splits(cfg.data)
    message = str(info.value)
    assert message.startswith(f"{root} (the 80% kept for training): 1 of 4 images cannot be used: {root / trained}: "
                              f"cannot decode image")
    assert f"; and {root} (the 20% held out for validation): none of its 1 images can be read ({root / held_out}: " \
           f"cannot decode image" in message
