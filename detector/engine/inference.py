"""A trained checkpoint put to use (``evaluate.py``, ``predict.py``): finding it, its own
configuration, and the options that may change after training.

A checkpoint carries the configuration it was trained with. Post-processing (score and NMS
thresholds, detections per image, the RPN's test-time proposal counts) and the test-time image
sizes apply to a trained model as they are; so do how it runs (accelerator, devices, precision)
and, for an evaluation, which data it is scored on. Every other option was fixed by training:
giving one is refused by name, never accepted and ignored.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import torch

from detector.data.layout import LAYOUT_OPTIONS
from detector.engine import config as config_lib
from detector.engine.config import Config, ConfigError
from detector.engine.module import DetectorModule
from detector.engine.rundir import find_checkpoint
from detector.engine.trainers import resolve_precision

# What may change for a trained model, by the options' declared roles (engine/config.py).
POSTPROCESSING_OPTIONS = config_lib.options_where(lambda roles: roles.after_training == "postprocessing")
RUNTIME_OPTIONS = config_lib.options_where(lambda roles: roles.after_training == "runtime")
# The evaluation's data: the dataset, where its files are, its validation split (or the held-out
# part of the training split) and subset; the shapes set is generated. The classes are the
# checkpoint's: evaluation refuses data whose classes differ.
EVALUATION_DATA_OPTIONS = config_lib.options_where(lambda roles: roles.after_training == "evaluation data")


def checkpoint_digest(checkpoint: Path) -> str:
    """The checkpoint file's SHA-256: what an output records of the model that made it (a path
    can hold another model later, when a run is resumed or replaced)."""
    digest = hashlib.sha256()
    with checkpoint.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_identity(checkpoint: Path, cfg: Config, **more: Any) -> dict[str, Any]:
    """What makes two outputs of a checkpoint the same result: the checkpoint (path and
    contents), the post-processing and sizes, and ``more`` (the data or the input files)."""
    return {"checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": checkpoint_digest(checkpoint),
            "postprocessing": postprocessing_record(cfg), **more}


def checkpoint_config(checkpoint: Path) -> Config:
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    if "config" not in hparams:
        raise ConfigError(f"{checkpoint}: not a checkpoint of this project (no configuration inside)")
    return config_lib.from_dict(hparams["config"], source=str(checkpoint))


def inference_config(args: argparse.Namespace, allowed: tuple[str, ...], script: str) -> tuple[Path, Config]:
    """The checkpoint of ``args.checkpoint`` and its configuration with the command line's
    options on top; an option outside ``allowed`` that differs from training is a ConfigError
    naming it."""
    checkpoint = find_checkpoint(args.checkpoint)
    trained = checkpoint_config(checkpoint)
    base = config_lib.to_dict(trained)
    if getattr(args, "data__root", None) and not getattr(args, "data__name", None):
        # Other data given by its folder alone: its format and layout are found there, not taken
        # from the training data's.
        defaults = config_lib.to_dict(config_lib.Config())["data"]
        base["data"].update({key: defaults[key] for key in LAYOUT_OPTIONS}, name="auto")
    cfg = config_lib.from_args(args, base=base)
    fixed = [key for key, value in config_lib.flatten(cfg).items()
             if key not in allowed and value != config_lib.flatten(trained)[key]]
    if fixed:
        raise ConfigError(f"{', '.join(fixed)} cannot apply to a trained model (training fixed "
                          f"{'it' if len(fixed) == 1 else 'them'}); {script} applies: {', '.join(allowed)}")
    resolve_precision(cfg)  # a GPU run's mixed precision, used on a CPU: fp32, as training would
    return checkpoint, cfg


def load_module(checkpoint: Path, cfg: Config) -> DetectorModule:
    """The checkpoint's weights in a module built with ``cfg``: its post-processing options
    are the ones the detections are made with."""
    return DetectorModule.load_from_checkpoint(checkpoint, map_location="cpu", config=config_lib.to_dict(cfg))


def postprocessing_record(cfg: Config) -> dict[str, Any]:
    """The post-processing and test-time sizes a result was made with, as outputs record them."""
    flat = config_lib.flatten(cfg)
    return {key: flat[key] for key in POSTPROCESSING_OPTIONS}
