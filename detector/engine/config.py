"""Typed configuration: dataclasses, YAML presets, ``section.key=value`` overrides, validation.

A configuration has four sections (``data``, ``model``, ``loss``, ``train``). Every value can
come from a YAML preset (``--config configs/shapes.yaml``) and be overridden on the command
line (``--set train.lr=0.001`` or a dedicated flag such as ``--loss l2``). Validation runs
before anything is built, and every error names the option and, where there is a fixed set,
the valid choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detector.engine.errors import ConfigError
from detector.engine.io import atomic_write_text
from detector.model import TORCHVISION_LOSS, build_loss, named_weights

__all__ = ["Config", "ConfigError", "DataConfig", "LossConfig", "ModelConfig", "TrainConfig"]


@dataclass
class DataConfig:
    name: str = "shapes"  # shapes | coco | voc
    # shapes: where the generated dataset lives; coco: the folder holding annotations/ and
    # the image folders; voc: the VOC year folder (holding JPEGImages/, Annotations/, ImageSets/)
    root: str = "data/shapes"
    train_split: str = "train"  # coco: train2017; voc: trainval
    val_split: str = "val"  # coco: val2017; voc: test or val
    # coco / voc: class names in label order (labels 1..K). Empty: found before training in the
    # training and validation splits (data/README.md says how) and written here, so config.yaml
    # records them and every loss and seed of a comparison trains the same list.
    classes: list[str] = field(default_factory=list)
    # Category subset by name (coco / voc), kept in class-list order; empty = all classes.
    categories: list[str] = field(default_factory=list)
    # coco / voc without a validation split: hold out this fraction of the training split's
    # images (chosen by file name and split_seed, data/README.md); val_split then names that part.
    val_fraction: float = 0.0
    # Seed of that division; not train.seed, so that every seed of a comparison is validated on
    # the same images.
    split_seed: int = 0
    # coco: instances file and image folder of each split, relative to root unless absolute.
    # Empty: root/annotations/instances_{split}.json, else Roboflow's root/{split}/_annotations.coco.json,
    # and root/{split}/.
    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    # voc: the folders of the images and of the XML files. VOCdevkit layout: instead of JPEGImages
    # and Annotations; a plain folder: subfolders of each split's folder (empty: the XML beside
    # the images).
    image_folder: str | None = None
    annotation_folder: str | None = None
    max_train_images: int | None = None  # image subset (first N by id / list order)
    max_val_images: int | None = None
    # Resize for real data, as torchvision's GeneralizedRCNNTransform: shorter side to
    # min_size, longer side capped at max_size. None keeps the stored size (shapes).
    min_size: int | None = None
    max_size: int | None = None
    hflip: bool = True  # random horizontal flip of training images
    batch_size: int = 16
    num_workers: int = 1
    skip_bad_images: bool = False
    # Outlier labels: this fraction of the training boxes is displaced once, the same boxes for
    # every loss and training seed (detector/data/noise.py). Validation stays clean.
    train_box_noise: float = 0.0
    train_box_noise_seed: int = 0
    # Generation of the bundled shapes dataset (ignored for coco / voc).
    shapes_image_size: int = 128
    shapes_num_train: int = 1500
    shapes_num_val: int = 300
    shapes_seed: int = 0


@dataclass
class ModelConfig:
    # "torchvision": torchvision's FasterRCNN configured like ours (detector/model/reference.py), the
    # reference of the benchmark's accuracy-parity mode; its loss is hard-wired smooth L1.
    implementation: str = "ours"  # ours | torchvision
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50
    # Pretrained trunk: "imagenet" (torchvision's default weights of the backbone), a torchvision
    # weights name ("ResNet50_Weights.IMAGENET1K_V2" or "IMAGENET1K_V2"; through torchvision's
    # weights API and cache, downloaded once), or a local torchvision-format state dict file.
    # Empty: random init. With weights, batch norm in the trunk is frozen and only the last
    # trainable_layers stages of (layer4, layer3, layer2, layer1, conv1) train, as torchvision's
    # trainable_backbone_layers (this trunk has no layer4: 1 trains none of it, 5 all of it).
    weights: str | None = None
    trainable_layers: int = 3
    # Width of the merged stride-8 map. The RoI head's cost (RoIAlign output, first FC layer)
    # scales with it; 64 is enough for the shapes preset and keeps a CPU step cheap.
    feature_channels: int = 64
    # Anchors on the single stride-8 feature map (pixels, and height/width ratios).
    anchor_sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # Anchor centres at (i + anchor_offset) * stride: 0.5 is the cell centre, 0.0 the cell
    # corner of torchvision and detectron2 (ANCHOR_GENERATOR.OFFSET).
    anchor_offset: float = 0.5
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n_train: int = 600
    rpn_pre_nms_top_n_test: int = 600
    rpn_post_nms_top_n_train: int = 300
    rpn_post_nms_top_n_test: int = 150
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 1.0
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    # RoIAlign's half-pixel correction (detectron2's ROIAlignV2); torchvision's FasterRCNN uses False.
    roi_aligned: bool = True
    representation_size: int = 256
    # Box predictor's initial weights: "detectron" draws normal(0.01) for the classifier and
    # normal(0.001) for the deltas; "torchvision" keeps nn.Linear's default, as its FastRCNNPredictor.
    predictor_init: str = "detectron"  # detectron | torchvision
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_image: int = 100


@dataclass
class LossConfig:
    name: str = "smooth_l1"  # regression loss of the box head (and of the RPN unless rpn_name)
    args: dict[str, Any] = field(default_factory=dict)  # e.g. {beta: 0.111}
    weight: float | None = None  # None: the loss's published default
    # A different RPN loss. Its parameters and weight are its own (args/weight above belong to
    # `name`, and e.g. smooth_l1's beta means nothing to giou); unset, the RPN uses the above.
    rpn_name: str | None = None
    rpn_args: dict[str, Any] = field(default_factory=dict)
    rpn_weight: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = -1  # > 0 stops after this many optimiser steps
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float | None = None
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    # auto: bf16 autocast where the hardware computes bf16 natively (GPUs with bf16, CPUs with
    # AVX512-BF16 or AMX), fp32 elsewhere; the run records what it resolved to.
    precision: str = "auto"
    # The trunk's convolutions in channels-last memory layout (oneDNN's fast path on CPUs, tensor
    # cores' on GPUs): measured here, trunk forward+backward 948 -> 635 ms at 800x1344 (batch 2).
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    threads: int | None = None  # torch intra-op threads on the CPU; None = torch's default
    log_every_n_steps: int = 10
    # Where losses, learning rate, AP and gradient statistics go: metrics.csv (csv), or
    # TensorBoard event files as well (tensorboard; the report reads metrics.csv).
    logger: str = "csv"  # csv | tensorboard
    gradient_stats: bool = True  # regression-gradient statistics at logging steps (gradients.csv)
    val_every_n_epochs: int = 5
    out_dir: str = "runs"
    run_name: str | None = None  # default: <dataset>-<loss>-seed<seed>-<timestamp>
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("shapes", "coco", "voc"),
    "model.implementation": ("ours", "torchvision"),
    "model.backbone": ("resnet18", "resnet34", "resnet50"),
    "train.optimizer": ("adamw", "sgd"),
    "train.schedule": ("cosine", "constant"),
    "train.accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "train.precision": ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true"),
    "train.logger": ("csv", "tensorboard"),
}


# What data.root must hold for each reader, for the messages of a missing or wrong root.
DATA_LAYOUTS = {
    "coco": "annotations/instances_<split>.json (or <split>/_annotations.coco.json) and the images of <split>/",
    "voc": "a VOCdevkit year (JPEGImages/, Annotations/*.xml, ImageSets/Main/<split>.txt) or a plain folder of "
           "images with their XML files",
}
# The options that read a COCO annotation file wherever it lies, named where a JSON file is
# given as data.root (one place, so the message follows the options' names).
ANNOTATION_FILE_OPTION = ("data.train_annotations and data.val_annotations (with data.train_images and "
                          "data.val_images for the image folders)")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(cfg: Config) -> dict[str, Any]:
    """``section.key`` -> value, for comparing two configurations option by option."""
    return {f"{section}.{key}": value for section, values in to_dict(cfg).items() for key, value in values.items()}


def from_dict(raw: dict[str, Any], source: str = "configuration") -> Config:
    """Build a Config from nested dicts, rejecting unknown sections and keys by name."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    cfg = Config()
    for section_name, values in raw.items():
        if section_name not in _sections():
            raise ConfigError(
                f"{source}: unknown section '{section_name}'; valid sections: {', '.join(_sections())}"
            )
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section_name}' must be a mapping")
        for key, value in values.items():
            set_value(cfg, f"{section_name}.{key}", value, source=source)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | None = None,
         base: dict[str, Any] | None = None) -> Config:
    """Load a YAML preset (or ``base``, or the defaults), apply ``key=value`` overrides, validate."""
    if path is None:
        cfg = from_dict(base) if base is not None else Config()
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        cfg = from_dict(raw, source=str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, text = item.split("=", 1)
        set_value(cfg, key.strip(), yaml.safe_load(text) if text.strip() else None, source="--set")
    validate(cfg)
    return cfg


def from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Config:
    """The configuration of a script's arguments (``detector/engine/cli.py`` defines them):
    ``--config`` (or ``base``, or the defaults), then ``--set``, the loss parameters and every
    dedicated flag, whose destination is its option with ``__`` for the dot."""
    overrides = list(getattr(args, "set", None) or [])
    for dest, value in vars(args).items():
        if "__" in dest and value is not None:
            overrides.append(f"{dest.replace('__', '.')}={value}")
    for dest, key in (("loss_args", "loss.args"), ("rpn_loss_args", "loss.rpn_args")):
        if getattr(args, dest, None):
            pairs = _parse_pairs(getattr(args, dest), "--" + dest.replace("_", "-"))
            overrides.append(f"{key}={yaml.safe_dump(pairs, default_flow_style=True).strip()}")
    return load(getattr(args, "config", None), overrides, base=base)


def _parse_pairs(items: list[str], flag: str) -> dict[str, Any]:
    pairs = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{flag} item '{item}' must look like name=value")
        pairs[name] = yaml.safe_load(text)
    return pairs


def save(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(Config)}


def valid_keys() -> list[str]:
    keys = []
    for section in dataclasses.fields(Config):
        keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(getattr(Config(), section.name))]
    return keys


def set_value(cfg: Config, dotted: str, value: Any, source: str = "configuration") -> None:
    """Set ``section.key`` to ``value``, coerced to the field's declared type."""
    section_name, _, key = dotted.partition(".")
    section = getattr(cfg, section_name, None) if section_name in _sections() else None
    names = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
    if section is None or key not in names:
        raise ConfigError(f"{source}: unknown option '{dotted}'{_did_you_mean(dotted)}")
    hint = typing.get_type_hints(type(section))[key]
    setattr(section, key, _coerce(value, hint, dotted, source))


def _did_you_mean(dotted: str) -> str:
    """The closest valid option and a short list to choose from: the keys of the section when
    it exists (the whole list of every key would run over a kilobyte), else the sections."""
    section_name, _, key = dotted.partition(".")
    keys = valid_keys()
    if section_name in _sections():
        choices = [k.partition(".")[2] for k in keys if k.startswith(section_name + ".")]
        # The same key in another section ("data.lr" -> "train.lr"), else a near spelling of a key here.
        close = [k for k in keys if k.partition(".")[2] == key] or [
            f"{section_name}.{k}" for k in difflib.get_close_matches(key, choices, n=1, cutoff=0.6)]
        listing = f"(options of {section_name}: {', '.join(choices)})"
    else:
        close = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.6)
        listing = f"(sections: {', '.join(_sections())})"
    return (f"; did you mean '{close[0]}'? " if close else " ") + listing


def _coerce(value: Any, hint: Any, dotted: str, source: str) -> Any:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{source}: option '{dotted}' may not be empty")
    if type(None) in args:  # Optional[X]
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, dotted, source)
    if origin is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(v, args[0], dotted, source) for v in items]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: option '{dotted}' must be a mapping, got {value!r}")
        return dict(value)
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: option '{dotted}' must be {hint.__name__}, got {value!r}"
        ) from None
    return value


def validate(cfg: Config) -> None:
    """Reject impossible values at start, naming the option and the valid range or choices."""
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"option '{dotted}' is {value!r}; valid choices: {', '.join(choices)}")

    def check(ok: bool, dotted: str, requirement: str) -> None:
        if not ok:
            section, key = dotted.split(".")
            raise ConfigError(
                f"option '{dotted}' is {getattr(getattr(cfg, section), key)!r}; it must be {requirement}"
            )

    d, m, t = cfg.data, cfg.model, cfg.train
    check(d.batch_size >= 1, "data.batch_size", ">= 1")
    check(d.num_workers >= 0, "data.num_workers", ">= 0")
    check(0 <= d.train_box_noise <= 1, "data.train_box_noise", "a fraction in [0, 1]")
    check(d.shapes_image_size >= 32, "data.shapes_image_size", ">= 32")
    check(d.shapes_num_train >= 1, "data.shapes_num_train", ">= 1")
    check(d.shapes_num_val >= 1, "data.shapes_num_val", ">= 1")
    check(d.min_size is None or d.min_size >= 32, "data.min_size", "empty or >= 32")
    check(d.max_size is None or d.max_size >= (d.min_size or 0), "data.max_size", ">= data.min_size")
    _check_data_sources(d)
    _check_data_root(d)
    check(len(m.anchor_sizes) >= 1 and all(s > 0 for s in m.anchor_sizes), "model.anchor_sizes",
          "a non-empty list of positive sizes")
    check(len(m.aspect_ratios) >= 1 and all(r > 0 for r in m.aspect_ratios), "model.aspect_ratios",
          "a non-empty list of positive ratios")
    check(0 <= m.anchor_offset < 1, "model.anchor_offset", "in [0, 1) (0.5: cell centre, 0: cell corner)")
    check(m.feature_channels >= 8, "model.feature_channels", ">= 8")
    check(m.predictor_init in ("detectron", "torchvision"), "model.predictor_init", "one of: detectron, torchvision")
    check(0 < m.rpn_bg_iou_thresh <= m.rpn_fg_iou_thresh <= 1, "model.rpn_fg_iou_thresh",
          "in (0, 1] and >= model.rpn_bg_iou_thresh")
    check(0 < m.box_bg_iou_thresh <= m.box_fg_iou_thresh <= 1, "model.box_fg_iou_thresh",
          "in (0, 1] and >= model.box_bg_iou_thresh")
    for key in ("rpn_positive_fraction", "box_positive_fraction"):
        check(0 < getattr(m, key) <= 1, f"model.{key}", "in (0, 1]")
    for key in ("rpn_batch_size_per_image", "box_batch_size_per_image", "rpn_pre_nms_top_n_train",
                "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
                "roi_output_size", "roi_sampling_ratio", "representation_size", "detections_per_image"):
        check(getattr(m, key) >= 1, f"model.{key}", ">= 1")
    for key in ("rpn_nms_thresh", "box_nms_thresh", "box_score_thresh"):
        check(0 <= getattr(m, key) <= 1, f"model.{key}", "in [0, 1]")
    check(0 <= m.trainable_layers <= 5, "model.trainable_layers", "from 0 to 5")
    if m.weights is not None:  # a name must be one of the trunk's; a file is read when a run starts
        try:
            named_weights(m.backbone, m.weights)
        except ValueError as exc:
            raise ConfigError(f"option 'model.weights': {exc}") from None
    check(t.epochs >= 1 or t.max_steps > 0, "train.epochs", ">= 1 (or set train.max_steps)")
    check(t.lr > 0, "train.lr", "> 0")
    check(t.weight_decay >= 0, "train.weight_decay", ">= 0")
    check(t.warmup_steps >= 0, "train.warmup_steps", ">= 0")
    check(t.devices >= 1, "train.devices", ">= 1")
    check(t.num_nodes >= 1, "train.num_nodes", ">= 1")
    check(t.log_every_n_steps >= 1, "train.log_every_n_steps", ">= 1")
    check(t.val_every_n_epochs >= 1, "train.val_every_n_epochs", ">= 1")
    check(t.threads is None or t.threads >= 1, "train.threads", "empty or >= 1")
    check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "empty or > 0")
    # Lightning's TensorBoardLogger writes with either package.
    if t.logger == "tensorboard" and not any(importlib.util.find_spec(p) for p in ("tensorboard", "tensorboardX")):
        raise ConfigError("option 'train.logger' is 'tensorboard' but the tensorboard package is not installed; "
                          'install it with: pip install -e ".[tensorboard]"')
    # Loss names and parameters are checked by building them: the registry's errors list
    # the valid names and the parameters each loss accepts.
    for prefix, name, args in (("loss", cfg.loss.name, cfg.loss.args),
                               ("loss.rpn", cfg.loss.rpn_name, cfg.loss.rpn_args)):
        if name is None:
            if args:
                raise ConfigError("option 'loss.rpn_args' is set but 'loss.rpn_name' is not; "
                                  "set loss.rpn_name, or put the parameters in loss.args")
            continue
        try:
            build_loss(name, args)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{prefix}: {exc.args[0] if exc.args else exc}") from None
    check(cfg.loss.weight is None or cfg.loss.weight > 0, "loss.weight", "empty or > 0")
    check(cfg.loss.rpn_weight is None or cfg.loss.rpn_weight > 0, "loss.rpn_weight", "empty or > 0")
    if cfg.loss.rpn_weight is not None and cfg.loss.rpn_name is None:
        raise ConfigError("option 'loss.rpn_weight' is set but 'loss.rpn_name' is not; use loss.weight")
    if m.implementation == "torchvision":
        _check_torchvision_implementation(cfg)


# Options that only one kind of dataset reads; set for another, they would be ignored silently.
DATA_OPTIONS_OF = {
    "classes": ("coco", "voc"),
    "val_fraction": ("coco", "voc"),
    "train_annotations": ("coco",),
    "train_images": ("coco",),
    "val_annotations": ("coco",),
    "val_images": ("coco",),
    "image_folder": ("voc",),
    "annotation_folder": ("voc",),
}


def _check_data_sources(d: DataConfig) -> None:
    if not 0 <= d.val_fraction < 1:
        raise ConfigError(f"option 'data.val_fraction' is {d.val_fraction!r}; it must be a fraction in [0, 1)")
    defaults = DataConfig()
    for key, names in DATA_OPTIONS_OF.items():
        if getattr(d, key) != getattr(defaults, key) and d.name not in names:
            raise ConfigError(f"option 'data.{key}' applies to {' and '.join(names)} data, not to data.name={d.name}")
    for key in ("val_annotations", "val_images"):
        if getattr(d, key) is not None and d.val_fraction > 0:
            raise ConfigError(f"option 'data.{key}' is set, but with data.val_fraction the validation images are "
                              f"held out of the training split's files; leave one of them out")
    names = [name.strip() for name in d.classes]
    if "" in names or len(set(names)) != len(names) or names != d.classes:
        raise ConfigError(f"option 'data.classes' is {d.classes!r}; it must list distinct names without "
                          f"surrounding spaces")
    unknown = [name for name in d.categories if d.classes and name not in d.classes]
    if unknown:
        raise ConfigError(f"option 'data.categories' names {unknown[0]!r}, which is not in data.classes "
                          f"({', '.join(d.classes)})")


def _check_data_root(d: DataConfig) -> None:
    """A real dataset needs its folder; the shapes default is never one, and a JSON file is an
    annotation file, not a folder."""
    layout = DATA_LAYOUTS.get(d.name)
    files_given = d.name == "coco" and all(
        getattr(d, key) and Path(getattr(d, key)).is_absolute()
        for key in ("train_annotations", "train_images", *(() if d.val_fraction > 0 else ("val_annotations", "val_images"))))
    if layout and d.root == DataConfig.root and not files_given:
        raise ConfigError(f"--data {d.name} needs the dataset's folder: give --data-root DIR (option 'data.root'), "
                          f"the folder that holds {layout}")
    if Path(d.root).suffix.lower() == ".json":
        raise ConfigError(f"option 'data.root' is the annotation file {d.root}; data.root is the dataset's folder"
                          f"{f' (holding {layout})' if layout else ''}; to read an annotation file use {ANNOTATION_FILE_OPTION}")


def _check_torchvision_implementation(cfg: Config) -> None:
    """torchvision's FasterRCNN computes its losses inside its heads: its regression loss is
    hard-wired and there is no output to measure gradients on."""
    beta = cfg.loss.args.get("beta", TORCHVISION_LOSS["params"]["beta"])
    if (cfg.loss.name != TORCHVISION_LOSS["name"] or cfg.loss.rpn_name is not None or set(cfg.loss.args) - {"beta"}
            or abs(float(beta) - TORCHVISION_LOSS["params"]["beta"]) > 1e-3
            or cfg.loss.weight not in (None, TORCHVISION_LOSS["weight"])):
        raise ConfigError("option 'model.implementation' is 'torchvision': torchvision's FasterRCNN has its "
                          "regression loss hard-wired (smooth_l1, beta 1/9, weight 1, both stages); use "
                          "--loss smooth_l1 with model.implementation=torchvision")
    if cfg.train.gradient_stats:
        raise ConfigError("option 'model.implementation' is 'torchvision': its losses are computed inside "
                          "torchvision's heads, so there are no regression gradients to record; set "
                          "train.gradient_stats=false")
