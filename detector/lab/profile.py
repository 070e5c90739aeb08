"""Where the time of a training step and of an evaluation goes (``benchmark.py --profile``).

A step of the preset is split into named stages by wrapping the model's own methods and hooks
for the duration of the measurement: trunk forward and backward, RPN head, anchors and target
assignment, proposal selection with its NMS, RoI sampling, RoIAlign, the box head, the losses,
the optimiser, and the wait for the DataLoader. Times are wall clock per stage, exclusive of
the stages nested inside (e.g. NMS inside proposal selection), median over the timed steps; on
a GPU every stage boundary synchronises. The trunk's own forward and backward on the same
batch, timed alone in the same process, is the floor a step cannot go below: ``step / trunk``
is the overhead ratio. torch.profiler's operator table of one step is returned as well.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torchvision
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from detector.data import collate
from detector.engine import build_dataset, evaluate_coco
from detector.engine import config as config_lib
from detector.engine.datamodule import DetectionDataModule
from detector.engine.evaluation import detections_to_coco_results
from detector.engine.module import DetectorModule
from detector.engine.trainers import autocast
from detector.lab.timing import (
    Batch,
    fresh_model,
    median,
    median_time,
    random_batches,
    synchronise,
    to_device,
    training_step,
)
from detector.model import FasterRCNN
from detector.model import roi_heads as roi_heads_module

# The stages of a training step, in the order the report lists them.
TRAIN_STAGES = ("data wait", "trunk forward", "RPN head", "RPN anchors + assignment", "RPN proposals",
                "RPN NMS", "RPN losses", "RoI sampling", "RoIAlign", "box head", "Fast R-CNN losses",
                "heads backward", "trunk backward", "optimiser", "other")
EVAL_STAGES = ("inference", "post-processing", "COCOeval")


class StageClock:
    """Inclusive and exclusive wall time of nested, named stages."""

    def __init__(self, device: str):
        self.synchronise = functools.partial(synchronise, device)
        self.exclusive: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [label, start, time of the children]

    def start(self, label: str) -> None:
        self.synchronise()
        self._stack.append([label, time.perf_counter(), 0.0])

    def stop(self) -> None:
        self.synchronise()
        label, started, children = self._stack.pop()
        elapsed = time.perf_counter() - started
        self.exclusive[label] += elapsed - children
        if self._stack:
            self._stack[-1][2] += elapsed

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[None]:
        self.start(label)
        try:
            yield
        finally:
            self.stop()

    def reset(self) -> dict[str, float]:
        times, self.exclusive = dict(self.exclusive), defaultdict(float)
        return times


def _timed(clock: StageClock, label: str, function: Callable) -> Callable:
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with clock.stage(label):
            return function(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def instrumented(model: FasterRCNN, clock: StageClock) -> Iterator[None]:
    """Time the model's stages while the block runs; everything is restored afterwards."""
    patches = [(model.rpn.head, "forward", "RPN head"), (model.rpn, "sample_anchors", "RPN anchors + assignment"),
               (model.rpn, "select_proposals", "RPN proposals"), (model.rpn, "losses", "RPN losses"),
               (model.roi_heads, "sample_rois", "RoI sampling"), (model.roi_heads.box_head, "forward", "box head"),
               (model.roi_heads.cls_score, "forward", "box head"), (model.roi_heads.bbox_pred, "forward", "box head"),
               (model.roi_heads, "losses", "Fast R-CNN losses"), (model.roi_heads, "postprocess", "post-processing"),
               (model.backbone, "forward", "trunk forward")]
    module_patches = [(torchvision.ops, "batched_nms", "RPN NMS"), (roi_heads_module, "roi_align", "RoIAlign")]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches + module_patches]
    # The trunk's backward starts when the gradient of its output is ready.
    hook = model.backbone.register_full_backward_pre_hook(lambda module, grad: _switch(clock, "trunk backward"))
    try:
        for owner, name, label in patches + module_patches:
            setattr(owner, name, _timed(clock, label, getattr(owner, name)))
        yield
    finally:
        hook.remove()
        for owner, name, original in saved:
            setattr(owner, name, original)


def _switch(clock: StageClock, label: str) -> None:
    clock.stop()
    clock.start(label)


def profile_training(cfg: config_lib.Config, steps: int, device: str,
                     image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Median exclusive time of each stage of a training step over ``steps`` steps after two
    warm-up steps, the trunk alone on the same batches, and torch.profiler's top operators.
    Batches come from the preset's DataLoader, or with ``image_size`` are random (H, W) images
    (lab/timing.py's random_batches; no data wait then)."""
    if image_size is None:
        data = DetectionDataModule(cfg.data, seed=cfg.train.seed)
        data.setup("fit")
        num_classes, loader = len(data.train_dataset.class_names), iter(data.train_dataloader())
    else:  # made beforehand, so that "data wait" is the DataLoader's alone, 0 here
        batches = itertools.islice(random_batches(cfg.data.batch_size, image_size, cfg.train.seed), steps + 3)
        num_classes, loader = 3, iter(list(batches))
    model, optimizer, _ = fresh_model(cfg, num_classes, device)
    clock = StageClock(device)

    def step() -> Batch:
        with clock.stage("data wait"):
            batch = next(loader)
        batch = to_device(batch, device)
        training_step(model, optimizer, batch, device, cfg.train.precision, stage=clock.stage)
        return batch

    per_step = []
    with instrumented(model, clock):
        for i in range(steps + 2):
            started = time.perf_counter()
            images, _ = step()
            total = time.perf_counter() - started
            times = clock.reset()
            times["other"] = total - sum(times.values())
            if i >= 2:
                per_step.append({"total": total, **times})
    stages = {label: median(s.get(label, 0.0) for s in per_step) for label in TRAIN_STAGES}
    step_s = median(s["total"] for s in per_step)

    batch, _ = model.preprocess(images)
    trunk = [time_trunk(model.backbone, batch, cfg.train.precision, device) for _ in range(steps + 2)][2:]
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    operators = [{"name": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
                 for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]]
    return {"step_s": step_s, "stages_s": stages, "trunk_s": median(trunk), "overhead": step_s / median(trunk),
            "batch_size": cfg.data.batch_size, "image_size": list(batch.shape[-2:]), "operators": operators}


def time_trunk(trunk: torch.nn.Module, batch: torch.Tensor, precision: str, device: str) -> float:
    """Forward and backward of the trunk alone (eager or compiled) on a normalised, padded batch."""
    def call() -> None:
        with autocast(device, precision):
            features = trunk(batch)
        features.float().sum().backward()

    synchronise(device)
    seconds = median_time(call, device, repeats=1, warmup=0)
    trunk.zero_grad(set_to_none=True)
    return seconds


@torch.no_grad()
def profile_evaluation(cfg: config_lib.Config, device: str) -> dict[str, Any]:
    """One evaluation of the validation split as validation runs it: inference (the model's
    forward, detections mapped back to the stored images), post-processing (inside inference,
    reported apart) and COCOeval, in seconds."""
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    module = DetectorModule.from_config(cfg, dataset).to(device).eval()
    # An untrained head scores nothing above the threshold: keep every box so post-processing
    # and COCOeval see as many detections as a trained model keeps (up to 100 per image).
    module.model.roi_heads.score_thresh = 0.0
    clock = StageClock(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, collate_fn=collate,
                                         num_workers=cfg.data.num_workers)
    with instrumented(module.model, clock):
        for index, (images, targets) in enumerate(loader):
            with clock.stage("inference"):
                module.validation_step(([image.to(device) for image in images], targets), index)
    results = detections_to_coco_results(module._val_detections, dataset.label_to_category_id)
    with clock.stage("COCOeval"):
        evaluate_coco(dataset.coco, results, dataset.class_names, dataset.label_to_category_id,
                      image_ids=dataset.image_ids)
    times = clock.reset()
    post, coco = times.get("post-processing", 0.0), times.get("COCOeval", 0.0)
    stages = {"inference": sum(times.values()) - post - coco, "post-processing": post, "COCOeval": coco}
    return {"stages_s": stages, "images": len(dataset), "detections": len(results)}


def format_profile(result: dict[str, Any]) -> str:
    """The profile as a table: each stage's milliseconds and share of the step."""
    train = result["train"]
    lines = [f"training step ({result['precision']}): batch {train['batch_size']} of "
             f"{train['image_size'][0]}x{train['image_size'][1]} px, "
             f"{train['step_s'] * 1e3:.1f} ms; trunk forward+backward alone {train['trunk_s'] * 1e3:.1f} ms; "
             f"step / trunk = {train['overhead']:.2f}",
             f"{'stage':<28}{'ms':>9}{'share':>8}"]
    for label, seconds in train["stages_s"].items():
        lines.append(f"{label:<28}{seconds * 1e3:>9.1f}{seconds / train['step_s']:>8.1%}")
    evaluation = result.get("evaluation")
    if evaluation:
        lines += [f"evaluation: {evaluation['images']} images, {evaluation['detections']} detections",
                  *(f"{label:<28}{seconds * 1e3:>9.1f}" for label, seconds in evaluation["stages_s"].items())]
    lines += ["top operators of one step (torch.profiler, self CPU ms):",
              *(f"  {op['name']:<44}{op['self_ms']:>9.1f}{op['calls']:>6}" for op in train["operators"])]
    return "\n".join(lines)
