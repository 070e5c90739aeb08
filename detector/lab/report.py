"""Reports: a pure function of run directories -> tables, intervals and plots.

Runs made on a laptop, a GPU box or a cluster can be compared in one table, because
everything needed is in each run directory (metrics.json, config.yaml, metrics.csv,
gradients.csv, detections_val.json).

Runs are grouped by condition: the box-head loss with its parameters, and the box-noise
level. Seeds are the repetitions of a condition. Each condition is compared with the baseline
loss at the same noise level, paired by seed: the interval is the 95% Student-t interval of the
per-seed differences, so seed-to-seed variation that both losses share cancels out.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from scipy import stats as scipy_stats

from detector.engine import atomic_write_json, atomic_write_text, build_dataset, read_csv_rows
from detector.engine import config as config_lib
from detector.engine.config import Config, ConfigError, DataConfig, from_dict
from detector.engine.drawing import class_colour
from detector.engine.outputs import claim_folder
from detector.engine.rundir import gradient_rows
from detector.engine.versions import describe
from detector.lab.plots import (
    plot_ap_vs_iou,
    plot_ap_vs_noise,
    plot_examples,
    plot_gradient_statistics,
    plot_training_curves,
)
from detector.lab.specs import parse_loss_spec, split_weight
from detector.model import build_loss

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "AP90", "AP_small", "AP_medium", "AP_large")
RUN_COLUMNS = ("run", "loss", "seed", "noise", "status", "steps", *METRICS, "VOC_AP50", "train_s", "code")
DIFFERENCE_METRICS = ("AP", "AP90")  # the baseline comparison: overall AP and tight localisation
GRADIENT_WINDOW = 5  # logged steps averaged at the start and at the end of training


# Options that do not make a condition (their declared roles): the repetition (seed), how and
# where a run executes, and the noise level, which is the report's own axis.
NOT_CONDITIONS = config_lib.options_where(lambda roles: not roles.condition)
# What a condition's loss label already says (the box head's loss and its parameters, defaults
# included, from metrics.json).
NAMED_BY_THE_LOSS = ("loss.name", "loss.args")


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """One row of the report from a run directory's metrics.json."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json (not a run directory)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    config = metrics.get("config") or {}
    loss = metrics.get("loss", {}).get("box_head", {})
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in loss.get("params", {}).items())
    val = metrics.get("val") or {}
    stats = val.get("stats", {})
    row: dict[str, Any] = {
        "run": run_dir.name,
        "loss_name": loss.get("name") or config.get("loss", {}).get("name", "?"),
        "loss": (loss.get("name") or config.get("loss", {}).get("name", "?")) + (f" ({params})" if params else ""),
        "seed": config.get("train", {}).get("seed"),
        "noise": float(config.get("data", {}).get("train_box_noise", 0.0)),
        "dataset": config.get("data", {}).get("name"),
        "data": config.get("data", {}),
        "status": metrics.get("status", "unknown"),
        "steps": metrics.get("steps"),
        "diverged_at_step": metrics.get("diverged_at_step"),
        "train_s": metrics.get("timings", {}).get("train_s"),
        "total_s": metrics.get("timings", {}).get("total_s"),
        "ap_per_iou": val.get("ap_per_iou", {}),
        "VOC_AP50": val.get("voc_ap50"),
        "params": loss.get("params", {}),
        # every option, those a run made before the option existed taking its default
        "options": {key: value for section, values in config.items() if isinstance(values, dict)
                    for key, value in ((f"{section}.{k}", v) for k, v in values.items())},
        "code": describe(metrics.get("code")),
        "path": str(run_dir),
    }
    for key in METRICS:
        row[key] = stats.get(key)
    row["AP90"] = row["ap_per_iou"].get("0.90")
    return row


@dataclass
class Condition:
    """Every seed of one loss (with its parameters) at one box-noise level, with the other
    options in which the report's runs differ (e.g. train.grad_clip), where they are not default."""

    loss: str
    loss_name: str
    noise: float
    runs: list[dict[str, Any]] = field(default_factory=list)
    options: tuple[tuple[str, Any], ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["status"] == "completed"]

    @property
    def label(self) -> str:
        parts = [self.loss, *(f"{key.split('.')[-1]}={value}" for key, value in self.options)]
        return ", ".join(parts + ([f"noise {self.noise:g}"] if self.noise else []))

    def values(self, metric: str) -> dict[int, float]:
        """seed -> metric over the completed runs that report it (n/a, i.e. -1, left out)."""
        return {r["seed"]: r[metric] for r in self.completed if r.get(metric) is not None and r[metric] >= 0}


def group_runs(rows: list[dict[str, Any]]) -> list[Condition]:
    """Conditions in order of first appearance, noise levels ascending. Runs are one condition
    when they share the loss with its parameters, the noise level, and every option in which
    the report's runs differ (NOT_CONDITIONS aside), the loss's weight and the RPN's loss included."""
    defaults = config_lib.flatten(Config())
    varying = sorted(key for key in defaults if key not in NOT_CONDITIONS and key not in NAMED_BY_THE_LOSS
                     and len({repr(r["options"].get(key, defaults[key])) for r in rows}) > 1)
    groups: dict[tuple, Condition] = {}
    for row in rows:
        options = tuple((key, row["options"].get(key, defaults[key])) for key in varying
                        if row["options"].get(key, defaults[key]) != defaults[key])
        key = (row["loss"], row["noise"], options)
        groups.setdefault(key, Condition(row["loss"], row["loss_name"], row["noise"], options=options,
                                         params=row["params"])).runs.append(row)
    order = {key: i for i, key in enumerate(groups)}
    return sorted(groups.values(), key=lambda c: (c.noise, order[(c.loss, c.noise, c.options)]))


def find_baseline(conditions: list[Condition], baseline: str, noise: float) -> Condition | None:
    """The condition of the ``baseline`` loss spec (``smooth_l1``: its default parameters, or
    ``smooth_l1(beta=0.5)``, or ``l2(weight=4.5)``) at ``noise``, with every other option at its default."""
    name, params = parse_loss_spec(baseline)
    params, weight = split_weight(params)
    wanted = build_loss(name, params).params
    options = {} if weight is None else {"loss.weight": weight}
    return next((c for c in conditions if c.loss_name == name and c.noise == noise and dict(c.options) == options
                 and all(_same(c.params.get(k), v) for k, v in wanted.items())), None)


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6))


@dataclass(frozen=True)
class Difference:
    """mean(condition - baseline) over paired seeds and its 95% interval (None with one pair)."""

    mean: float
    low: float | None
    high: float | None
    pairs: int


def paired_difference(values: dict[int, float], baseline: dict[int, float], confidence: float = 0.95) -> Difference | None:
    """Student-t interval of the per-seed differences; None when no seed is in both."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    centre = mean(diffs)
    if len(diffs) < 2:
        return Difference(centre, None, None, 1)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * stdev(diffs) / math.sqrt(len(diffs))
    return Difference(centre, centre - half, centre + half, len(diffs))


def summarise(conditions: list[Condition], baseline: str) -> list[dict[str, Any]]:
    """One summary row per condition: mean and std over seeds, the paired difference to the
    baseline loss at the same noise level, mean training time, and the status of every run."""
    rows = []
    for condition in conditions:
        base = find_baseline(conditions, baseline, condition.noise)
        row: dict[str, Any] = {"condition": condition.label, "loss": condition.loss, "noise": condition.noise,
                               "runs": len(condition.runs), "completed": len(condition.completed),
                               "statuses": _status_summary(condition.runs)}
        for metric in METRICS + ("VOC_AP50",):
            values = list(condition.values(metric).values())
            row[f"{metric}_mean"] = mean(values) if values else None
            row[f"{metric}_std"] = stdev(values) if len(values) > 1 else None
        for metric in DIFFERENCE_METRICS:
            difference = None if base is None or base is condition else paired_difference(
                condition.values(metric), base.values(metric))
            row[f"d{metric}"] = difference
        times = [r["train_s"] for r in condition.completed if r.get("train_s") is not None]
        row["train_s_mean"] = mean(times) if times else None
        rows.append(row)
    return rows


def _status_summary(runs: list[dict[str, Any]]) -> str:
    parts = []
    for run in runs:
        if run["status"] == "diverged":
            parts.append(f"seed {run['seed']} diverged at step {run['diverged_at_step']}")
        elif run["status"] != "completed":
            parts.append(f"seed {run['seed']} {run['status']}")
    return "; ".join(parts) or "all completed"


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "n/a" if value < 0 else f"{value:.{digits}f}"
    return str(value)


def _mean_std(row: dict[str, Any], metric: str) -> str:
    centre, spread = row[f"{metric}_mean"], row[f"{metric}_std"]
    if centre is None:
        return "-"
    return f"{centre:.3f}" + (f" ± {spread:.3f}" if spread is not None else "")


def _difference(difference: Difference | None) -> str:
    if difference is None:
        return "-"
    if difference.low is None:
        return f"{difference.mean:+.3f} (1 seed, no interval)"
    return f"{difference.mean:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]"


def summary_table(summary: list[dict[str, Any]], baseline: str, with_voc: bool) -> str:
    metrics = list(METRICS) + (["VOC_AP50"] if with_voc else [])
    header = ["condition", "seeds", *metrics, *[f"Δ{m} vs {baseline} [95% CI]" for m in DIFFERENCE_METRICS],
              "train min", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary:
        cells = [row["condition"], f"{row['completed']}/{row['runs']}", *[_mean_std(row, m) for m in metrics],
                 *[_difference(row[f"d{m}"]) for m in DIFFERENCE_METRICS],
                 _number(row["train_s_mean"] / 60 if row["train_s_mean"] is not None else None, 1), row["statuses"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(rows: list[dict[str, Any]], with_voc: bool) -> str:
    columns = [c for c in RUN_COLUMNS if with_voc or c != "VOC_AP50"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            if column == "status" and value == "diverged":
                value = f"diverged at step {row['diverged_at_step']}"
            elif column == "noise":
                value = f"{value:g}"
            elif column == "train_s":
                value = _number(value, 0)
            cells.append(_number(value) if column not in ("status", "noise", "train_s", "code") else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gradient_summary(conditions: list[Condition]) -> str:
    """Markdown table: |dl/dx| statistics of each condition, box head and RPN, averaged over
    the first and the last ``GRADIENT_WINDOW`` logged steps of each run, then over the runs
    (the seeds) that wrote gradients.csv; "at bound" is the fraction of outputs at the loss's
    gradient bound (for smooth L1, 1 - at bound is the fraction in its quadratic zone)."""
    lines = ["| condition | seeds | head | steps | median | p99 | max | at bound | steps | median | p99 | max "
             "| at bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for condition in conditions:
        tables = [gradient_rows(r["path"]) for r in condition.runs]
        for head in ("box_head", "rpn"):
            per_run = [[r for r in rows if r["head"] == head] for rows in tables]
            per_run = [rows for rows in per_run if rows]
            if not per_run:
                continue
            cells = []
            for window in (slice(None, GRADIENT_WINDOW), slice(-GRADIENT_WINDOW, None)):
                windows = [rows[window] for rows in per_run]
                avg = {k: mean(mean(float(r[k]) for r in w) for w in windows)
                       for k in ("median", "p99", "max", "fraction_at_bound")}
                bound = "-" if math.isnan(avg["fraction_at_bound"]) else f"{avg['fraction_at_bound']:.2f}"
                steps = f"{windows[0][0]['step']}-{windows[0][-1]['step']}"
                cells += [steps, f"{avg['median']:.3f}", f"{avg['p99']:.3f}", f"{avg['max']:.3f}", bound]
            lines.append(f"| {condition.label} | {len(per_run)} | {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def outlier_gradient_summary(conditions: list[Condition]) -> str | None:
    """Markdown table: for each condition with displaced boxes and each head, the displaced
    outputs' share of the foreground outputs and of the summed |dl/dx| (each the mean over the
    run's logged steps, then over its seeds), their ratio (above 1: a displaced output pulls
    harder than the average one), and the median |dl/dx| of displaced and clean outputs. None
    when no run recorded the split."""
    lines = ["| condition | seeds | head | share of outputs | share of Σ\\|dl/dx\\| | ratio | median displaced "
             "| median clean |", "|---|---|---|---|---|---|---|---|"]
    for condition in conditions:
        for head in ("box_head", "rpn"):
            per_run = []
            for run in condition.runs:
                groups = {boxes: {row["step"]: row for row in gradient_rows(run["path"], boxes) if row["head"] == head}
                          for boxes in ("all", "displaced", "clean")}
                steps = [step for step in groups["displaced"] if float(groups["all"][step]["count"]) > 0]
                if steps:
                    per_run.append({
                        "outputs": mean(float(groups["displaced"][s]["count"]) / float(groups["all"][s]["count"])
                                        for s in steps),
                        "gradient": mean(float(groups["displaced"][s]["share"]) for s in steps),
                        "median displaced": _nanmean(float(groups["displaced"][s]["median"]) for s in steps),
                        "median clean": _nanmean(float(groups["clean"][s]["median"]) for s in steps)})
            if not per_run:
                continue
            avg = {key: _nanmean(run[key] for run in per_run) for key in per_run[0]}
            ratio = avg["gradient"] / avg["outputs"] if avg["outputs"] > 0 else float("nan")
            lines.append(f"| {condition.label} | {len(per_run)} | {head} | {avg['outputs']:.1%} | {avg['gradient']:.1%} "
                         f"| {ratio:.2f} | {avg['median displaced']:.3f} | {avg['median clean']:.3f} |")
    return "\n".join(lines) if len(lines) > 2 else None


def _nanmean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return mean(finite) if finite else float("nan")


# The options that say which images a run was trained and scored on (their declared roles),
# without "data."; the shapes generator's only for shapes runs. data.root is compared by its last
# folder name: runs made on different machines keep the same dataset in other places.
DATASET_OPTIONS = tuple(key.partition(".")[2] for key in config_lib.options_where(lambda roles: roles.dataset))
SHAPES_OPTIONS = tuple(key.partition(".")[2] for key in config_lib.options_where(
    lambda roles: roles.dataset and roles.readers == ("shapes",)))


def check_same_dataset(rows: list[dict[str, Any]]) -> None:
    """Refuse to compare runs of different datasets, naming the first option that differs."""
    defaults = dataclasses.asdict(DataConfig())  # runs made before an option existed had its default

    def identity(row: dict[str, Any]) -> dict[str, Any]:
        data = row["data"]
        keys = [key for key in DATASET_OPTIONS if data.get("name") == "shapes" or key not in SHAPES_OPTIONS]
        values = {f"data.{key}": data.get(key, defaults[key]) for key in keys}
        values["data.root"] = Path(str(data.get("root"))).name if data.get("root") else None
        return values

    first = identity(rows[0]) if rows else {}
    for row in rows[1:]:
        for key, value in identity(row).items():
            if value != first.get(key):
                raise ConfigError(f"{row['path']} and {rows[0]['path']} were made on different datasets "
                                  f"({key}: {value!r} != {first.get(key)!r}); a report compares runs of one dataset")


def code_versions(rows: list[dict[str, Any]]) -> str:
    """The code version of the runs (the "code" column of the run table); a warning when they
    come from more than one, which is also logged."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["code"]] = counts.get(row["code"], 0) + 1
    if len(counts) == 1:
        return f"Code version of every run: {next(iter(counts))}."
    listed = "; ".join(f"{version}: {count} run{'s' * (count > 1)}" for version, count in counts.items())
    logger.warning("the runs of this report come from %d code versions (%s)", len(counts), listed)
    return (f"**Warning: these runs come from {len(counts)} code versions ({listed}); a difference between "
            "conditions may partly be a difference between code versions (see the code column below).**")


def write_report(run_dirs: list[str | Path], out_dir: str | Path, command: str, baseline: str = "smooth_l1",
                 fmt: str = "png") -> Path:
    """report.md (tables and figures in format ``fmt``: png, pdf or svg), results.csv (one row
    per run) and results.json in ``out_dir``: a new or empty folder, or one holding an earlier
    report, which this one replaces (engine/outputs.py)."""
    out_dir = Path(out_dir)
    rows = [load_run(d) for d in run_dirs]
    check_same_dataset(rows)
    conditions = group_runs(rows)
    summary = summarise(conditions, baseline)
    with_voc = any(r["VOC_AP50"] is not None for r in rows)
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    single = all(len(c.completed) <= 1 for c in conditions)
    over_seeds = "single runs (one seed per condition)" if single else "mean over seeds"

    folder = claim_folder(out_dir, "report")
    written = ["report.md", "results.csv", "results.json"]

    def figure(name: str, caption: str) -> str:
        written.append(f"{name}.{fmt}")
        return f"![{caption}]({name}.{fmt})"

    sections = [
        "# Regression-loss comparison",
        f"Made by `{command}` from {len(rows)} run directories (seeds {', '.join(map(str, seeds))}).",
        code_versions(rows),
        "## Summary",
        ("One completed seed per condition: single runs, without a standard deviation or an interval. "
         if single else "Mean ± standard deviation over the completed seeds of each condition (a single value: "
                        "one completed seed). ") +
        f"Δ: mean of the per-seed differences to {baseline} at the same noise level, with its 95% Student-t "
        "interval (paired by seed); an interval that contains 0 means the seeds cannot tell the two losses apart. "
        "AP90: AP at IoU 0.9.",
        summary_table(summary, baseline, with_voc),
        "## AP against IoU threshold",
        figure("ap_vs_iou", "AP against IoU threshold"),
    ]
    plot_ap_vs_iou({c.label: [r["ap_per_iou"] for r in c.completed if r["ap_per_iou"]] for c in conditions},
                   out_dir / f"ap_vs_iou.{fmt}")
    if len({c.noise for c in conditions}) > 1:
        plot_ap_vs_noise(_noise_points(conditions), out_dir / f"ap_vs_noise.{fmt}")
        sections += ["## AP against box noise",
                     "Training boxes displaced as outlier labels (`--train-box-noise`); validation is clean.",
                     figure("ap_vs_noise", "AP against box noise")]
    if plot_training_curves(_run_tables(conditions, "metrics.csv"), out_dir / f"training.{fmt}"):
        sections += ["## Training", f"Training losses (smoothed) and validation AP at each evaluation, {over_seeds}.",
                     figure("training", "training curves")]
    if plot_gradient_statistics(_gradient_tables(conditions), out_dir / f"gradients.{fmt}"):
        sections += ["## Regression gradients during training",
                     f"|dl/dx| of the foreground regression outputs (median solid, p99 dashed; {over_seeds}) "
                     "and the fraction of outputs at the loss's gradient bound.",
                     figure("gradients", "gradient statistics"),
                     f"Averaged over the first and the last {GRADIENT_WINDOW} logged steps of each run, then "
                     "over the condition's seeds; at bound: the fraction of outputs at the loss's gradient bound "
                     "(for smooth L1, the rest are in its quadratic zone, |x| < β):",
                     gradient_summary(conditions)]
    outliers = outlier_gradient_summary(conditions)
    if outliers:
        sections += ["## The regression gradient carried by the displaced boxes",
                     "With box noise, gradients.csv describes the foreground outputs whose matched ground truth was "
                     "displaced apart from the clean ones. Share of outputs: the displaced ones among the foreground "
                     "outputs; share of Σ|dl/dx|: their part of the summed |dl/dx|; ratio: the second over the first "
                     "(1: a displaced output pulls as hard as the average one). Each the mean over a run's logged "
                     "steps, then over the condition's seeds:",
                     outliers]
    examples = write_examples(conditions, out_dir / f"examples.{fmt}")
    if examples:
        sections += ["## Example validation images",
                     f"Ground truth and each condition's detections with score ≥ {EXAMPLE_SCORE} (first seed), in "
                     f"one colour per class: {examples}.",
                     figure("examples", "example detections")]
    sections += ["## Every run", run_table(rows, with_voc)]
    atomic_write_text(out_dir / "report.md", "\n\n".join(sections) + "\n")

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RUN_COLUMNS) + ["diverged_at_step", "total_s", "path"],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    atomic_write_json(out_dir / "results.json", {
        "command": command,
        "baseline": baseline,
        "summary": [_jsonable(row) for row in summary],
        "runs": [{k: v for k, v in r.items() if k not in ("path", "data")} for r in rows],
    })
    folder.finish(written)
    return out_dir / "report.md"


def _noise_points(conditions: list[Condition]) -> dict[str, dict[str, list[tuple[float, list[float]]]]]:
    """loss -> metric -> [(noise level, the level's values over seeds)], for the noise plot."""
    points: dict[str, dict[str, list[tuple[float, list[float]]]]] = {}
    for condition in conditions:
        for metric in ("AP", "AP90"):
            values = list(condition.values(metric).values())
            points.setdefault(condition.loss, {}).setdefault(metric, []).append((condition.noise, values))
    return points


def _gradient_tables(conditions: list[Condition]) -> dict[str, list[list[dict[str, str]]]]:
    """condition label -> the gradients.csv rows of all outputs of each of its runs that has them."""
    tables = {c.label: [gradient_rows(r["path"]) for r in c.runs] for c in conditions}
    return {label: [t for t in seeds if t] for label, seeds in tables.items()}


def _run_tables(conditions: list[Condition], file_name: str) -> dict[str, list[list[dict[str, str]]]]:
    """condition label -> the CSV rows of ``file_name`` of each of its runs that has one."""
    tables = {c.label: [read_csv_rows(Path(r["path"]) / file_name) for r in c.runs] for c in conditions}
    return {label: [t for t in seeds if t] for label, seeds in tables.items()}


EXAMPLE_IMAGES = 4
EXAMPLE_MIN_OBJECTS = 3
EXAMPLE_SCORE = 0.5


def write_examples(conditions: list[Condition], path: Path) -> str | None:
    """A grid of validation images (rows) with the ground truth and each condition's detections
    (columns, first completed seed). Returns a caption naming the images, or None when the
    dataset is not available where the report is made (a report can be made far from the data)."""
    runs = [(c, min(c.completed, key=lambda r: r["seed"] if r["seed"] is not None else 0)) for c in conditions if c.completed]
    runs = [(c, r) for c, r in runs if (Path(r["path"]) / "detections_val.json").is_file()]
    if not runs:
        return None
    try:
        data_cfg = from_dict(json.loads((Path(runs[0][1]["path"]) / "metrics.json").read_text())["config"]).data
        # Every image at its stored size, where the boxes of detections_val.json lie.
        data_cfg.max_val_images = data_cfg.min_size = data_cfg.max_size = None
        dataset = build_dataset(data_cfg, data_cfg.val_split, train=False)
    except Exception as exc:  # noqa: BLE001 - any reason the data cannot be read only drops the figure
        logger.warning("example images left out of the report: the validation data cannot be read (%s)", exc)
        return None
    coco = dataset.coco
    index_of = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    chosen = [i for i in sorted(index_of) if len(coco.getAnnIds(imgIds=[i], iscrowd=None)) >= EXAMPLE_MIN_OBJECTS]
    chosen = (chosen or sorted(index_of))[:EXAMPLE_IMAGES]
    names = {cat["id"]: cat["name"] for cat in coco.dataset["categories"]}
    # The colours of predict.py's drawn images: one per class, by its contiguous label.
    colours = {category: class_colour(label) for label, category in dataset.label_to_category_id.items()}
    detections: list[dict[int, list[Any]]] = []
    for _, run in runs:
        by_image: dict[int, list[Any]] = {}
        for det in json.loads((Path(run["path"]) / "detections_val.json").read_text()):
            if det["score"] >= EXAMPLE_SCORE:
                text = f"{names.get(det['category_id'], '?')} {det['score']:.2f}"
                by_image.setdefault(det["image_id"], []).append((det["bbox"], text, colours.get(det["category_id"], "grey")))
        detections.append(by_image)
    images, boxes = [], []
    for image_id in chosen:
        image, _ = dataset[index_of[image_id]]  # uint8 (3, H, W) at the stored size
        images.append(image.permute(1, 2, 0).numpy())
        truth = [(a["bbox"], names[a["category_id"]], colours.get(a["category_id"], "grey"))
                 for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        boxes.append([truth, *(by_image.get(image_id, []) for by_image in detections)])
    titles = [f"ground truth (id {chosen[0]})", *(c.label for c, _ in runs)]
    plot_examples(images, titles, boxes, path)
    return f"validation images {', '.join(map(str, chosen))}"


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, Difference):
            out[key] = {"mean": value.mean, "low": value.low, "high": value.high, "pairs": value.pairs}
        else:
            out[key] = value
    return out
