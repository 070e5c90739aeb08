"""Predict with a trained checkpoint on image files: COCO-format detections and drawn images.

Writes to the output folder:
  detections.json   COCO results format ([{image_id, category_id, bbox: [x, y, w, h], score}]),
                    boxes in the pixels of the files, every detection the post-processing keeps
  image_info.json   the COCO ``images`` (id, file_name, width, height, path) and ``categories``
                    (id, name) the detections refer to, as COCO's image_info files for unlabelled
                    sets: ``COCO("image_info.json").loadRes("detections.json")`` works, and a
                    ground truth of the same files matches by file_name; files left out with
                    their errors under ``skipped``
  images/           each file with its detections scoring at least the drawing threshold

Images go through the same resize as validation images (``build_transform``) and the
detections back to the files' pixels through the same mapping (``DetectorModule.detect``), so
on a validation split they equal ``evaluate.py``'s.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg, encode_png
from tqdm import tqdm

from detector.data import ImageFiles, collate_images, find_images, load_image, relative_names
from detector.engine.build import build_transform
from detector.engine.config import Config
from detector.engine.drawing import draw_detections
from detector.engine.evaluation import detections_to_coco_results
from detector.engine.inference import (
    POSTPROCESSING_OPTIONS,
    RUNTIME_OPTIONS,
    inference_config,
    load_module,
    output_identity,
    postprocessing_record,
)
from detector.engine.io import atomic_path, atomic_write_json
from detector.engine.outputs import check_folder, claim_folder, default_location
from detector.engine.rundir import run_dir_of
from detector.engine.trainers import build_evaluator

log = logging.getLogger(__name__)

# Drawn images keep a lossless file lossless; every other format is drawn as JPEG. zlib's
# fastest level: level 6 (the default) takes 8x as long for a 512 px image and saves 15%.
JPEG_QUALITY = 90
PNG_COMPRESSION = 1


def predict_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``scripts/predict.py``: the checkpoint's configuration with the post-processing, size and
    device options of the command line on top; any other option is refused, naming it."""
    checkpoint, cfg = inference_config(args, POSTPROCESSING_OPTIONS + RUNTIME_OPTIONS, "predict.py")
    paths = find_images(args.inputs)
    run_name = run.name if (run := run_dir_of(checkpoint)) else checkpoint.stem
    out = Path(args.out) if args.out else default_location(f"predict-{run_name}")
    return predict(checkpoint, cfg, paths, out, draw_thresh=args.draw_thresh, draw_size=args.draw_size,
                   overwrite=args.overwrite)


def predict(checkpoint: Path, cfg: Config, paths: list[Path], out_dir: Path, *, draw_thresh: float,
            draw_size: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Detections of the checkpoint on ``paths`` (image ids 1.. in this order) written to
    ``out_dir``; returns the summary (images, skipped, detections, images/s). ``out_dir`` must be
    new, empty, or hold these same predictions; other ones are replaced only with ``overwrite``."""
    inputs = hashlib.sha256("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()
    identity = output_identity(checkpoint, cfg, inputs_sha256=inputs, draw_thresh=draw_thresh, draw_size=draw_size)
    check_folder(out_dir, "prediction", identity, overwrite=overwrite)  # before the work; claimed once it is done
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    module = load_module(checkpoint, cfg)
    dataset = ImageFiles(paths, transform=build_transform(cfg.data, train=False),
                         skip_bad_images=cfg.data.skip_bad_images)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                        collate_fn=collate_images)
    trainer = build_evaluator(cfg)
    started = time.perf_counter()
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    predict_s = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {}
    names = relative_names(paths)
    predicted = [entry for entry in module.last_predictions if "error" not in entry]
    skipped = [{"file_name": names[e["image_id"] - 1], "path": e["path"], "error": e["error"]}
               for e in module.last_predictions if "error" in e]
    results = detections_to_coco_results(predicted, module.label_to_category_id)
    drawn = drawn_names(names, [e["image_id"] for e in predicted])
    folder = claim_folder(out_dir, "prediction", identity, overwrite=overwrite)
    atomic_write_json(out_dir / "detections.json", results)
    atomic_write_json(out_dir / "image_info.json", {
        "images": [{"id": e["image_id"], "file_name": names[e["image_id"] - 1], "width": e["orig_size"][1],
                    "height": e["orig_size"][0], "path": e["path"], "drawn": f"images/{drawn[e['image_id']]}"}
                   for e in predicted],
        "categories": [{"id": module.label_to_category_id[label], "name": name}
                       for label, name in enumerate(module.class_names, start=1)],
        "checkpoint": str(checkpoint),
        "postprocessing": postprocessing_record(cfg),
        "skipped": skipped,
    })
    for entry in skipped:
        log.warning("left out %s", entry["error"])
    write_drawn_images(predicted, drawn, module.class_names, out_dir / "images", draw_thresh, draw_size,
                       progress=cfg.train.progress)
    folder.finish(["detections.json", "image_info.json", "images"])
    summary = {"images": len(predicted), "skipped": len(skipped), "detections": len(results),
               "images_per_s": round(len(predicted) / predict_s, 1), "out": str(out_dir)}
    print(f"{summary['images']} images ({summary['skipped']} skipped), {summary['detections']} detections, "
          f"{summary['images_per_s']} images/s; results in {out_dir}")
    return summary


def drawn_names(names: list[str], image_ids: list[int]) -> dict[int, str]:
    """image id -> the drawn file's name, flat in images/: the file's own name (a PNG stays PNG,
    anything else becomes JPEG), ``-2``, ``-3`` ... added where two inputs share a name."""
    taken: set[str] = set()
    drawn = {}
    for image_id in image_ids:
        name = Path(names[image_id - 1]).name
        stem, suffix = Path(name).stem, Path(name).suffix.lower()
        suffix = suffix if suffix in (".png", ".jpg", ".jpeg") else ".jpg"
        candidate, number = f"{stem}{suffix}", 2
        while candidate.lower() in taken:
            candidate, number = f"{stem}-{number}{suffix}", number + 1
        taken.add(candidate.lower())
        drawn[image_id] = candidate
    return drawn


def write_drawn_images(predicted: list[dict[str, Any]], drawn: dict[int, str], class_names: list[str], folder: Path,
                       draw_thresh: float, draw_size: int | None, *, progress: bool) -> None:
    """Each image with its detections scoring at least ``draw_thresh``, at its own size (or its
    shorter side ``draw_size``), as ``drawn[image_id]`` in ``folder``."""
    for entry in tqdm(predicted, desc="drawing", unit="image", disable=not progress or None):
        keep = entry["scores"] >= draw_thresh
        image = draw_detections(load_image(entry["path"]), entry["boxes"][keep], entry["labels"][keep],
                                entry["scores"][keep], class_names, shorter_side=draw_size)
        name = drawn[entry["image_id"]]
        data = encode_png(image, compression_level=PNG_COMPRESSION) if name.endswith(".png") else \
            encode_jpeg(image, quality=JPEG_QUALITY)
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data.numpy().tobytes())
