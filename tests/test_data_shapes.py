"""The generated shapes dataset, the shared transforms, collate and build_dataset."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detector.data import CocoDetection, DataError, collate, ensure_shapes, shapes
from detector.data.transforms import DetectionTransform, hflip, resize
from detector.engine.build import build_dataset
from detector.engine.config import DataConfig
from detector.engine.datamodule import DetectionDataModule

SMALL = dict(image_size=64, num_train=40, num_val=12, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return ensure_shapes(tmp_path_factory.mktemp("shapes") / "shapes", **SMALL, num_workers=1)


@pytest.fixture(scope="module")
def train_json(small_root) -> dict:
    return json.loads((small_root / "annotations" / "instances_train.json").read_text())


# ----------------------------------------------------------------------------- generation


def test_same_seed_gives_identical_files_whatever_the_worker_count(tmp_path):
    # 80 images: above the threshold at which a process pool renders them.
    params = dict(image_size=64, num_train=60, num_val=20, seed=7)
    a = ensure_shapes(tmp_path / "a", **params, num_workers=1)
    b = ensure_shapes(tmp_path / "b", **params, num_workers=2)
    files_a, files_b = _files(a), _files(b)
    assert len(files_a) == 60 + 20 + 3  # PNGs, two annotation files, meta.json
    assert files_a == files_b


def test_different_seed_gives_different_dataset(tmp_path, small_root):
    other = ensure_shapes(tmp_path / "other", **{**SMALL, "seed": 1}, num_workers=1)
    name = "annotations/instances_train.json"
    assert (other / name).read_bytes() != (small_root / name).read_bytes()


def test_complete_dataset_is_not_regenerated(tmp_path, capsys):
    root = ensure_shapes(tmp_path / "s", **SMALL, num_workers=1)
    assert "generating shapes dataset" in capsys.readouterr().err
    watched = [root / "meta.json", root / "annotations" / "instances_val.json", root / "train" / "000000.png"]
    before = [p.stat().st_mtime_ns for p in watched]
    ensure_shapes(root, **SMALL, num_workers=1)
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert capsys.readouterr().err == ""


def test_other_parameters_or_unfinished_dataset_are_regenerated(tmp_path):
    root = ensure_shapes(tmp_path / "s", **SMALL, num_workers=1)
    ensure_shapes(root, **{**SMALL, "num_val": 5}, num_workers=1)
    assert json.loads((root / "meta.json").read_text())["num_val"] == 5
    assert len(list((root / "val").glob("*.png"))) == 5
    assert json.loads((root / "meta.json").read_text())["generator"] == "detector.data.shapes"
    # A meta.json of the generator before it wrote its marker is its own too.
    meta = json.loads((root / "meta.json").read_text())
    del meta["generator"]
    (root / "meta.json").write_text(json.dumps(meta))
    ensure_shapes(root, **SMALL, num_workers=1)
    assert len(list((root / "val").glob("*.png"))) == SMALL["num_val"]
    assert not [p for p in tmp_path.iterdir() if p.name != "s"]  # no temporary folders left


def test_an_empty_folder_is_generated_into(tmp_path):
    (tmp_path / "s").mkdir()
    root = ensure_shapes(tmp_path / "s", **SMALL, num_workers=1)
    assert len(list((root / "train").glob("*.png"))) == SMALL["num_train"]


@pytest.mark.parametrize("contents, hint", [
    ({"notes.txt": "keep me"}, r"it holds 1 entry \(notes.txt\); give a new or empty folder as --data-root"),
    # The layout of a generated dataset without the generator's meta.json: not provably ours.
    ({"train/000000.png": "", "annotations/instances_train.json": '{"images": []}'},
     r"it has annotations/instances_train.json: a COCO dataset\? add --data coco"),
    ({"meta.json": '{"name": "mine"}', "val/x.png": ""}, r"it holds 2 entries \(meta.json, val\)"),
])
def test_a_folder_the_generator_did_not_make_is_never_touched(tmp_path, contents, hint):
    root = tmp_path / "mine"
    for name, text in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    with pytest.raises(DataError, match="is not a shapes dataset made by this project, so it is not replaced: " + hint):
        ensure_shapes(root, **SMALL, num_workers=1)
    assert {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()} == contents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_boxes_lie_inside_the_image_and_are_not_too_thin(train_json):
    boxes = np.array([ann["bbox"] for ann in train_json["annotations"]])  # xywh
    assert len(boxes) >= 40
    assert (boxes[:, :2] >= 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= 64).all() and (boxes[:, 1] + boxes[:, 3] <= 64).all()
    assert boxes[:, 2:].min() >= shapes.MIN_SIDE
    # Boxes come from a 4x mask: every coordinate is a multiple of a quarter pixel.
    assert np.allclose(boxes * 4, np.round(boxes * 4))


def test_sizes_span_the_range_and_every_class_occurs(train_json):
    boxes = np.array([ann["bbox"] for ann in train_json["annotations"]])
    long_side = boxes[:, 2:].max(axis=1)
    # Longer side log-uniform in [8, 32] for 64 px images.
    assert long_side.min() >= 8 and long_side.max() <= 32
    assert long_side.min() < 11 and long_side.max() > 24
    counts = np.bincount([ann["category_id"] for ann in train_json["annotations"]], minlength=7)
    assert counts[0] == 0 and (counts[1:] > 0).all()
    per_image = np.bincount([ann["image_id"] for ann in train_json["annotations"]], minlength=41)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6


def test_objects_overlap_little(train_json):
    by_image: dict[int, list] = {}
    for ann in train_json["annotations"]:
        x, y, w, h = ann["bbox"]
        by_image.setdefault(ann["image_id"], []).append(np.array([x, y, x + w, y + h]))
    for boxes in by_image.values():
        for a, b in combinations(boxes, 2):
            wh = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None)
            inter = wh[0] * wh[1]
            area_a, area_b = np.prod(a[2:] - a[:2]), np.prod(b[2:] - b[:2])
            assert inter / (area_a + area_b - inter) <= shapes.MAX_IOU + 1e-9
            assert inter / min(area_a, area_b) <= shapes.MAX_COVER + 1e-9


@pytest.mark.parametrize("label", [1, 2, 4, 5])  # rectangle, ellipse, cross, ring fill their design box
def test_axis_aligned_shapes_have_exact_sub_pixel_boxes(label):
    rng = np.random.default_rng(0)
    mask, px0, py0 = shapes._shape_mask(label, 10.25, 3.5, 12.75, 7.0, rng)
    assert shapes._tight_box(mask, px0, py0) == [10.25, 3.5, 23.0, 10.5]


@pytest.mark.parametrize("label", [3, 6])  # triangle, star: rotated, then stretched to the box
def test_rotated_shapes_touch_every_side_of_their_design_box(label):
    rng = np.random.default_rng(1)
    mask, px0, py0 = shapes._shape_mask(label, 5.0, 6.25, 20.0, 16.0, rng)
    box = np.array(shapes._tight_box(mask, px0, py0))
    # Vertices land on the box sides up to PIL's rounding of polygon corners (<= 1/4 px).
    assert np.abs(box - [5.0, 6.25, 25.0, 22.25]).max() <= 0.25


def test_objects_stand_out_from_the_background(monkeypatch):
    monkeypatch.setattr(shapes, "NOISE_SIGMA", (0.0, 0.0))
    distances = []
    for index in range(30):
        pixels, objects = shapes.render_image(64, np.random.default_rng([0, 0, index]))
        # The gradient is the first thing drawn, so the same seed reproduces it alone.
        background = shapes._background(64, np.random.default_rng([0, 0, index]))
        for label, (x1, y1, x2, y2) in objects:
            if shapes.CLASS_NAMES[label - 1] in ("rectangle", "ellipse", "cross", "star"):
                # These shapes cover their box centre.
                y, x = int((y1 + y2) / 2), int((x1 + x2) / 2)
                distances.append(np.linalg.norm(pixels[y, x] - background[y, x]))
    assert len(distances) >= 40
    # Colours are picked >= MIN_CONTRAST from what lies under the box; clutter and earlier
    # objects may differ from the bare gradient, so allow a few exceptions.
    assert np.mean(np.array(distances) >= 60) >= 0.95


def test_dataset_reads_shapes_with_contiguous_labels(small_root):
    ds = CocoDetection(small_root, "val")
    assert len(ds) == SMALL["num_val"] and ds.image_ids == list(range(1, SMALL["num_val"] + 1))
    assert ds.class_names == list(shapes.CLASS_NAMES)
    assert ds.label_to_category_id == {i: i for i in range(1, 7)}
    assert ds.coco.getImgIds() == ds.image_ids
    image, target = ds[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 64, 64)
    assert target["image_id"] == 1 and target["scale"] == 1.0 and target["orig_size"] == (64, 64)
    expected = [ann for ann in ds.coco.dataset["annotations"] if ann["image_id"] == 1]
    xywh = torch.tensor([ann["bbox"] for ann in expected])
    assert torch.equal(target["boxes"], torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
    assert target["labels"].tolist() == [ann["category_id"] for ann in expected]


# ----------------------------------------------------------------------------- transforms


def test_hflip_mirrors_boxes_exactly_and_round_trips(small_root):
    image, target = CocoDetection(small_root, "val")[0]
    flipped, boxes = hflip(image, target["boxes"])
    width = image.shape[-1]
    assert torch.equal(boxes[:, 0], width - target["boxes"][:, 2])
    assert torch.equal(boxes[:, 2], width - target["boxes"][:, 0])
    assert torch.equal(boxes[:, 1::2], target["boxes"][:, 1::2])
    assert torch.equal(flipped[..., 0], image[..., -1])
    again, boxes_again = hflip(flipped, boxes)
    assert torch.equal(again, image) and torch.equal(boxes_again, target["boxes"])


def test_training_flip_is_random_and_exact(small_root):
    ds = CocoDetection(small_root, "val", transform=DetectionTransform(hflip=True))
    plain = CocoDetection(small_root, "val")[2]
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        image, target = ds[2]
        if torch.equal(image, plain[0]):
            assert torch.equal(target["boxes"], plain[1]["boxes"])
            seen.add("kept")
        else:
            expected_image, expected_boxes = hflip(plain[0], plain[1]["boxes"])
            assert torch.equal(image, expected_image) and torch.equal(target["boxes"], expected_boxes)
            seen.add("flipped")
    assert seen == {"kept", "flipped"}


def test_resize_scales_boxes_and_reports_scale(small_root):
    ds = CocoDetection(small_root, "val", transform=DetectionTransform(min_size=96, max_size=1000))
    image, target = ds[0]
    _, plain = CocoDetection(small_root, "val")[0]
    assert tuple(image.shape) == (3, 96, 96) and image.dtype == torch.uint8
    assert target["scale"] == 1.5 and target["orig_size"] == (64, 64)
    assert torch.allclose(target["boxes"], plain["boxes"] * 1.5)


@pytest.mark.parametrize("size", [(480, 640), (427, 640), (612, 612), (500, 281), (1000, 3000), (97, 131)])
def test_resize_matches_torchvision_sizes(size):
    # Shorter side -> 800 unless the longer side would exceed 1333, as in torchvision.
    reference = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3).eval()
    expected = reference([torch.zeros(3, *size)])[0].image_sizes[0]
    image = torch.zeros(3, *size, dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, size[1], size[0]]])
    resized, resized_boxes, scale = resize(image, boxes, 800, 1333)
    if size == (97, 131):  # torchvision floors 97 * (800 / 97) = 799.99...; we keep 800
        expected = (800, 1080)
    assert tuple(resized.shape[-2:]) == tuple(expected)
    assert scale == pytest.approx(min(800 / min(size), 1333 / max(size)))
    # A box covering the whole image still covers exactly the whole resized image.
    assert resized_boxes.tolist() == [[0.0, 0.0, float(expected[1]), float(expected[0])]]


# ----------------------------------------------------------------------------- data module


def test_build_dataset_and_data_module(tmp_path):
    cfg = DataConfig(name="shapes", root=str(tmp_path / "shapes"), shapes_image_size=64, shapes_num_train=20,
                     shapes_num_val=6, batch_size=4, num_workers=0, max_train_images=10)
    train = build_dataset(cfg, cfg.train_split, train=True)
    assert len(train) == 10 and train.transform.hflip
    module = DetectionDataModule(cfg)
    module.prepare_data()
    module.setup("fit")
    assert len(module.train_dataset) == 10 and len(module.val_dataset) == 6
    assert not module.val_dataset.transform.hflip
    images, targets = next(iter(module.val_dataloader()))
    assert len(images) == 4 and [t["image_id"] for t in targets] == [1, 2, 3, 4]
    assert all(tuple(image.shape) == (3, 64, 64) for image in images)
    batches = list(module.train_dataloader())
    assert [len(b[0]) for b in batches] == [4, 4, 2]  # drop_last=False keeps the remainder
    assert sorted(t["image_id"] for b in batches for t in b[1]) == list(range(1, 11))


def test_collate_keeps_sizes_apart():
    batch = [(torch.zeros(3, 4, 5, dtype=torch.uint8), {"image_id": 1}),
             (torch.zeros(3, 6, 2, dtype=torch.uint8), {"image_id": 2})]
    images, targets = collate(batch)
    assert [tuple(i.shape) for i in images] == [(3, 4, 5), (3, 6, 2)]
    assert [t["image_id"] for t in targets] == [1, 2]


def test_unknown_dataset_name_is_rejected():
    with pytest.raises(ValueError, match="valid names: shapes, coco, voc"):
        build_dataset(DataConfig(name="imagenet"), "train", train=True)


def test_ground_truth_scores_perfectly_in_cocoeval(small_root):
    # The evaluator hands ``coco`` to COCOeval as-is: the ground truth itself must score AP 1.
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    ds = CocoDetection(small_root, "val")
    results = []
    for index in range(len(ds)):
        _, target = ds[index]
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            results.append({"image_id": target["image_id"], "category_id": ds.label_to_category_id[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0) and evaluator.stats[1] == pytest.approx(1.0)


POOLED = {**SMALL, "num_train": 70}  # 82 images: enough for the generator's own process pool


def _generate_in_a_pool_worker(root: str) -> int:
    return len(list((ensure_shapes(root, **POOLED, num_workers=2) / "train").glob("*.png")))


def test_a_pool_worker_generates_the_dataset_without_a_pool_of_its_own(tmp_path):
    """A daemonic process cannot start the generator's process pool: it renders the images itself."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_generate_in_a_pool_worker, (str(tmp_path / "s"),)) == POOLED["num_train"]
