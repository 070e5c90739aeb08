"""From the configuration to objects: the detector (ours or torchvision's), its regression
losses, the gradient probes, the trunk's weights, and the datasets.

The model and the readers take plain constructor arguments; this module is the one place that
maps configuration options onto them (as detectron2's ``from_config`` does).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from detector.data import (
    CocoDetection,
    DataError,
    DetectionDataset,
    DetectionTransform,
    Holdout,
    VocDetection,
    YoloDetection,
    coco_classes,
    coco_split_files,
    corrupt_boxes,
    ensure_shapes,
    voc_classes,
    voc_split,
    yolo_classes,
)
from detector.data.layout import detect
from detector.engine.config import Config, ConfigError, DataConfig, ModelConfig, resolve_data_format
from detector.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_LOSS,
    AnchorGenerator,
    Backbone,
    FasterRCNN,
    GradientProbe,
    RegionProposalNetwork,
    RegressionLoss,
    RoIHeads,
    TorchvisionFasterRCNN,
    build_loss,
    load_trunk_state,
    named_weights,
)

logger = logging.getLogger(__name__)


def regression_losses(cfg: Config) -> tuple[tuple[RegressionLoss, float], tuple[RegressionLoss, float]]:
    """(loss, weight) of the box head and of the RPN. The RPN shares the box head's loss,
    parameters and weight unless loss.rpn_name names its own."""
    head = build_loss(cfg.loss.name, cfg.loss.args)
    head_weight = cfg.loss.weight if cfg.loss.weight is not None else head.default_weight
    if cfg.loss.rpn_name is None:
        return (head, head_weight), (head, head_weight)
    rpn = build_loss(cfg.loss.rpn_name, cfg.loss.rpn_args)
    rpn_weight = cfg.loss.rpn_weight if cfg.loss.rpn_weight is not None else rpn.default_weight
    return (head, head_weight), (rpn, rpn_weight)


def regression_loss_records(cfg: Config) -> dict[str, Any]:
    """Name, space, every parameter and the weight of each stage's regression loss, as a run
    records them."""
    if cfg.model.implementation == "torchvision":
        return {"box_head": dict(TORCHVISION_LOSS), "rpn": dict(TORCHVISION_LOSS)}
    (head, head_weight), (rpn, rpn_weight) = regression_losses(cfg)
    return {"box_head": _loss_record(head, head_weight), "rpn": _loss_record(rpn, rpn_weight)}


def _loss_record(loss: RegressionLoss, weight: float) -> dict[str, Any]:
    return {"name": loss.name, "space": loss.space, "params": loss.params, "weight": weight}


def load_trunk_weights(m: ModelConfig) -> dict[str, Tensor] | None:
    """The trunk's pretrained state dict named by ``model.weights`` (None without one), checked
    against the chosen trunk, so that a name, a file or a download that cannot serve fails
    before a run starts. Named weights come through torchvision's weights API and its cache
    (``$TORCH_HOME/hub/checkpoints``), downloaded once when not cached."""
    if m.weights is None:
        return None
    weights = named_weights(m.backbone, m.weights)
    if weights is None:
        state = _load_state_dict_file(m.weights)
    else:
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except OSError as exc:  # URLError included: offline, or the server refused
            file = os.path.basename(urlparse(weights.url).path)
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise ConfigError(
                f"option 'model.weights' is {m.weights!r} ({weights}): {file} is not in torchvision's cache and "
                f"cannot be downloaded ({getattr(exc, 'reason', exc)}); put {file} (from {weights.url}) into "
                f"{cache}/, or give a local state dict file with --weights PATH") from None
    try:  # the same check the model's trunk makes, on a skeleton, before anything is written
        load_trunk_state(getattr(torchvision.models, m.backbone)(weights=None), state, m.weights)
    except ValueError as exc:
        raise ConfigError(f"option 'model.weights': {exc}") from None
    return state


def _load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A local state dict (or a checkpoint holding one under ``state_dict``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"option 'model.weights': file not found: {file} (or give a torchvision weights "
                                "name such as imagenet)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a file that is not a state dict
        raise ConfigError(f"option 'model.weights': {file} cannot be read as a state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"option 'model.weights': {file} holds a {type(state).__name__}, not a state dict")
    return state


def image_normalisation(m: ModelConfig) -> dict[str, tuple[float, float, float]]:
    """The input normalisation the trunk's weights were trained with (ImageNet's without named
    weights, which is also what torchvision's ResNet weights use)."""
    weights = None if m.weights is None else named_weights(m.backbone, m.weights)
    if weights is None:
        return {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    transforms = weights.transforms()
    return {"image_mean": tuple(transforms.mean), "image_std": tuple(transforms.std)}


def build_model(cfg: Config, num_classes: int, trunk_state: dict[str, Tensor] | None = None) -> nn.Module:
    """Our detector, or torchvision's configured like it when model.implementation is torchvision.

    ``trunk_state``: the pretrained trunk of ``model.weights`` (``load_trunk_weights``); leave it
    out when a checkpoint will provide every weight. The architecture (frozen batch norms,
    frozen stages) follows ``model.weights`` either way, so a checkpoint always fits.
    """
    m = cfg.model
    backbone = Backbone(name=m.backbone, out_channels=m.feature_channels, pretrained=m.weights is not None,
                        trainable_layers=m.trainable_layers, trunk_state=trunk_state, trunk_source=str(m.weights))
    proposal_counts = {"rpn_pre_nms_top_n": {"train": m.rpn_pre_nms_top_n_train, "test": m.rpn_pre_nms_top_n_test},
                       "rpn_post_nms_top_n": {"train": m.rpn_post_nms_top_n_train, "test": m.rpn_post_nms_top_n_test}}
    if m.implementation == "torchvision":
        # Our trunk's layout, so a comparison of the two detectors differs only in the detector.
        memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        return TorchvisionFasterRCNN(
            backbone=backbone.to(memory_format=memory_format), num_classes=num_classes,
            anchor_sizes=m.anchor_sizes, aspect_ratios=m.aspect_ratios,
            **proposal_counts, rpn_nms_thresh=m.rpn_nms_thresh,
            rpn_fg_iou_thresh=m.rpn_fg_iou_thresh, rpn_bg_iou_thresh=m.rpn_bg_iou_thresh,
            rpn_batch_size_per_image=m.rpn_batch_size_per_image, rpn_positive_fraction=m.rpn_positive_fraction,
            roi_output_size=m.roi_output_size, roi_sampling_ratio=m.roi_sampling_ratio,
            representation_size=m.representation_size, box_score_thresh=m.box_score_thresh,
            box_nms_thresh=m.box_nms_thresh, detections_per_image=m.detections_per_image,
            box_fg_iou_thresh=m.box_fg_iou_thresh, box_bg_iou_thresh=m.box_bg_iou_thresh,
            box_batch_size_per_image=m.box_batch_size_per_image, box_positive_fraction=m.box_positive_fraction,
            **image_normalisation(m),
        )
    (head_loss, head_weight), (rpn_loss, rpn_weight) = regression_losses(cfg)
    anchors = AnchorGenerator(sizes=m.anchor_sizes, aspect_ratios=m.aspect_ratios, stride=backbone.stride,
                              offset=m.anchor_offset)
    rpn = RegionProposalNetwork(
        in_channels=backbone.out_channels, anchor_generator=anchors, regression_loss=rpn_loss,
        regression_weight=rpn_weight,
        fg_iou_thresh=m.rpn_fg_iou_thresh, bg_iou_thresh=m.rpn_bg_iou_thresh,
        batch_size_per_image=m.rpn_batch_size_per_image, positive_fraction=m.rpn_positive_fraction,
        pre_nms_top_n=proposal_counts["rpn_pre_nms_top_n"], post_nms_top_n=proposal_counts["rpn_post_nms_top_n"],
        nms_thresh=m.rpn_nms_thresh, min_size=m.rpn_min_size,
    )
    roi_heads = RoIHeads(
        in_channels=backbone.out_channels, num_classes=num_classes, spatial_scale=1.0 / backbone.stride,
        output_size=m.roi_output_size, sampling_ratio=m.roi_sampling_ratio, aligned=m.roi_aligned,
        representation_size=m.representation_size, predictor_init=m.predictor_init, regression_loss=head_loss,
        regression_weight=head_weight,
        fg_iou_thresh=m.box_fg_iou_thresh, bg_iou_thresh=m.box_bg_iou_thresh,
        batch_size_per_image=m.box_batch_size_per_image, positive_fraction=m.box_positive_fraction,
        score_thresh=m.box_score_thresh, nms_thresh=m.box_nms_thresh,
        detections_per_image=m.detections_per_image, roi_align_kernel=m.roi_align_kernel,
    )
    return FasterRCNN(backbone=backbone, rpn=rpn, roi_heads=roi_heads, channels_last=cfg.train.channels_last,
                      **image_normalisation(m))


def attach_gradient_probes(model: FasterRCNN) -> list[GradientProbe]:
    """Probes on the regression outputs of the box head and the RPN (gradients.csv)."""
    probes = []
    for name, head in (("box_head", model.roi_heads), ("rpn", model.rpn)):
        loss = head.regression_loss
        head.regression_probe = GradientProbe(name, loss.name, loss.gradient_bound)
        probes.append(head.regression_probe)
    return probes


def build_dataset(cfg: DataConfig, split: str, train: bool) -> DetectionDataset:
    """The dataset of ``split`` (cfg.train_split or cfg.val_split, or another split by name).

    ``train`` enables the random horizontal flip (when cfg.hflip); resizing applies to both.
    The image subset is cfg.max_train_images for the training split and cfg.max_val_images
    for the validation split (``train`` decides when both splits have the same name). With
    cfg.val_fraction both are parts of the training split. The classes are cfg.classes, or
    when empty :func:`resolve_classes`'s.
    """
    resolve_data_format(cfg)  # a configuration made without load() may still say auto
    transform = build_transform(cfg, train)
    role = split_role(cfg, split, train)
    holdout = Holdout(cfg.val_fraction, cfg.split_seed, role) if role and cfg.val_fraction > 0 else None
    options = dict(categories=cfg.categories, holdout=holdout, transform=transform, skip_bad_images=cfg.skip_bad_images,
                   max_images={"train": cfg.max_train_images, "val": cfg.max_val_images}.get(role))
    ensure_generated(cfg)
    if cfg.name == "shapes":
        dataset = CocoDetection(cfg.root, split, **options)
    elif cfg.name == "coco":
        dataset = CocoDetection(cfg.root, cfg.train_split if holdout else split, **_coco_files(cfg, role),
                                classes=cfg.classes or resolve_classes(cfg), **options)
    elif cfg.name == "voc":
        dataset = VocDetection(cfg.root, cfg.train_split if holdout else split, image_folder=cfg.image_folder,
                               annotation_folder=cfg.annotation_folder, classes=cfg.classes or resolve_classes(cfg),
                               **options)
    elif cfg.name == "yolo":
        dataset = YoloDetection(cfg.root, cfg.train_split if holdout else split, classes=cfg.classes or None, **options)
    else:
        raise ValueError(f"unknown dataset '{cfg.name}'; valid names: shapes, coco, voc, yolo")
    if train and cfg.train_box_noise > 0:
        dataset.records, _ = corrupt_boxes(dataset.records, cfg.train_box_noise, cfg.train_box_noise_seed)
    return dataset


def build_transform(cfg: DataConfig, train: bool) -> DetectionTransform:
    """The resize of training and validation images (and of the images predictions are made
    on); training images are also flipped when cfg.hflip."""
    return DetectionTransform(min_size=cfg.min_size, max_size=cfg.max_size, hflip=train and cfg.hflip)


def split_role(cfg: DataConfig, split: str, train: bool) -> str | None:
    """"train" or "val" when ``split`` is the configured training or validation split, else None."""
    if split == cfg.train_split and (train or split != cfg.val_split):
        return "train"
    return "val" if split == cfg.val_split else None


def _coco_files(cfg: DataConfig, role: str | None) -> dict[str, str | None]:
    """The reader's annotation_file and image_folder for the split of ``role`` (the held-out
    part of a division reads the training split's files)."""
    if role == "train" or (role == "val" and cfg.val_fraction > 0):
        return {"annotation_file": cfg.train_annotations, "image_folder": cfg.train_images}
    if role == "val":
        return {"annotation_file": cfg.val_annotations, "image_folder": cfg.val_images}
    return {}


def resolve_classes(cfg: DataConfig) -> list[str]:
    """The class list of a coco or voc configuration: cfg.classes, each of which some annotation
    must use (else a ConfigError names them and the classes that occur), or when empty the one
    found in the annotations of the training and validation splits, all their images read (voc:
    the names in the XML files, sorted, or the 20 PASCAL classes in their standard order when
    exactly those; coco: the categories that have annotations, in ascending id). [] for shapes,
    whose classes are its generator's. Training writes the list into the configuration first,
    so that it is recorded and the same for every run of a comparison."""
    if cfg.name == "shapes":
        return list(cfg.classes)
    found = _classes_found(cfg)
    unused = [name for name in cfg.classes if name not in found]
    if unused:
        raise ConfigError(f"option 'data.classes' names {', '.join(map(repr, unused))}, which no annotation uses; "
                          f"the classes that occur: {', '.join(found)}")
    return list(cfg.classes) or found


def _classes_found(cfg: DataConfig) -> list[str]:
    if cfg.name == "yolo":  # its names file: a class is its index there, used by a box or not
        return yolo_classes(cfg.root)
    roles = ("train",) if cfg.val_fraction > 0 else ("train", "val")
    splits = {role: cfg.train_split if role == "train" else cfg.val_split for role in roles}
    if cfg.name == "voc":
        classes = voc_classes([voc_split(cfg.root, splits[role], image_folder=cfg.image_folder,
                                         annotation_folder=cfg.annotation_folder, whole_folder=cfg.val_fraction > 0)
                               for role in roles])
    else:
        classes = coco_classes([coco_split_files(cfg.root, splits[role], **_coco_files(cfg, role))[0] for role in roles])
    if not cfg.classes:
        logger.info("%d classes found in the annotations of split %s: %s", len(classes),
                    " and ".join(map(repr, dict.fromkeys(splits.values()))), ", ".join(classes))
    return classes


def build_splits(cfg: DataConfig, *, train: bool = True) -> tuple[DetectionDataset | None, DetectionDataset]:
    """The training (when ``train``) and validation datasets, both read before an error stops
    the command, so that the bad files of both splits are listed at once; the splits must share
    their categories."""
    built: dict[str, DetectionDataset] = {}
    problems: list[str] = []
    for role, split in (("train", cfg.train_split), ("val", cfg.val_split)) if train else (("val", cfg.val_split),):
        try:
            built[role] = build_dataset(cfg, split, train=role == "train")
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("; and ".join(dict.fromkeys(problems)))  # one cause (a wrong root) is said once
    if train:
        check_same_categories(built["train"], built["val"])
    return built.get("train"), built["val"]


def check_same_categories(train: DetectionDataset, val: DetectionDataset) -> None:
    """The model's labels map to the training split's category ids, and validation detections
    are scored against the validation split's: both must agree."""
    if train.class_names != val.class_names or train.label_to_category_id != val.label_to_category_id:
        ids = {name: (train.label_to_category_id.get(label), val.label_to_category_id.get(label))
               for label, name in enumerate(train.class_names, start=1)}
        raise DataError(f"{val.source}: its classes or category ids differ from those of {train.source} "
                        f"(training: {train.class_names}, validation: {val.class_names}; ids {ids}); the splits "
                        f"must share their categories")


def ensure_generated(cfg: DataConfig) -> None:
    """Generate the shapes dataset when it is the one configured and not there yet."""
    resolve_data_format(cfg)
    if cfg.name == "shapes":
        ensure_shapes(cfg.root, image_size=cfg.shapes_image_size, num_train=cfg.shapes_num_train,
                      num_val=cfg.shapes_num_val, seed=cfg.shapes_seed)


# About 10 boxes of a class are the fewest a detector learns it from (a random-init trunk wants far more).
FEW_BOXES = 10


def data_summary(cfg: DataConfig, train: DetectionDataset, val: DetectionDataset) -> str:
    """One line on what a run trains on: the format, the images of each part, the classes, how
    the validation images were chosen."""
    classes = len(train.class_names)
    held = (f"; no validation split: {cfg.val_fraction:.0%} of the images held out (data.val_fraction, seed "
            f"{cfg.split_seed})" if cfg.val_fraction > 0 else "")
    layout = next((found.description for found in detect(cfg.root) if found.format == cfg.name), cfg.name)
    return (f"data: {layout} in {cfg.root}: {len(train)} training and {len(val)} validation images, {classes} "
            f"class{'es' if classes != 1 else ''}{held}")


def sufficiency_warnings(train: DetectionDataset) -> list[str]:
    """Warnings, with the numbers, where the training data cannot support a detector: classes
    with fewer than FEW_BOXES training boxes, or more classes than training images."""
    counts = {name: 0 for name in train.class_names}
    for record in train.records:
        for label in record.labels.tolist():
            counts[train.class_names[label - 1]] += 1
    warnings = []
    few = {name: count for name, count in counts.items() if count < FEW_BOXES}
    if few:
        listed = ", ".join(f"{name} {count}" for name, count in sorted(few.items(), key=lambda item: item[1])[:10])
        warnings.append(f"{len(few)} of {len(counts)} classes have fewer than {FEW_BOXES} training boxes ({listed}"
                        f"{', ...' if len(few) > 10 else ''}): too few to learn them; merge or drop such classes "
                        f"(data.categories) or label more")
    if len(counts) > len(train):
        warnings.append(f"{len(counts)} classes on {len(train)} training images: more classes than images cannot "
                        f"train a usable detector from a random-init trunk; use fewer classes or a pretrained one "
                        f"(--weights imagenet)")
    return warnings


def report_data(cfg: DataConfig, train: DetectionDataset, val: DetectionDataset) -> None:
    """Log what the data is and what it cannot support."""
    logger.info(data_summary(cfg, train, val))
    for warning in sufficiency_warnings(train):
        logger.warning(warning)
