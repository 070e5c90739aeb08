"""Gradient statistics of the regression outputs: the textbook argument, measured.

For the box head and the RPN separately, the magnitude of the regression loss's derivative
with respect to each foreground regression output, |dl/dx|, at logging steps. The raw
gradient that reaches the output is ``weight / normaliser * dl/dx``; it is divided back by
``weight / normaliser`` so the numbers are the loss's own derivative (2|x| for L2, 1 for L1
away from 0, ...) and can be compared with the textbook table. The hook costs nothing on
steps that are not logged beyond keeping a reference to an (N, S, 4) tensor.

A head computes its regression loss with a probe only when one is set on it
(``regression_probe``); the engine does so when ``train.gradient_stats`` is on.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The keys of GradientProbe.statistics' rows, in the order gradients.csv lists them. ``boxes``:
# which outputs a row describes, ``all`` of them or, with outlier labels, those whose matched
# ground truth was ``displaced`` and the ``clean`` rest; ``share``: their share of the summed |dl/dx|.
COLUMNS = ("step", "head", "loss", "boxes", "count", "mean", "median", "p90", "p99", "max", "fraction_at_bound",
           "share")
GROUPS = ("all", "displaced", "clean")


class GradientProbe:
    """Captures dL/d(output) of one head's regression output during backward."""

    def __init__(self, head: str, loss_name: str, bound: float | None):
        self.head = head
        self.loss_name = loss_name
        self.bound = bound
        self._grad: Tensor | None = None
        self._foreground: Tensor | None = None
        self._displaced: Tensor | None = None
        self._scale: Tensor | None = None

    def attach(self, output: Tensor, foreground: Tensor, scale: Tensor, displaced: Tensor | None = None) -> None:
        """output (..., 4) regression output; foreground (...) mask; scale = weight / normaliser;
        displaced (...): the outputs whose matched ground truth is an outlier label (None: no
        such labels in this run)."""
        if not output.requires_grad:
            return
        self._foreground, self._scale = foreground.detach(), scale.detach()
        self._displaced = None if displaced is None else displaced.detach()
        output.register_hook(self._store)

    def _store(self, grad: Tensor) -> None:
        self._grad = grad.detach()

    def statistics(self, step: int) -> list[dict]:
        """Rows summarising the last captured gradient: all foreground outputs, and with
        outlier labels the displaced and the clean ones apart; [] if there was none."""
        if self._grad is None:
            return []
        magnitudes = (self._grad / self._scale).abs().float()  # (..., 4)
        self._grad = None
        groups = {"all": self._foreground}
        if self._displaced is not None:
            groups.update(displaced=self._foreground & self._displaced, clean=self._foreground & ~self._displaced)
        # Boolean indexing syncs with the device; this runs only at logging steps.
        values = {name: magnitudes[mask].flatten() for name, mask in groups.items()}
        total = values["all"].sum().item()
        if values["all"].numel() == 0:
            return []
        return [self._row(step, name, group, total) for name, group in values.items()]

    def _row(self, step: int, name: str, values: Tensor, total: float) -> dict:
        row = {"step": step, "head": self.head, "loss": self.loss_name, "boxes": name, "count": values.numel(),
               "share": values.sum().item() / total if total > 0 else float("nan")}
        if values.numel() == 0:
            return {**row, **dict.fromkeys(("mean", "median", "p90", "p99", "max", "fraction_at_bound"), float("nan"))}
        quantiles = torch.quantile(values, torch.tensor([0.5, 0.9, 0.99], device=values.device))
        at_bound = float("nan")
        if self.bound is not None:
            at_bound = (values >= self.bound * (1 - 1e-3)).float().mean().item()
        return {**row, "mean": values.mean().item(), "median": quantiles[0].item(), "p90": quantiles[1].item(),
                "p99": quantiles[2].item(), "max": values.max().item(), "fraction_at_bound": at_bound}
