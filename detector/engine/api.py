"""A trained detector from Python, and the detector exported for runtimes without this project.

    from detector import load_detector
    det = load_detector("runs/x")          # a run directory or a .ckpt
    found = det(["a.jpg", "b.png"])        # [{"boxes", "scores", "labels", "names"}, ...]

Images go the way of ``predict.py``: read as validation images are read, resized as the
checkpoint's validation images, detected by ``DetectorModule.detect`` in batches of
``data.batch_size`` (the checkpoint's, or given), and mapped back to the files' pixels; with
the same post-processing and batch size the detections equal predict.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from detector.data import ImageFiles, collate_images
from detector.engine import config as config_lib
from detector.engine.build import build_transform
from detector.engine.inference import checkpoint_config, load_module
from detector.engine.outputs import check_new_file
from detector.engine.rundir import find_checkpoint, run_dir_of
from detector.engine.trainers import autocast, resolve_precision


class Detector:
    """A checkpoint's detector on a device: call it with image files (paths) or uint8 (3, H, W)
    tensors; returns per image ``boxes`` (D, 4) xyxy in the image's own pixels, ``scores`` (D,),
    ``labels`` (D,) 1..K and ``names`` (D,) of the classes."""

    def __init__(self, checkpoint: Path, *, device: str = "cpu", batch_size: int | None = None,
                 precision: str | None = None, options: dict[str, Any] | None = None):
        overrides = [f"train.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}"]
        overrides += [f"train.precision={precision}"] if precision else []
        overrides += [f"{key}={value}" for key, value in (options or {}).items()]
        self.cfg = config_lib.load(base=config_lib.to_dict(checkpoint_config(checkpoint)), overrides=overrides)
        resolve_precision(self.cfg)
        self.batch_size = batch_size or self.cfg.data.batch_size
        self.device = torch.device(device)
        self.module = load_module(checkpoint, self.cfg).to(self.device).eval()
        self.class_names = self.module.class_names
        self.transform = build_transform(self.cfg.data, train=False)

    @torch.no_grad()
    def __call__(self, images: Sequence[str | Path | Tensor]) -> list[dict[str, Any]]:
        found = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            if all(isinstance(item, Tensor) for item in chunk):
                resized = [self.transform(image, torch.zeros(0, 4), None) for image in chunk]
                batch = [image for image, _, _ in resized]
                infos = [{"image_id": i, "orig_size": tuple(image.shape[-2:])} for i, image in enumerate(chunk)]
            else:
                files = ImageFiles([Path(item) for item in chunk], transform=self.transform)
                batch, infos, _ = collate_images([files[i] for i in range(len(files))])
            with autocast(self.device.type, self.cfg.train.precision):
                detections = self.module.detect([image.to(self.device) for image in batch], infos)
            for detection in detections:
                labels = detection["labels"]
                found.append({"boxes": detection["boxes"], "scores": detection["scores"].float(), "labels": labels,
                              "names": [self.class_names[int(label) - 1] for label in labels]})
        return found


def load_detector(path: str | Path, *, device: str = "cpu", batch_size: int | None = None, precision: str | None = None,
                  score_thresh: float | None = None, nms_thresh: float | None = None,
                  max_detections: int | None = None) -> Detector:
    """The detector of a run directory (its best checkpoint, else its last) or a .ckpt file,
    with predict.py's options (None: the checkpoint's own; ``precision`` as train.precision)."""
    chosen = {"model.box_score_thresh": score_thresh, "model.box_nms_thresh": nms_thresh,
              "model.detections_per_image": max_detections}
    return Detector(find_checkpoint(path), device=device, batch_size=batch_size, precision=precision,
                    options={key: value for key, value in chosen.items() if value is not None})


class ExportedDetector(nn.Module):
    """The model as exported (engine/export): one uint8 (3, H, W) image of the exported size in,
    its detections out, as (boxes (D, 4) xyxy in its pixels, scores (D,), labels (D,) 1..K)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        (detection,) = self.model([image])
        return detection["boxes"], detection["scores"], detection["labels"]


EXPORT_FORMATS = ("torchscript", "onnx")


def export_from_args(args) -> Path:
    """``scripts/export.py``: the checkpoint exported to --out (default: inside its run directory)."""
    checkpoint = find_checkpoint(args.checkpoint)
    size = tuple(args.size) if args.size else None
    if args.out:
        out = check_new_file(args.out, overwrite=args.overwrite)
    else:
        run_dir = run_dir_of(checkpoint) or checkpoint.parent
        side = size or export_size(checkpoint_config(checkpoint))
        suffix = ".pt" if args.format == "torchscript" else ".onnx"
        out = check_new_file(run_dir / "exported" / f"detector-{side[0]}x{side[1]}{suffix}", overwrite=args.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    return export(checkpoint, out, fmt=args.format, size=size)[0]


def export_size(cfg: config_lib.Config) -> tuple[int, int]:
    """The default exported size: the shapes set's images, else data.min_size square."""
    side = cfg.data.min_size or cfg.data.shapes_image_size
    return side, side


def export(path: str | Path, out: str | Path, *, fmt: str, size: tuple[int, int] | None = None) -> tuple[Path, tuple]:
    """Write the checkpoint's detector as TorchScript (traced) or ONNX for images of ``size`` (H, W;
    default: the size its validation images take, which the shapes set has, else data.min_size
    square): it takes a uint8 (3, H, W) image of that size and returns boxes, scores and labels.
    The trace fixes the feature-map size, and with it the anchors: other sizes must be resized to
    it first. Returns the file and the size. fp32, on the CPU."""
    checkpoint = find_checkpoint(path)
    cfg = config_lib.load(base=config_lib.to_dict(checkpoint_config(checkpoint)),
                          overrides=["train.accelerator=cpu", "train.precision=32-true"])
    module = load_module(checkpoint, cfg).eval()
    size = size or export_size(cfg)
    exported = ExportedDetector(module.model).eval().requires_grad_(False)
    example = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(exported, (example,), check_trace=False)
            traced.save(str(out))
        else:
            torch.onnx.export(exported, (example,), str(out), input_names=["image"],
                              output_names=["boxes", "scores", "labels"],
                              dynamic_axes={"boxes": {0: "detections"}, "scores": {0: "detections"},
                                            "labels": {0: "detections"}}, opset_version=17, dynamo=False)
    return out, size
