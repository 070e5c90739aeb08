"""Tests for detector.evaluation against hand-worked COCO AP values.

COCO AP at one IoU threshold is the mean of 101 interpolated precisions, read at recall
0.00, 0.01, ..., 1.00; AP is the mean over the 10 thresholds 0.50, 0.55, ..., 0.95. A
detection matches a ground-truth box when IoU >= threshold. pycocotools' precision is
tp / (tp + fp + eps), so "1.0" below is 1 - 2e-16 and compared with pytest.approx.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from detector.engine.evaluation import (
    STAT_NAMES,
    detections_to_coco_results,
    evaluate_coco,
    evaluate_voc,
    format_metrics_table,
)

IOU_KEYS = ["0.50", "0.55", "0.60", "0.65", "0.70", "0.75", "0.80", "0.85", "0.90", "0.95"]

# Non-contiguous category ids, as in real COCO, so a label/id mix-up cannot pass unnoticed.
CLASS_NAMES = ["circle", "square"]
LABEL_TO_CATEGORY_ID = {1: 18, 2: 3}


def make_coco(annotations, num_images=1, categories=((18, "circle"), (3, "square"))):
    """In-memory ground truth: images 1..num_images (640x480); annotations as
    (image_id, category_id, [x, y, w, h]) or (..., iscrowd); area = w * h; ids from 1."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 640, "height": 480} for i in range(1, num_images + 1)],
        "categories": [{"id": cid, "name": name} for cid, name in categories],
        "annotations": [
            {
                "id": ann_id,
                "image_id": ann[0],
                "category_id": ann[1],
                "bbox": list(ann[2]),
                "area": ann[2][2] * ann[2][3],
                "iscrowd": ann[3] if len(ann) > 3 else 0,
            }
            for ann_id, ann in enumerate(annotations, start=1)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def result(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def evaluate(coco, results, **kwargs):
    return evaluate_coco(coco, results, CLASS_NAMES, LABEL_TO_CATEGORY_ID, **kwargs)


def test_ground_truth_as_detections_is_perfect():
    boxes = {1: [[10, 10, 110, 90], [200, 50, 260, 150]], 2: [[0, 0, 300, 200]]}
    labels = {1: [1, 2], 2: [2]}
    coco = make_coco(
        [
            (image_id, LABEL_TO_CATEGORY_ID[label], [x1, y1, x2 - x1, y2 - y1])
            for image_id in boxes
            for (x1, y1, x2, y2), label in zip(boxes[image_id], labels[image_id])
        ],
        num_images=2,
    )
    detections = [
        {
            "image_id": image_id,
            "boxes": torch.tensor(boxes[image_id], dtype=torch.float32),
            "scores": torch.ones(len(boxes[image_id])),
            "labels": torch.tensor(labels[image_id]),
        }
        for image_id in boxes
    ]
    metrics = evaluate(coco, detections_to_coco_results(detections, LABEL_TO_CATEGORY_ID))

    stats = metrics["stats"]
    assert list(stats) == list(STAT_NAMES)
    for name in ("AP", "AP50", "AP75", "AR1", "AR100", "AP_medium", "AP_large"):
        assert stats[name] == pytest.approx(1.0), name
    # 80x100 = 8000 and 60x100 = 6000 are medium (32^2..96^2), 300x200 large, none small:
    # pycocotools reports an area range without ground truth as -1.
    assert stats["AP_small"] == -1.0
    assert list(metrics["ap_per_iou"]) == IOU_KEYS
    assert all(ap == pytest.approx(1.0) for ap in metrics["ap_per_iou"].values())
    assert metrics["ap_per_class"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}
    assert metrics["num_images"] == 2
    assert metrics["num_detections"] == 3
    assert "Average Precision" in metrics["summary"]
    json.dumps(metrics)  # metrics.json must accept it as is


# Ground truth 100x100 at (0, 0); the detection is xyxy. IoU = intersection / union:
#   shift right 10: 90*100 / (110*100) = 9000/11000 = 0.818 -> matches 0.50..0.80 (7 of 10)
#   shift right 5:  95*100 / (105*100) = 9500/10500 = 0.905 -> matches 0.50..0.90 (9 of 10)
#   shift right 6:  94*100 / (106*100) = 9400/10600 = 0.887 -> matches 0.50..0.85 (8 of 10)
#   left edge in 10: 90*100 / (100*100) = 0.9 exactly -> matches 0.50..0.90 (9 of 10): the
#     match rule is IoU >= threshold, and pycocotools' 0.90 is linspace's 0.8999999999999999.
# Below its IoU the single detection is a false positive and the object is missed: AP 0 at
# that threshold; at or above, precision is 1 at every recall: AP 1.
@pytest.mark.parametrize(
    ("detection_xyxy", "iou", "thresholds_met"),
    [
        ([10, 0, 110, 100], 9000 / 11000, 7),
        ([5, 0, 105, 100], 9500 / 10500, 9),
        ([6, 0, 106, 100], 9400 / 10600, 8),
        ([10, 0, 100, 100], 0.9, 9),
    ],
)
def test_shifted_box_loses_ap_exactly_above_its_iou(detection_xyxy, iou, thresholds_met):
    ground_truth_xyxy = [0.0, 0.0, 100.0, 100.0]
    torch_iou = box_iou(
        torch.tensor([detection_xyxy], dtype=torch.float64),
        torch.tensor([ground_truth_xyxy], dtype=torch.float64),
    )
    assert torch_iou.item() == pytest.approx(iou)
    coco = make_coco([(1, 18, [0, 0, 100, 100])])
    x1, y1, x2, y2 = detection_xyxy
    metrics = evaluate(coco, [result(1, 18, [x1, y1, x2 - x1, y2 - y1], 0.9)])

    expected = [1.0] * thresholds_met + [0.0] * (10 - thresholds_met)
    assert list(metrics["ap_per_iou"].values()) == pytest.approx(expected)
    assert metrics["stats"]["AP"] == pytest.approx(thresholds_met / 10)
    assert metrics["stats"]["AP50"] == pytest.approx(1.0)
    assert metrics["stats"]["AP75"] == pytest.approx(1.0 if iou >= 0.75 else 0.0)
    assert metrics["ap_per_class"]["circle"] == pytest.approx(thresholds_met / 10)


def test_detection_on_crowd_region_is_neither_true_nor_false_positive():
    # One object at (300, 300) 50x50 and a 200x200 crowd region at (0, 0). The 50x50 detection
    # inside the crowd region has IoU 2500/40000 = 0.06, but crowd regions are matched by
    # intersection over the detection's area: 2500/2500 = 1, so it is absorbed (ignored).
    # Ranked first, as a false positive it would halve AP (see the control below).
    coco = make_coco([(1, 18, [300, 300, 50, 50]), (1, 18, [0, 0, 200, 200], 1)])
    on_crowd = result(1, 18, [20, 20, 50, 50], 0.95)
    found = result(1, 18, [300, 300, 50, 50], 0.9)
    metrics = evaluate(coco, [on_crowd, found])
    assert metrics["stats"]["AP"] == pytest.approx(1.0)
    assert metrics["stats"]["AR100"] == pytest.approx(1.0)

    # Control: the same detection away from the crowd region is a false positive at rank 1;
    # the object at rank 2 gives precision 1/2 at recall 1, so all 101 points read 0.5.
    elsewhere = result(1, 18, [400, 50, 50, 50], 0.95)
    assert evaluate(coco, [elsewhere, found])["stats"]["AP"] == pytest.approx(0.5)


def test_false_positive_ranked_above_true_positives():
    # Three objects, four detections by score: TP (0.9), FP (0.8), TP (0.7), TP (0.6).
    #   recall    1/3  1/3  2/3  1
    #   precision 1    1/2  2/3  3/4
    # Interpolated (max precision at any higher recall): 1, 3/4, 3/4, 3/4.
    # Recall points 0.00..0.33 (34 of them) read 1; 0.34..1.00 (67) read 3/4:
    #   AP = (34 * 1 + 67 * 0.75) / 101 = 84.25 / 101 = 0.83416 at every IoU threshold
    # (the false positive overlaps nothing, the true positives are exact).
    objects = [[0, 0, 50, 50], [100, 0, 50, 50], [200, 0, 50, 50]]
    coco = make_coco([(1, 18, box) for box in objects])
    results = [
        result(1, 18, objects[0], 0.9),
        result(1, 18, [400, 300, 50, 50], 0.8),
        result(1, 18, objects[1], 0.7),
        result(1, 18, objects[2], 0.6),
    ]
    metrics = evaluate(coco, results)
    assert metrics["stats"]["AP"] == pytest.approx(84.25 / 101)
    assert all(ap == pytest.approx(84.25 / 101) for ap in metrics["ap_per_iou"].values())


def test_false_positive_on_image_without_ground_truth():
    # Image 2 has no objects: its detection (0.95) is a false positive ranked above the true
    # positive on image 1 (0.9): precision 1/2 at recall 1 -> AP 0.5. Image 3 has neither
    # objects nor detections and changes nothing.
    coco = make_coco([(1, 18, [10, 10, 100, 100])], num_images=3)
    results = [result(2, 18, [10, 10, 100, 100], 0.95), result(1, 18, [10, 10, 100, 100], 0.9)]
    metrics = evaluate(coco, results)
    assert metrics["stats"]["AP"] == pytest.approx(0.5)
    assert metrics["num_images"] == 3
    assert metrics["num_detections"] == 2


def test_empty_results_score_zero_where_ground_truth_exists():
    coco = make_coco([(1, 18, [10, 10, 100, 100])], num_images=2)
    metrics = evaluate(coco, [])
    assert metrics["stats"]["AP"] == 0.0
    assert metrics["stats"]["AR100"] == 0.0
    assert all(ap == 0.0 for ap in metrics["ap_per_iou"].values())
    # "square" (category 3) has no ground truth: undefined, not zero.
    assert metrics["ap_per_class"] == {"circle": 0.0, "square": -1.0}
    assert metrics["num_detections"] == 0


def test_image_ids_restrict_evaluation():
    # Two objects, one per image; only image 1's is found.
    #   All images: recall 1/2 at precision 1. rc = 0.5 exactly and recall point 0.50 is exactly
    #   0.5, so points 0.00..0.50 (51) read 1 and 0.51..1.00 (50) read 0: AP = 51/101 = 0.505.
    #   Image 1 only: AP 1.
    coco = make_coco([(1, 18, [10, 10, 100, 100]), (2, 18, [10, 10, 100, 100])], num_images=2)
    results = [result(1, 18, [10, 10, 100, 100], 0.9)]
    assert evaluate(coco, results)["stats"]["AP"] == pytest.approx(51 / 101)
    restricted = evaluate(coco, results, image_ids=[1])
    assert restricted["stats"]["AP"] == pytest.approx(1.0)
    assert restricted["num_images"] == 1


def test_size_buckets():
    # A 20x20 object (area 400 < 32^2 = 1024: small) is found; a 120x120 one
    # (14400 > 96^2 = 9216: large) is missed. No medium object: AP_medium undefined (-1).
    coco = make_coco([(1, 18, [10, 10, 20, 20]), (1, 18, [200, 200, 120, 120])])
    metrics = evaluate(coco, [result(1, 18, [10, 10, 20, 20], 0.9)])
    stats = metrics["stats"]
    assert stats["AP_small"] == pytest.approx(1.0)
    assert stats["AP_large"] == 0.0
    assert stats["AP_medium"] == -1.0
    assert stats["AR_small"] == pytest.approx(1.0)
    assert stats["AR_large"] == 0.0
    # Both together: recall 1/2 at precision 1, as in test_image_ids_restrict_evaluation.
    assert stats["AP"] == pytest.approx(51 / 101)


def test_caller_results_are_not_modified():
    # COCO.loadRes writes id/area/iscrowd/segmentation into the dicts it is given.
    coco = make_coco([(1, 18, [10, 10, 100, 100])])
    results = [result(1, 18, [10, 10, 100, 100], 0.9)]
    before = copy.deepcopy(results)
    evaluate(coco, results)
    assert results == before


def test_annotation_id_zero_is_rejected():
    # pycocotools records "unmatched" as id 0, so an object with id 0 can never be found:
    # without the check this ground truth would silently score AP 0 for a perfect detection.
    coco = make_coco([(1, 18, [10, 10, 100, 100])])
    coco.dataset["annotations"][0]["id"] = 0
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    with pytest.raises(ValueError, match="non-zero"):
        evaluate(coco, [result(1, 18, [10, 10, 100, 100], 0.9)])


def test_unknown_image_ids_are_rejected():
    coco = make_coco([(1, 18, [10, 10, 100, 100])])
    with pytest.raises(ValueError, match=r"\[7\]"):
        evaluate(coco, [result(7, 18, [10, 10, 100, 100], 0.9)])
    with pytest.raises(ValueError, match=r"\[5\]"):
        evaluate(coco, [], image_ids=[1, 5])


def test_detections_to_coco_results():
    detections = [
        {
            "image_id": 4,
            # xyxy (10, 20, 50, 80) -> xywh (10, 20, 40, 60);
            # xyxy (0.5, 1.5, 2.5, 4) -> xywh (0.5, 1.5, 2, 2.5)
            "boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.5, 1.5, 2.5, 4.0]]),
            "scores": torch.tensor([0.75, 0.5]),
            "labels": torch.tensor([2, 1]),
        },
        {  # an image with no detections contributes no entries
            "image_id": torch.tensor(5),
            "boxes": torch.zeros((0, 4)),
            "scores": torch.zeros((0,)),
            "labels": torch.zeros((0,), dtype=torch.int64),
        },
    ]
    results = detections_to_coco_results(detections, LABEL_TO_CATEGORY_ID)
    assert results == [
        {"image_id": 4, "category_id": 3, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.75},
        {"image_id": 4, "category_id": 18, "bbox": [0.5, 1.5, 2.0, 2.5], "score": 0.5},
    ]
    # Plain Python numbers, so json.dump and pycocotools take them as they are.
    assert all(type(v) is float for r in results for v in [*r["bbox"], r["score"]])
    assert all(type(r[k]) is int for r in results for k in ("image_id", "category_id"))


def test_detections_with_unknown_label_are_rejected():
    detection = {
        "image_id": 1,
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([3]),
    }
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        detections_to_coco_results([detection], LABEL_TO_CATEGORY_ID)


def test_format_metrics_table():
    coco = make_coco([(1, 18, [0, 0, 100, 100])])
    metrics = evaluate(coco, [result(1, 18, [10, 0, 100, 100], 0.9)])  # IoU 0.818: AP 0.7
    table = format_metrics_table(metrics)
    header, values, per_class = table.splitlines()
    assert header.split() == ["AP", "AP50", "AP75", "AP@0.90", "AP_small", "AP_medium", "AP_large"]
    # The only object is 100x100 = 10000 > 96^2: large; small and medium are undefined.
    assert values.split() == ["0.700", "1.000", "1.000", "0.000", "n/a", "n/a", "0.700"]
    assert per_class == "AP per class: circle 0.700  square n/a"
    assert len(header) == len(values)

    many = {**metrics, "ap_per_class": {f"class{i}": 0.5 for i in range(21)}}
    assert len(format_metrics_table(many).splitlines()) == 2


def test_voc_ap50_hand_worked():
    # One class, two objects in two images. By score: hit on image 1, a miss (IoU 0 on
    # image 1), hit on image 2. Recall 0.5, 0.5, 1; precision 1, 0.5, 2/3.
    # All-point: 0.5 * 1 + 0.5 * 2/3 = 0.833333. 11-point: recall 0..0.5 (6 points) at
    # precision 1, 0.6..1 (5 points) at 2/3: (6 + 5 * 2/3) / 11 = 0.848485.
    # A difficult object (iscrowd=1) and a detection on it change nothing; a duplicate hit
    # on an already matched object is a false positive at the end (precision 3/4 -> no change
    # to the envelope at recall 1 before it).
    coco = make_coco([(1, 18, [10, 10, 100, 100]), (2, 18, [50, 50, 80, 80]), (2, 18, [300, 300, 50, 50], 1)],
                     num_images=2)
    results = [result(1, 18, [10, 10, 100, 100], 0.9), result(1, 18, [400, 300, 50, 50], 0.8),
               result(2, 18, [52, 50, 80, 80], 0.7), result(2, 18, [300, 300, 50, 50], 0.95),
               result(1, 18, [12, 10, 100, 100], 0.1)]
    voc = evaluate_voc(coco, results)
    assert voc["voc_ap50"] == pytest.approx(0.833333, abs=1e-6)
    assert voc["voc_ap50_per_class"] == {"18": pytest.approx(0.833333, abs=1e-6)}  # square has no objects
    assert evaluate_voc(coco, results, use_07_metric=True)["voc_ap50"] == pytest.approx(0.848485, abs=1e-6)


def test_voc_ap50_needs_iou_above_one_half():
    coco = make_coco([(1, 18, [0, 0, 100, 100])])
    # [0, 0, 100, 50] has IoU exactly 0.5: not a hit by the VOC rule (strictly greater);
    # [0, 0, 100, 51] has IoU 0.51: a hit.
    assert evaluate_voc(coco, [result(1, 18, [0, 0, 100, 50], 0.9)])["voc_ap50"] == 0.0
    assert evaluate_voc(coco, [result(1, 18, [0, 0, 100, 51], 0.9)])["voc_ap50"] == pytest.approx(1.0)
    assert evaluate_voc(coco, [])["voc_ap50"] == 0.0


# ----------------------------------------------------------------------------- curves and confusion


def test_the_confusion_matrix_hand_worked():
    from detector.engine.evaluation import confusion_at

    # labels: circle 1 (category 18), square 2 (category 3)
    coco = make_coco([(1, 18, (0, 0, 10, 10)), (1, 3, (50, 50, 10, 10)), (1, 3, (100, 100, 10, 10)),
                      (1, 18, (200, 200, 10, 10), 1)])  # the last one is a crowd region
    results = [
        result(1, 18, (0, 0, 10, 10), 0.9),      # circle found as circle
        result(1, 18, (50, 50, 10, 10), 0.8),    # a square called a circle
        result(1, 3, (300, 300, 10, 10), 0.7),   # a square where nothing is: background
        result(1, 3, (100, 100, 10, 10), 0.3),   # below the threshold: the square at 100 is missed
        result(1, 18, (200, 200, 10, 10), 0.9),  # on the crowd region: no match, counted as background
    ]
    confusion = confusion_at(coco, results, ["circle", "square"], {1: 18, 2: 3}, score_thresh=0.5)
    assert confusion["labels"] == ["circle", "square", "background"]
    assert confusion["matrix"] == [[1, 0, 0],   # the circle: found as circle
                                   [1, 0, 1],   # the squares: one called a circle, one missed
                                   [1, 1, 0]]   # detections on nothing: a circle (on the crowd), a square
    circle, square = confusion["per_class"]["circle"], confusion["per_class"]["square"]
    assert (circle["precision"], circle["recall"]) == (1 / 3, 1.0) and circle["f1"] == pytest.approx(0.5)
    assert (square["precision"], square["recall"], square["f1"]) == (0.0, 0.0, 0.0)


def test_precision_recall_curves_are_cocoevals_accumulated_precision():
    from pycocotools.cocoeval import COCOeval

    from detector.engine.evaluation import _load_results, evaluate_coco

    coco = make_coco([(1, 18, (0, 0, 10, 10)), (1, 18, (40, 40, 20, 20)), (1, 3, (100, 100, 30, 30))])
    results = [result(1, 18, (0, 0, 10, 10), 0.9), result(1, 18, (42, 41, 20, 20), 0.6),
               result(1, 3, (300, 300, 30, 30), 0.8), result(1, 3, (100, 100, 30, 30), 0.4)]
    metrics = evaluate_coco(coco, results, ["circle", "square"], {1: 18, 2: 3}, curves=True)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(coco, _load_results(coco, results), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
    precision = reference.eval["precision"][:, :, :, 0, 2]  # area all, 100 detections
    curves = metrics["pr_curves"]
    assert len(curves["recall"]) == 101
    for name, k in (("circle", reference.params.catIds.index(18)), ("square", reference.params.catIds.index(3))):
        for threshold, t in (("0.50", 0), ("0.75", 5)):
            expected = [float(p) if p >= 0 else None for p in precision[t, :, k]]
            assert curves["classes"][name][threshold] == expected
    # the square's detection at 0.8 is a false positive before its true one: precision 0.5 at full recall
    assert curves["classes"]["square"]["0.50"][-1] == 0.5
