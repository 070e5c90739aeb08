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

# The keys of GradientProbe.statistics, in the order gradients.csv lists them.
COLUMNS = ("step", "head", "loss", "count", "mean", "median", "p90", "p99", "max", "fraction_at_bound")


class GradientProbe:
    """Captures dL/d(output) of one head's regression output during backward."""

    def __init__(self, head: str, loss_name: str, bound: float | None):
        self.head = head
        self.loss_name = loss_name
        self.bound = bound
        self._grad: Tensor | None = None
        self._foreground: Tensor | None = None
        self._scale: Tensor | None = None

    def attach(self, output: Tensor, foreground: Tensor, scale: Tensor) -> None:
        """output (..., 4) regression output; foreground (...) mask; scale = weight / normaliser."""
        if not output.requires_grad:
            return
        self._foreground, self._scale = foreground.detach(), scale.detach()
        output.register_hook(self._store)

    def _store(self, grad: Tensor) -> None:
        self._grad = grad.detach()

    def statistics(self, step: int) -> dict | None:
        """Summary of the last captured gradient, or None if there was none (no foreground)."""
        if self._grad is None:
            return None
        # Boolean indexing syncs with the device; this runs only at logging steps.
        values = (self._grad[self._foreground] / self._scale).abs().flatten().float()
        self._grad = None
        if values.numel() == 0:
            return None
        quantiles = torch.quantile(values, torch.tensor([0.5, 0.9, 0.99], device=values.device))
        at_bound = float("nan")
        if self.bound is not None:
            at_bound = (values >= self.bound * (1 - 1e-3)).float().mean().item()
        return {"step": step, "head": self.head, "loss": self.loss_name, "count": values.numel(),
                "mean": values.mean().item(), "median": quantiles[0].item(), "p90": quantiles[1].item(),
                "p99": quantiles[2].item(), "max": values.max().item(), "fraction_at_bound": at_bound}
