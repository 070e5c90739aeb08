"""From the configuration to datasets: the class list resolved once from every split, the
held-out division, the per-split options and their validation, and the same data read from a
plain VOC folder and from a COCO export."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from detector.data import DataError
from detector.engine import config as config_lib
from detector.engine.build import build_dataset, resolve_classes
from detector.engine.config import ConfigError, DataConfig

REPO = Path(__file__).resolve().parents[1]

# One small dataset, written in both formats: file -> (width, height, [(class, box xyxy, difficult)]).
DATASET = {
    "a-1.jpg": (48, 40, [("RBC", (3, 4, 30, 25), 0), ("WBC", (20, 10, 48, 39), 1)]),
    "a.jpg": (40, 30, [("Platelets", (5, 6, 15, 20), 0), ("RBC", (0, 0, 0, 12), 0)]),  # zero width
    "b.png": (36, 36, []),
    "c.jpg": (40, 30, [("WBC", (-4, 2, 12.5, 18.25), 0)]),  # partly outside: clipped
    "d.png": (50, 20, [("RBC", (1, 1, 9, 9), 0), ("RBC", (30, 2, 49, 19), 0)]),
    "e.jpg": (30, 40, [("Platelets", (2, 2, 6, 7), 0)]),
}
CLASSES = ["Platelets", "RBC", "WBC"]


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, (width, height, _)) in enumerate(DATASET.items()):
        pixels = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=95)


def write_voc_folder(folder: Path) -> Path:
    """LabelImg's layout: the XML beside each image."""
    _write_images(folder)
    for name, (width, height, objects) in DATASET.items():
        xml = "".join(f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                      f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                      for c, b, d in objects)
        (folder / f"{Path(name).stem}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{width}</width><height>{height}</height>"
            f"</size>{xml}</annotation>")
    return folder


def write_coco_export(folder: Path, ann_file: Path) -> Path:
    """The same data as one instances file (ids in reverse file order, category ids 10, 20, 30)
    and an image folder."""
    _write_images(folder)
    category_id = {name: 10 * (k + 1) for k, name in enumerate(CLASSES)}
    images, annotations = [], []
    for image_id, (name, (width, height, objects)) in zip(range(len(DATASET), 0, -1), DATASET.items()):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for c, (x1, y1, x2, y2), d in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id[c],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": d})
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": i, "name": n} for n, i in category_id.items()]}))
    return ann_file


def _records(ds) -> dict:
    """File name -> (size, boxes, class names) of the training records."""
    return {Path(r.path).name: ((r.height, r.width), r.boxes.tolist(), [ds.class_names[k - 1] for k in r.labels])
            for r in ds.records}


def _ground_truth(ds) -> dict:
    """File name -> (size, sorted [(class, bbox, area, iscrowd)]) of the pycocotools ground truth."""
    names = {c["id"]: c["name"] for c in ds.coco.dataset["categories"]}
    return {image["file_name"]: ((image["height"], image["width"]), sorted(
        (names[a["category_id"]], a["bbox"], a["area"], a["iscrowd"]) for a in ds.coco.imgToAnns[image["id"]]))
        for image in ds.coco.dataset["images"]}


@pytest.mark.parametrize("val_fraction", [0.0, 0.5])
def test_the_same_data_as_voc_folder_and_coco_export_gives_the_same_datasets(tmp_path, val_fraction):
    # Without a fraction both splits are the whole set; with one, both formats divide it alike.
    voc = DataConfig(name="voc", root=str(write_voc_folder(tmp_path / "voc" / "all").parent), train_split="all",
                     val_split="all" if not val_fraction else "held", val_fraction=val_fraction)
    write_coco_export(tmp_path / "coco" / "photos", tmp_path / "coco" / "export.json")
    coco = DataConfig(name="coco", root=str(tmp_path / "coco"), train_split=voc.train_split, val_split=voc.val_split,
                      val_fraction=val_fraction, train_annotations="export.json", train_images="photos",
                      **({} if val_fraction else {"val_annotations": "export.json", "val_images": "photos"}))
    assert resolve_classes(voc) == resolve_classes(coco) == CLASSES
    parts = []
    for split, train in ((voc.train_split, True), (voc.val_split, False)):
        from_voc, from_coco = build_dataset(voc, split, train=train), build_dataset(coco, split, train=train)
        assert from_voc.class_names == from_coco.class_names == CLASSES
        assert _records(from_voc) == _records(from_coco)
        assert _ground_truth(from_voc) == _ground_truth(from_coco)
        parts.append(set(_records(from_voc)))
    if val_fraction:
        assert len(parts[0]) == len(parts[1]) == 3 and not parts[0] & parts[1]
    else:  # hand-checked: the zero-width box dropped, the box outside the image clipped, the difficult one left out
        records = _records(build_dataset(voc, "all", train=True))
        assert records["a.jpg"] == ((30, 40), [[5.0, 6.0, 15.0, 20.0]], ["Platelets"])
        assert records["c.jpg"] == ((30, 40), [[0.0, 2.0, 12.5, 18.25]], ["WBC"])
        assert records["a-1.jpg"] == ((40, 48), [[3.0, 4.0, 30.0, 25.0]], ["RBC"])
        assert _ground_truth(build_dataset(voc, "all", train=False))["a-1.jpg"] == (
            (40, 48), [("RBC", [3, 4, 27, 21], 567, 0), ("WBC", [20, 10, 28, 29], 812, 1)])


def test_held_out_parts_never_overlap_and_follow_split_seed_only(tmp_path):
    root = write_voc_folder(tmp_path / "cells")
    parts = {}
    for seed in (0, 1):
        cfg = DataConfig(name="voc", root=str(root), val_fraction=0.34, split_seed=seed)
        train, val = build_dataset(cfg, cfg.train_split, train=True), build_dataset(cfg, cfg.val_split, train=False)
        names = [sorted(Path(r.path).name for r in ds.records) for ds in (train, val)]
        assert not set(names[0]) & set(names[1]) and sorted(names[0] + names[1]) == sorted(DATASET)
        assert len(names[1]) == 2  # round(0.34 * 6)
        parts[seed] = names[1]
    assert parts[0] != parts[1]


def test_classes_come_from_every_split_and_are_recorded_once(tmp_path):
    root = tmp_path / "export"
    write_voc_folder(root / "train")
    write_voc_folder(root / "valid")
    xml = root / "valid" / "e.xml"
    xml.write_text(xml.read_text().replace("Platelets", "Neutrophil"))  # a class only the validation split has
    cfg = DataConfig(name="voc", root=str(root), train_split="train", val_split="valid")
    assert resolve_classes(cfg) == ["Neutrophil", "Platelets", "RBC", "WBC"]
    cfg.classes = ["WBC", "RBC", "Platelets", "Neutrophil"]  # given: used as they are, in that order
    assert resolve_classes(cfg) == cfg.classes
    assert build_dataset(cfg, "train", train=True).class_names == cfg.classes


def test_pascal_voc_keeps_its_standard_class_order(tmp_path):
    from detector.data.voc import VOC_CLASSES

    root = tmp_path / "pascal"
    root.mkdir()
    for k, name in enumerate(reversed(VOC_CLASSES)):
        Image.new("RGB", (20, 20)).save(root / f"{k:06d}.jpg")
        (root / f"{k:06d}.xml").write_text(
            f"<annotation><size><width>20</width><height>20</height></size><object><name>{name}</name><bndbox>"
            f"<xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    cfg = DataConfig(name="voc", root=str(root), val_fraction=0.2)
    assert resolve_classes(cfg) == list(VOC_CLASSES)
    cfg.categories = ["person", "dog"]
    ds = build_dataset(cfg, cfg.train_split, train=True)
    assert ds.class_names == ["dog", "person"] and ds.label_to_category_id == {1: 12, 2: 15}  # PASCAL's ids


@pytest.mark.parametrize("overrides, message", [
    (["data.val_fraction=1"], "option 'data.val_fraction' is 1.0; it must be a fraction in [0, 1)"),
    (["data.val_fraction=-0.1"], "option 'data.val_fraction' is -0.1; it must be a fraction in [0, 1)"),
    (["data.name=voc", "data.train_annotations=x.json"],
     "option 'data.train_annotations' applies to coco data, not to data.name=voc"),
    (["data.name=coco", "data.image_folder=images"], "option 'data.image_folder' applies to voc data, not to data.name=coco"),
    (["data.name=coco", "data.val_fraction=0.2", "data.val_images=valid"],
     "option 'data.val_images' is set, but with data.val_fraction the validation images are held out of the training "
     "split's files; leave one of them out"),
    (["data.classes=[a]"], "option 'data.classes' applies to coco and voc and yolo data, not to data.name=shapes"),
    (["data.name=voc", "data.classes=[RBC,WBC,RBC]"],
     "option 'data.classes' is ['RBC', 'WBC', 'RBC']; it must list distinct names without surrounding spaces"),
    (["data.name=voc", "data.classes=[RBC,WBC]", "data.categories=[Platelets]"],
     "option 'data.categories' names 'Platelets', which is not in data.classes (RBC, WBC)"),
])
def test_data_source_options_are_validated(overrides, message):
    with pytest.raises(ConfigError) as info:
        config_lib.load(overrides=overrides)
    assert str(info.value) == message


def test_training_records_the_classes_and_the_held_out_images(tmp_path):
    from detector.engine.training import train

    root = write_voc_folder(tmp_path / "cells")
    cfg = config_lib.load(overrides=[
        "data.name=voc", f"data.root={root}", "data.val_fraction=0.34", "data.split_seed=3", "data.batch_size=2",
        "data.num_workers=0", "train.max_steps=1", "train.progress=false", "train.log_every_n_steps=1",
        "train.gradient_stats=false", f"train.out_dir={tmp_path / 'runs'}", "train.run_name=cells",
        "model.anchor_sizes=[8,16,32]"])
    run_dir = train(cfg)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    assert saved["classes"] == CLASSES and saved["val_fraction"] == 0.34 and saved["split_seed"] == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["class_names"] == CLASSES
    assert metrics["config"]["data"]["classes"] == CLASSES
    assert list(metrics["val"]["ap_per_class"]) == CLASSES
    held = (run_dir / "val_images.txt").read_text().splitlines()
    val = build_dataset(config_lib.load(run_dir / "config.yaml").data, "val", train=False)
    assert held == [Path(r.path).name for r in val.records] and len(held) == 2
    # A checkpoint is evaluated only on data with its own classes and category ids.
    from detector.engine.evaluate import evaluate_checkpoint

    other = config_lib.load(run_dir / "config.yaml", overrides=["data.classes=[WBC,RBC,Platelets]"])
    with pytest.raises(ConfigError) as info:
        evaluate_checkpoint(run_dir / "checkpoints" / "last.ckpt", other, "val", tmp_path / "eval")
    assert str(info.value) == (f"{run_dir / 'checkpoints' / 'last.ckpt'} was trained on classes {CLASSES} (category "
                               f"ids [1, 2, 3]), but voc split 'val' has ['WBC', 'RBC', 'Platelets'] (category ids "
                               f"[1, 2, 3])")


def test_a_comparison_resolves_the_classes_once_for_every_cell(tmp_path, monkeypatch):
    from detector.lab import compare

    root = write_voc_folder(tmp_path / "cells")
    seen = {}
    monkeypatch.setattr(compare, "train_matrix", lambda cells, base, *args, **kwargs: seen.update(base=base) or ([], []))
    monkeypatch.setattr(compare, "write_report", lambda *args, **kwargs: tmp_path / "report.md")
    parser = runpy.run_path(str(REPO / "scripts" / "compare.py"))["build_parser"]()
    args = parser.parse_args(["--data", "voc", "--data-root", str(root), "--set", "data.val_fraction=0.5",
                              "--losses", "l1", "l2", "--seeds", "0", "1", "--baseline", "l1",
                              "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    compare.compare_from_args(args, [])
    cells = [compare.cell_config(seen["base"], cell, tmp_path) for cell in compare.plan(["l1", "l2"], [0, 1], [0.0])]
    assert [cell.data.classes for cell in cells] == [CLASSES] * 4


def test_resolving_reads_malformed_files_before_training(tmp_path):
    root = write_voc_folder(tmp_path / "cells")
    (root / "b.xml").write_text("<annotation>")
    with pytest.raises(DataError) as info:
        resolve_classes(DataConfig(name="voc", root=str(root), val_fraction=0.5))
    assert str(info.value).startswith(f"{root / 'b.xml'}: malformed XML")
