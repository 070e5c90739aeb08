"""Figures: each regression loss and its derivative; gradient statistics over training."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from detector.losses import REGISTRY, build_loss  # noqa: E402

# Delta-space curves drawn, with the parameters that make them distinct.
DELTA_CURVES = [("l2", {}), ("l1", {}), ("smooth_l1", {"beta": 1 / 9}), ("smooth_l1", {"beta": 1.0}),
                ("balanced_l1", {})]


def _label(name: str, params: dict) -> str:
    return name + (" (" + ", ".join(f"{k}={v:.3g}" for k, v in params.items()) + ")" if params else "")


def plot_loss_curves(path: str | Path) -> Path:
    """Delta losses and d/dx over x in [-3, 3]; box losses and their gradient against a centre
    offset and a scale error of a 10 x 10 box."""
    x = torch.linspace(-3, 3, 601)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for name, params in DELTA_CURVES:
        xs = x.clone().requires_grad_(True)
        values = build_loss(name, params)(xs[:, None], torch.zeros(len(x), 1)).squeeze(1)
        (grad,) = torch.autograd.grad(values.sum(), xs)
        axes[0, 0].plot(x, values.detach(), label=_label(name, params))
        axes[1, 0].plot(x, grad, label=_label(name, params))
    axes[0, 0].set(title="delta-space losses", xlabel="x = predicted - target offset", ylabel="loss", ylim=(0, 5))
    axes[1, 0].set(title="their derivatives", xlabel="x", ylabel="dl/dx", ylim=(-4, 4))

    box_names = sorted(n for n, e in REGISTRY.items() if e.space == "boxes")
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    offsets = torch.linspace(-15, 15, 601)  # centre offset in px (box width 10)
    scales = torch.linspace(0.2, 3.0, 561)  # predicted width / target width, centre fixed
    for name in box_names:
        loss = build_loss(name)
        shift = offsets.clone().requires_grad_(True)
        pred = torch.stack((shift, torch.zeros_like(shift), shift + 10, torch.full_like(shift, 10.0)), dim=1)
        values = loss(pred, target.expand(len(shift), 4))
        (grad,) = torch.autograd.grad(values.sum(), shift)
        axes[0, 1].plot(offsets, values.detach(), label=name)
        axes[1, 1].plot(offsets, grad, label=name)
        scale = scales.clone().requires_grad_(True)
        half = 5 * scale
        pred = torch.stack((5 - half, torch.zeros_like(scale), 5 + half, torch.full_like(scale, 10.0)), dim=1)
        values = loss(pred, target.expand(len(scale), 4))
        (grad,) = torch.autograd.grad(values.sum(), scale)
        axes[0, 2].plot(scales, values.detach(), label=name)
        axes[1, 2].plot(scales, grad, label=name)
    axes[0, 1].set(title="box-space losses vs centre offset (10 px box)", xlabel="offset (px)", ylabel="loss")
    axes[1, 1].set(title="gradient vs centre offset", xlabel="offset (px)", ylabel="dl/d offset")
    axes[0, 2].set(title="box-space losses vs scale error", xlabel="predicted width / true width", ylabel="loss")
    axes[1, 2].set(title="gradient vs scale error", xlabel="predicted width / true width", ylabel="dl/d scale")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.axvline(1.0 if ax in (axes[0, 2], axes[1, 2]) else 0.0, color="grey", lw=0.8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def read_gradient_rows(run_dir: str | Path) -> list[dict]:
    with (Path(run_dir) / "gradients.csv").open() as handle:
        return list(csv.DictReader(handle))


def plot_gradient_statistics(runs: dict[str, Path], path: str | Path) -> Path:
    """Median and p99 of |dl/dx| over training, box head and RPN, one colour per run."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 9), sharex=True)
    for colour, (label, run_dir) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], runs.items()):
        rows = read_gradient_rows(run_dir)
        for column, head in enumerate(("box_head", "rpn")):
            mine = [r for r in rows if r["head"] == head]
            if not mine:  # e.g. no RPN rows: nothing to draw for this head
                continue
            steps = [int(r["step"]) for r in mine]
            axes[0, column].plot(steps, [float(r["median"]) for r in mine], color=colour, label=f"{label} median")
            axes[0, column].plot(steps, [float(r["p99"]) for r in mine], color=colour, ls="--", label=f"{label} p99")
            bound = [float(r["fraction_at_bound"]) for r in mine]
            if any(b == b for b in bound):  # not all nan: the loss has a gradient bound
                axes[1, column].plot(steps, bound, color=colour, label=label)
    for column, head in enumerate(("box head", "RPN")):
        axes[0, column].set(title=f"{head}: |dl/dx| per foreground output", ylabel="|dl/dx|")
        if axes[0, column].lines:  # a log axis without data cannot be drawn
            axes[0, column].set_yscale("log")
        axes[1, column].set(title=f"{head}: fraction of outputs at the gradient bound", xlabel="training step",
                            ylabel="fraction", ylim=(0, 1))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a PNG
    return path
