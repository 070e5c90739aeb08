"""Figures: each regression loss and its derivative; the comparison report's plots (one line per
condition, i.e. loss and noise level, mean over seeds) and the example detections.

Every figure takes plain data (dicts and lists of numbers, images as arrays), so it can be drawn
from anything: the report builds that data from run directories.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import patches, ticker  # noqa: E402

from detector.engine import atomic_path, read_csv_rows  # noqa: E402
from detector.model import REGISTRY, build_loss  # noqa: E402

# Delta-space curves drawn, with the parameters that make them distinct.
DELTA_CURVES = [("l2", {}), ("l1", {}), ("smooth_l1", {"beta": 1 / 9}), ("smooth_l1", {"beta": 1.0}),
                ("balanced_l1", {})]


def plot_from_args(args: argparse.Namespace) -> Path:
    """``scripts/plot_losses.py``: every loss and its derivative, or the gradient statistics of
    the run directories given with ``--gradients``."""
    if not args.gradients:
        return plot_loss_curves(args.out)
    tables = {}
    for run in map(Path, args.gradients):
        rows = read_csv_rows(run / "gradients.csv")
        if not rows:
            raise FileNotFoundError(f"{run}: no gradients.csv rows (not a run directory, or gradient_stats off)")
        tables[run.name] = [rows]
    return plot_gradient_statistics(tables, args.out)


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


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _colours() -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["black", "olive", "navy", "maroon"]


def _mean_over_seeds(series: list[dict[int, float]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Steps present in every seed's {step: value}, with the mean and std across seeds."""
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[step] for step in steps] for s in series], dtype=float).reshape(len(series), len(steps))
    std = values.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(steps))
    return steps, values.mean(axis=0), std


def plot_ap_vs_iou(curves: dict[str, list[dict[str, float]]], path: str | Path) -> Path:
    """AP at each IoU threshold 0.50..0.95, one line per label: ``curves[label]`` holds each
    seed's {threshold: AP}; mean over seeds with a band of one std."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for colour, (label, seeds) in zip(_colours(), curves.items()):
        if not seeds:
            continue
        thresholds = list(seeds[0])
        values = np.array([[c[t] for t in thresholds] for c in seeds], dtype=float)
        centre = values.mean(axis=0)
        xs = [float(t) for t in thresholds]
        ax.plot(xs, centre, marker="o", ms=3, color=colour, label=f"{label} (n={len(seeds)})")
        if len(seeds) > 1:
            spread = values.std(axis=0, ddof=1)
            ax.fill_between(xs, centre - spread, centre + spread, color=colour, alpha=0.15)
    ax.set(xlabel="IoU threshold", ylabel="AP", title="AP against IoU threshold (mean ± std over seeds)", ylim=(0, 1))
    ax.grid(alpha=0.3)
    _legend(ax)
    return save_figure(fig, path)


def plot_ap_vs_noise(points: dict[str, dict[str, list[tuple[float, list[float]]]]], path: str | Path) -> Path:
    """AP and AP at IoU 0.9 against the fraction of displaced training boxes, one line per loss:
    ``points[loss][metric]`` is [(noise level, that level's values over seeds)], metric "AP" or "AP90"."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for colour, (loss, metrics) in zip(_colours(), points.items()):
        for ax, metric in zip(axes, ("AP", "AP90")):
            series = [(x, v) for x, v in sorted(metrics.get(metric, [])) if v]
            if not series:
                continue
            centre = np.array([np.mean(v) for _, v in series])
            spread = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in series])
            ax.errorbar([x for x, _ in series], centre, yerr=spread, marker="o", capsize=3, color=colour, label=loss)
    for ax, title in zip(axes, ("AP", "AP at IoU 0.9")):
        ax.set(xlabel="fraction of training boxes displaced", ylabel=title, title=f"{title} against box noise")
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def _column(rows: list[dict[str, str]], column: str) -> dict[int, float]:
    return {int(r["step"]): float(r[column]) for r in rows if r.get(column) not in (None, "")}


def _smooth(values: np.ndarray, window: int = 10) -> np.ndarray:
    """Trailing moving average (shorter at the start), so noisy per-step losses can be compared."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(1, len(values) + 1) - counts]) / counts


def plot_training_curves(tables: dict[str, list[list[dict[str, str]]]], path: str | Path) -> Path | None:
    """Training loss, box-regression loss (both smoothed) and validation AP against step, one
    line per label: ``tables[label]`` holds each seed's metrics.csv rows. None when no table
    has any of these columns."""
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    drawn = False
    for colour, (label, seeds) in zip(_colours(), tables.items()):
        for ax, column in zip(axes, ("train/loss", "train/loss_box_reg", "val/AP")):
            series = [s for s in (_column(t, column) for t in seeds) if s]
            if not series:
                continue
            steps, centre, _ = _mean_over_seeds(series)
            if column == "val/AP":
                ax.plot(steps, centre, marker="o", color=colour, label=label)
            else:
                ax.plot(steps, _smooth(centre), color=colour, label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set(title="training loss (all terms)", xlabel="step", ylabel="loss", yscale="log")
    axes[1].set(title="box-head regression loss (its own scale per loss)", xlabel="step", ylabel="loss", yscale="log")
    axes[2].set(title="validation AP during training", xlabel="step", ylabel="AP")
    for ax in axes:
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_gradient_statistics(tables: dict[str, list[list[dict[str, str]]]], path: str | Path) -> Path | None:
    """Median and p99 |dl/dx| and the fraction at the gradient bound over training, box head and
    RPN, one colour per label: ``tables[label]`` holds each seed's gradients.csv rows (a single
    run is one seed), averaged over the seeds. None when no table has a row."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 9), sharex=True)
    drawn = False
    for colour, (label, seeds) in zip(_colours(), tables.items()):
        for column, head in enumerate(("box_head", "rpn")):
            mine = [[row for row in t if row["head"] == head] for t in seeds]
            mine = [t for t in mine if t]
            if not mine:
                continue
            for key, style, row in (("median", "-", 0), ("p99", "--", 0), ("fraction_at_bound", "-", 1)):
                steps, centre, _ = _mean_over_seeds([{int(r["step"]): float(r[key]) for r in t} for t in mine])
                if row == 1 and np.isnan(centre).all():  # no gradient bound (e.g. l2)
                    continue
                axes[row, column].plot(steps, centre, color=colour, ls=style, label=label if key != "p99" else None)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for column, head in enumerate(("box head", "RPN")):
        axes[0, column].set(title=f"{head}: |dl/dx| per foreground output (median solid, p99 dashed)",
                            ylabel="|dl/dx|", yscale="log")
        axes[1, column].set(title=f"{head}: fraction of outputs at the gradient bound", xlabel="training step",
                            ylabel="fraction", ylim=(0, 1.05))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


# One box to draw: [x, y, w, h] in image pixels and its label text.
Box = tuple[list[float], str]


def plot_examples(images: list[np.ndarray], titles: list[str], boxes: list[list[list[Box]]],
                  path: str | Path) -> Path:
    """A grid of images (rows) drawn once per column: ``boxes[row][column]`` are the boxes of
    that panel, column 0 being the ground truth (green) and the others detections (red), with
    ``titles[column]`` above the first row. Images are (H, W, 3) uint8."""
    columns = len(titles)
    fig, axes = plt.subplots(len(images), columns, figsize=(2.6 * columns, 2.6 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        for column in range(columns):
            ax = axes[row, column]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "lime" if column == 0 else "red"
            for (x, y, w, h), text in boxes[row][column]:
                ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, edgecolor=colour, lw=1))
                ax.text(x, y, text, color=colour, fontsize=5, va="bottom")
            if row == 0:
                ax.set_title(titles[column], fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_box_sizes(sides: dict[str, np.ndarray], anchor_sizes: list[int], path: str | Path) -> Path:
    """Histogram of the boxes' sqrt(width * height) per split (log-spaced bins), with the anchor
    sizes marked."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    values = np.concatenate([v for v in sides.values() if len(v)] or [np.ones(1)])
    low, high = min(values.min(), min(anchor_sizes)) / 1.2, max(values.max(), max(anchor_sizes)) * 1.2
    bins = np.geomspace(low, high, 50)
    for (name, side), colour in zip(sides.items(), _colours()):
        ax.hist(side, bins=bins, histtype="step", lw=1.5, color=colour, label=f"{name} ({len(side)} boxes)")
    for size in anchor_sizes:
        ax.axvline(size, color="grey", ls="--", lw=1)
        ax.text(size, 1.0, f" {size}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
    ax.set(xscale="log", xlabel="sqrt(box width x height) after resizing, px (dashed: anchor sizes)",
           ylabel="boxes", title="box sizes against the anchor sizes")
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())  # 10, 100 rather than 10^1, 10^2
    _legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Save and close ``fig``; the format follows the file's suffix. Atomic: a reader never
    sees half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
