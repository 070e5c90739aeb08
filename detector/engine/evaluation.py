"""COCO-style evaluation: detections -> COCO results format -> one COCOeval run -> metrics.

Boxes are xyxy pixels everywhere in the model; COCO's ``[x, y, w, h]`` appears only here, at
the boundary with pycocotools.

Shape letters as in the ``detector`` package docstring (D detections per image, K classes).
COCOeval's precision array has its own five axes: IoU thresholds (0.50:0.05:0.95, 10), recall
thresholds (0:0.01:1, 101), classes, area ranges (all, small, medium, large) and detection caps
per image (1, 10, 100).

pycocotools behaviours this module works around or relies on (see the tests):
- ``COCO.loadRes([])`` fails (it reads ``anns[0]``), so an empty result list gets an empty
  results object built here; COCOeval then gives AP 0 wherever ground truth exists.
- ``loadRes`` writes ``id``, ``area``, ``iscrowd`` and ``segmentation`` into the result dicts
  it is given, so it gets copies and the caller's results stay as they were.
- A ground-truth annotation with id 0 can never be a true positive: COCOeval stores the id of
  the matched annotation and treats 0 as "unmatched". Such ids are rejected.
- Undefined values (no ground truth for a class, an area range or an IoU threshold) are -1,
  as pycocotools reports them; they are kept as -1, never averaged in.
- A perfect detector scores 1 - 2e-16, not 1.0: precision is tp / (tp + fp + eps).
- Area ranges use the ground truth's ``area`` field (segment area in real COCO), not its box.
- Crowd regions (iscrowd=1) are matched with intersection over the detection's area and
  absorb any number of detections, which then count as neither true nor false positives.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from detector.model import box_iou

# The order of COCOeval.stats for iouType "bbox" (COCOeval.summarize).
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)

# Above this many classes the per-class line would wrap and bury the headline numbers.
MAX_CLASSES_IN_TABLE = 20

# Width of one column in format_metrics_table; fits "AP_medium" and "-1.000".
_COLUMN_WIDTH = 10


def detections_to_coco_results(
    detections: Iterable[Mapping[str, Any]], label_to_category_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """Convert per-image detections to the COCO results format.

    Args:
        detections: one dict per image with "image_id" (int), "boxes" (D, 4) xyxy in
            original-image pixels, "scores" (D,) and "labels" (D,) contiguous labels 1..K.
        label_to_category_id: contiguous label -> COCO category id.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`` with plain Python
        numbers, ready for ``json.dump`` and ``COCO.loadRes``.

    Raises:
        ValueError: a label has no category id (a model built for other classes).
    """
    results: list[dict[str, Any]] = []
    for detection in detections:
        image_id = int(detection["image_id"])
        # One device->host copy per tensor and image: evaluation is off the training path.
        boxes_xyxy = detection["boxes"].detach().float().cpu()
        boxes = box_convert(boxes_xyxy, in_fmt="xyxy", out_fmt="xywh")
        scores = detection["scores"].detach().float().cpu().tolist()
        labels = detection["labels"].detach().cpu().tolist()
        unknown = set(labels) - set(label_to_category_id)
        if unknown:
            raise ValueError(
                f"detections for image {image_id} have labels {sorted(unknown)} with no COCO "
                f"category id; known labels: {sorted(label_to_category_id)}"
            )
        for box, score, label in zip(boxes.tolist(), scores, labels):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label_to_category_id[label]),
                    "bbox": box,
                    "score": score,
                }
            )
    return results


def evaluate_coco(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int],
    image_ids: Iterable[int] | None = None,
    curves: bool = False,
) -> dict[str, Any]:
    """Run COCOeval (iouType "bbox") once and collect the numbers a run records; with ``curves``
    also each class's precision-recall curves ("pr_curves", precision_recall_curves).

    Args:
        coco_gt: ground truth, crowd regions marked iscrowd=1; annotation ids must be non-zero.
        results: detections in COCO results format (see ``detections_to_coco_results``).
        class_names: class_names[i - 1] names contiguous label i.
        label_to_category_id: contiguous label -> COCO category id.
        image_ids: the images to evaluate; default every image in ``coco_gt``. Images with
            neither ground truth nor detections do not change any metric.

    Returns:
        A JSON-serialisable dict; every AP/AR is a float in [0, 1], or -1 where undefined
        (no ground truth in that class / area range):
        - "stats": the 12 COCO summary numbers by name (``STAT_NAMES``);
        - "ap_per_iou": {"0.50": AP, ..., "0.95": AP}, area "all", 100 detections per image;
        - "ap_per_class": {class name: AP over IoU 0.50:0.95};
        - "num_images": images evaluated; "num_detections": results on those images;
        - "summary": the table COCOeval.summarize prints.

    Raises:
        ValueError: results or ``image_ids`` name images missing from ``coco_gt``, or a
            ground-truth annotation has id 0.
    """
    if 0 in coco_gt.anns:
        raise ValueError(
            "ground-truth annotation ids must be non-zero: COCOeval marks unmatched detections "
            "with id 0, so an object with id 0 could never be found"
        )
    known_ids = set(coco_gt.getImgIds())
    evaluated_ids = sorted(known_ids if image_ids is None else {int(i) for i in image_ids})
    missing = (set(evaluated_ids) | {r["image_id"] for r in results}) - known_ids
    if missing:
        raise ValueError(f"image ids {sorted(missing)[:10]} are not in the ground truth")

    # loadRes, evaluate and accumulate print progress and timings: keep the console clean.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, _load_results(coco_gt, results), iouType="bbox")
        coco_eval.params.imgIds = evaluated_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()

    params = coco_eval.params
    # (IoU, recall, class, area, cap) -> (IoU, recall, class): area "all", at most 100
    # detections per image, as AP is.
    precision = coco_eval.eval["precision"][
        :, :, :, params.areaRngLbl.index("all"), params.maxDets.index(100)
    ]
    ap_per_iou = {
        f"{threshold:.2f}": _mean_defined(precision[t])
        for t, threshold in enumerate(params.iouThrs)
    }
    ap_per_class = {}
    for label, name in enumerate(class_names, start=1):
        category_id = label_to_category_id[label]
        ap_per_class[name] = (
            _mean_defined(precision[:, :, params.catIds.index(category_id)])
            if category_id in params.catIds
            else -1.0
        )

    evaluated = set(evaluated_ids)
    return {
        "stats": {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)},
        "ap_per_iou": ap_per_iou,
        "ap_per_class": ap_per_class,
        "num_images": len(evaluated_ids),
        "num_detections": sum(1 for r in results if r["image_id"] in evaluated),
        "summary": summary.getvalue(),
        **({"pr_curves": precision_recall_curves(coco_eval, class_names, label_to_category_id)} if curves else {}),
    }


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A fixed-width console table of the headline APs, plus per-class AP for <= 20 classes.

    Undefined values (-1) print as "n/a" so they cannot be read as a (terrible) score.
    """
    stats = metrics["stats"]
    columns = {
        "AP": stats["AP"],
        "AP50": stats["AP50"],
        "AP75": stats["AP75"],
        "AP@0.90": metrics["ap_per_iou"]["0.90"],
        "AP_small": stats["AP_small"],
        "AP_medium": stats["AP_medium"],
        "AP_large": stats["AP_large"],
    }
    lines = [
        "".join(f"{name:>{_COLUMN_WIDTH}}" for name in columns),
        "".join(f"{_format_ap(value):>{_COLUMN_WIDTH}}" for value in columns.values()),
    ]
    per_class = metrics["ap_per_class"]
    if len(per_class) <= MAX_CLASSES_IN_TABLE:
        cells = (f"{name} {_format_ap(ap)}" for name, ap in per_class.items())
        lines.append("AP per class: " + "  ".join(cells))
    return "\n".join(lines)


def _load_results(coco_gt: COCO, results: Sequence[Mapping[str, Any]]) -> COCO:
    """``coco_gt.loadRes`` on copies of the results, or an empty results object for none."""
    if results:
        return coco_gt.loadRes([dict(r) for r in results])
    # loadRes indexes results[0]; this is what it would build from a list with no entries.
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _mean_defined(precision: np.ndarray) -> float:
    """Mean over the entries COCOeval defined (> -1), -1 if none: COCOeval.summarize's rule."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else -1.0


def _format_ap(value: float) -> str:
    return "n/a" if value < 0 else f"{value:.3f}"


def evaluate_voc(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    image_ids: Iterable[int] | None = None,
    use_07_metric: bool = False,
) -> dict[str, Any]:
    """PASCAL VOC AP50 by the devkit's rule, next to COCO's AP: per class, detections sorted by
    score are true positives when their best IoU with a not-yet-matched ground-truth box of that
    class exceeds 0.5; ground truth marked iscrowd=1 (VOC's "difficult") neither counts as a
    positive nor turns its matches into false positives. AP is the area under the precision
    envelope (VOC2010+), or the 11-point mean of VOC2007 with ``use_07_metric``.

    Boxes are compared as continuous coordinates, as everywhere in this project (the devkit's
    +1 pixel convention is for inclusive integer pixel indices).

    Returns {"voc_ap50": mean over classes with ground truth, "voc_ap50_per_class": {category id: AP}}.
    """
    evaluated = set(coco_gt.getImgIds() if image_ids is None else (int(i) for i in image_ids))
    per_class: dict[int, float] = {}
    for category_id in coco_gt.getCatIds():
        truth: dict[int, tuple[list[list[float]], list[bool]]] = {}  # image -> (boxes xyxy, difficult)
        for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=sorted(evaluated), catIds=[category_id], iscrowd=None)):
            boxes, difficult = truth.setdefault(ann["image_id"], ([], []))
            boxes.append(box_convert(torch.tensor(ann["bbox"], dtype=torch.float64), "xywh", "xyxy").tolist())
            difficult.append(bool(ann.get("iscrowd", 0)))
        positives = sum(not d for _, difficult in truth.values() for d in difficult)
        if positives == 0:
            continue
        detections = sorted((r for r in results if r["category_id"] == category_id and r["image_id"] in evaluated),
                            key=lambda r: -r["score"])
        hits = _voc_hits(detections, truth)
        true_positives = np.cumsum(hits)
        recall = true_positives / positives
        precision = true_positives / np.maximum(np.arange(1, len(hits) + 1), 1)
        per_class[category_id] = _voc_ap(recall, precision, use_07_metric)
    return {"voc_ap50": float(np.mean(list(per_class.values()))) if per_class else -1.0,
            "voc_ap50_per_class": {str(k): v for k, v in per_class.items()}}


def _voc_hits(detections: list[Mapping[str, Any]], truth: dict[int, tuple[list[list[float]], list[bool]]]) -> list[int]:
    """1 (true positive) or 0 (false positive) for each of one class's detections, in their
    order; matches of difficult ground truth are left out. Matching is greedy per image in
    score order, so each image's (D, G) IoUs are computed once, with the project's IoU."""
    by_image: dict[int, list[int]] = {}
    for index, det in enumerate(detections):
        by_image.setdefault(det["image_id"], []).append(index)
    outcome: dict[int, int | None] = {}  # detection index -> 1, 0, or None (matched a difficult box)
    for image_id, indices in by_image.items():
        boxes, difficult = truth.get(image_id, ([], []))
        if not boxes:
            outcome.update((i, 0) for i in indices)
            continue
        xywh = torch.tensor([detections[i]["bbox"] for i in indices], dtype=torch.float64)
        iou = box_iou(box_convert(xywh, "xywh", "xyxy"), torch.tensor(boxes, dtype=torch.float64))  # (D, G)
        best_iou, best = iou.max(dim=1)
        matched = [False] * len(boxes)
        for i, value, gt in zip(indices, best_iou.tolist(), best.tolist()):
            if value <= 0.5:
                outcome[i] = 0
            elif difficult[gt]:
                outcome[i] = None
            else:
                outcome[i] = 0 if matched[gt] else 1
                matched[gt] = True
    return [outcome[i] for i in range(len(detections)) if outcome[i] is not None]


def _voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Area under the precision envelope (or the 11-point mean) of one class."""
    if use_07_metric:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    recall = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]  # best precision at any higher recall
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def precision_recall_curves(coco_eval: COCOeval, class_names: Sequence[str], label_to_category_id: Mapping[int, int],
                            thresholds: Sequence[float] = (0.5, 0.75)) -> dict[str, Any]:
    """Each class's precision at COCOeval's 101 recall points, at each IoU threshold, from its
    accumulated precision (area "all", 100 detections per image: the points AP averages), not
    recomputed; a recall it never reaches has no precision (None)."""
    params = coco_eval.params
    precision = coco_eval.eval["precision"][:, :, :, params.areaRngLbl.index("all"), params.maxDets.index(100)]
    curves: dict[str, Any] = {"recall": [float(r) for r in params.recThrs], "classes": {}}
    for label, name in enumerate(class_names, start=1):
        category_id = label_to_category_id[label]
        if category_id not in params.catIds:
            continue
        k = params.catIds.index(category_id)
        curves["classes"][name] = {
            f"{t:.2f}": [float(p) if p >= 0 else None for p in precision[int(np.argmin(np.abs(params.iouThrs - t))), :, k]]
            for t in thresholds}
    return curves


def confusion_at(coco_gt: COCO, results: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                 label_to_category_id: Mapping[int, int], *, score_thresh: float, iou_thresh: float = 0.5,
                 image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """The confusion matrix of the detections scoring at least ``score_thresh``: rows the true
    class (the last row background: detections that match no object), columns the detected class
    (the last column background: objects no detection found). In each image, detections in
    descending score take the unmatched object of any class with the highest IoU, at least
    ``iou_thresh``; crowd objects neither count nor match. Also each class's precision, recall
    and F1 at that threshold (a matched detection of another class is a false positive of its
    class and a miss of the object's)."""
    category_to_index = {label_to_category_id[label]: label - 1 for label in range(1, len(class_names) + 1)}
    background = len(class_names)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    wanted = set(coco_gt.getImgIds() if image_ids is None else image_ids)
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for result in results:
        if result["score"] >= score_thresh and result["image_id"] in wanted and result["category_id"] in category_to_index:
            by_image.setdefault(result["image_id"], []).append(result)
    for image_id in wanted:
        objects = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
                   if not a.get("iscrowd") and a["category_id"] in category_to_index]
        detections = sorted(by_image.get(image_id, []), key=lambda d: -d["score"])
        matched = [False] * len(objects)
        if objects and detections:
            iou = box_iou(_xyxy([d["bbox"] for d in detections]), _xyxy([a["bbox"] for a in objects])).numpy()
        for d, detection in enumerate(detections):
            candidates = [(iou[d, g], g) for g in range(len(objects)) if not matched[g] and iou[d, g] >= iou_thresh] \
                if objects else []
            column = category_to_index[detection["category_id"]]
            if candidates:
                _, g = max(candidates)
                matched[g] = True
                matrix[category_to_index[objects[g]["category_id"]], column] += 1
            else:
                matrix[background, column] += 1
        for g, found in enumerate(matched):
            if not found:
                matrix[category_to_index[objects[g]["category_id"]], background] += 1
    per_class = {}
    for index, name in enumerate(class_names):
        true_positive = int(matrix[index, index])
        detected, present = int(matrix[:, index].sum()), int(matrix[index, :].sum())
        precision = true_positive / detected if detected else None
        recall = true_positive / present if present else None
        f1 = (2 * precision * recall / (precision + recall) if precision and recall else
              0.0 if precision is not None and recall is not None else None)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "true_positives": true_positive,
                           "detections": detected, "objects": present}
    return {"score_thresh": score_thresh, "iou_thresh": iou_thresh, "labels": [*class_names, "background"],
            "matrix": matrix.tolist(), "per_class": per_class}


def _xyxy(boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    """COCO's (x, y, w, h) boxes as (M, 4) xyxy float64."""
    return box_convert(torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")
