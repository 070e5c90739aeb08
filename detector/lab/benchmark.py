"""Benchmarks of our pipeline against torchvision's, on identical inputs, in one run
(``scripts/benchmark.py``; the committed results are reports/benchmark.json).

Each case runs in a fresh process (spawned), so its peak memory is its own: the peak resident
set size above what the process held before the case started on the CPU, and
``torch.cuda.max_memory_allocated`` on a GPU. Times are medians over repeats after warm-up
(lab/timing.py); on a GPU each timed call ends with a synchronisation.

Sections (SECTIONS, each a function that measures and one that prints; JSON key in brackets):
- ``assignment`` [assignment]: target assignment of both stages, as the training step calls it,
  at batch sizes ``--batch-sizes`` on the anchors of 800x1333 images. RPN: label every anchor of
  the batch against padded ground truth, sample, encode. RoI heads: add the ground truth to the
  proposals, label, sample, encode. torchvision's side is its own
  ``RegionProposalNetwork.assign_targets_to_anchors`` + ``fg_bg_sampler`` + ``box_coder.encode``
  and ``RoIHeads.select_training_samples`` (Matcher, BalancedPositiveNegativeSampler, BoxCoder).
- ``train-step`` [train_step]: images/s of a full training step (forward, backward, AdamW) on the
  preset's batches, ours against torchvision's ``FasterRCNN`` configured identically
  (detector/model/reference.py).
- ``real-sizes`` [real_sizes]: the training step (ours with each RoIAlign kernel, torchvision's)
  and the target assignment at BCCD-like 320x427 (batch 8) and COCO-like 800x1333 (batch 2),
  random images and boxes, the ``--real-config`` preset's model.
- ``evaluation`` [evaluation]: COCOeval and the VOC rule timed on the same detections.
- ``gradient-stats`` [gradient_stats]: the cost of the regression-gradient statistics relative
  to a training step.
- ``preflight`` [preflight]: the data pre-flight (data/preflight.py: every image decoded) on
  PREFLIGHT_PHOTOS generated 640x480 JPEGs and on every image under ``--preflight-root``, with
  an empty cache and again with the cache it wrote (what each later cell of a matrix pays).
- ``levers`` [levers]: each speed lever against the code without it, the variants' calls
  alternating in one process: the training step in fp32/bf16 x contiguous/channels-last, the
  trunk eager against torch.compile, and faster-coco-eval against pycocotools' COCOeval (when
  faster-coco-eval is installed).

Two modes instead of the sections: ``--parity`` (lab/parity.py, reports/parity.json) and
``--profile`` (lab/profile.py, reports/profile_*.json).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision

from detector.data.layout import IMAGE_SUFFIXES
from detector.data.preflight import check_images
from detector.engine import build_dataset, build_model, evaluate_coco, evaluate_voc
from detector.engine import config as config_lib
from detector.engine.build import ensure_generated
from detector.engine.config import Config
from detector.engine.io import atomic_write_json
from detector.engine.outputs import check_new_file, default_location
from detector.engine.trainers import resolve_precision
from detector.lab.parity import format_parity, parity
from detector.lab.profile import format_profile, profile_evaluation, profile_training, time_trunk
from detector.lab.timing import cycling_steps, fresh_model, median, median_time, preset_batches, random_boxes
from detector.model import AnchorGenerator, FasterRCNN

ASSIGNMENT_IMAGE_SIZE = (800, 1333)  # (H, W): COCO's training size
ASSIGNMENT_PROPOSALS = 2000  # torchvision's post-NMS proposals per image in training
ASSIGNMENT_MAX_GT = 20  # ground-truth boxes per image drawn from 1..20 (COCO averages ~7)
# name -> (height, width, batch size): photos as the real-photo preset sizes them, and COCO's size.
REAL_SIZES = {"bccd-like": (320, 427, 8), "coco-like": (800, 1333, 2)}


def benchmark_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``scripts/benchmark.py``: the chosen sections (or a mode), a table on the terminal and the
    JSON written to ``args.out`` (a new file unless ``--overwrite``)."""
    cfg = config_lib.from_args(args)
    out = check_new_file(args.out or default_location("benchmark", ".json"), overwrite=args.overwrite)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise config_lib.ConfigError("--device cuda: no CUDA device is visible")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # Here, before any case: a case's process is a pool's daemonic worker, which cannot start the
    # generator's own process pool.
    ensure_generated(cfg.data)
    device = args.device
    cfg_dict = config_lib.to_dict(cfg)
    result: dict = {"machine": {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
                                "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                                "torch": torch.__version__}}
    if args.parity:
        result["parity"] = parity(cfg, Path(args.runs_dir), args.seeds)
        print("\n" + format_parity(result["parity"]), flush=True)
    elif args.profile:
        # In this process: it starts DataLoader workers, which a pool's daemonic process cannot.
        result["profile"] = profile_preset(cfg_dict, args.steps, device, args.image_size and tuple(args.image_size))
        print(format_profile(result["profile"]), flush=True)
    else:
        for name in args.sections:
            section = SECTIONS[name]
            result[section.key] = section.run(args, cfg_dict, device)
            print("\n" + section.format(result[section.key]), flush=True)
    atomic_write_json(out, result)
    print(json.dumps({"written": str(out)}))
    return result


# ----------------------------------------------------------------------------- sections


def run_assignment(args: argparse.Namespace, cfg_dict: dict[str, Any], device: str) -> list[dict[str, Any]]:
    rows = []
    for batch_size in args.batch_sizes:
        ours = run_isolated(ours_assignment, batch_size, args.repeats, cfg_dict, ASSIGNMENT_IMAGE_SIZE, device)
        reference = run_isolated(torchvision_assignment, batch_size, args.repeats, cfg_dict, ASSIGNMENT_IMAGE_SIZE,
                                 device)
        rows.append({"batch_size": batch_size, "anchors_per_image": ours["anchors_per_image"],
                     "ours_s": ours["time_s"], "torchvision_s": reference["time_s"],
                     "speedup": reference["time_s"] / ours["time_s"],
                     "ours_peak_mb": ours["peak_memory_mb"], "torchvision_peak_mb": reference["peak_memory_mb"]})
    return rows


def format_assignment(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'assignment':<12}{'batch':>6}{'anchors/img':>12}{'ours (ms)':>11}{'torchvision (ms)':>18}"
             f"{'speed-up':>10}{'ours MB':>9}{'tv MB':>8}"]
    lines += [f"{'':<12}{r['batch_size']:>6}{r['anchors_per_image']:>12}{r['ours_s'] * 1e3:>11.1f}"
              f"{r['torchvision_s'] * 1e3:>18.1f}{r['speedup']:>9.1f}x{r['ours_peak_mb']:>9.0f}"
              f"{r['torchvision_peak_mb']:>8.0f}" for r in rows]
    return "\n".join(lines)


def run_train_step(args: argparse.Namespace, cfg_dict: dict[str, Any], device: str) -> dict[str, Any]:
    ours = run_isolated(train_step, "ours", cfg_dict, args.steps, None, device)
    reference = run_isolated(train_step, "torchvision", cfg_dict, args.steps, None, device)
    return {"ours": ours, "torchvision": reference, "speedup": ours["images_per_s"] / reference["images_per_s"]}


def format_train_step(result: dict[str, Any]) -> str:
    ours, reference = result["ours"], result["torchvision"]
    return (f"{'train-step':<12}{'batch':>6}{'ours img/s':>12}{'torchvision img/s':>19}{'speed-up':>10}"
            f"{'ours MB':>9}{'tv MB':>8}\n"
            f"{'':<12}{ours['batch_size']:>6}{ours['images_per_s']:>12.1f}{reference['images_per_s']:>19.1f}"
            f"{result['speedup']:>9.2f}x{ours['peak_memory_mb']:>9.0f}{reference['peak_memory_mb']:>8.0f}")


# case -> (implementation, model.roi_align_kernel) of the real-sizes section's training steps
REAL_SIZE_CASES = {"ours, separable RoIAlign": ("ours", "separable"), "ours, torchvision RoIAlign": ("ours", "torchvision"),
                   "torchvision FasterRCNN": ("torchvision", "auto")}


def run_real_sizes(args: argparse.Namespace, cfg_dict: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """At each of REAL_SIZES, with the real-photo preset's model: the training step of ours (with
    each RoIAlign kernel) and of torchvision's detector on the same random images and boxes, and
    both stages' target assignment."""
    preset = config_lib.to_dict(config_lib.load(args.real_config, args.set))
    rows = []
    for name, (height, width, batch_size) in REAL_SIZES.items():
        sized = {**preset, "data": {**preset["data"], "batch_size": batch_size}}
        image_size = (height, width)
        steps = {case: run_isolated(train_step, implementation, _with_kernel(sized, kernel), args.steps, image_size,
                                    device)
                 for case, (implementation, kernel) in REAL_SIZE_CASES.items()}
        assignment = {"ours": run_isolated(ours_assignment, batch_size, args.repeats, sized, image_size, device),
                      "torchvision": run_isolated(torchvision_assignment, batch_size, args.repeats, sized, image_size,
                                                  device)}
        reference = steps["torchvision FasterRCNN"]
        rows.append({"name": name, "image_size": [height, width], "batch_size": batch_size, "train_step": steps,
                     "assignment": assignment,
                     "train_step_speedup": {case: r["images_per_s"] / reference["images_per_s"] for case, r in steps.items()},
                     "assignment_speedup": assignment["torchvision"]["time_s"] / assignment["ours"]["time_s"]})
    return rows


def _with_kernel(cfg_dict: dict[str, Any], kernel: str) -> dict[str, Any]:
    return {**cfg_dict, "model": {**cfg_dict["model"], "roi_align_kernel": kernel}}


def format_real_sizes(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'real sizes':<12}{'case':<34}{'img/s':>8}{'ms':>9}{'vs tv':>7}{'MB':>7}"]
    for row in rows:
        for case, r in row["train_step"].items():
            lines.append(f"{row['name']:<12}{case:<34}{r['images_per_s']:>8.2f}{r['step_s'] * 1e3:>9.0f}"
                         f"{row['train_step_speedup'][case]:>6.2f}x{r['peak_memory_mb']:>7.0f}")
        for case, r in row["assignment"].items():
            speedup = row["assignment_speedup"] if case == "ours" else 1.0
            lines.append(f"{row['name']:<12}{'assignment, ' + case:<34}{'':>8}{r['time_s'] * 1e3:>9.1f}{speedup:>6.2f}x"
                         f"{r['peak_memory_mb']:>7.0f}")
    return "\n".join(lines)


def run_evaluation(args: argparse.Namespace, cfg_dict: dict[str, Any], device: str) -> dict[str, Any]:
    return run_isolated(evaluation, cfg_dict, device)


def format_evaluation(timing: dict[str, Any]) -> str:
    return (f"evaluation: {timing['images']} images, {timing['detections']} detections: "
            f"COCOeval {timing['cocoeval_s']:.2f} s, VOC rule {timing['voc_rule_s']:.2f} s "
            f"(peak {timing['peak_memory_mb']:.0f} MB)")


def run_gradient_stats(args: argparse.Namespace, cfg_dict: dict[str, Any], device: str) -> dict[str, Any]:
    return run_isolated(gradient_stats, cfg_dict, args.steps, device)


def format_gradient_stats(g: dict[str, Any]) -> str:
    return (f"gradient-stats: step {g['step_s'] * 1e3:.1f} ms, statistics {g['statistics_s'] * 1e3:.2f} ms: "
            f"{g['overhead_when_logged']:.2%} of a logged step, {g['overhead_averaged']:.3%} averaged")


def run_levers(args: argparse.Namespace, cfg_dict: dict[str, Any], device: str) -> dict[str, Any]:
    return run_isolated(levers, cfg_dict, args.steps, args.repeats, device)


def format_levers(lever_times: dict[str, Any]) -> str:
    lines = [f"levers: training step, batch {lever_times['batch_size']}: " + ", ".join(
        f"{name} {seconds * 1e3:.1f} ms" for name, seconds in lever_times["train_step_s"].items())]
    c = lever_times["compile_trunk"]
    lines.append(f"levers: trunk forward+backward {c['batch_shape']} ({c['precision']}): eager {c['eager_s'] * 1e3:.1f} "
                 f"ms, torch.compile {c['compiled_s'] * 1e3:.1f} ms ({c['speedup']:.2f}x; first call "
                 f"{c['first_call_s']:.1f} s)")
    if "faster_coco_eval" in lever_times:
        f = lever_times["faster_coco_eval"]
        lines.append(f"levers: COCOeval of {f['detections']} detections: pycocotools {f['pycocotools_s']:.2f} s, "
                     f"faster-coco-eval {f['faster_coco_eval_s']:.2f} s ({f['speedup']:.1f}x; largest difference in "
                     f"the 12 stats {f['max_abs_stats_difference']:.1e})")
    return "\n".join(lines)


PREFLIGHT_PHOTOS = 1000
PREFLIGHT_PHOTO_SIZE = (640, 480)  # (W, H): a phone photo scaled down, as small-dataset exports hold


def run_preflight(args: argparse.Namespace, cfg_dict: dict[str, Any], device: str) -> list[dict[str, Any]]:
    # In this process: the pre-flight's threads run in the calling process, as in a training command.
    with tempfile.TemporaryDirectory() as scratch:
        photos = Path(scratch) / "photos"
        photos.mkdir()
        generator = torch.Generator().manual_seed(0)
        for index in range(PREFLIGHT_PHOTOS):
            # Smooth content (a coarse grid, upsampled), so JPEG sizes are a photo's, not noise's.
            coarse = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8, generator=generator)
            image = torch.nn.functional.interpolate(coarse[None].float(), size=PREFLIGHT_PHOTO_SIZE[::-1],
                                                    mode="bilinear")[0].to(torch.uint8)
            torchvision.io.write_jpeg(image, str(photos / f"{index:04d}.jpg"), quality=90)
        folders = [("generated 640x480 JPEGs", photos)] + (
            [(str(args.preflight_root), Path(args.preflight_root))] if args.preflight_root else [])
        rows = []
        for name, folder in folders:
            paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            with _environment("DETECTOR_CACHE", str(Path(scratch) / f"cache-{len(rows)}")):  # an empty cache
                cold, warm = (median_time(lambda: check_images(paths, name, skip_bad_images=False), "cpu", repeats=1,
                                          warmup=0) for _ in range(2))
            rows.append({"images": name, "count": len(paths), "cold_s": cold, "cached_s": warm})
    return rows


@contextlib.contextmanager
def _environment(name: str, value: str):
    """The environment variable ``name`` set to ``value`` inside, as it was outside."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name)
        else:
            os.environ[name] = previous


def format_preflight(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"preflight: {r['count']} images ({r['images']}): {r['cold_s']:.2f} s, cached {r['cached_s']:.3f} s"
                     for r in rows)


@dataclass(frozen=True)
class Section:
    key: str  # of the result in the JSON
    run: Callable[[argparse.Namespace, dict[str, Any], str], Any]
    format: Callable[[Any], str]


SECTIONS = {
    "assignment": Section("assignment", run_assignment, format_assignment),
    "train-step": Section("train_step", run_train_step, format_train_step),
    "real-sizes": Section("real_sizes", run_real_sizes, format_real_sizes),
    "evaluation": Section("evaluation", run_evaluation, format_evaluation),
    "gradient-stats": Section("gradient_stats", run_gradient_stats, format_gradient_stats),
    "preflight": Section("preflight", run_preflight, format_preflight),
    "levers": Section("levers", run_levers, format_levers),
}


def profile_preset(cfg_dict: dict[str, Any], steps: int, device: str,
                   image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Where the time of a training step and of one evaluation of the preset goes; with
    ``image_size``, a step on random images of that size (and no evaluation)."""
    cfg = config_lib.from_dict(cfg_dict)
    resolve_precision(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    result = {"train": profile_training(cfg, steps, device, image_size), "precision": cfg.train.precision}
    if image_size is None:
        result["evaluation"] = profile_evaluation(cfg, device)
    return result


# ----------------------------------------------------------------------------- isolated cases


def run_isolated(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``function(*args)`` in a fresh spawned process; its result plus ``peak_memory_mb``."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measured, (function, *args))


def _measured(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    device = args[-1]
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        result = function(*args)
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return result
    before = _resident_mb()
    result = function(*args)
    # ru_maxrss: the process's peak resident set in KiB (Linux)
    result["peak_memory_mb"] = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)
    return result


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def assignment_inputs(batch_size: int, device: str, seed: int = 0, cfg: Config | None = None,
                      image_size: tuple[int, int] = ASSIGNMENT_IMAGE_SIZE) -> dict[str, Any]:
    """Anchors of ``cfg``'s stride-8 map on (H, W) images, random ground truth and proposals."""
    generator = torch.Generator().manual_seed(seed)
    cfg = cfg or Config()
    anchor_generator = AnchorGenerator(sizes=cfg.model.anchor_sizes, aspect_ratios=cfg.model.aspect_ratios, stride=8,
                                       offset=cfg.model.anchor_offset)
    height, width = image_size
    anchors = anchor_generator.grid_anchors(-(-height // 8), -(-width // 8), torch.device(device), torch.float32)
    counts = torch.randint(1, ASSIGNMENT_MAX_GT + 1, (batch_size,), generator=generator).tolist()
    targets = [{"boxes": random_boxes(c, 16, min(height, width) / 2, width, height, generator).to(device),
                "labels": torch.randint(1, 81, (c,), generator=generator).to(device)} for c in counts]
    proposals = [random_boxes(ASSIGNMENT_PROPOSALS, 8, min(500, min(height, width)), width, height, generator).to(device)
                 for _ in range(batch_size)]
    return {"anchors": anchors, "targets": targets, "proposals": proposals}


def ours_assignment(batch_size: int, repeats: int, cfg_dict: dict[str, Any], image_size: tuple[int, int],
                    device: str) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = config_lib.from_dict(cfg_dict)
    inputs = assignment_inputs(batch_size, device, cfg=cfg, image_size=image_size)
    model = build_model(cfg, num_classes=80).to(device)
    rpn, heads = model.rpn, model.roi_heads
    height, width = image_size
    feature_size = (-(-height // 8), -(-width // 8))
    gt_boxes, gt_labels, gt_valid = FasterRCNN.pad_targets(inputs["targets"], torch.device(device))
    proposals = torch.stack(inputs["proposals"])  # (N, P, 4)
    proposal_valid = torch.ones(proposals.shape[:2], dtype=torch.bool, device=device)

    def call() -> None:
        # RPN, as RegionProposalNetwork.losses does it (regression targets of the positives)
        sample, positive_anchors, matched, _ = rpn.sample_anchors(feature_size, gt_boxes, gt_valid)
        rpn.coder.encode(matched, positive_anchors)
        # RoI heads, as RoIHeads.forward does it in training
        rois, _, roi_matched, _ = heads.sample_rois(proposals, proposal_valid, gt_boxes, gt_labels, gt_valid)
        heads.coder.encode(roi_matched, rois)

    return {"time_s": median_time(call, device, repeats, warmup=1), "anchors_per_image": inputs["anchors"].shape[0]}


def torchvision_assignment(batch_size: int, repeats: int, cfg_dict: dict[str, Any], image_size: tuple[int, int],
                           device: str) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = config_lib.from_dict(cfg_dict)
    inputs = assignment_inputs(batch_size, device, cfg=cfg, image_size=image_size)
    cfg.model.implementation = "torchvision"
    detector = build_model(cfg, num_classes=80).detector.to(device)
    rpn, heads = detector.rpn, detector.roi_heads
    anchors = [inputs["anchors"]] * batch_size
    targets = inputs["targets"]

    def call() -> None:
        # RPN, as RegionProposalNetwork.forward and compute_loss do it
        labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
        rpn.box_coder.encode(matched_gt_boxes, anchors)
        rpn.fg_bg_sampler(labels)
        # RoI heads: ground truth added, Matcher, sampler, BoxCoder
        heads.select_training_samples([p.clone() for p in inputs["proposals"]], targets)

    return {"time_s": median_time(call, device, repeats, warmup=1), "anchors_per_image": inputs["anchors"].shape[0]}


def train_step(implementation: str, cfg_dict: dict[str, Any], steps: int, image_size: tuple[int, int] | None,
               device: str) -> dict[str, Any]:
    """Median time of a full training step (forward, backward, AdamW) on the preset's batches,
    or on random (H, W) images (``image_size``)."""
    cfg = config_lib.from_dict(cfg_dict)
    cfg.model.implementation = implementation
    resolve_precision(cfg)  # as training resolves it: both detectors run at the same precision
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    batches, num_classes = preset_batches(cfg, steps, device, image_size)
    model, optimizer, _ = fresh_model(cfg, num_classes, device)
    step_s = median_time(cycling_steps(batches, model, optimizer, device, cfg.train.precision), device,
                         repeats=steps - 2, warmup=2)
    size = cfg.data.batch_size
    return {"step_s": step_s, "images_per_s": size / step_s, "batch_size": size,
            "image_size": list(batches[0][0][0].shape[-2:]), "precision": cfg.train.precision}


def evaluation_detections(dataset: Any) -> list[dict[str, Any]]:
    """The validation ground truth, jittered, with random scores and 50 false positives per
    image (about the 100 detections per image a trained model keeps), COCO results format."""
    generator = torch.Generator().manual_seed(0)
    results = []
    category_ids = sorted(dataset.coco.getCatIds())
    for image_id in dataset.image_ids:
        info = dataset.coco.imgs[image_id]
        for ann in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[image_id])):
            x, y, w, h = ann["bbox"]
            jitter = (torch.randn(4, generator=generator) * 0.05 * torch.tensor([w, h, w, h])).tolist()
            results.append({"image_id": image_id, "category_id": ann["category_id"],
                            "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                            "score": float(torch.rand((), generator=generator))})
        for _ in range(50):
            w, h = (torch.rand(2, generator=generator) * 0.4 * torch.tensor([info["width"], info["height"]]) + 4).tolist()
            x, y = (torch.rand(2, generator=generator) * torch.tensor([info["width"] - w, info["height"] - h])).tolist()
            results.append({"image_id": image_id, "category_id": category_ids[int(torch.randint(len(category_ids), (),
                                                                                               generator=generator))],
                            "bbox": [x, y, w, h], "score": float(torch.rand((), generator=generator)) * 0.5})
    return results


def evaluation(cfg_dict: dict[str, Any], device: str) -> dict[str, Any]:
    """COCOeval and the VOC rule timed on the same detections (``evaluation_detections``)."""
    cfg = config_lib.from_dict(cfg_dict)
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    results = evaluation_detections(dataset)
    timings = {}
    start = time.perf_counter()
    coco = evaluate_coco(dataset.coco, results, dataset.class_names, dataset.label_to_category_id,
                         image_ids=dataset.image_ids)
    timings["cocoeval_s"] = time.perf_counter() - start
    start = time.perf_counter()
    voc = evaluate_voc(dataset.coco, results, image_ids=dataset.image_ids)
    timings["voc_rule_s"] = time.perf_counter() - start
    return {**timings, "images": len(dataset.image_ids), "detections": len(results),
            "AP50_cocoeval": coco["stats"]["AP50"], "AP50_voc_rule": voc["voc_ap50"]}


def levers(cfg_dict: dict[str, Any], steps: int, repeats: int, device: str) -> dict[str, Any]:
    """The speed levers, each against the code without it, in one process with the calls of
    the variants alternating (so a busy machine slows them alike):

    - the training step on the preset's batches at each of fp32 / bf16 autocast x contiguous /
      channels-last trunk (the two levers taken);
    - ``torch.compile`` of the trunk: its forward+backward on the preset's batch shape, eager
      against compiled (not taken);
    - faster-coco-eval's COCOeval against pycocotools' on ``evaluation_detections``, with the
      largest difference in the 12 summary numbers (not taken; skipped when faster-coco-eval
      is not installed)."""
    base = config_lib.from_dict(cfg_dict)
    variants = {}
    for precision in ("32-true", "bf16-mixed"):
        for channels_last in (False, True):
            cfg = copy.deepcopy(base)
            cfg.train.precision, cfg.train.channels_last = precision, channels_last
            resolve_precision(cfg)
            batches, num_classes = preset_batches(cfg, steps, device)
            model, optimizer, _ = fresh_model(cfg, num_classes, device)
            name = f"{cfg.train.precision}, {'channels-last' if channels_last else 'contiguous'}"
            variants[name] = cycling_steps(batches, model, optimizer, device, cfg.train.precision)
    step_times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(steps):
        for name, call in variants.items():
            step_times[name].append(median_time(call, device, repeats=1, warmup=0))
    step_s = {name: median(times[2:]) for name, times in step_times.items()}
    result: dict[str, Any] = {"train_step_s": step_s, "batch_size": base.data.batch_size}

    cfg = copy.deepcopy(base)
    resolve_precision(cfg)
    model, _, _ = fresh_model(cfg, 3, device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    # (N, 3, H, W): the shapes images as stored, or a 4:3 photo resized to data.min_size
    height = cfg.data.min_size or cfg.data.shapes_image_size
    width = height * 4 // 3 if cfg.data.min_size else height
    batch = torch.randn(cfg.data.batch_size, 3, height, width, device=device).contiguous(memory_format=memory_format)

    compiled_trunk = torch.compile(model.backbone)
    compile_s = time_trunk(compiled_trunk, batch, cfg.train.precision, device)
    eager_times, compiled_times = [], []
    for _ in range(2 * repeats + 2):
        eager_times.append(time_trunk(model.backbone, batch, cfg.train.precision, device))
        compiled_times.append(time_trunk(compiled_trunk, batch, cfg.train.precision, device))
    eager_s, compiled_s = median(eager_times[2:]), median(compiled_times[2:])
    result["compile_trunk"] = {
        "precision": cfg.train.precision, "batch_shape": list(batch.shape), "first_call_s": compile_s,
        "eager_s": eager_s, "compiled_s": compiled_s, "speedup": eager_s / compiled_s}

    try:
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        return result
    from pycocotools.cocoeval import COCOeval

    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    results = evaluation_detections(dataset)
    fast_gt = FastCOCO(copy.deepcopy(dataset.coco.dataset))
    stats = {}

    def run(name: str, evaluator: Any, ground_truth: Any) -> Callable[[], None]:
        def call() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval = evaluator(ground_truth, ground_truth.loadRes([dict(r) for r in results]), "bbox")
                coco_eval.params.imgIds = sorted(dataset.image_ids)
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            stats[name] = [float(v) for v in coco_eval.stats[:12]]
        return call

    reference_s = median_time(run("pycocotools", COCOeval, dataset.coco), device, repeats=repeats, warmup=1)
    fast_s = median_time(run("faster_coco_eval", COCOeval_faster, fast_gt), device, repeats=repeats, warmup=1)
    result["faster_coco_eval"] = {
        "images": len(dataset.image_ids), "detections": len(results), "pycocotools_s": reference_s,
        "faster_coco_eval_s": fast_s, "speedup": reference_s / fast_s,
        "max_abs_stats_difference": max(abs(a - b) for a, b in zip(stats["pycocotools"], stats["faster_coco_eval"]))}
    return result


def gradient_stats(cfg_dict: dict[str, Any], steps: int, device: str) -> dict[str, Any]:
    """Median training-step time, and the time of the gradient statistics of both heads."""
    cfg = config_lib.from_dict(cfg_dict)
    resolve_precision(cfg)
    batches, num_classes = preset_batches(cfg, steps, device)
    model, optimizer, probes = fresh_model(cfg, num_classes, device)
    step = cycling_steps(batches, model, optimizer, device, cfg.train.precision)
    step_times, stats_times = [], []
    for _ in batches:  # each step's statistics right after it, as a logging step computes them
        step_times.append(median_time(step, device, repeats=1, warmup=0))
        stats_times.append(median_time(lambda: [probe.statistics(0) for probe in probes], device, repeats=1, warmup=0))
    step_s, stats_s = median(step_times[2:]), median(stats_times[2:])
    every = cfg.train.log_every_n_steps
    return {"step_s": step_s, "statistics_s": stats_s, "log_every_n_steps": every,
            "overhead_when_logged": stats_s / step_s, "overhead_averaged": stats_s / step_s / every}
