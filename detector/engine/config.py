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

from detector.data.layout import Layout, detect, folder_hint
from detector.engine.errors import ConfigError
from detector.engine.io import atomic_write_text
from detector.model.choices import ROI_ALIGN_KERNELS

__all__ = ["Config", "ConfigError", "DataConfig", "LossConfig", "ModelConfig", "TrainConfig"]


@dataclass(frozen=True)
class Roles:
    """What an option is, declared once beside it; every list of options elsewhere (what compare
    matches, what evaluate.py accepts, what a report groups by) is derived from these.

    result: it changes what a run computes or records (False: only how or where a run executes,
        e.g. devices' kind, worker processes, the run's name); compare reuses a finished run that
        differs only in such options.
    condition: runs of a report that differ in it are different conditions (default: ``result``;
        the seed is a repetition and the box noise the report's own axis).
    after_training: what it may still change for a trained model: "postprocessing" (thresholds,
        test-time sizes), "runtime" (how inference runs) or "evaluation data" (what it is scored
        on); None: training fixed it.
    choices: the valid values, when there is a fixed set.
    readers: the datasets (data.name) that read it; None: every one.
    dataset: it says which images a run is trained and scored on (a report compares one dataset).
    path: a file or folder, relative to the working directory; compare matches it by the place it
        names, so ``../data/x`` from one folder and ``/home/me/data/x`` are the same.
    """

    result: bool = True
    condition: bool | None = None
    after_training: str | None = None
    choices: tuple[Any, ...] | None = None
    readers: tuple[str, ...] | None = None
    dataset: bool = False
    path: bool = False

    def __post_init__(self):
        if self.condition is None:
            object.__setattr__(self, "condition", self.result)


AFTER_TRAINING = ("postprocessing", "runtime", "evaluation data")


def option(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **roles: Any) -> Any:
    """A configuration field with its :class:`Roles`."""
    return field(default=default, default_factory=factory, metadata={"roles": Roles(**roles)})


# Data options that identify the evaluation data of a trained model, and the dataset of a run.
_DATA = dict(dataset=True, after_training="evaluation data")
# How a run executes, not what it computes; may change for a trained model too.
_RUNTIME = dict(result=False, after_training="runtime")


@dataclass
class DataConfig:
    # auto: the bundled shapes set at the default root, else the format and layout found in data.root
    # (resolve_data_format); the run records what it resolved to.
    name: str = option("auto", choices=("auto", "shapes", "coco", "voc", "yolo"), **_DATA)
    # shapes: where the generated dataset lives; coco: the folder holding annotations/ and
    # the image folders; voc: the VOC year folder (holding JPEGImages/, Annotations/, ImageSets/);
    # yolo: the folder holding images/ and labels/ (or <split>/images/) and data.yaml
    root: str = option("data/shapes", path=True, **_DATA)
    train_split: str = option("train", **_DATA)  # coco: train2017; voc: trainval
    val_split: str = option("val", **_DATA)  # coco: val2017; voc: test or val
    # coco / voc: class names in label order (labels 1..K). Empty: found before training in the
    # training and validation splits (data/README.md says how) and written here, so config.yaml
    # records them and every loss and seed of a comparison trains the same list.
    classes: list[str] = option(factory=list, readers=("coco", "voc", "yolo"), dataset=True)
    # Category subset by name, kept in class-list order; empty = all classes.
    categories: list[str] = option(factory=list, **_DATA)
    # coco / voc without a validation split: hold out this fraction of the training split's
    # images (chosen by file name and split_seed, data/README.md); val_split then names that part.
    val_fraction: float = option(0.0, readers=("coco", "voc", "yolo"), **_DATA)
    # Seed of that division; not train.seed, so that every seed of a comparison is validated on
    # the same images.
    split_seed: int = option(0, **_DATA)
    # coco: instances file and image folder of each split, relative to root unless absolute.
    # Empty: root/annotations/instances_{split}.json, else Roboflow's root/{split}/_annotations.coco.json,
    # and root/{split}/.
    train_annotations: str | None = option(None, readers=("coco",), **_DATA)
    train_images: str | None = option(None, readers=("coco",), **_DATA)
    val_annotations: str | None = option(None, readers=("coco",), **_DATA)
    val_images: str | None = option(None, readers=("coco",), **_DATA)
    # voc: the folders of the images and of the XML files. VOCdevkit layout: instead of JPEGImages
    # and Annotations; a plain folder: subfolders of each split's folder (empty: the XML beside
    # the images).
    image_folder: str | None = option(None, readers=("voc",), **_DATA)
    annotation_folder: str | None = option(None, readers=("voc",), **_DATA)
    max_train_images: int | None = option(None, dataset=True)  # image subset (first N by id / list order)
    max_val_images: int | None = option(None, **_DATA)
    # Resize for real data, as torchvision's GeneralizedRCNNTransform: shorter side to
    # min_size, longer side capped at max_size. None keeps the stored size (shapes).
    min_size: int | None = option(None, after_training="postprocessing")
    max_size: int | None = option(None, after_training="postprocessing")
    hflip: bool = option(True)  # random horizontal flip of training images
    batch_size: int = option(16, after_training="runtime")
    num_workers: int = option(1, **_RUNTIME)
    # A run that completes without it read no bad image, so it trained on the same images.
    skip_bad_images: bool = option(False, **_RUNTIME)
    # Outlier labels: this fraction of the training boxes is displaced once, the same boxes for
    # every loss and training seed (detector/data/noise.py). Validation stays clean.
    train_box_noise: float = option(0.0, condition=False)  # a report's own axis, not an option condition
    train_box_noise_seed: int = option(0)
    # Generation of the bundled shapes dataset (ignored for coco / voc).
    shapes_image_size: int = option(128, readers=("shapes",), **_DATA)
    shapes_num_train: int = option(1500, readers=("shapes",), **_DATA)
    shapes_num_val: int = option(300, readers=("shapes",), **_DATA)
    shapes_seed: int = option(0, readers=("shapes",), **_DATA)


@dataclass
class ModelConfig:
    # "torchvision": torchvision's FasterRCNN configured like ours (detector/model/reference.py), the
    # reference of the benchmark's accuracy-parity mode; its loss is hard-wired smooth L1.
    implementation: str = option("ours", choices=("ours", "torchvision"))
    backbone: str = option("resnet18", choices=("resnet18", "resnet34", "resnet50"))
    # Pretrained trunk: "imagenet" (torchvision's default weights of the backbone), a torchvision
    # weights name ("ResNet50_Weights.IMAGENET1K_V2" or "IMAGENET1K_V2"; through torchvision's
    # weights API and cache, downloaded once), or a local torchvision-format state dict file.
    # Empty: random init. With weights, batch norm in the trunk is frozen and only the last
    # trainable_layers stages of (layer4, layer3, layer2, layer1, conv1) train, as torchvision's
    # trainable_backbone_layers (this trunk has no layer4: 1 trains none of it, 5 all of it).
    weights: str | None = option(None, path=True)  # compared as a path: two equal names compare equal too
    trainable_layers: int = option(3)
    # Width of the merged stride-8 map. The RoI head's cost (RoIAlign output, first FC layer)
    # scales with it; 64 is enough for the shapes preset and keeps a CPU step cheap.
    feature_channels: int = option(64)
    # Anchors on the single stride-8 feature map (pixels, and height/width ratios).
    anchor_sizes: list[int] = option(factory=lambda: [8, 16, 32, 64])
    aspect_ratios: list[float] = option(factory=lambda: [0.5, 1.0, 2.0])
    # Anchor centres at (i + anchor_offset) * stride: 0.5 is the cell centre, 0.0 the cell
    # corner of torchvision and detectron2 (ANCHOR_GENERATOR.OFFSET).
    anchor_offset: float = option(0.5)
    rpn_fg_iou_thresh: float = option(0.7)
    rpn_bg_iou_thresh: float = option(0.3)
    rpn_batch_size_per_image: int = option(256)
    rpn_positive_fraction: float = option(0.5)
    rpn_pre_nms_top_n_train: int = option(600)
    rpn_pre_nms_top_n_test: int = option(600, after_training="postprocessing")
    rpn_post_nms_top_n_train: int = option(300)
    rpn_post_nms_top_n_test: int = option(150, after_training="postprocessing")
    rpn_nms_thresh: float = option(0.7)
    rpn_min_size: float = option(1.0)
    roi_output_size: int = option(7)
    roi_sampling_ratio: int = option(2)
    # RoIAlign's half-pixel correction (detectron2's ROIAlignV2); torchvision's FasterRCNN uses False.
    roi_aligned: bool = option(True)
    # The RoIAlign kernel: "separable" (two batched matrix products, model/roi_align.py),
    # torchvision's, or "auto" (separable while its matrices stay small). Both give the same values.
    roi_align_kernel: str = option("auto", choices=ROI_ALIGN_KERNELS, **_RUNTIME)
    representation_size: int = option(256)
    # Box predictor's initial weights: "detectron" draws normal(0.01) for the classifier and
    # normal(0.001) for the deltas; "torchvision" keeps nn.Linear's default, as its FastRCNNPredictor.
    predictor_init: str = option("detectron", choices=("detectron", "torchvision"))
    box_fg_iou_thresh: float = option(0.5)
    box_bg_iou_thresh: float = option(0.5)
    box_batch_size_per_image: int = option(128)
    box_positive_fraction: float = option(0.25)
    box_score_thresh: float = option(0.05, after_training="postprocessing")
    box_nms_thresh: float = option(0.5, after_training="postprocessing")
    detections_per_image: int = option(100, after_training="postprocessing")


@dataclass
class LossConfig:
    name: str = option("smooth_l1")  # regression loss of the box head (and of the RPN unless rpn_name)
    args: dict[str, Any] = option(factory=dict)  # e.g. {beta: 0.111}
    weight: float | None = option(None)  # None: the loss's published default
    # A different RPN loss. Its parameters and weight are its own (args/weight above belong to
    # `name`, and e.g. smooth_l1's beta means nothing to giou); unset, the RPN uses the above.
    rpn_name: str | None = option(None)
    rpn_args: dict[str, Any] = option(factory=dict)
    rpn_weight: float | None = option(None)


@dataclass
class TrainConfig:
    epochs: int = option(10)
    max_steps: int = option(-1)  # > 0 stops after this many optimiser steps
    optimizer: str = option("adamw", choices=("adamw", "sgd"))
    lr: float = option(3e-3)
    weight_decay: float = option(1e-4)
    momentum: float = option(0.9)  # sgd only
    warmup_steps: int = option(100)
    schedule: str = option("cosine", choices=("cosine", "constant"))
    grad_clip: float | None = option(None)
    accelerator: str = option("auto", choices=("auto", "cpu", "gpu", "cuda", "mps"), **_RUNTIME)
    # More devices or nodes make a larger global batch (data.batch_size is per device): another run.
    devices: int = option(1, after_training="runtime")
    num_nodes: int = option(1, after_training="runtime")
    strategy: str = option("auto", **_RUNTIME)
    # auto: bf16 autocast where the hardware computes bf16 natively (GPUs with bf16, CPUs with
    # AVX512-BF16 or AMX), fp32 elsewhere; the run records what it resolved to.
    precision: str = option("auto", choices=("auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true"),
                            after_training="runtime")
    # The trunk's convolutions in channels-last memory layout (oneDNN's fast path on CPUs, tensor
    # cores' on GPUs): measured here, trunk forward+backward 948 -> 635 ms at 800x1344 (batch 2).
    channels_last: bool = option(True, **_RUNTIME)
    seed: int = option(0, condition=False)  # the repetition of a condition
    deterministic: bool = option(False, **_RUNTIME)
    threads: int | None = option(None, **_RUNTIME)  # torch intra-op threads on the CPU; None = torch's default
    log_every_n_steps: int = option(10)
    # Where losses, learning rate, AP and gradient statistics go: metrics.csv (csv; the report reads
    # it), and with tensorboard, mlflow or wandb there as well (engine/trainers.py: build_loggers).
    logger: str = option("csv", choices=("csv", "tensorboard", "mlflow", "wandb"), result=False)
    gradient_stats: bool = option(True)  # regression-gradient statistics at logging steps (gradients.csv)
    val_every_n_epochs: int = option(5)
    # Early stopping: stop after this many validations without a better validation AP (None: off,
    # so that the cells of a comparison train their fixed schedule).
    patience: int | None = option(None)
    out_dir: str = option("runs", result=False)
    run_name: str | None = option(None, result=False)  # default: <dataset>-<loss>-seed<seed>-<timestamp>
    progress: bool = option(True, **_RUNTIME)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def undeclared(config_type: type = Config) -> list[str]:
    """The options of ``config_type`` declared without their Roles (a plain field or default)."""
    return [f"{section.name}.{f.name}" for section in dataclasses.fields(config_type)
            for f in dataclasses.fields(section.default_factory) if not isinstance(f.metadata.get("roles"), Roles)]


def option_roles() -> dict[str, Roles]:
    """``section.key`` -> its Roles, for every option, in declaration order."""
    missing = undeclared()
    if missing:
        raise TypeError(f"options without their roles (declare them with option(...)): {', '.join(missing)}")
    return {f"{section.name}.{f.name}": f.metadata["roles"]
            for section in dataclasses.fields(Config) for f in dataclasses.fields(section.default_factory)}


def options_where(test) -> tuple[str, ...]:
    """The options whose Roles pass ``test``, e.g. ``options_where(lambda r: not r.result)``."""
    return tuple(key for key, roles in option_roles().items() if test(roles))


CHOICES = {key: roles.choices for key, roles in option_roles().items() if roles.choices}


# What data.root must hold for each reader, for the messages of a missing or wrong root.
DATA_LAYOUTS = {
    "coco": "annotations/instances_<split>.json (or <split>/_annotations.coco.json) and the images of <split>/",
    "voc": "a VOCdevkit year (JPEGImages/, Annotations/*.xml, ImageSets/Main/<split>.txt) or a plain folder of "
           "images with their XML files",
    "yolo": "images/<split>/ and labels/<split>/ (or <split>/images/ and <split>/labels/) with data.yaml or classes.txt",
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
    """Load a YAML preset (or ``base``, or the defaults), apply ``key=value`` overrides, resolve
    ``data.name=auto`` (resolve_data_format), validate."""
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
    resolve_data_format(cfg.data)
    validate(cfg)
    return cfg


def from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Config:
    """The configuration of a script's arguments (``detector/engine/cli.py`` defines them):
    ``--config`` (or ``base``, or the defaults), then ``--set``, the loss parameters and every
    dedicated flag, whose destination is its option with ``__`` for the dot. ``data.name=auto``
    is resolved (resolve_data_format); data other than shapes, without ``--config`` or ``base``,
    starts from the real-photo preset (PHOTO_PRESET) instead of the defaults."""
    overrides = _overrides(args)
    preset = getattr(args, "config", None)
    cfg = load(preset, overrides, base=base)
    if cfg.data.name != "shapes" and preset is None and base is None:
        cfg = load(PHOTO_PRESET, overrides)
    return cfg


# The real-photo preset that data other than shapes starts from when no --config is given.
PHOTO_PRESET = Path(__file__).resolve().parents[2] / "configs" / "custom.yaml"


def resolve_data_format(d: DataConfig) -> Layout | None:
    """``data.name=auto`` made concrete, in place: shapes at the default root (or a folder the
    shapes generator made), else the one dataset layout found in data.root, whose options are set
    where they are still at their defaults; returns that layout (None for shapes or a name given).
    No layout, or two, is a ConfigError that says what the folder holds and how to choose."""
    if d.name != "auto":
        return None
    root = Path(d.root)
    if root.suffix.lower() == ".json":
        return None  # an annotation file given as the folder: validation says how to read it
    if d.root == DataConfig.root or (root / "meta.json").is_file() and not detect(root):
        d.name = "shapes"
        return None
    if not root.is_dir():
        raise ConfigError(f"option 'data.root' is {d.root}, which is not a folder; give the dataset's folder with "
                          f"--data-root DIR")
    layouts = detect(root)
    if not layouts:
        raise ConfigError(f"{root}: no dataset layout found ({folder_hint(root)}); name the format with --data "
                          f"{'|'.join(DATA_LAYOUTS)} and its folders with the data.* options (README: Train on your own data)")
    if len(layouts) > 1:
        found = "; ".join(f"{layout.label}: {layout.description}" for layout in layouts)
        raise ConfigError(f"{root} holds more than one dataset ({found}); choose one with "
                          f"{' or '.join(sorted({f'--data {layout.format}' for layout in layouts}))}")
    (layout,) = layouts
    d.name = layout.format
    apply_layout(d, layout)
    return layout


def apply_layout(d: DataConfig, layout: Layout) -> None:
    """The layout's data.* options, where the configuration still has the default (the user's own
    choices stay); data.root where the dataset sits one folder down."""
    defaults = DataConfig()
    for key, value in layout.options.items():
        if key == "root" or getattr(d, key) == getattr(defaults, key):
            setattr(d, key, value)


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(getattr(args, "set", None) or [])
    for dest, value in vars(args).items():
        if "__" in dest and value is not None:
            overrides.append(f"{dest.replace('__', '.')}={value}")
    for dest, key in (("loss_args", "loss.args"), ("rpn_loss_args", "loss.rpn_args")):
        if getattr(args, dest, None):
            pairs = _parse_pairs(getattr(args, dest), "--" + dest.replace("_", "-"))
            overrides.append(f"{key}={yaml.safe_dump(pairs, default_flow_style=True).strip()}")
    return overrides


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
        return _coerce_scalar(value, hint)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: option '{dotted}' must be {hint.__name__}, got {value!r}"
        ) from None


def _coerce_scalar(value: Any, hint: Any) -> Any:
    """``value`` as a bool, int, float or str ``hint``; ValueError when it is not one."""
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
    return value


def validate(cfg: Config) -> None:
    """Reject impossible values at start, naming the option and the valid range or choices:
    the declared choices of every option, then each section's own rules."""
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"option '{dotted}' is {value!r}; valid choices: {', '.join(map(str, choices))}")
    validate_data(cfg.data)
    validate_model(cfg.model)
    validate_train(cfg.train)
    validate_loss(cfg.loss)
    if cfg.model.implementation == "torchvision":
        _check_torchvision_implementation(cfg)


def _checker(section: Any, name: str):
    """``check(ok, key, requirement)``: a ConfigError naming ``name.key``, its value and the requirement."""
    def check(ok: bool, key: str, requirement: str) -> None:
        if not ok:
            raise ConfigError(f"option '{name}.{key}' is {getattr(section, key)!r}; it must be {requirement}")
    return check


def validate_data(d: DataConfig) -> None:
    check = _checker(d, "data")
    check(d.batch_size >= 1, "batch_size", ">= 1")
    check(d.num_workers >= 0, "num_workers", ">= 0")
    check(0 <= d.train_box_noise <= 1, "train_box_noise", "a fraction in [0, 1]")
    check(d.shapes_image_size >= 32, "shapes_image_size", ">= 32")
    check(d.shapes_num_train >= 1, "shapes_num_train", ">= 1")
    check(d.shapes_num_val >= 1, "shapes_num_val", ">= 1")
    check(d.min_size is None or d.min_size >= 32, "min_size", "empty or >= 32")
    check(d.max_size is None or d.max_size >= (d.min_size or 0), "max_size", ">= data.min_size")
    check(0 <= d.val_fraction < 1, "val_fraction", "a fraction in [0, 1)")
    _check_data_sources(d)
    _check_data_root(d)


def validate_model(m: ModelConfig) -> None:
    check = _checker(m, "model")
    check(len(m.anchor_sizes) >= 1 and all(s > 0 for s in m.anchor_sizes), "anchor_sizes",
          "a non-empty list of positive sizes")
    check(len(m.aspect_ratios) >= 1 and all(r > 0 for r in m.aspect_ratios), "aspect_ratios",
          "a non-empty list of positive ratios")
    check(0 <= m.anchor_offset < 1, "anchor_offset", "in [0, 1) (0.5: cell centre, 0: cell corner)")
    check(m.feature_channels >= 8, "feature_channels", ">= 8")
    check(0 < m.rpn_bg_iou_thresh <= m.rpn_fg_iou_thresh <= 1, "rpn_fg_iou_thresh",
          "in (0, 1] and >= model.rpn_bg_iou_thresh")
    check(0 < m.box_bg_iou_thresh <= m.box_fg_iou_thresh <= 1, "box_fg_iou_thresh",
          "in (0, 1] and >= model.box_bg_iou_thresh")
    for key in ("rpn_positive_fraction", "box_positive_fraction"):
        check(0 < getattr(m, key) <= 1, key, "in (0, 1]")
    for key in ("rpn_batch_size_per_image", "box_batch_size_per_image", "rpn_pre_nms_top_n_train",
                "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test",
                "roi_output_size", "roi_sampling_ratio", "representation_size", "detections_per_image"):
        check(getattr(m, key) >= 1, key, ">= 1")
    for key in ("rpn_nms_thresh", "box_nms_thresh", "box_score_thresh"):
        check(0 <= getattr(m, key) <= 1, key, "in [0, 1]")
    check(0 <= m.trainable_layers <= 5, "trainable_layers", "from 0 to 5")
    if m.weights is not None:  # a name must be one of the trunk's; a file is read when a run starts
        from detector.model import named_weights  # torchvision: only where weights are named

        try:
            named_weights(m.backbone, m.weights)
        except ValueError as exc:
            raise ConfigError(f"option 'model.weights': {exc}") from None


def validate_train(t: TrainConfig) -> None:
    check = _checker(t, "train")
    check(t.epochs >= 1 or t.max_steps > 0, "epochs", ">= 1 (or set train.max_steps)")
    check(t.lr > 0, "lr", "> 0")
    check(t.weight_decay >= 0, "weight_decay", ">= 0")
    check(t.warmup_steps >= 0, "warmup_steps", ">= 0")
    check(t.devices >= 1, "devices", ">= 1")
    check(t.num_nodes >= 1, "num_nodes", ">= 1")
    check(t.log_every_n_steps >= 1, "log_every_n_steps", ">= 1")
    check(t.val_every_n_epochs >= 1, "val_every_n_epochs", ">= 1")
    check(t.threads is None or t.threads >= 1, "threads", "empty or >= 1")
    check(t.grad_clip is None or t.grad_clip > 0, "grad_clip", "empty or > 0")
    check(t.patience is None or t.patience >= 1, "patience", "empty or >= 1")
    # Each tracker is an optional extra; Lightning's TensorBoardLogger writes with either package.
    packages = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
    if t.logger in packages and not any(importlib.util.find_spec(p) for p in packages[t.logger]):
        raise ConfigError(f"option 'train.logger' is '{t.logger}' but the {t.logger} package is not installed; "
                          f'install it with: pip install -e ".[{t.logger}]"')


def validate_loss(loss: LossConfig) -> None:
    """Loss names and parameters are checked by building them: the registry's errors list the
    valid names and the parameters each loss accepts (the last check: it loads torch)."""
    from detector.model import build_loss

    for prefix, name, args in (("loss", loss.name, loss.args), ("loss.rpn", loss.rpn_name, loss.rpn_args)):
        if name is None:
            if args:
                raise ConfigError("option 'loss.rpn_args' is set but 'loss.rpn_name' is not; "
                                  "set loss.rpn_name, or put the parameters in loss.args")
            continue
        try:
            build_loss(name, args)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{prefix}: {exc.args[0] if exc.args else exc}") from None
    check = _checker(loss, "loss")
    check(loss.weight is None or loss.weight > 0, "weight", "empty or > 0")
    check(loss.rpn_weight is None or loss.rpn_weight > 0, "rpn_weight", "empty or > 0")
    if loss.rpn_weight is not None and loss.rpn_name is None:
        raise ConfigError("option 'loss.rpn_weight' is set but 'loss.rpn_name' is not; use loss.weight")


# Options that only some kinds of dataset read; set for another, they would be ignored silently.
# The shapes generator's options are not checked: a checkpoint trained on shapes carries them
# into its evaluation on other data.
DATA_OPTIONS_OF = {key.partition(".")[2]: roles.readers for key, roles in option_roles().items()
                   if key.startswith("data.") and roles.readers and roles.readers != ("shapes",)}


def _check_data_sources(d: DataConfig) -> None:
    defaults = DataConfig()
    for key, names in DATA_OPTIONS_OF.items():
        if getattr(d, key) != getattr(defaults, key) and d.name not in (*names, "auto"):
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
    from detector.model import TORCHVISION_LOSS

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
