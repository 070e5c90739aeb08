"""Figures the engine writes itself, and how every figure of the project is saved: the figure of
one run (``results.png``: its training losses, learning rate, validation AP and regression
gradients), drawn at the end of each run and redrawn for one or several by scripts/plot_run.py."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from detector.engine import rundir  # noqa: E402
from detector.engine.io import atomic_path, read_csv_rows  # noqa: E402

FORMATS = ("png", "pdf", "svg")
DPI = 200  # of PNGs (and of the images inside a PDF or SVG)
RESULTS = "results.png"  # a run's own figure, in its run directory
SMOOTHING = 10  # logged steps in the moving average of the loss curves


def save_figure(fig, path: str | Path, palette: bool = False) -> Path:
    """Save and close ``fig``; the format follows the file's suffix (FORMATS: vector PDF or
    SVG for papers). Atomic: a reader never sees half a file. ``palette``: a PNG is stored with
    256 colours (photos: the bccd examples grid, 3840x2560 px, 2.9 MB -> 1.0 MB)."""
    path = Path(path)
    suffix = path.suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        if palette and suffix == "png":
            buffer = io.BytesIO()
            fig.savefig(buffer, dpi=DPI, format="png")
            Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
                tmp, format="png", optimize=True)
        else:
            fig.savefig(tmp, dpi=DPI, format=suffix)
    plt.close(fig)
    return path


def _series(rows: list[dict[str, str]], column: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(int(row["step"]), float(row[column])) for row in rows if row.get(column) not in (None, "")]
    return (np.array([p[0] for p in points]), np.array([p[1] for p in points])) if points else (np.zeros(0), np.zeros(0))


def moving_average(values: np.ndarray, window: int = SMOOTHING) -> np.ndarray:
    """Trailing moving average (shorter at the start), so noisy per-step losses can be compared."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(1, len(values) + 1) - counts]) / counts


def plot_runs(run_dirs: list[Path], path: str | Path) -> Path | None:
    """The figure of one or several runs (one colour each): training losses (total solid, each
    term thinner; moving average of SMOOTHING logged steps), the learning rate, validation AP,
    AP50 and AP at IoU 0.9 at each evaluation, and the median |dl/dx| of both regression heads.
    None when no run has a metrics.csv row."""
    tables = {Path(run).name: (read_csv_rows(Path(run) / rundir.METRICS_CSV), rundir.gradient_rows(run))
              for run in run_dirs}
    if not any(metrics for metrics, _ in tables.values()):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (name, (metrics, gradients)) in zip(colours * 4, tables.items()):
        _draw_run(axes, colour, "" if len(tables) == 1 else f"{name}: ", metrics, gradients)
    titles = (("training losses (moving average)", "loss", "log"), ("learning rate", "learning rate", "linear"),
              ("validation", "AP", "linear"), ("regression gradients: median |dl/dx|", "|dl/dx|", "log"))
    for ax, (title, ylabel, scale) in zip(axes.flat, titles):
        ax.set(title=title, xlabel="training step", ylabel=ylabel, yscale=scale)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[1, 0].set_ylim(0, 1)
    fig.tight_layout()
    return save_figure(fig, path)


def _draw_run(axes, colour: str, prefix: str, metrics: list[dict[str, str]], gradients: list[dict[str, str]]) -> None:
    """One run's curves on the four panels of plot_runs (``prefix``: its name, with several runs)."""
    terms = sorted({key for row in metrics for key in row if key.startswith("train/loss")})
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, column in enumerate(terms):
        steps, values = _series(metrics, column)
        if len(values):
            total = column == "train/loss"
            # One run: a colour per loss term; several: a colour per run, the total drawn thicker.
            axes[0, 0].plot(steps, moving_average(values),
                            color=palette[index % len(palette)] if not prefix else colour,
                            lw=2 if total else 1.0, alpha=1 if total or not prefix else 0.5,
                            label=prefix + column.split("/")[-1] if total or not prefix else None)
    for column in sorted({key for row in metrics for key in row if key.startswith("lr-")})[:1]:
        axes[0, 1].plot(*_series(metrics, column), color=colour, label=f"{prefix}{column}")
    for column, style in (("val/AP", "-o"), ("val/AP50", "--s"), ("val/AP90", ":^")):
        steps, values = _series(metrics, column)
        if len(values):
            axes[1, 0].plot(steps, values, style, color=colour, ms=4, label=prefix + column.split("/")[-1])
    for head, style in (("box_head", "-"), ("rpn", "--")):
        steps, values = _series([row for row in gradients if row["head"] == head], "median")
        if len(values):
            axes[1, 1].plot(steps, values, style, color=colour, label=f"{prefix}{head}")


def plot_pr_curves(curves: dict[str, Any], path: str | Path) -> Path:
    """Precision against recall per class at IoU 0.5 (solid) and 0.75 (dashed), from
    evaluation.precision_recall_curves."""
    fig, ax = plt.subplots(figsize=(8, 6))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, by_iou) in enumerate(curves["classes"].items()):
        for (threshold, precision), style in zip(by_iou.items(), ("-", "--")):
            points = [(r, p) for r, p in zip(curves["recall"], precision) if p is not None]
            if points:
                ax.plot(*zip(*points), style, color=palette[index % len(palette)],
                        label=f"{name} (IoU {threshold})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="precision-recall per class (IoU 0.5 solid, 0.75 dashed)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(confusion: dict[str, Any], path: str | Path) -> Path:
    """The confusion matrix of evaluation.confusion_at as counts, shaded by the share of its row."""
    matrix = np.array(confusion["matrix"], dtype=float)
    labels = confusion["labels"]
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    if len(labels) <= 30:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                ax.text(column, row, f"{int(count)}", ha="center", va="center", fontsize=7,
                        color="white" if shares[row, column] > 0.5 else "black")
    ax.set(xlabel="detected as", ylabel="true class",
           title=f"confusion at score >= {confusion['score_thresh']:g}, IoU >= {confusion['iou_thresh']:g}")
    fig.colorbar(image, ax=ax, label="share of the row")
    fig.tight_layout()
    return save_figure(fig, path)
