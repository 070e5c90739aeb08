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
    run_name = checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else checkpoint.stem
    out = Path(args.out) if args.out else default_location(f"predict-{run_name}")
    return predict(checkpoint, cfg, paths, out, draw_thresh=args.draw_thresh, overwrite=args.overwrite)


def predict(checkpoint: Path, cfg: Config, paths: list[Path], out_dir: Path, *, draw_thresh: float,
            overwrite: bool = False) -> dict[str, Any]:
    """Detections of the checkpoint on ``paths`` (image ids 1.. in this order) written to
    ``out_dir``; returns the summary (images, skipped, detections, images/s). ``out_dir`` must be
    new, empty, or hold these same predictions; other ones are replaced only with ``overwrite``."""
    inputs = hashlib.sha256("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()
    identity = output_identity(checkpoint, cfg, inputs_sha256=inputs, draw_thresh=draw_thresh)
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
    folder = claim_folder(out_dir, "prediction", identity, overwrite=overwrite)
    atomic_write_json(out_dir / "detections.json", results)
    atomic_write_json(out_dir / "image_info.json", {
        "images": [{"id": e["image_id"], "file_name": names[e["image_id"] - 1], "width": e["orig_size"][1],
                    "height": e["orig_size"][0], "path": e["path"]} for e in predicted],
        "categories": [{"id": module.label_to_category_id[label], "name": name}
                       for label, name in enumerate(module.class_names, start=1)],
        "checkpoint": str(checkpoint),
        "postprocessing": postprocessing_record(cfg),
        "skipped": skipped,
    })
    for entry in skipped:
        log.warning("left out %s", entry["error"])
    write_drawn_images(predicted, names, module.class_names, out_dir / "images", draw_thresh, progress=cfg.train.progress)
    folder.finish(["detections.json", "image_info.json", "images"])
    summary = {"images": len(predicted), "skipped": len(skipped), "detections": len(results),
               "images_per_s": round(len(predicted) / predict_s, 1), "out": str(out_dir)}
    print(f"{summary['images']} images ({summary['skipped']} skipped), {summary['detections']} detections, "
          f"{summary['images_per_s']} images/s; results in {out_dir}")
    return summary


def write_drawn_images(predicted: list[dict[str, Any]], names: list[str], class_names: list[str], folder: Path,
                       draw_thresh: float, *, progress: bool) -> None:
    """Each image with its detections scoring at least ``draw_thresh``, under its file name in
    ``folder`` (PNG stays PNG, everything else becomes JPEG)."""
    for entry in tqdm(predicted, desc="drawing", unit="image", disable=not progress or None):
        keep = entry["scores"] >= draw_thresh
        drawn = draw_detections(load_image(entry["path"]), entry["boxes"][keep], entry["labels"][keep],
                                entry["scores"][keep], class_names)
        name = Path(names[entry["image_id"] - 1])
        if name.suffix.lower() == ".png":
            data = encode_png(drawn, compression_level=PNG_COMPRESSION)
        else:
            data = encode_jpeg(drawn, quality=JPEG_QUALITY)
            name = name if name.suffix.lower() in (".jpg", ".jpeg") else name.with_name(name.name + ".jpg")
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data.numpy().tobytes())
