"""Command-line options shared by the scripts: flags map onto configuration keys.

Precedence: dataclass defaults < ``--config FILE`` < ``--set key=value`` < dedicated flags
(``detector.engine.config.from_args`` applies them). This module imports nothing heavy, so a
script answers ``--help`` before torch loads; scripts import the engine after parsing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from detector.engine.errors import ConfigError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors in one line (and where the usage is), not a page of usage."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str, option: str, *, unit: str = "s") -> float:
    """Seconds of a duration option: "90s", "60m", "1.5h", H:MM:SS, or a plain number of ``unit``."""
    try:
        if ":" in text:
            hours, minutes, seconds = (float(part) for part in text.split(":"))
            return hours * 3600 + minutes * 60 + seconds
        if text[-1:].lower() in DURATION_UNITS:
            return float(text[:-1]) * DURATION_UNITS[text[-1].lower()]
        return float(text) * DURATION_UNITS[unit]
    except ValueError:
        plain = {"s": "seconds", "m": "minutes", "h": "hours"}[unit]
        raise ConfigError(f"{option} {text!r}: give a duration such as 90s, 60m or 2h, or H:MM:SS (a plain number: "
                          f"{plain})") from None


# flag -> (configuration key, help, argparse keyword arguments)
FLAGS: dict[str, tuple[str, str, dict]] = {
    "--loss": ("loss.name", "regression loss of the box head and the RPN (l1, l2, smooth_l1, ... "
               "or package.module:function)", {}),
    "--rpn-loss": ("loss.rpn_name", "regression loss of the RPN only (default: --loss)", {}),
    "--loss-weight": ("loss.weight", "regression loss weight (default: the loss's published default)",
                      {"type": float}),
    "--rpn-loss-weight": ("loss.rpn_weight", "weight of the --rpn-loss (default: its published default)",
                          {"type": float}),
    "--data": ("data.name", "dataset: shapes, coco or voc", {}),
    "--data-root": ("data.root", "dataset folder (see README: Datasets)", {}),
    "--train-split": ("data.train_split", "training split name", {}),
    "--val-split": ("data.val_split", "validation split name", {}),
    "--train-box-noise": ("data.train_box_noise", "fraction of training boxes displaced as outlier labels",
                          {"type": float}),
    "--batch-size": ("data.batch_size", "images per batch (per device)", {"type": int}),
    "--num-workers": ("data.num_workers", "DataLoader worker processes", {"type": int}),
    "--skip-bad-images": ("data.skip_bad_images", "leave out images whose files are missing or cannot be decoded "
                          "(counted in the log)", {"action": "store_const", "const": "true"}),
    "--backbone": ("model.backbone", "resnet18, resnet34 or resnet50", {}),
    "--weights": ("model.weights", "pretrained trunk: imagenet, a torchvision weights name "
                  "(e.g. ResNet50_Weights.IMAGENET1K_V2) or a local state dict file", {}),
    "--epochs": ("train.epochs", "training epochs", {"type": int}),
    "--max-steps": ("train.max_steps", "stop after this many optimiser steps (overrides --epochs)",
                    {"type": int}),
    "--lr": ("train.lr", "peak learning rate", {"type": float}),
    "--seed": ("train.seed", "random seed", {"type": int}),
    "--accelerator": ("train.accelerator", "auto, cpu or gpu", {}),
    "--devices": ("train.devices", "devices (processes) per node", {"type": int}),
    "--num-nodes": ("train.num_nodes", "nodes", {"type": int}),
    "--strategy": ("train.strategy", "Lightning strategy, e.g. ddp", {}),
    "--precision": ("train.precision", "auto (bf16 where the hardware has it natively), 32-true, 16-mixed or "
                    "bf16-mixed", {}),
    "--score-thresh": ("model.box_score_thresh", "keep detections scoring above this", {"type": float}),
    "--nms-thresh": ("model.box_nms_thresh", "IoU above which the box head's NMS removes a detection of the same class",
                     {"type": float}),
    "--max-detections": ("model.detections_per_image", "detections kept per image, best first", {"type": int}),
    "--min-size": ("data.min_size", "resize: shorter image side to this many pixels", {"type": int}),
    "--max-size": ("data.max_size", "resize: longer image side at most this many pixels", {"type": int}),
    "--out-dir": ("train.out_dir", "folder that receives run directories", {}),
    "--run-name": ("train.run_name", "run directory name", {}),
    "--threads": ("train.threads", "torch CPU threads", {"type": int}),
}


# Options a trained model runs with (evaluate.py, predict.py): loading, devices, post-processing, sizes.
INFERENCE_FLAGS = ["--batch-size", "--num-workers", "--skip-bad-images", "--accelerator", "--devices", "--precision",
                   "--threads", "--score-thresh", "--nms-thresh", "--max-detections", "--min-size", "--max-size"]


def add_inference_arguments(parser: argparse.ArgumentParser, flags: list[str]) -> None:
    """The checkpoint, ``--set`` and INFERENCE_FLAGS plus ``flags`` of a script that puts a
    trained model to use; training fixed every other option (detector/engine/inference.py)."""
    parser.add_argument("checkpoint", help="a .ckpt file or a run directory (its best checkpoint, else its last)")
    add_set_argument(parser, "override post-processing, size, device or data options, "
                             "e.g. --set model.rpn_post_nms_top_n_test=300")
    add_flags(parser, flags + INFERENCE_FLAGS)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier output of another checkpoint or other options in the output folder")


def add_config_arguments(parser: argparse.ArgumentParser, flags: list[str] | None = None) -> None:
    """``--config``, ``--set``, the loss-parameter lists and the dedicated ``flags`` (default:
    all of FLAGS). A flag's destination is its option with ``__`` for the dot."""
    parser.add_argument("--config", help="YAML preset (default: the built-in shapes CPU preset)")
    add_set_argument(parser, "override any option, e.g. --set train.lr=0.001 model.anchor_sizes=[8,16]")
    parser.add_argument("--loss-args", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                        help="regression loss parameters, e.g. --loss-args beta=0.111")
    parser.add_argument("--rpn-loss-args", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                        help="parameters of the --rpn-loss")
    add_flags(parser, flags or list(FLAGS))


def add_set_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help_text)


def add_flags(parser: argparse.ArgumentParser, flags: list[str]) -> None:
    for flag in flags:
        key, help_text, kwargs = FLAGS[flag]
        parser.add_argument(flag, dest=key.replace(".", "__"), help=f"{help_text} [{key}]", **kwargs)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """The scripts' console: the project's information, and only the warnings of the libraries
    (Lightning's information on accelerators and loaders is its business)."""
    return record.name.startswith("detector") or record.levelno >= logging.WARNING


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main: user errors (configuration, missing files, unusable dataset files)
    print one clear line and exit with status 2; a KeyboardInterrupt exits with 130."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_libraries)
    try:
        sys.exit(main() or 0)
    except KeyboardInterrupt:  # a second Ctrl-C: what was stopped has said so (and how to resume)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        # A DataError can only exist once detector.data is loaded; importing it here would load
        # torch before --help could answer.
        errors = sys.modules.get("detector.data.errors")
        if not isinstance(exc, (ConfigError, FileNotFoundError) + ((errors.DataError,) if errors else ())):
            raise
        # One from a DataLoader worker carries the worker's traceback: show its message alone.
        print(f"error: {errors.error_message(exc) if errors else exc}", file=sys.stderr)
        sys.exit(2)
