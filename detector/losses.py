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

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.boxes import BoxCoder


@dataclass(frozen=True)
class RegressionLoss:
    """A registered loss bound to its parameters."""

    name: str
    space: str  # "deltas" | "boxes"
    fn: Callable[..., Tensor]
    default_weight: float
    params: dict = field(default_factory=dict)
    # |dL/dx| can never exceed this (None: unbounded); the gradient statistics report the
    # fraction of elements at the bound.
    gradient_bound: float | None = None

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.fn(pred, target, **self.params)


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., Tensor]
    space: str
    default_weight: float
    gradient_bound: float | None


REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, space: str, default_weight: float = 1.0,
             gradient_bound: float | None = None) -> Callable:
    """Decorator adding a loss to the registry under ``name``."""
    if space not in ("deltas", "boxes"):
        raise ValueError(f"loss '{name}': space must be 'deltas' or 'boxes', got {space!r}")

    def decorator(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        REGISTRY[name] = _Entry(fn, space, default_weight, gradient_bound)
        return fn

    return decorator


def _parameters(fn: Callable) -> list[str]:
    return [p.name for p in list(inspect.signature(fn).parameters.values())[2:]]


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
        f"unknown regression loss '{name}'; valid losses: {', '.join(sorted(REGISTRY))} "
        "(or package.module:function for your own)"
    )


def build_loss(name: str, args: dict | None = None) -> RegressionLoss:
    """Bind a loss to its parameters; unknown parameters are rejected by name."""
    entry = resolve(name)
    fn = entry.fn.forward if isinstance(entry.fn, torch.nn.Module) else entry.fn
    accepted = _parameters(fn)
    args = dict(args or {})
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise TypeError(
            f"regression loss '{name}' has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(accepted) or 'none'}"
        )
    return RegressionLoss(name, entry.space, entry.fn, entry.default_weight, args, entry.gradient_bound)


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

    beta defaults to 1/9, the value of torchvision's and Detectron's Faster R-CNN.
    """
    return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)


def box_regression_loss(loss: RegressionLoss, pred_deltas: Tensor, target_boxes: Tensor,
                        reference_boxes: Tensor, coder: BoxCoder, foreground: Tensor) -> Tensor:
    """Summed regression loss over the foreground elements of (..., 4) predicted deltas.

    target_boxes and reference_boxes: (..., 4); foreground: (...) bool. Delta-space losses
    compare against the encoded targets; box-space losses compare the decoded predictions
    against the target boxes. Every element is computed and the background masked out,
    instead of indexing the foreground, because boolean indexing has a data-dependent shape
    and would synchronise the host with the device. The caller divides by its normaliser.
    """
    # Background elements regress onto their own reference (zero deltas), so their
    # meaningless targets (e.g. zero-area padding) cannot produce inf * 0 = nan.
    target_boxes = torch.where(foreground[..., None], target_boxes, reference_boxes)
    pred_deltas, target_boxes, reference_boxes = (t.reshape(-1, 4) for t in (pred_deltas, target_boxes, reference_boxes))
    weight = foreground.reshape(-1).to(pred_deltas.dtype)  # (M,)
    if loss.space == "deltas":
        values = loss(pred_deltas, coder.encode(target_boxes, reference_boxes))  # (M, 4)
        return (values * weight[:, None]).sum()
    values = loss(coder.decode(pred_deltas, reference_boxes), target_boxes)  # (M,)
    return (values * weight).sum()
