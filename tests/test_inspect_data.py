"""The data inspector: counts, left-out boxes and their reasons, sizes after resizing, anchor
coverage against a dense reference, suggestions, and the script's output and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.engine import config as config_lib
from detector.lab.inspect_data import best_anchor_iou, candidate_anchor_sizes, format_report, inspect_data
from detector.model import AnchorGenerator, box_iou

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd" / "BCCD"


def _xml(objects: list[tuple[str, tuple, int]], width: int, height: int) -> str:
    return (f"<annotation><size><width>{width}</width><height>{height}</height></size>" + "".join(
        f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for c, b, d in objects) + "</annotation>")


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two splits as Roboflow exports them: train/ and valid/, XML beside each 40x30 image."""
    items = {
        "train": {"a": [("cat", (2, 3, 12, 9), 0), ("dog", (5, 5, 25, 25), 1), ("dog", (10, 10, 10, 20), 0)],
                  "b": [("cat", (-5, 0, 15, 10), 0), ("cat", (50, 0, 60, 10), 0), ("dog", (0, 0, 40, 30), 0)]},
        "valid": {"c": [("cat", (1, 1, 11, 11), 0), ("dog", (4, 4, 4, 9), 0)]},
    }
    for split, images in items.items():
        (tmp_path / split).mkdir()
        for name, objects in images.items():
            Image.new("RGB", (40, 30)).save(tmp_path / split / f"{name}.jpg")
            (tmp_path / split / f"{name}.xml").write_text(_xml(objects, 40, 30))
    return tmp_path


def _config(root: Path, *overrides: str):
    cfg = config_lib.load(overrides=["data.name=voc", f"data.root={root}", "data.val_split=valid",
                                     "data.min_size=60", "data.max_size=100", *overrides])
    cfg.data.classes = ["cat", "dog"]
    return cfg


def test_counts_reasons_and_sizes_after_resizing(folder):
    train, val = inspect_data(_config(folder))
    assert (train.num_images, val.num_images) == (2, 1)
    # 40x30 -> shorter side 60: scale 2, 80x60.
    assert train.resized_sizes == {(80, 60): 2} and train.image_sizes == {(40, 30): 2}
    assert dict(train.boxes_per_class) == {"cat": 2, "dog": 1} and dict(train.images_per_class) == {"cat": 2, "dog": 1}
    assert dict(train.left_out_per_class) == {"cat": 1, "dog": 2}
    assert {reason: files for reason, files in train.left_out.items()} == {
        "difficult (kept in the ground truth as ignored)": ["a.jpg"],
        "zero or negative width or height in the annotation": ["a.jpg"],
        "outside the image": ["b.jpg"],
    }
    assert train.clipped == 1 and train.unmatchable == 2
    # cat (2, 3, 12, 9) -> 20 x 12; cat clipped to (0, 0, 15, 10) -> 30 x 20; dog (0, 0, 40, 30) -> 80 x 60.
    assert sorted(train.box_sizes.tolist()) == [[20, 12], [30, 20], [80, 60]]
    assert val.unmatchable == 1 and dict(val.boxes_per_class) == {"cat": 1}


def test_report_lines(folder):
    cfg = _config(folder, "model.anchor_sizes=[16,32,64]")
    report = format_report(cfg, inspect_data(cfg))
    assert "voc data in " + str(folder) + ": 2 classes: cat, dog" in report
    assert "train split 'train' (" + str(folder / "train") + "): 2 images, 40x30 -> 80x60 as the model sees them" in report
    assert "  left out of the targets: 1 outside the image: b.jpg" in report
    assert "  of these, 1 stay in the ground truth, where no detection can match them: COCOeval counts each as a miss" \
        in report
    assert "    sqrt(width * height)          15.5    24.5    69.3" in report  # sqrt(240), sqrt(600), sqrt(4800)


def test_best_anchor_iou_equals_the_dense_maximum():
    generator = AnchorGenerator(sizes=[16, 32], aspect_ratios=[0.5, 1.0, 2.0], stride=8)
    rng = np.random.default_rng(0)
    images = []
    for height, width in ((60, 80), (60, 80), (45, 33), (64, 64)):
        xy = rng.uniform(-5, [width, height], (7, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 40, (7, 2))], axis=1)
        images.append(((height, width), boxes))
    images.append(((60, 80), np.zeros((0, 4))))  # an image without boxes
    best = best_anchor_iou(images, [16, 32], [0.5, 1.0, 2.0], 0.5)
    expected = []
    for (height, width), boxes in images:
        anchors = generator.grid_anchors(-(-height // 16) * 2, -(-width // 16) * 2, "cpu", torch.float32)
        if len(boxes):
            expected.append(box_iou(torch.as_tensor(boxes, dtype=torch.float32), anchors).max(dim=1).values.numpy())
    assert len(best) == 28 and np.array_equal(best, np.concatenate(expected))


def test_hand_worked_anchor_ious():
    # A 16 x 16 anchor centred on the cell (0, 0) at (4, 4): a box equal to it has IoU 1. A square
    # of side 16 * sqrt(2) on the same centre lies midway between sizes 16 and 32: 256 / 512 = 0.5.
    side = 16 * 2 ** 0.5
    images = [((64, 64), np.array([[-4, -4, 12, 12], [4 - side / 2, 4 - side / 2, 4 + side / 2, 4 + side / 2]]))]
    assert best_anchor_iou(images, [16, 32], [1.0], 0.5) == pytest.approx([1.0, 0.5])


def test_candidate_anchor_sizes_span_the_boxes():
    # sqrt(w * h) from 20 to 100: octaves 16..128, and half octaves 2^4 .. 2^7 (2^4.5 = 22.6 -> 23).
    sides = np.linspace(20, 100, 101)
    assert candidate_anchor_sizes(np.stack([sides, sides], axis=1)) == [
        [16, 32, 64, 128], [16, 23, 32, 45, 64, 91, 128]]


def test_a_suggestion_only_when_coverage_is_poor(folder):
    poor = _config(folder, "model.anchor_sizes=[128,256]")
    train, val = inspect_data(poor)
    report = format_report(poor, [train, val])
    # sqrt(w * h) of the 3 training boxes: 15.5, 24.5 and 69.3 px; the 1st and 99th percentiles
    # 15.6 and 68.4 give octaves 2^3 .. 2^7 and half octaves 2^3.5 .. 2^6.5.
    coverage = [(best_anchor_iou(train.resized, sizes, [0.5, 1.0, 2.0], 0.5) >= 0.7).mean()
                for sizes in ([8, 16, 32, 64, 128], [11, 16, 23, 32, 45, 64, 91])]
    assert report.endswith(
        "suggestion: 0.0% of the training boxes are covered (below 80%). Coverage with anchor sizes spanning the "
        "boxes (aspect ratios unchanged):\n"
        f"  model.anchor_sizes=[8,16,32,64,128]: {coverage[0]:.1%} (15 anchors per location, now 6)\n"
        f"  model.anchor_sizes=[11,16,23,32,45,64,91]: {coverage[1]:.1%} (21 anchors per location, now 6)")
    assert min(coverage) > 0
    good = _config(folder, "model.anchor_sizes=[16,23,32,45,64,91]", "model.rpn_fg_iou_thresh=0.5")
    assert "\nsuggestion: " not in format_report(good, inspect_data(good))


def test_the_script_writes_the_report_and_the_histogram_into_its_out_folder(folder, tmp_path):
    out = tmp_path / "inspection"
    result = subprocess.run([sys.executable, "scripts/inspect_data.py", "--data", "voc", "--data-root", str(folder),
                             "--val-split", "valid", "--out", str(out), "--format", "svg", "--draw", "2"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "voc data in " in result.stdout
    assert f"report and figures (box_sizes.svg, class_counts.svg, labels.svg) in {out}" in result.stdout
    assert (out / "report.txt").read_text() in result.stdout
    for figure in ("box_sizes.svg", "class_counts.svg", "labels.svg"):
        assert (out / figure).read_text().startswith("<?xml")


def test_the_script_names_a_bad_option_and_exits_2(folder):
    result = subprocess.run([sys.executable, "scripts/inspect_data.py", "--data", "voc", "--data-root", str(folder)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("set data.val_fraction")  # no split 'val' in the folder


def test_bccd_coverage_equals_the_dense_maximum():
    if not (BCCD / "ImageSets" / "Main" / "train.txt").is_file():
        pytest.skip(f"BCCD not found at {BCCD}")
    cfg = config_lib.load(overrides=["data.name=voc", f"data.root={BCCD}", "data.val_split=val", "data.min_size=320",
                                     "data.max_size=427", "model.anchor_sizes=[16,32,64,128,256]"])
    train, val = inspect_data(cfg)
    assert (train.num_images, len(train.best_iou), dict(train.left_out)) == (
        205, 2804, {"zero or negative width or height in the annotation": ["BloodImage_00343.jpg"]})
    generator = AnchorGenerator(sizes=[16, 32, 64, 128, 256], aspect_ratios=[0.5, 1.0, 2.0], stride=8)
    anchors = generator.grid_anchors(320 // 8, 432 // 8, "cpu", torch.float32)  # 426x320 padded to 432x320
    expected = [box_iou(torch.as_tensor(boxes, dtype=torch.float32), anchors).max(dim=1).values.numpy()
                for _, boxes in train.resized]
    assert np.array_equal(train.best_iou, np.concatenate(expected))
