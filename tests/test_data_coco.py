"""COCO-format reader: the bundled tiny_coco sample and small generated fixtures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data import CocoDetection, DataError
from detector.engine.build import build_dataset, check_same_categories, resolve_classes
from detector.engine.config import DataConfig

TINY_COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_coco"


@pytest.fixture
def tiny_coco() -> Path:
    if not (TINY_COCO / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"tiny_coco not found at {TINY_COCO}")
    return TINY_COCO


def _write_coco(root: Path, images: list[tuple[int, str, int, int]], annotations: list[dict],
                categories=((1, "cat"), (3, "dog"), (7, "bird")), split: str = "train") -> Path:
    """A COCO-format split with solid-grey PNGs; images are (id, file_name, width, height)."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    for _, name, width, height in images:
        Image.new("RGB", (width, height), (90, 90, 90)).save(root / split / name)
    data = {
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": [{"id": k + 1, "iscrowd": 0, **ann} for k, ann in enumerate(annotations)],
        "categories": [{"id": i, "name": n} for i, n in categories],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def fixture_root(tmp_path) -> Path:
    images = [(5, "b.png", 40, 30), (2, "a.png", 40, 30), (9, "empty.png", 20, 10)]
    annotations = [
        {"image_id": 2, "category_id": 3, "bbox": [1.5, 2.0, 10.0, 5.25]},
        {"image_id": 2, "category_id": 7, "bbox": [30.0, 20.0, 0.0, 4.0]},  # zero width: dropped
        {"image_id": 5, "category_id": 1, "bbox": [35.0, -3.0, 10.0, 8.0]},  # partly outside: clipped
        {"image_id": 5, "category_id": 7, "bbox": [0.0, 0.0, 40.0, 30.0], "iscrowd": 1},
    ]
    return _write_coco(tmp_path / "coco", images, annotations)


# ----------------------------------------------------------------------------- tiny_coco


def test_tiny_coco_images_and_exact_boxes(tiny_coco):
    ds = CocoDetection(tiny_coco, "val2017")
    assert len(ds) == 50 and ds.image_ids == sorted(ds.image_ids)
    assert len(ds.class_names) == 80 and ds.class_names[0] == "person"
    # Labels follow ascending category id: 8 of the ids below 70 are unused in COCO.
    assert ds.label_to_category_id[1] == 1 and ds.label_to_category_id[62] == 70
    assert ds.label_to_category_id[80] == 90
    index = ds.image_ids.index(6818)
    image, target = ds[index]
    assert tuple(image.shape) == (3, 640, 427) and target["orig_size"] == (640, 427)
    # Annotation 1094825 of image 6818: bbox xywh [186.97, 471.83, 100.67, 56.09], category 70.
    expected = torch.tensor([[186.97, 471.83, 186.97 + 100.67, 471.83 + 56.09]], dtype=torch.float32)
    assert torch.equal(target["boxes"], expected)
    assert target["labels"].tolist() == [62] and target["image_id"] == 6818


def test_tiny_coco_crowd_boxes_are_ground_truth_but_not_targets(tiny_coco):
    ds = CocoDetection(tiny_coco, "val2017")
    crowd = ds.coco.loadAnns(ds.coco.getAnnIds(iscrowd=True))
    assert len(crowd) == 5
    # Image 87038 has one crowd "person" box [1, 190, 638, 101] among its annotations.
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=87038))
    assert [a["bbox"] for a in anns if a["iscrowd"]] == [[1, 190, 638, 101]]
    _, target = ds[ds.image_ids.index(87038)]
    assert len(target["boxes"]) == sum(1 for a in anns if not a["iscrowd"])
    assert [1.0, 190.0, 639.0, 291.0] not in target["boxes"].tolist()
    total_targets = sum(len(ds[i][1]["boxes"]) for i in range(len(ds)))
    assert total_targets == len(ds.coco.dataset["annotations"]) - 5


def test_tiny_coco_person_subset(tiny_coco):
    ds = CocoDetection(tiny_coco, "val2017", categories=["person"])
    assert ds.class_names == ["person"] and ds.label_to_category_id == {1: 1}
    assert len(ds) == 50  # images without persons stay as negatives
    assert ds.coco.getCatIds() == [1] and sorted(ds.coco.getImgIds()) == ds.image_ids
    assert {a["category_id"] for a in ds.coco.dataset["annotations"]} == {1}
    labels = torch.cat([ds[i][1]["labels"] for i in range(len(ds))])
    expected = sum(1 for a in ds.coco.dataset["annotations"] if not a["iscrowd"])
    assert len(labels) == expected == 127 - 4 and set(labels.tolist()) == {1}  # 4 person crowds


def test_tiny_coco_through_build_dataset_with_resize(tiny_coco):
    cfg = DataConfig(name="coco", root=str(tiny_coco), train_split="train2017", val_split="val2017",
                     max_train_images=7, max_val_images=4, min_size=320, max_size=512)
    train = build_dataset(cfg, "train2017", train=True)
    val = build_dataset(cfg, "val2017", train=False)
    assert len(train) == 7 and len(val) == 4
    assert val.image_ids == [6818, 17627, 25560, 37777]  # the four smallest ids
    assert sorted(val.coco.getImgIds()) == val.image_ids
    image, target = val[0]
    _, plain = CocoDetection(tiny_coco, "val2017")[0]
    # 640x427 -> shorter side 320 (scale 0.749); the longer side 479.6 -> 479 px.
    assert tuple(image.shape) == (3, 479, 320)
    assert target["scale"] == pytest.approx(320 / 427)
    ratios = torch.tensor([320 / 427, 479 / 640, 320 / 427, 479 / 640])
    assert torch.allclose(target["boxes"], plain["boxes"] * ratios)


# ----------------------------------------------------------------------------- fixtures


def test_fixture_targets_are_cleaned(fixture_root, caplog):
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        ds = CocoDetection(fixture_root, "train")
    assert ds.image_ids == [2, 5, 9]  # ascending id, not file order
    assert ds.class_names == ["cat", "dog", "bird"]
    assert ds.label_to_category_id == {1: 1, 2: 3, 3: 7}

    _, a = ds[0]
    assert a["boxes"].tolist() == [[1.5, 2.0, 11.5, 7.25]] and a["labels"].tolist() == [2]
    _, b = ds[1]
    # [35, -3, 45, 5] clipped to the 40x30 image; the crowd box is no target.
    assert b["boxes"].tolist() == [[35.0, 0.0, 40.0, 5.0]] and b["labels"].tolist() == [1]
    image, empty = ds[2]
    assert tuple(image.shape) == (3, 10, 20)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["boxes"].dtype == torch.float32 and empty["labels"].dtype == torch.int64

    warnings = [r for r in caplog.records if "zero or negative width or height" in r.getMessage()]
    assert len(warnings) == 1 and "left 1 boxes " in warnings[0].getMessage()
    assert "a.png" in warnings[0].getMessage()
    # The ground truth keeps everything as annotated, crowd included.
    assert len(ds.coco.dataset["annotations"]) == 4
    assert ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=5, iscrowd=True))[0]["iscrowd"] == 1


def test_fixture_subsets(fixture_root):
    ds = CocoDetection(fixture_root, "train", categories=["bird", "cat"], max_images=2)
    assert ds.image_ids == [2, 5]
    assert ds.class_names == ["cat", "bird"]  # ascending category id, not the requested order
    assert ds.label_to_category_id == {1: 1, 2: 7}
    assert ds.coco.getCatIds() == [1, 7] and sorted(ds.coco.getImgIds()) == [2, 5]
    assert {a["category_id"] for a in ds.coco.dataset["annotations"]} == {1, 7}
    assert ds[0][1]["boxes"].shape == (0, 4)  # image 2's dog is not selected, its bird is degenerate
    assert ds[1][1]["labels"].tolist() == [1]


def test_unknown_category_lists_valid_names(fixture_root):
    with pytest.raises(DataError, match=r"'horse'.*valid names: cat, dog, bird"):
        CocoDetection(fixture_root, "train", categories=["cat", "horse"])


def test_missing_paths_are_named(fixture_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoDetection(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        CocoDetection(fixture_root, "val")
    (fixture_root / "train" / "b.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images cannot be used: image file not found: .*train/b\.png"):
        CocoDetection(fixture_root, "train")


def test_missing_images_can_be_skipped(fixture_root, caplog):
    (fixture_root / "train" / "b.png").unlink()
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        ds = CocoDetection(fixture_root, "train", skip_bad_images=True)
    assert ds.image_ids == [2, 9] and sorted(ds.coco.getImgIds()) == [2, 9]
    assert all(a["image_id"] != 5 for a in ds.coco.dataset["annotations"])
    ann_file = fixture_root / "annotations" / "instances_train.json"
    assert [r.getMessage() for r in caplog.records if "leaving out" in r.getMessage()] == [
        f"{ann_file}: leaving out 1 of 3 images whose files are missing or cannot be decoded "
        f"(first: image file not found: {fixture_root / 'train' / 'b.png'})"
    ]


def test_image_deleted_after_indexing_is_named(fixture_root):
    ds = CocoDetection(fixture_root, "train")
    (fixture_root / "train" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.png"):
        ds[0]


def test_image_size_mismatch_is_reported(fixture_root):
    Image.new("RGB", (41, 30)).save(fixture_root / "train" / "a.png")
    ann_file = fixture_root / "annotations" / "instances_train.json"
    with pytest.raises(DataError) as info:
        CocoDetection(fixture_root, "train")[0]
    assert str(info.value) == f"{fixture_root / 'train' / 'a.png'}: image is 41x30 pixels but {ann_file} says 40x30"


@pytest.mark.parametrize("text, message", [
    ('{"images": [', "not valid JSON"),
    ('{"images": []}', "not a COCO instances file"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "'images' needs id, file_name"),
    ('{"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], "annotations": [{"id": 1,'
     ' "image_id": 1, "category_id": 1, "bbox": [1, 2]}], "categories": [{"id": 1, "name": "cat"}]}',
     "annotation 1: 'bbox' is \\[1, 2\\]; expected \\[x, y, w, h\\], 4 finite numbers"),
])
def test_malformed_json_names_the_file(fixture_root, text, message):
    path = fixture_root / "annotations" / "instances_train.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        CocoDetection(fixture_root, "train")
    assert str(path) in str(info.value)


def test_missing_area_and_iscrowd_get_coco_defaults(tmp_path):
    root = _write_coco(tmp_path / "c", [(1, "x.png", 16, 16)], [])
    path = root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    data["annotations"] = [{"id": 4, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 2.5]}]
    path.write_text(json.dumps(data))
    ds = CocoDetection(root, "train")
    (ann,) = ds.coco.dataset["annotations"]
    assert ann["area"] == 10.0 and ann["iscrowd"] == 0
    assert np.allclose(ds[0][1]["boxes"].numpy(), [[1, 1, 5, 3.5]])


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    from detector.data.images import load_image

    # A 16-bit greyscale PNG: value v becomes v >> 8 (65535 -> 255, 7680 -> 30), in all 3 channels.
    values = (np.arange(32 * 64).reshape(32, 64) * 30).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(str(tmp_path / "deep.png"))
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 64)
    expected = torch.from_numpy((values >> 8).astype(np.uint8))
    assert all(torch.equal(image[c], expected) for c in range(3))
    assert image[0, 4, 0] == (4 * 64 * 30) >> 8 == 30


# ----------------------------------------------------------------------------- exports


def _export(folder: Path, images: list[tuple[int, str, int, int]], annotations: list[dict],
            categories: list[dict], ann_file: Path) -> Path:
    """A COCO-format export: images (id, file_name, width, height) written under ``folder`` by
    file_name, the instances file at ``ann_file``."""
    for _, name, width, height in images:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (90, 90, 90)).save(path)
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": [{"id": k, "iscrowd": 0, **ann} for k, ann in enumerate(annotations, start=1)],
        "categories": categories,
    }))
    return ann_file


ROBOFLOW_CATEGORIES = [{"id": 0, "name": "cells", "supercategory": "none"},
                       {"id": 1, "name": "Platelets", "supercategory": "cells"},
                       {"id": 2, "name": "RBC", "supercategory": "cells"},
                       {"id": 3, "name": "WBC", "supercategory": "cells"}]


def test_roboflow_export_leaves_out_its_placeholder_category(tmp_path, caplog):
    root = tmp_path / "bccd.v3i.coco"
    _export(root / "train", [(0, "a_jpg.rf.9f1.jpg", 40, 30), (1, "b_jpg.rf.77c.jpg", 40, 30)],
            [{"image_id": 0, "category_id": 2, "bbox": [1, 2, 10, 10]},
             {"image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20]}], ROBOFLOW_CATEGORIES,
            root / "train" / "_annotations.coco.json")
    _export(root / "valid", [(0, "c_jpg.rf.0aa.jpg", 40, 30)],  # the validation images show platelets only
            [{"image_id": 0, "category_id": 1, "bbox": [3, 3, 4, 4]}], ROBOFLOW_CATEGORIES,
            root / "valid" / "_annotations.coco.json")
    cfg = DataConfig(name="coco", root=str(root), train_split="train", val_split="valid")
    with caplog.at_level(logging.INFO, logger="detector.data"):
        classes = resolve_classes(cfg)
    # Platelets only occur in the validation split, yet are a class; "cells" has no annotations.
    assert classes == ["Platelets", "RBC", "WBC"]
    files = f"{root / 'train' / '_annotations.coco.json'} and {root / 'valid' / '_annotations.coco.json'}"
    assert f"{files}: categories without annotations are not classes: 'cells' (id 0)" in caplog.messages
    cfg.classes = classes
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "valid", train=False)
    check_same_categories(train, val)
    assert train.class_names == val.class_names == classes
    assert train.label_to_category_id == {1: 1, 2: 2, 3: 3}  # the export's own ids
    assert [c["name"] for c in val.coco.dataset["categories"]] == classes
    assert train.image_ids == [0, 1] and train.records[1].labels.tolist() == [3]


def test_category_ids_may_start_at_zero_and_skip_numbers(tmp_path):
    from detector.engine.evaluation import detections_to_coco_results, evaluate_coco

    root = tmp_path / "export"
    categories = [{"id": 0, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]
    boxes = {1: [(0, [2, 2, 10, 12]), (9, [20, 4, 12, 8])], 2: [(5, [4, 4, 16, 16])]}
    _export(root / "images", [(1, "a.png", 40, 30), (2, "b.png", 40, 30)],
            [{"image_id": i, "category_id": c, "bbox": b} for i, anns in boxes.items() for c, b in anns],
            categories, root / "labels.json")
    cfg = DataConfig(name="coco", root=str(root), train_split="all", val_split="all",
                     train_annotations="labels.json", train_images="images",
                     val_annotations=str(root / "labels.json"), val_images=str(root / "images"))  # absolute works too
    ds = build_dataset(cfg, "all", train=False)
    assert ds.class_names == ["cat", "dog", "bird"] and ds.label_to_category_id == {1: 0, 2: 5, 3: 9}
    # The ground truth itself as detections: every class found exactly, category 0 included.
    detections = [{"image_id": target["image_id"], "boxes": target["boxes"], "labels": target["labels"],
                   "scores": torch.ones(len(target["labels"]))} for _, target in (ds[0], ds[1])]
    metrics = evaluate_coco(ds.coco, detections_to_coco_results(detections, ds.label_to_category_id),
                            ds.class_names, ds.label_to_category_id)
    assert metrics["ap_per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": 1.0})
    # Missing the category-0 object costs exactly its class: AP (0 + 1 + 1) / 3.
    without_cat = [{**d, "scores": torch.where(d["labels"] == 1, 0.0, 1.0)} for d in detections]
    results = [r for r in detections_to_coco_results(without_cat, ds.label_to_category_id) if r["score"] > 0]
    metrics = evaluate_coco(ds.coco, results, ds.class_names, ds.label_to_category_id)
    assert metrics["ap_per_class"]["cat"] == 0.0 and metrics["ap_per_class"]["dog"] == pytest.approx(1.0)
    assert metrics["stats"]["AP"] == pytest.approx(2 / 3)


def test_label_studio_export_with_a_held_out_fraction(tmp_path):
    # Label Studio: one result.json for the project, file names with its upload folders.
    root = tmp_path / "project-3-at-2026"
    images = [(i, f"images/{i:02d}-photo.jpg", 32, 24) for i in range(10)]
    _export(root, images, [{"image_id": i, "category_id": i % 2, "bbox": [2, 2, 8, 8]} for i in range(10)],
            [{"id": 0, "name": "crack"}, {"id": 1, "name": "dent"}], root / "result.json")
    cfg = DataConfig(name="coco", root=str(root), train_annotations="result.json", train_images="images",
                     val_fraction=0.3, split_seed=7)
    cfg.classes = resolve_classes(cfg)
    train, val = build_dataset(cfg, cfg.train_split, train=True), build_dataset(cfg, cfg.val_split, train=False)
    assert cfg.classes == train.class_names == val.class_names == ["crack", "dent"]
    assert len(val) == 3 and len(train) == 7 and not set(train.image_ids) & set(val.image_ids)
    assert sorted(train.image_ids + val.image_ids) == list(range(10))
    assert Path(val.records[0].path).parent == root / "images"  # the "images/" prefix found in the folder
    again = build_dataset(cfg, cfg.val_split, train=False)
    assert again.image_ids == val.image_ids  # the division is a function of names and seed
    cfg.split_seed = 8
    assert build_dataset(cfg, cfg.val_split, train=False).image_ids != val.image_ids


def test_cvat_export_with_task_subfolders(tmp_path):
    root = tmp_path / "task_12-coco"
    _export(root / "images", [(1, "left/frame_000.PNG", 32, 24), (2, "right/frame_000.PNG", 32, 24)],
            [{"image_id": 2, "category_id": 4, "bbox": [1, 1, 5, 5]}], [{"id": 4, "name": "car"}],
            root / "annotations" / "instances_default.json")
    ds = CocoDetection(root, "default", image_folder="images")
    assert [Path(r.path).relative_to(root) for r in ds.records] == [
        Path("images/left/frame_000.PNG"), Path("images/right/frame_000.PNG")]


def test_class_list_errors_name_the_file(fixture_root):
    ann_file = fixture_root / "annotations" / "instances_train.json"
    with pytest.raises(DataError) as info:
        CocoDetection(fixture_root, "train", classes=["cat", "dog", "bird", "horse"])
    assert str(info.value) == f"{ann_file}: no category named 'horse' (from the class list); its categories: cat, dog, bird"
    with pytest.raises(DataError) as info:
        CocoDetection(fixture_root, "train", classes=["cat", "bird"])
    assert str(info.value) == (f"{ann_file}: category 'dog' (id 3) has 1 annotations but is not in the class list "
                               f"(cat, bird)")
    ds = CocoDetection(fixture_root, "train", classes=["bird", "dog", "cat"])  # labels follow the list
    assert ds.class_names == ["bird", "dog", "cat"] and ds.label_to_category_id == {1: 7, 2: 3, 3: 1}
    assert ds[0][1]["labels"].tolist() == [2]  # image 2's dog


def test_repeated_category_names_are_an_error(fixture_root):
    ann_file = fixture_root / "annotations" / "instances_train.json"
    data = json.loads(ann_file.read_text())
    data["categories"].append({"id": 8, "name": "dog"})
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        CocoDetection(fixture_root, "train")
    assert str(info.value) == f"{ann_file}: more than one category is named 'dog'; names must be unique"


def test_splits_with_other_category_ids_are_an_error(fixture_root):
    ann_file = fixture_root / "annotations" / "instances_train.json"
    data = json.loads(ann_file.read_text())
    data["categories"] = [{"id": 2, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]
    data["annotations"] = [{**ann, "category_id": 2 if ann["category_id"] == 1 else ann["category_id"]}
                           for ann in data["annotations"]]
    (fixture_root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    (fixture_root / "val").symlink_to(fixture_root / "train")
    train, val = CocoDetection(fixture_root, "train"), CocoDetection(fixture_root, "val")
    with pytest.raises(DataError) as info:
        check_same_categories(train, val)
    assert str(info.value).startswith(f"{fixture_root / 'annotations' / 'instances_val.json'}: its classes or category "
                                      f"ids differ from those of {ann_file}")
    assert "'cat': (1, 2)" in str(info.value)


def test_missing_files_named_by_options_are_named(fixture_root):
    with pytest.raises(FileNotFoundError) as info:
        CocoDetection(fixture_root, "train", annotation_file="export/labels.json")
    assert str(info.value) == (f"COCO annotation file not found: {fixture_root / 'export' / 'labels.json'} "
                               f"(splits found: train)")
    with pytest.raises(FileNotFoundError) as info:
        CocoDetection(fixture_root, "train", image_folder="photos")
    assert str(info.value) == f"COCO image folder not found: {fixture_root / 'photos'}"


def test_holding_out_part_of_one_image_is_an_error(tmp_path):
    from detector.data import Holdout

    root = _write_coco(tmp_path / "c", [(1, "x.png", 16, 16)], [])
    with pytest.raises(DataError) as info:
        CocoDetection(root, "train", holdout=Holdout(0.2, 0, "val"))
    assert str(info.value) == (f"{root / 'annotations' / 'instances_train.json'}: cannot hold out a fraction of "
                               f"1 image(s) for validation")
