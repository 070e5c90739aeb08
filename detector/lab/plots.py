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

from detector.engine import ConfigError  # noqa: E402
from detector.engine.drawing import text_colour  # noqa: E402
from detector.engine.figures import FORMATS, moving_average, save_figure  # noqa: E402
from detector.engine.outputs import check_new_file, default_location  # noqa: E402
from detector.engine.rundir import gradient_rows  # noqa: E402
from detector.model import REGISTRY, build_loss  # noqa: E402

# Markers per label where line styles have another meaning or there are no lines.
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
# Delta-space curves drawn, with the parameters that make them distinct.
DELTA_CURVES = [("l2", {}), ("l1", {}), ("smooth_l1", {"beta": 1 / 9}), ("smooth_l1", {"beta": 1.0}),
                ("balanced_l1", {})]


def plot_from_args(args: argparse.Namespace) -> Path:
    """``scripts/plot_losses.py``: every loss and its derivative, or the gradient statistics of
    the run directories given with ``--gradients``."""
    if args.out:
        out = Path(args.out).with_suffix(f".{args.format}") if args.format else Path(args.out)
    else:
        out = default_location("gradients" if args.gradients else "loss_curves", f".{args.format or 'png'}")
    if out.suffix.lstrip(".") not in FORMATS:
        raise ConfigError(f"--out {args.out}: a figure is written as {', '.join(FORMATS)}; choose a suffix or --format")
    check_new_file(out, overwrite=args.overwrite)
    if not args.gradients:
        return plot_loss_curves(out)
    tables = {}
    for run in map(Path, args.gradients):
        rows = gradient_rows(run)
        if not rows:
            raise FileNotFoundError(f"{run}: no gradients.csv rows (not a run directory, or gradient_stats off)")
        tables[run.name] = [rows]
    return plot_gradient_statistics(tables, out)


def _label(name: str, params: dict) -> str:
    return name + (" (" + ", ".join(f"{k}={v:.3g}" for k, v in params.items()) + ")" if params else "")


def plot_loss_curves(path: str | Path) -> Path:
    """Delta losses and d/dx over x in [-3, 3]; box losses and their gradient against a centre
    offset and a scale error of a 10 x 10 box."""
    x = torch.linspace(-3, 3, 601)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for style, width, (name, params) in zip(_styles(), _widths(len(DELTA_CURVES)), DELTA_CURVES):
        xs = x.clone().requires_grad_(True)
        values = build_loss(name, params)(xs[:, None], torch.zeros(len(x), 1)).squeeze(1)
        (grad,) = torch.autograd.grad(values.sum(), xs)
        axes[0, 0].plot(x, values.detach(), label=_label(name, params), lw=width, **style)
        axes[1, 0].plot(x, grad, label=_label(name, params), lw=width, **style)
    axes[0, 0].set(title="delta-space losses", xlabel="x = predicted - target offset", ylabel="loss", ylim=(0, 5))
    axes[1, 0].set(title="their derivatives", xlabel="x", ylabel="dl/dx", ylim=(-4, 4))

    box_names = sorted(n for n, e in REGISTRY.items() if e.space == "boxes")
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    offsets = torch.linspace(-15, 15, 601)  # centre offset in px (box width 10)
    scales = torch.linspace(0.2, 3.0, 561)  # predicted width / target width, centre fixed
    for style, width, name in zip(_styles(), _widths(len(box_names)), box_names):
        loss = build_loss(name)
        shift = offsets.clone().requires_grad_(True)
        pred = torch.stack((shift, torch.zeros_like(shift), shift + 10, torch.full_like(shift, 10.0)), dim=1)
        values = loss(pred, target.expand(len(shift), 4))
        (grad,) = torch.autograd.grad(values.sum(), shift)
        axes[0, 1].plot(offsets, values.detach(), label=name, lw=width, **style)
        axes[1, 1].plot(offsets, grad, label=name, lw=width, **style)
        scale = scales.clone().requires_grad_(True)
        half = 5 * scale
        pred = torch.stack((5 - half, torch.zeros_like(scale), 5 + half, torch.full_like(scale, 10.0)), dim=1)
        values = loss(pred, target.expand(len(scale), 4))
        (grad,) = torch.autograd.grad(values.sum(), scale)
        axes[0, 2].plot(scales, values.detach(), label=name, lw=width, **style)
        axes[1, 2].plot(scales, grad, label=name, lw=width, **style)
    axes[0, 1].set(title="box-space losses vs centre offset (10 px box)", xlabel="offset (px)", ylabel="loss")
    axes[1, 1].set(title="gradient vs centre offset", xlabel="offset (px)", ylabel="dl/d offset")
    axes[0, 2].set(title="box-space losses vs scale error", xlabel="predicted width / true width", ylabel="loss")
    axes[1, 2].set(title="gradient vs scale error", xlabel="predicted width / true width", ylabel="dl/d scale")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.axvline(1.0 if ax in (axes[0, 2], axes[1, 2]) else 0.0, color="grey", lw=0.8)
        ax.legend(fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)


def _styles() -> list[dict]:
    """A colour and a line style per curve: curves that coincide (l1 and smooth_l1 far from 0,
    diou and ciou against a centre offset) stay distinguishable where they overlap, and in
    print without colour."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dashes = ["-", "--", "-.", ":"]
    return [{"color": colours[i % len(colours)], "ls": dashes[i % len(dashes)]} for i in range(2 * len(colours))]


def _widths(count: int) -> list[float]:
    """Line widths from wide to thin: a curve drawn later over an identical one (diou and ciou
    against a centre offset) leaves the earlier one showing along both its edges."""
    return [1.2 + 0.8 * (count - 1 - i) for i in range(count)]


def _hollow_marker(index: int) -> dict:
    """The ``index``-th label's marker, hollow, so that two at the same point both show."""
    return {"marker": MARKERS[index % len(MARKERS)], "ms": 8, "mfc": "none", "mew": 1.5}


def _seeds_label(label: str, n: int, spread: str = "mean") -> str:
    """A legend entry that says how many runs a line stands for: one run has no mean or spread."""
    return f"{label} (single run)" if n == 1 else f"{label} ({spread} of {n} seeds)"


def _mean_over_seeds(series: list[dict[int, float]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Steps present in every seed's {step: value}, with the mean and std across seeds."""
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[step] for step in steps] for s in series], dtype=float).reshape(len(series), len(steps))
    std = values.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(steps))
    return steps, values.mean(axis=0), std


def plot_ap_vs_iou(curves: dict[str, list[dict[str, float]]], path: str | Path) -> Path:
    """AP at each IoU threshold 0.50..0.95, one line per label: ``curves[label]`` holds each
    seed's {threshold: AP}; the mean over seeds with a band of one std (a single run: its line)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for style, (label, seeds) in zip(_styles(), curves.items()):
        if not seeds:
            continue
        thresholds = list(seeds[0])
        values = np.array([[c[t] for t in thresholds] for c in seeds], dtype=float)
        centre = values.mean(axis=0)
        xs = [float(t) for t in thresholds]
        ax.plot(xs, centre, marker="o", ms=3, label=_seeds_label(label, len(seeds), "mean ± std"), **style)
        if len(seeds) > 1:
            spread = values.std(axis=0, ddof=1)
            ax.fill_between(xs, centre - spread, centre + spread, color=style["color"], alpha=0.15)
    ax.set(xlabel="IoU threshold", ylabel="AP", title="AP against IoU threshold", ylim=(0, 1))
    ax.grid(alpha=0.3)
    _legend(ax)
    return save_figure(fig, path)


def plot_ap_vs_noise(points: dict[str, dict[str, list[tuple[float, list[float]]]]], path: str | Path) -> Path:
    """AP and AP at IoU 0.9 against the fraction of displaced training boxes, one line per loss:
    ``points[loss][metric]`` is [(noise level, that level's values over seeds)], metric "AP" or "AP90"."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for style, (loss, metrics) in zip(_styles(), points.items()):
        for ax, metric in zip(axes, ("AP", "AP90")):
            series = [(x, v) for x, v in sorted(metrics.get(metric, [])) if v]
            if not series:
                continue
            centre = np.array([np.mean(v) for _, v in series])
            spread = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in series])
            runs = max(len(v) for _, v in series)
            ax.errorbar([x for x, _ in series], centre, yerr=spread if runs > 1 else None, marker="o", capsize=3,
                        label=_seeds_label(loss, runs, "mean ± std"), **style)
    for ax, title in zip(axes, ("AP", "AP at IoU 0.9")):
        ax.set(xlabel="fraction of training boxes displaced", ylabel=title, title=f"{title} against box noise")
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_metric_vs_option(curves: dict[str, list[tuple[float, list[float], list[int]]]], option: str, metric: str,
                          path: str | Path) -> Path:
    """``metric`` against a numeric option (a learning rate), one line per loss: ``curves[loss]``
    holds (option value, the completed seeds' values, the steps at which other seeds diverged).
    Means join as a line, single seeds are dots, diverged runs crosses at the bottom with their
    step; the x axis (ticks at the values tried) is logarithmic when they span more than a factor of 4."""
    fig, ax = plt.subplots(figsize=(8, 5))
    xs_all = [x for points in curves.values() for x, _, _ in points]
    for index, (style, (loss, points)) in enumerate(zip(_styles(), curves.items())):
        points = sorted(points)
        scored = [(x, float(np.mean(v))) for x, v, _ in points if v]
        if scored:
            ax.plot(*zip(*scored), marker="o", label=loss, **style)
        for x, values, diverged in points:
            ax.scatter([x] * len(values), values, color=style["color"], s=10, alpha=0.5)
            for step in diverged:
                ax.scatter([x], [0.0], marker="x", s=60, color=style["color"])
                ax.annotate(f"diverged at {step}", (x, 0.0), textcoords="offset points", xytext=(4, 6 + 10 * index),
                            fontsize=7, color=style["color"])
    if xs_all and max(xs_all) > 4 * min(xs_all) > 0:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xticks(sorted(set(xs_all)))  # the values tried, not round numbers between them
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set(xlabel=option, ylabel=metric, title=f"{metric} against {option}", ylim=(-0.03, 1))
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def _column(rows: list[dict[str, str]], column: str) -> dict[int, float]:
    return {int(r["step"]): float(r[column]) for r in rows if r.get(column) not in (None, "")}


def plot_training_curves(tables: dict[str, list[list[dict[str, str]]]], path: str | Path) -> Path | None:
    """Training loss, box-regression loss (both smoothed) against step, and validation AP at
    each evaluation (markers: there is nothing in between), one style per label:
    ``tables[label]`` holds each seed's metrics.csv rows. None when no table has any of these
    columns."""
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    drawn = False
    for index, (style, (label, seeds)) in enumerate(zip(_styles(), tables.items())):
        for ax, column in zip(axes, ("train/loss", "train/loss_box_reg", "val/AP")):
            series = [s for s in (_column(t, column) for t in seeds) if s]
            if not series:
                continue
            steps, centre, _ = _mean_over_seeds(series)
            if column == "val/AP":
                ax.plot(steps, centre, ls="none", color=style["color"], label=_seeds_label(label, len(series)),
                        **_hollow_marker(index))
            else:
                ax.plot(steps, moving_average(centre), lw=1.5, label=_seeds_label(label, len(series)), **style)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set(title="training loss (all terms)", xlabel="step", ylabel="loss", yscale="log")
    axes[1].set(title="box-head regression loss (its own scale per loss)", xlabel="step", ylabel="loss", yscale="log")
    axes[2].set(title="validation AP at each evaluation", xlabel="step", ylabel="AP")
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
    for index, (style, (label, seeds)) in enumerate(zip(_styles(), tables.items())):
        for column, head in enumerate(("box_head", "rpn")):
            mine = [[row for row in t if row["head"] == head] for t in seeds]
            mine = [t for t in mine if t]
            if not mine:
                continue
            for key, dash, row in (("median", "-", 0), ("p99", "--", 0), ("fraction_at_bound", "-", 1)):
                steps, centre, _ = _mean_over_seeds([{int(r["step"]): float(r[key]) for r in t} for t in mine])
                if row == 1 and np.isnan(centre).all():  # no gradient bound (e.g. l2)
                    continue
                # Line style tells median from p99 here; markers, each label's at other steps, tell the
                # labels apart where their lines coincide.
                axes[row, column].plot(steps, centre, color=style["color"], ls=dash, markevery=(0.03 * index, 0.1),
                                       label=_seeds_label(label, len(mine)) if key != "p99" else None,
                                       **_hollow_marker(index))
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


# One box to draw: [x, y, w, h] in image pixels, its label text and its colour (its class's).
Box = tuple[list[float], str, str]
# Label size at the saved size: the smallest a printed figure is read at.
EXAMPLE_FONT_PT = 9
EXAMPLE_PANEL_INCHES = 3.2


def plot_examples(images: list[np.ndarray], titles: list[str], boxes: list[list[list[Box]]],
                  path: str | Path) -> Path:
    """A grid of images (rows) drawn once per column: ``boxes[row][column]`` are the boxes of
    that panel (column 0 the ground truth, the others detections), with ``titles[column]``
    above the first row. Images are (H, W, 3) uint8. Labels are EXAMPLE_FONT_PT points at the
    saved size, on their box's colour."""
    columns = len(titles)
    fig, axes = plt.subplots(len(images), columns, figsize=(EXAMPLE_PANEL_INCHES * columns,
                                                            EXAMPLE_PANEL_INCHES * len(images)), squeeze=False)
    for row, image in enumerate(images):
        for column in range(columns):
            ax = axes[row, column]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            for (x, y, w, h), text, colour in boxes[row][column]:
                ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, edgecolor=colour, lw=1.5))
                ax.text(x, y, text, color=text_colour(colour), fontsize=EXAMPLE_FONT_PT, va="bottom", clip_on=True,
                        bbox={"facecolor": colour, "edgecolor": "none", "pad": 1, "alpha": 0.85})
            if row == 0:
                ax.set_title(titles[column], fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, palette=True)




def plot_label_grid(images: list[np.ndarray], titles: list[str], boxes: list[list[tuple[Box, bool]]],
                    legend: dict[str, str], path: str | Path) -> Path:
    """A grid of training images with their boxes: ``boxes[i]`` holds ((x, y, w, h), label text,
    colour) and whether training leaves the box out (dashed grey); ``legend``: class -> colour."""
    columns = max(1, min(4, len(images)))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(EXAMPLE_PANEL_INCHES * columns, EXAMPLE_PANEL_INCHES * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, title, drawn in zip(axes.flat, images, titles, boxes):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
        for ((x, y, w, h), text, colour), left_out in drawn:
            ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, lw=1.2, edgecolor="grey" if left_out else colour,
                                           ls="--" if left_out else "-"))
            if not left_out:
                ax.text(x, y, text, color=text_colour(colour), fontsize=EXAMPLE_FONT_PT - 2, va="bottom", clip_on=True,
                        bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5, "alpha": 0.85})
    handles = [patches.Patch(color=colour, label=name) for name, colour in legend.items()]
    handles.append(patches.Patch(facecolor="none", edgecolor="grey", ls="--", label="left out of training"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, path, palette=True)


def plot_class_counts(counts: dict[str, dict[str, int]], path: str | Path) -> Path:
    """Boxes per class of each split (``counts[split][class]``), as bars side by side."""
    classes = list(dict.fromkeys(name for split in counts.values() for name in split))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes) + 2), 4.5))
    width = 0.8 / max(1, len(counts))
    for index, (split, per_class) in enumerate(counts.items()):
        ax.bar(np.arange(len(classes)) + index * width, [per_class.get(name, 0) for name in classes], width, label=split)
    ax.set_xticks(np.arange(len(classes)) + width * (len(counts) - 1) / 2, classes, rotation=45, ha="right")
    ax.set(ylabel="boxes", title="boxes per class")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_box_sizes(sides: dict[str, np.ndarray], anchor_sizes: list[int], path: str | Path) -> Path:
    """Histogram of the boxes' sqrt(width * height) per split (log-spaced bins), with the anchor
    sizes marked."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    values = np.concatenate([v for v in sides.values() if len(v)] or [np.ones(1)])
    low, high = min(values.min(), min(anchor_sizes)) / 1.2, max(values.max(), max(anchor_sizes)) * 1.2
    bins = np.geomspace(low, high, 50)
    for (name, side), style in zip(sides.items(), _styles()):
        ax.hist(side, bins=bins, histtype="step", lw=1.5, **style, label=f"{name} ({len(side)} boxes)")
    for size in anchor_sizes:
        ax.axvline(size, color="grey", ls="--", lw=1)
        ax.text(size, 1.0, f" {size}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
    ax.set(xscale="log", xlabel="sqrt(box width x height) after resizing, px (dashed: anchor sizes)",
           ylabel="boxes", title="box sizes against the anchor sizes")
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())  # 10, 100 rather than 10^1, 10^2
    _legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


