"""The timing harness of the benchmark and the profile: one training step, one median, one
source of random boxes and batches, and the batches and model of a preset (autocast as training
runs it: engine/trainers.py).

Shape letters as in the ``detector`` package docstring.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any, ContextManager

import torch

from detector.data import collate
from detector.engine import build_dataset, build_model
from detector.engine.build import attach_gradient_probes
from detector.engine.config import Config
from detector.engine.trainers import autocast
from detector.model import FasterRCNN

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


def median(values: list[float]) -> float:
    return statistics.median(values)


def synchronise(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer sees all of it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(call: Callable[[], Any], device: str, repeats: int, warmup: int) -> float:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones, each ending synchronised."""
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        call()
        synchronise(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return median(times)


def random_boxes(count: int, low: float, high: float, width: int, height: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 4) xyxy boxes with sides uniform in [low, high) px, inside a width x height image."""
    size = torch.empty(count, 2).uniform_(low, high, generator=generator)
    corner = torch.rand(count, 2, generator=generator) * (torch.tensor([width, height]) - size)
    return torch.cat((corner, corner + size), dim=1)


def random_batches(batch_size: int, image_size: tuple[int, int], seed: int, num_classes: int = 3) -> Iterator[Batch]:
    """Endless batches of random uint8 (3, H, W) images with 1..20 random boxes each, 16 px to
    half the shorter side: real photo sizes without the photos."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size
    while True:
        images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
                  for _ in range(batch_size)]
        counts = torch.randint(1, 21, (batch_size,), generator=generator).tolist()
        targets = [{"boxes": random_boxes(count, 16, min(height, width) / 2, width, height, generator),
                    "labels": torch.randint(1, num_classes + 1, (count,), generator=generator)} for count in counts]
        yield images, targets


def preset_batches(cfg: Config, steps: int, device: str, image_size: tuple[int, int] | None = None) -> tuple[list[Batch], int]:
    """``steps`` batches on ``device`` and the number of classes: the preset's training images, or
    with ``image_size`` random (H, W) images with random boxes."""
    size = cfg.data.batch_size
    if image_size is None:
        dataset = build_dataset(cfg.data, cfg.data.train_split, train=True)
        num_classes = len(dataset.class_names)
        batches = [collate([dataset[(j * size + i) % len(dataset)] for i in range(size)]) for j in range(steps)]
    else:
        num_classes = 3
        batches = list(itertools.islice(random_batches(size, image_size, cfg.train.seed, num_classes), steps))
    return [to_device(batch, device) for batch in batches], num_classes


def to_device(batch: Batch, device: str) -> Batch:
    images, targets = batch
    return ([image.to(device) for image in images],
            [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets])


def fresh_model(cfg: Config, num_classes: int, device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, list]:
    """A model of ``cfg`` (seeded by train.seed) in training mode, its AdamW optimiser, and its
    gradient probes (attached as training attaches them: with train.gradient_stats, to ours)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, num_classes=num_classes).to(device).train()
    probes = attach_gradient_probes(model) if cfg.train.gradient_stats and isinstance(model, FasterRCNN) else []
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    return model, optimizer, probes


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, device: str, precision: str,
                  stage: Callable[[str], ContextManager] = lambda label: contextlib.nullcontext()) -> None:
    """Forward, backward and optimiser step on one batch, as training runs it; ``stage(label)``
    wraps the backward ("heads backward") and the optimiser step ("optimiser") for the profile."""
    images, targets = batch
    with autocast(device, precision):
        loss = sum(model(images, targets).values())
    optimizer.zero_grad()
    with stage("heads backward"):  # the profile switches to "trunk backward" at the trunk's backward
        loss.backward()
    with stage("optimiser"):
        optimizer.step()


def cycling_steps(batches: list[Batch], model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: str,
                  precision: str) -> Callable[[], None]:
    """A call that runs one training step per call, cycling through ``batches``."""
    iterator = itertools.cycle(batches)
    return lambda: training_step(model, optimizer, next(iterator), device, precision)
