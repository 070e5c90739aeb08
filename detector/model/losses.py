"""The box-regression loss registry and the one shared ``box_regression_loss``.

Every loss declares the space it works in:
- ``deltas``: it compares encoded offsets (dx, dy, dw, dh) and returns one value per element,
  shape (M, 4);
- ``boxes``: it compares decoded xyxy boxes and returns one value per box, shape (M,).
``box_regression_loss`` encodes or decodes as the loss needs, so a user never sets two
options that must agree (MMDetection's ``reg_decoded_bbox`` trap). Losses return unreduced
values; the heads sum them and own the normaliser.

A user's own loss is selected as ``package.module:function`` (see ``resolve``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from detector.model.boxes import BoxCoder, enclosing_box, paired_box_iou


@dataclass(frozen=True)
class RegressionLoss:
    """A registered loss bound to its parameters."""

    name: str
    space: str  # "deltas" | "boxes"
    fn: Callable[..., Tensor]
    default_weight: float
    params: dict = field(default_factory=dict)
    # |dL/dx| can never exceed this (None: unbounded or not per element); the gradient
    # statistics report the fraction of elements at the bound.
    gradient_bound: float | None = None

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.fn(pred, target, **self.params)


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Tensor]
    space: str
    default_weight: float
    # A number, or a function of the loss's parameters (balanced L1's bound is gamma).
    gradient_bound: float | Callable[[dict], float] | None


REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, space: str, default_weight: float = 1.0,
             gradient_bound: float | Callable[[dict], float] | None = None) -> Callable:
    """Decorator adding a loss to the registry under ``name``."""
    if space not in ("deltas", "boxes"):
        raise ValueError(f"loss '{name}': space must be 'deltas' or 'boxes', got {space!r}")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        REGISTRY[name] = _Entry(fn, space, default_weight, gradient_bound)
        return fn

    return decorator


def _parameters(fn: Callable) -> dict[str, object]:
    """A loss's parameters (everything after pred and target) with their defaults."""
    return {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[2:]}


def resolve(name: str) -> _Entry:
    """A registered name, or ``package.module:function`` for a user's own loss.

    A user's function takes (pred, target, **params) and may carry the attributes ``space``
    ("deltas" by default), ``default_weight`` (1.0) and ``gradient_bound`` (None).
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise KeyError(f"cannot load regression loss '{name}': {exc}") from None
        if inspect.isclass(fn):
            fn = fn()
        space = getattr(fn, "space", "deltas")
        if space not in ("deltas", "boxes"):
            raise ValueError(f"regression loss '{name}': space must be 'deltas' or 'boxes', got {space!r}")
        return _Entry(fn, space, float(getattr(fn, "default_weight", 1.0)),
                      getattr(fn, "gradient_bound", None))
    raise KeyError(
        f"unknown regression loss '{name}'{_did_you_mean(name, REGISTRY)}; valid losses: {', '.join(sorted(REGISTRY))} "
        "(or package.module:function for your own)"
    )


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def build_loss(name: str, args: dict | None = None) -> RegressionLoss:
    """Bind a loss to its parameters; unknown parameters are rejected by name.

    ``params`` of the result holds every parameter, defaults included, so that a run records
    exactly what it used.
    """
    entry = resolve(name)
    fn = entry.fn.forward if isinstance(entry.fn, torch.nn.Module) else entry.fn
    accepted = _parameters(fn)
    args = dict(args or {})
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise TypeError(
            f"regression loss '{name}' has no parameter {', '.join(map(repr, unknown))}"
            f"{_did_you_mean(unknown[0], accepted)}; "
            f"its parameters: {', '.join(accepted) or 'none'}"
        )
    params = {k: v for k, v in accepted.items() if v is not inspect.Parameter.empty}
    params |= {k: _like_default(name, k, v, accepted[k]) for k, v in args.items()}
    missing = sorted(set(accepted) - set(params))
    if missing:
        raise TypeError(f"regression loss '{name}' needs parameter(s) {', '.join(missing)}")
    bound = entry.gradient_bound(params) if callable(entry.gradient_bound) else entry.gradient_bound
    return RegressionLoss(name, entry.space, entry.fn, entry.default_weight, params, bound)


def _like_default(loss: str, key: str, value, default):
    """Coerce a parameter to its default's type: YAML reads ``1e-6`` as a string."""
    if isinstance(default, float) and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"regression loss '{loss}': parameter '{key}' must be a number, got {value!r}") from None
    return value


# --- delta-space losses: (M, 4), (M, 4) -> (M, 4) ------------------------------------------

@register("l1", space="deltas", gradient_bound=1.0)
def l1(pred: Tensor, target: Tensor) -> Tensor:
    """|x|; d/dx = sign(x): never shrinks near the optimum."""
    return F.l1_loss(pred, target, reduction="none")


@register("l2", space="deltas")
def l2(pred: Tensor, target: Tensor) -> Tensor:
    """x^2 (not 0.5 x^2); d/dx = 2x: grows with the error."""
    return F.mse_loss(pred, target, reduction="none")


@register("smooth_l1", space="deltas", gradient_bound=1.0)
def smooth_l1(pred: Tensor, target: Tensor, beta: float = 1.0 / 9) -> Tensor:
    """0.5 x^2 / beta for |x| < beta, |x| - 0.5 beta beyond; d/dx = x / beta, then +-1.

    beta defaults to 1/9, torchvision's value in both stages of its Faster R-CNN (Detectron used
    1/9 in the RPN and 1 in the box head; detectron2 defaults to 0, i.e. plain L1; MMDetection's
    Faster R-CNN configs use L1).
    """
    return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)


@register("balanced_l1", space="deltas", gradient_bound=lambda p: p["gamma"])
def balanced_l1(pred: Tensor, target: Tensor, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0) -> Tensor:
    """Libra R-CNN's balanced L1 (Pang et al. 2019), MMDetection's defaults.

    With x = |pred - target| and b = e^(gamma / alpha) - 1:
    alpha / b * (b x + 1) * ln(b x / beta + 1) - alpha x for x < beta, else
    gamma x + gamma / b - alpha beta. Its gradient alpha * ln(b x / beta + 1) rises faster
    than smooth L1's near 0 (inliers pull harder) and is capped at gamma beyond beta.
    """
    if alpha <= 0 or gamma <= 0 or beta <= 0:
        raise ValueError(f"balanced_l1 needs alpha, gamma, beta > 0, got {alpha}, {gamma}, {beta}")
    x = (pred - target).abs()
    b = math.exp(gamma / alpha) - 1
    inside = alpha / b * (b * x + 1) * torch.log(b * x / beta + 1) - alpha * x
    outside = gamma * x + gamma / b - alpha * beta
    return torch.where(x < beta, inside, outside)


# --- box-space losses: (M, 4) xyxy, (M, 4) xyxy -> (M,) ---------------------------------
# Default weight 10, as the GIoU paper's Faster R-CNN and MMDetection's configs use: an IoU
# loss is one number per box in [0, 2], where a delta loss sums four larger terms.

@register("iou", space="boxes", default_weight=10.0)
def iou_loss(pred: Tensor, target: Tensor, mode: str = "linear", eps: float = 1e-7) -> Tensor:
    """1 - IoU (``mode="linear"``) or -ln IoU (``mode="log"``, UnitBox, Yu et al. 2016)."""
    if mode not in ("linear", "log"):
        raise ValueError(f"iou loss: mode must be 'linear' or 'log', got {mode!r}")
    iou = paired_box_iou(pred, target, eps)
    return 1 - iou if mode == "linear" else -torch.log(iou.clamp(min=eps))


@register("giou", space="boxes", default_weight=10.0)
def giou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - GIoU (Rezatofighi et al. 2019), torchvision's implementation."""
    return torchvision.ops.generalized_box_iou_loss(pred, target, reduction="none", eps=eps)


@register("diou", space="boxes", default_weight=10.0)
def diou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - IoU + centre distance^2 / enclosing diagonal^2 (Zheng et al. 2020), torchvision's."""
    return torchvision.ops.distance_box_iou_loss(pred, target, reduction="none", eps=eps)


@register("ciou", space="boxes", default_weight=10.0)
def ciou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """DIoU plus alpha * v, v = 4/pi^2 (atan(w_t/h_t) - atan(w/h))^2 (Zheng et al. 2020).

    torchvision's ``complete_box_iou_loss`` with eps added to the heights, because its w/h is
    0/0 = nan for a zero-area box; equal to it wherever that is finite (tested).
    """
    distance = torchvision.ops.distance_box_iou_loss(pred, target, reduction="none", eps=eps)
    iou = paired_box_iou(pred, target, eps)
    wh_pred, wh_target = pred[:, 2:] - pred[:, :2], target[:, 2:] - target[:, :2]
    v = (4 / math.pi**2) * (torch.atan(wh_target[:, 0] / (wh_target[:, 1] + eps))
                            - torch.atan(wh_pred[:, 0] / (wh_pred[:, 1] + eps))) ** 2
    with torch.no_grad():  # the trade-off weight is a constant in the paper's gradient
        alpha = v / (1 - iou + v + eps)
    return distance + alpha * v


@register("eiou", space="boxes", default_weight=10.0)
def eiou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - IoU + rho^2(centres) / c^2 + (w - w_t)^2 / c_w^2 + (h - h_t)^2 / c_h^2.

    Zhang et al. 2022 (Focal and Efficient IoU loss), without the focal factor; c_w, c_h and
    c are the width, height and diagonal of the smallest enclosing box. torchvision has no
    EIoU, so it is written here.
    """
    iou, enclosure = paired_box_iou(pred, target, eps), enclosing_box(pred, target)
    enclose_wh = enclosure[:, 2:] - enclosure[:, :2]  # (M, 2)
    diagonal_sq = (enclose_wh**2).sum(dim=1) + eps
    centre_sq = (((pred[:, :2] + pred[:, 2:]) - (target[:, :2] + target[:, 2:])) / 2).pow(2).sum(dim=1)
    wh_pred, wh_target = pred[:, 2:] - pred[:, :2], target[:, 2:] - target[:, :2]
    size_terms = ((wh_pred - wh_target) ** 2 / (enclose_wh**2 + eps)).sum(dim=1)
    return 1 - iou + centre_sq / diagonal_sq + size_terms


def box_regression_loss(loss: RegressionLoss, pred_deltas: Tensor, target_boxes: Tensor,
                        reference_boxes: Tensor, coder: BoxCoder, foreground: Tensor) -> Tensor:
    """Summed regression loss over the foreground rows of (..., 4) predicted deltas.

    target_boxes and reference_boxes: (..., 4); foreground: (...) bool. Delta-space losses
    compare against the encoded targets; box-space losses compare the decoded predictions
    against the target boxes. Every row is computed and the others masked out, instead of
    indexing the foreground, because boolean indexing has a data-dependent shape and would
    synchronise the host with the device. The caller divides by its normaliser.

    Rows that are not foreground (background, ignored, padding) contribute exactly 0 and a zero
    gradient whatever their boxes: before any arithmetic their reference and target become
    one unit box and their prediction zero, so no zero-area box reaches a log or a division
    (0/0 = nan, and nan * 0 is still nan: a masked row must never compute one).
    """
    # fp32 even under mixed precision: bf16 resolves 0.5 px at 128 px, and decode's exp and
    # the IoU ratios overflow or cancel in fp16.
    pred_deltas, target_boxes, reference_boxes = pred_deltas.float(), target_boxes.float(), reference_boxes.float()
    keep = foreground[..., None]  # (..., 1)
    unit = reference_boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    reference_boxes = torch.where(keep, reference_boxes, unit)
    target_boxes = torch.where(keep, target_boxes, reference_boxes)
    pred_deltas = torch.where(keep, pred_deltas, 0.0)
    pred_deltas, target_boxes, reference_boxes = (t.reshape(-1, 4) for t in (pred_deltas, target_boxes, reference_boxes))
    rows = foreground.reshape(-1)  # (M,)
    if loss.space == "deltas":
        values = loss(pred_deltas, coder.encode(target_boxes, reference_boxes))  # (M, 4)
        return torch.where(rows[:, None], values, 0.0).sum()
    values = loss(coder.decode(pred_deltas, reference_boxes), target_boxes)  # (M,)
    return torch.where(rows, values, 0.0).sum()
