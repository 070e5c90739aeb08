"""Figures: each regression loss and its derivative; gradient statistics over training; the
comparison report's plots (one line per condition, i.e. loss and noise level, mean over seeds)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import patches  # noqa: E402

from detector.losses import REGISTRY, build_loss  # noqa: E402

if TYPE_CHECKING:
    from detector.report import Condition

logger = logging.getLogger(__name__)

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


def plot_ap_vs_iou(conditions: list["Condition"], path: str | Path) -> Path:
    """AP at each IoU threshold 0.50..0.95: mean over seeds, band of one std."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for colour, condition in zip(_colours(), conditions):
        curves = [r["ap_per_iou"] for r in condition.completed if r["ap_per_iou"]]
        if not curves:
            continue
        thresholds = [float(t) for t in curves[0]]
        values = np.array([[c[t] for t in curves[0]] for c in curves], dtype=float)
        centre = values.mean(axis=0)
        ax.plot(thresholds, centre, marker="o", ms=3, color=colour, label=f"{condition.label} (n={len(curves)})")
        if len(curves) > 1:
            spread = values.std(axis=0, ddof=1)
            ax.fill_between(thresholds, centre - spread, centre + spread, color=colour, alpha=0.15)
    ax.set(xlabel="IoU threshold", ylabel="AP", title="AP against IoU threshold (mean ± std over seeds)", ylim=(0, 1))
    ax.grid(alpha=0.3)
    _legend(ax)
    return save_figure(fig, path)


def plot_ap_vs_noise(conditions: list["Condition"], path: str | Path) -> Path:
    """AP and AP at IoU 0.9 against the fraction of displaced training boxes, one line per loss."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    losses = list(dict.fromkeys(c.loss for c in conditions))
    for colour, loss in zip(_colours(), losses):
        mine = sorted((c for c in conditions if c.loss == loss and c.completed), key=lambda c: c.noise)
        for ax, metric in zip(axes, ("AP", "AP90")):
            points = [(c.noise, list(c.values(metric).values())) for c in mine]
            points = [(x, v) for x, v in points if v]
            if not points:
                continue
            xs = [x for x, _ in points]
            centre = np.array([np.mean(v) for _, v in points])
            spread = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in points])
            ax.errorbar(xs, centre, yerr=spread, marker="o", capsize=3, color=colour, label=loss)
    for ax, title in zip(axes, ("AP", "AP at IoU 0.9")):
        ax.set(xlabel="fraction of training boxes displaced", ylabel=title, title=f"{title} against box noise")
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def _read_metrics_csv(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _column(rows: list[dict[str, str]], column: str) -> dict[int, float]:
    return {int(r["step"]): float(r[column]) for r in rows if r.get(column) not in (None, "")}


def _smooth(values: np.ndarray, window: int = 10) -> np.ndarray:
    """Trailing moving average (shorter at the start), so noisy per-step losses can be compared."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(1, len(values) + 1) - counts]) / counts


def plot_training_curves(conditions: list["Condition"], path: str | Path) -> Path | None:
    """Training loss, box-regression loss (both smoothed) and validation AP against step;
    None when no run has a metrics.csv."""
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    drawn = False
    for colour, condition in zip(_colours(), conditions):
        tables = [t for t in (_read_metrics_csv(Path(r["path"])) for r in condition.runs) if t]
        for ax, column in zip(axes, ("train/loss", "train/loss_box_reg", "val/AP")):
            series = [s for s in (_column(t, column) for t in tables) if s]
            if not series:
                continue
            steps, centre, _ = _mean_over_seeds(series)
            if column == "val/AP":
                ax.plot(steps, centre, marker="o", color=colour, label=condition.label)
            else:
                ax.plot(steps, _smooth(centre), color=colour, label=condition.label)
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


def plot_gradient_groups(conditions: list["Condition"], path: str | Path) -> Path | None:
    """Median and p99 |dl/dx| and the fraction at the bound over training, box head and RPN,
    mean over each condition's seeds; None when no run has gradients.csv."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 9), sharex=True)
    drawn = False
    for colour, condition in zip(_colours(), conditions):
        tables = [read_gradient_rows(r["path"]) for r in condition.runs if (Path(r["path"]) / "gradients.csv").is_file()]
        for column, head in enumerate(("box_head", "rpn")):
            mine = [[row for row in t if row["head"] == head] for t in tables]
            mine = [t for t in mine if t]
            if not mine:
                continue
            for key, style, row in (("median", "-", 0), ("p99", "--", 0), ("fraction_at_bound", "-", 1)):
                steps, centre, _ = _mean_over_seeds([{int(r["step"]): float(r[key]) for r in t} for t in mine])
                if row == 1 and np.isnan(centre).all():  # no gradient bound (e.g. l2)
                    continue
                label = condition.label if key != "p99" else None
                axes[row, column].plot(steps, centre, color=colour, ls=style, label=label)
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


EXAMPLE_IMAGES = 4
EXAMPLE_MIN_OBJECTS = 3
EXAMPLE_SCORE = 0.5


def plot_examples(conditions: list["Condition"], path: str | Path) -> str | None:
    """A grid of validation images (rows) with the ground truth and each condition's detections
    (columns, first completed seed). Returns a caption naming the images, or None when the
    dataset is not available where the report is made (a report can be made far from the data)."""
    from detector import config as config_lib
    from detector.data import build_dataset

    runs = [(c, min(c.completed, key=lambda r: r["seed"] if r["seed"] is not None else 0)) for c in conditions if c.completed]
    runs = [(c, r) for c, r in runs if (Path(r["path"]) / "detections_val.json").is_file()]
    if not runs:
        return None
    try:
        raw = json.loads((Path(runs[0][1]["path"]) / "metrics.json").read_text())["config"]
        data_cfg = config_lib.from_dict(raw).data
        data_cfg.max_val_images = None
        dataset = build_dataset(data_cfg, data_cfg.val_split, train=False)
    except Exception as exc:  # noqa: BLE001 - any reason the data cannot be read only drops the figure
        logger.warning("example images left out of the report: the validation data cannot be read (%s)", exc)
        return None
    coco = dataset.coco
    index_of = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    chosen = [i for i in sorted(index_of) if len(coco.getAnnIds(imgIds=[i], iscrowd=None)) >= EXAMPLE_MIN_OBJECTS]
    chosen = (chosen or sorted(index_of))[:EXAMPLE_IMAGES]
    detections: list[dict[int, list[dict[str, Any]]]] = []
    for _, run in runs:
        by_image: dict[int, list[dict[str, Any]]] = {}
        for det in json.loads((Path(run["path"]) / "detections_val.json").read_text()):
            if det["score"] >= EXAMPLE_SCORE:
                by_image.setdefault(det["image_id"], []).append(det)
        detections.append(by_image)
    names = {cat["id"]: cat["name"] for cat in coco.dataset["categories"]}
    columns = 1 + len(runs)
    fig, axes = plt.subplots(len(chosen), columns, figsize=(2.6 * columns, 2.6 * len(chosen)), squeeze=False)
    for row, image_id in enumerate(chosen):
        image, _ = dataset[index_of[image_id]]  # uint8 (3, H, W) at the stored size
        for column in range(columns):
            ax = axes[row, column]
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                boxes = [(a["bbox"], names[a["category_id"]], "lime") for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
                title = f"ground truth (id {image_id})"
            else:
                boxes = [(d["bbox"], f"{names.get(d['category_id'], '?')} {d['score']:.2f}", "red")
                         for d in detections[column - 1].get(image_id, [])]
                title = runs[column - 1][0].label
            for (x, y, w, h), text, colour in boxes:
                ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, edgecolor=colour, lw=1))
                ax.text(x, y, text, color=colour, fontsize=5, va="bottom")
            if row == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return f"validation images {', '.join(map(str, chosen))}"


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a PNG
    return path
