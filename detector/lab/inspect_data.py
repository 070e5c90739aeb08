"""Know your data before training (``scripts/inspect_data.py``): images and boxes per class and
split, box sizes after the configured resize, the boxes training leaves out and why, and how well
the anchors cover the boxes, with a box-size histogram against the anchor sizes.

Anchor coverage is the RPN's view of the training boxes. A box's best IoU is the largest over
the anchors of its image's grid: stride 8 over the resized image padded to a multiple of 16, the
anchors and the IoU of training itself (``AnchorGenerator.nonzero_iou``). The box is covered
when that IoU reaches model.rpn_fg_iou_thresh. An uncovered box is still learnt from its best
anchors (the matcher's low-quality matches, as in torchvision and Detectron), but from fewer
and worse-placed positives.

Shape letters as in the ``detector`` package docstring (N images, G boxes per image, E sparse
entries, M boxes of a whole split in one flat list).
"""

from __future__ import annotations

import argparse
import copy
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from detector.data import DetectionDataset
from detector.data.transforms import resized_size
from detector.engine import config as config_lib
from detector.engine.build import build_dataset, report_data, resolve_classes
from detector.engine.config import Config
from detector.engine.drawing import class_colour
from detector.engine.io import atomic_write_text
from detector.engine.outputs import check_folder, claim_folder, default_location
from detector.lab.plots import plot_box_sizes, plot_class_counts, plot_label_grid
from detector.model import AnchorGenerator
from detector.model.backbone import STRIDE
from detector.model.faster_rcnn import SIZE_DIVISIBLE

# Below this fraction of covered boxes the report suggests other anchor sizes. With anchors an
# octave apart, a square box midway between two sizes reaches IoU 0.5 at best, so a plain
# octave set covers about 60-80% of naturally spread boxes at the usual 0.7 threshold.
POOR_COVERAGE = 0.8
IMAGES_PER_BATCH = 64  # images whose anchor IoUs are computed at once (memory, not results)


@dataclass
class SplitSummary:
    """What training and validation will see of one split."""

    role: str  # "train" or "val"
    split: str
    source: str
    class_names: list[str]
    num_images: int = 0
    image_sizes: Counter = field(default_factory=Counter)  # (width, height) as stored
    resized_sizes: Counter = field(default_factory=Counter)  # (width, height) the model sees
    images_per_class: Counter = field(default_factory=Counter)
    boxes_per_class: Counter = field(default_factory=Counter)  # training boxes
    left_out_per_class: Counter = field(default_factory=Counter)
    left_out: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # reason -> image file per box
    clipped: int = 0  # boxes partly outside the image, clipped to it
    # Left out of training for having no area inside the image, yet in the ground truth as
    # annotated, where COCOeval counts each as a miss.
    unmatchable: int = 0
    # ((height, width) after resizing, (G, 4) training boxes in its pixels) per image
    resized: list[tuple[tuple[int, int], np.ndarray]] = field(default_factory=list)
    box_sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (M, 2) width, height after resizing
    best_iou: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (M,) best anchor IoU per box


def inspect_from_args(args: argparse.Namespace, cfg: Config | None = None) -> str:
    """``scripts/inspect_data.py``: the report of the configuration of its arguments; writes it
    (report.txt) and the box-size histogram into ``args.out`` (default: a new
    runs/inspect-<dataset>-<time>). Returns the report's text."""
    cfg = cfg or config_lib.from_args(args)
    out = Path(args.out) if args.out else default_location(f"inspect-{cfg.data.name}")
    check_folder(out, "data inspection")  # before the data are read
    cfg.data.classes = resolve_classes(cfg.data)
    summaries = inspect_data(cfg)
    folder = claim_folder(out, "data inspection")
    figures = [plot_box_sizes({s.role: np.sqrt(s.box_sizes.prod(axis=1)) for s in summaries}, cfg.model.anchor_sizes,
                              out / f"box_sizes.{args.format}"),
               plot_class_counts({s.role: dict(s.boxes_per_class) for s in summaries}, out / f"class_counts.{args.format}")]
    if args.draw:
        figures.append(draw_labels(cfg, args.draw, out / f"labels.{args.format}"))
    report = format_report(cfg, summaries)
    atomic_write_text(out / "report.txt", report + "\n")
    folder.finish(["report.txt", *(figure.name for figure in figures)])
    return report + f"\nreport and figures ({', '.join(figure.name for figure in figures)}) in {out}"


def draw_labels(cfg: Config, count: int, path: Path) -> Path:
    """The first ``count`` training images at their stored size with every box of their ground
    truth in its class's colour (the colours of predict.py's drawings), dashed grey where
    training leaves it out (crowd or difficult, no area inside the image)."""
    data = copy.deepcopy(cfg.data)
    data.min_size = data.max_size = None  # the stored pixels, where the annotations' boxes lie
    data.hflip = False
    dataset = build_dataset(data, data.train_split, train=False)
    ignored = "difficult" if data.name == "voc" else "crowd"
    names = {cat["id"]: cat["name"] for cat in dataset.coco.dataset["categories"]}
    colours = {category: class_colour(label) for label, category in dataset.label_to_category_id.items()}
    images, titles, boxes = [], [], []
    for index, record in enumerate(dataset.records[:count]):
        image, _ = dataset[index]
        images.append(image.permute(1, 2, 0).numpy())
        titles.append(Path(record.path).name)
        boxes.append([((ann["bbox"], names[ann["category_id"]], colours.get(ann["category_id"], "grey")),
                       _left_out_because(ann, record.width, record.height, ignored) is not None)
                      for ann in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[record.image_id]))])
    legend = {names[category]: colour for category, colour in colours.items()}
    return plot_label_grid(images, titles, boxes, legend, path)


def inspect_data(cfg: Config) -> list[SplitSummary]:
    """Summaries of the training and validation splits as training builds them."""
    datasets = {role: build_dataset(cfg.data, split, train=role == "train")
                for role, split in (("train", cfg.data.train_split), ("val", cfg.data.val_split))}
    report_data(cfg.data, datasets["train"], datasets["val"])  # the line train.py prints, and its warnings
    return [summarise(datasets[role], cfg, role, split)
            for role, split in (("train", cfg.data.train_split), ("val", cfg.data.val_split))]


def summarise(dataset: DetectionDataset, cfg: Config, role: str, split: str) -> SplitSummary:
    """Counts, left-out boxes with their reasons, sizes after resizing and anchor coverage."""
    d = cfg.data
    summary = SplitSummary(role, split, dataset.source, list(dataset.class_names), num_images=len(dataset))
    name_of = {cat["id"]: cat["name"] for cat in dataset.coco.dataset["categories"]}
    ignored = "difficult" if d.name == "voc" else "crowd"
    sizes = []
    for record in dataset.records:
        height, width = resized_size(record.height, record.width, d.min_size, d.max_size)
        summary.image_sizes[(record.width, record.height)] += 1
        summary.resized_sizes[(width, height)] += 1
        for label in set(record.labels.tolist()):
            summary.images_per_class[dataset.class_names[label - 1]] += 1
        summary.boxes_per_class.update(dataset.class_names[label - 1] for label in record.labels)
        for ann in dataset.coco.imgToAnns[record.image_id]:
            reason = _left_out_because(ann, record.width, record.height, ignored)
            if reason is None:
                x, y, w, h = ann["bbox"]
                summary.clipped += x < 0 or y < 0 or x + w > record.width or y + h > record.height
            else:
                summary.left_out[reason].append(Path(record.path).name)
                summary.left_out_per_class[name_of[ann["category_id"]]] += 1
                summary.unmatchable += not ann["iscrowd"]
        # Per axis, as the transform scales boxes: new size / stored size.
        boxes = record.boxes.astype(np.float64) * np.array([width / record.width, height / record.height] * 2)
        sizes.append(boxes[:, 2:] - boxes[:, :2])
        summary.resized.append(((height, width), boxes))
    summary.box_sizes = np.concatenate(sizes) if sizes else np.zeros((0, 2))
    summary.best_iou = best_anchor_iou(summary.resized, cfg.model.anchor_sizes, cfg.model.aspect_ratios,
                                       cfg.model.anchor_offset)
    return summary


def _left_out_because(ann: dict, width: int, height: int, ignored: str) -> str | None:
    """Why training leaves a ground-truth box out (the reasons of DetectionDataset's cleaning),
    or None when it trains on it."""
    x, y, w, h = ann["bbox"]
    if ann["iscrowd"]:
        return f"{ignored} (kept in the ground truth as ignored)"
    if w <= 0 or h <= 0:
        return "zero or negative width or height in the annotation"
    if min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0):
        return "outside the image"
    return None


def best_anchor_iou(images: list[tuple[tuple[int, int], np.ndarray]], sizes: list[int], aspect_ratios: list[float],
                    offset: float) -> np.ndarray:
    """Each box's best IoU with the anchors of its image's grid, in the order given. ``images``:
    ((resized height, width), boxes (G, 4) xyxy in resized pixels) per image."""
    generator = AnchorGenerator(sizes=sizes, aspect_ratios=aspect_ratios, stride=STRIDE, offset=offset)
    best = [np.zeros(len(boxes)) for _, boxes in images]
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)  # one grid per padded size
    for index, ((height, width), _) in enumerate(images):
        by_size[(-(-height // SIZE_DIVISIBLE) * SIZE_DIVISIBLE, -(-width // SIZE_DIVISIBLE) * SIZE_DIVISIBLE)].append(index)
    for (height, width), indices in by_size.items():
        for start in range(0, len(indices), IMAGES_PER_BATCH):
            chunk = [i for i in indices[start:start + IMAGES_PER_BATCH] if len(images[i][1])]
            if not chunk:
                continue
            g = max(len(images[i][1]) for i in chunk)
            boxes = torch.zeros((len(chunk), g, 4), dtype=torch.float32)  # (N, G, 4), padded
            valid = torch.zeros((len(chunk), g), dtype=torch.bool)  # (N, G)
            for row, i in enumerate(chunk):
                boxes[row, :len(images[i][1])] = torch.as_tensor(images[i][1], dtype=torch.float32)
                valid[row, :len(images[i][1])] = True
            overlaps = generator.nonzero_iou(boxes, valid, height // STRIDE, width // STRIDE)  # E entries
            flat = torch.zeros(len(chunk) * g).scatter_reduce(0, overlaps.box, overlaps.iou, "amax")  # (N*G,)
            for row, i in enumerate(chunk):
                best[i] = flat[row * g:row * g + len(images[i][1])].numpy()
    return np.concatenate(best) if best else np.zeros(0)


def nearest_anchor(box_sizes: np.ndarray, sizes: list[int]) -> np.ndarray:
    """(M,) index of the anchor size nearest to each box's sqrt(w * h), on a log scale."""
    side = np.sqrt(np.clip(box_sizes.prod(axis=1), 1e-12, None))
    return np.abs(np.log(side[:, None] / np.asarray(sizes, dtype=np.float64)[None])).argmin(axis=1)


def candidate_anchor_sizes(box_sizes: np.ndarray) -> list[list[int]]:
    """Anchor sizes spanning the boxes' sqrt(w * h) from the 1st to the 99th percentile, an
    octave apart and half an octave apart (rounded to whole pixels)."""
    side = np.sqrt(box_sizes.prod(axis=1))
    low, high = np.log2(np.percentile(side, [1, 99]).clip(min=1))
    octave = [2 ** k for k in range(math.floor(low), math.ceil(high) + 1)]
    half = sorted({round(2 ** (k / 2)) for k in range(math.floor(2 * low), math.ceil(2 * high) + 1)})
    return [octave, half]


def format_report(cfg: Config, summaries: list[SplitSummary]) -> str:
    d, m = cfg.data, cfg.model
    resize = ("the stored size" if d.min_size is None and d.max_size is None else
              f"shorter side to {d.min_size}, longer side at most {d.max_size} (data.min_size, data.max_size)")
    lines = [
        f"{d.name} data in {d.root}: {len(summaries[0].class_names)} classes: {', '.join(summaries[0].class_names)}",
        f"resize: {resize}",
        f"anchors: sizes {_numbers(m.anchor_sizes)} px, aspect ratios {_numbers(m.aspect_ratios)}, stride {STRIDE}; "
        f"a box is covered when an anchor has IoU >= {m.rpn_fg_iou_thresh:g} with it (model.rpn_fg_iou_thresh)",
    ]
    for summary in summaries:
        lines += [""] + _split_lines(summary, cfg)
    train = summaries[0]
    if len(train.best_iou) and (train.best_iou >= m.rpn_fg_iou_thresh).mean() < POOR_COVERAGE:
        lines += ["", *_suggestion(train, cfg)]
    return "\n".join(lines)


def _split_lines(s: SplitSummary, cfg: Config) -> list[str]:
    m = cfg.model
    lines = [f"{s.role} split '{s.split}' ({s.source}): {s.num_images} images, {_sizes(s.image_sizes)} "
             f"-> {_sizes(s.resized_sizes)} as the model sees them"]
    lines.append(f"  {'class':<16}{'images':>8}{'boxes':>8}{'left out':>10}")
    for name in s.class_names + ["all"]:
        counts = ((s.num_images, sum(s.boxes_per_class.values()), sum(s.left_out_per_class.values())) if name == "all"
                  else (s.images_per_class[name], s.boxes_per_class[name], s.left_out_per_class[name]))
        lines.append(f"  {name:<16.16}" + "".join(f"{c:>{w}}" for c, w in zip(counts, (8, 8, 10))))
    for reason, files in s.left_out.items():
        shown = ", ".join(sorted(set(files))[:3]) + (" ..." if len(set(files)) > 3 else "")
        lines.append(f"  left out of the targets: {len(files)} {reason}: {shown}")
    if s.role == "val" and s.unmatchable:
        lines.append(f"  of these, {s.unmatchable} stay in the ground truth, where no detection can match them: "
                     f"COCOeval counts each as a miss")
    if s.clipped:
        lines.append(f"  clipped to the image: {s.clipped} boxes partly outside it")
    if not len(s.box_sizes):
        return lines + ["  no training boxes"]
    side = np.sqrt(s.box_sizes.prod(axis=1))
    lines.append(f"  box size after resizing (px)   {'min':>7}{'median':>8}{'max':>8}")
    for label, values in (("sqrt(width * height)", side), ("width", s.box_sizes[:, 0]), ("height", s.box_sizes[:, 1]),
                          ("height / width", s.box_sizes[:, 1] / s.box_sizes[:, 0])):
        lines.append(f"    {label:<27}" + "".join(f"{v:>{w}.{2 if label.startswith('height /') else 1}f}"
                                                     for v, w in zip(np.percentile(values, [0, 50, 100]), (7, 8, 8))))
    covered = s.best_iou >= m.rpn_fg_iou_thresh
    lines.append(f"  anchor coverage: {covered.mean():.1%} of {len(covered)} boxes "
                 f"(median best IoU {np.median(s.best_iou):.2f}; {(s.best_iou < m.rpn_bg_iou_thresh).sum()} boxes "
                 f"below the background threshold {m.rpn_bg_iou_thresh:g})")
    lines.append(f"    {'nearest anchor':<16}{'boxes':>7}{'covered':>9}{'median best IoU':>17}")
    nearest = nearest_anchor(s.box_sizes, m.anchor_sizes)
    for index, size in enumerate(m.anchor_sizes):
        mine = nearest == index
        if mine.any():
            lines.append(f"    {size:<16}{mine.sum():>7}{covered[mine].mean():>9.1%}{np.median(s.best_iou[mine]):>17.2f}")
        else:
            lines.append(f"    {size:<16}{0:>7}{'-':>9}{'-':>17}")
    return lines


def _suggestion(train: SplitSummary, cfg: Config) -> list[str]:
    """Coverage of the training boxes with anchor sizes spanning them: computed, not guessed."""
    m = cfg.model
    now = (train.best_iou >= m.rpn_fg_iou_thresh).mean()
    lines = [f"suggestion: {now:.1%} of the training boxes are covered (below {POOR_COVERAGE:.0%}). Coverage with "
             f"anchor sizes spanning the boxes (aspect ratios unchanged):"]
    for sizes in candidate_anchor_sizes(train.box_sizes):
        if sizes == list(m.anchor_sizes):
            continue
        iou = best_anchor_iou(train.resized, sizes, m.aspect_ratios, m.anchor_offset)
        lines.append(f"  model.anchor_sizes=[{','.join(map(str, sizes))}]: {(iou >= m.rpn_fg_iou_thresh).mean():.1%} "
                     f"({len(sizes) * len(m.aspect_ratios)} anchors per location, now "
                     f"{len(m.anchor_sizes) * len(m.aspect_ratios)})")
    return lines


def _numbers(values: list) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _sizes(counts: Counter) -> str:
    """"640x480" for one size, else the count of sizes and the ranges of widths and heights."""
    if len(counts) == 1:
        (width, height), = counts
        return f"{width}x{height}"
    widths, heights = [w for w, _ in counts], [h for _, h in counts]
    return f"{len(counts)} sizes ({min(widths)}-{max(widths)} x {min(heights)}-{max(heights)} px)"
