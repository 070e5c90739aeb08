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

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from detector.engine import atomic_write_csv, atomic_write_json, atomic_write_text, build_dataset, read_csv_rows
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
    plot_metric_vs_option,
    plot_training_curves,
)
from detector.lab.specs import parse_loss_spec, split_weight
from detector.lab.stats import (
    CONFIDENCE,
    Difference,
    holm,
    interval_text,
    p_text,
    paired_difference,
    paired_trend,
    t_quantile,
)
from detector.lab.verdict import recommendation, verdict
from detector.model import build_loss

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "AP90", "AP_small", "AP_medium", "AP_large")
RUN_COLUMNS = ("run", "loss", "seed", "noise", "status", "steps", *METRICS, "VOC_AP50", "train_s", "code")
# The metrics a report's verdict can rest on (--metric), AP by default.
PRIMARY_METRICS = ("AP", "AP50", "AP75", "AP90")
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
        "divergence": divergence_note(metrics.get("divergence")),
        "train_s": metrics.get("timings", {}).get("train_s"),
        "total_s": metrics.get("timings", {}).get("total_s"),
        "ap_per_iou": val.get("ap_per_iou", {}),
        "ap_per_class": {name: ap for name, ap in val.get("ap_per_class", {}).items() if ap is not None and ap >= 0},
        "VOC_AP50": val.get("voc_ap50"),
        "params": loss.get("params", {}),
        # every option, those a run made before the option existed taking its default
        "options": {key: value for section, values in config.items() if isinstance(values, dict)
                    for key, value in ((f"{section}.{k}", v) for k, v in values.items())},
        "code": describe(metrics.get("code")),
        "path": str(run_dir),
    }
    for key in METRICS:
        value = stats.get(key)
        row[key] = None if value is None or value < 0 else value  # COCOeval's -1: no such objects, no value
    row["AP90"] = row["ap_per_iou"].get("0.90")
    return row


def divergence_note(divergence: dict[str, Any] | None) -> str:
    """Which loss terms went non-finite at the diverged step, and, when every term did, the
    term that was largest one step before (where the blow-up started)."""
    if not divergence:
        return ""
    terms = {k: v for k, v in divergence.get("losses", {}).items() if k != "loss"}
    bad = [k for k, v in terms.items() if not math.isfinite(v)]
    note = "non-finite: " + (", ".join(bad) if len(bad) < len(terms) else "every term")
    before = {k: v for k, v in (divergence.get("last_finite_losses") or {}).items() if k != "loss"}
    if before and len(bad) == len(terms):
        term = max(before, key=before.get)
        note += f"; {term} {before[term]:.3g} the step before"
    return note


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
        return self.name()

    def name(self, *, noise: bool = True, without: str | None = None) -> str:
        """The loss, the options in which the condition differs (but ``without``, the axis of a
        sweep) and, with ``noise``, its noise level: a curve over noise levels or along an
        axis is named without its own coordinate, so that it joins only its own points."""
        parts = [self.loss, *(f"{key.split('.')[-1]}={value}" for key, value in self.options if key != without)]
        return ", ".join(parts + ([f"noise {self.noise:g}"] if noise and self.noise else []))

    def values(self, metric: str) -> dict[int, float]:
        """seed -> metric over the completed runs that report it (a missing value left out)."""
        return {r["seed"]: r[metric] for r in self.completed if r.get(metric) is not None}


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


def find_baseline(conditions: list[Condition], baseline: str, condition: Condition) -> Condition | None:
    """The condition ``condition`` is compared with: the one of the ``baseline`` loss spec
    (``smooth_l1``: its default parameters, or ``smooth_l1(beta=0.5)``, or ``l2(weight=4.5)``) at
    the same noise level in the same setting (the same options besides the loss's own, e.g. the
    same learning rate), else the baseline with every other option at its default (so a clipped
    L2 is compared with plain L2). None when there is none, or it is ``condition`` itself."""
    name, params = parse_loss_spec(baseline)
    params, weight = split_weight(params)
    wanted = build_loss(name, params).params
    loss_options = {} if weight is None else {"loss.weight": weight}
    candidates = [c for c in conditions if c.loss_name == name and c.noise == condition.noise
                  and all(_same(c.params.get(k), v) for k, v in wanted.items())
                  and _loss_options(c) == loss_options]
    same_setting = [c for c in candidates if _setting(c) == _setting(condition)]
    defaults = [c for c in candidates if not _setting(c)]
    found = next(iter(same_setting if same_setting and same_setting[0] is not condition else defaults), None)
    return None if found is condition else found


def _loss_options(condition: Condition) -> dict[str, Any]:
    return {key: value for key, value in condition.options if key.startswith("loss.")}


def _setting(condition: Condition) -> dict[str, Any]:
    """The options of a condition besides the loss's own."""
    return {key: value for key, value in condition.options if not key.startswith("loss.")}


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6))


def difference_metrics(metric: str) -> tuple[str, ...]:
    """The metrics a summary compares with the baseline: the primary one first, then AP and AP90."""
    return tuple(dict.fromkeys((metric, "AP", "AP90")))


def summarise(conditions: list[Condition], baseline: str, metric: str = "AP") -> list[dict[str, Any]]:
    """One summary row per condition: mean and std over seeds, the paired differences to its
    baseline (find_baseline) with their p-values, Holm-adjusted for the primary ``metric`` over
    every condition compared, mean training time, and the status of every run."""
    rows = []
    for condition in conditions:
        base = find_baseline(conditions, baseline, condition)
        row: dict[str, Any] = {"condition": condition.label, "loss": condition.loss, "noise": condition.noise,
                               "runs": len(condition.runs), "completed": len(condition.completed),
                               "statuses": _status_summary(condition.runs),
                               "baseline": base.label if base is not None else None}
        for name in METRICS + ("VOC_AP50",):
            values = list(condition.values(name).values())
            row[f"{name}_mean"] = mean(values) if values else None
            row[f"{name}_std"] = stdev(values) if len(values) > 1 else None
        for name in difference_metrics(metric):
            row[f"d{name}"] = None if base is None else paired_difference(condition.values(name), base.values(name))
        times = [r["train_s"] for r in condition.completed if r.get("train_s") is not None]
        row["train_s_mean"] = mean(times) if times else None
        rows.append(row)
    adjusted = holm({str(i): row[f"d{metric}"].p if row[f"d{metric}"] else None for i, row in enumerate(rows)})
    for i, row in enumerate(rows):
        row[f"d{metric}_holm_p"] = adjusted[str(i)]
    return rows


def _diverged(run: dict[str, Any]) -> str:
    return f"diverged at step {run['diverged_at_step']}" + (f" ({run['divergence']})" if run.get("divergence") else "")


def _status_summary(runs: list[dict[str, Any]]) -> str:
    parts = []
    for run in runs:
        if run["status"] == "diverged":
            parts.append(f"seed {run['seed']} {_diverged(run)}")
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


def _difference(difference: Difference | None, holm_p: float | None = None) -> str:
    if difference is None:
        return "-"
    if difference.low is None:
        return f"{difference.mean:+.3f} (1 seed, no interval)"
    text = f"{difference.mean:+.3f} {interval_text(difference.low, difference.high)}"
    if holm_p is not None:
        text += f" p {p_text(difference.p)}, Holm {p_text(holm_p)}"
    return f"**{text}**" if holm_p is not None and holm_p < 1 - CONFIDENCE else text


def summary_table(summary: list[dict[str, Any]], baseline: str, with_voc: bool, metric: str = "AP") -> str:
    metrics = list(METRICS) + (["VOC_AP50"] if with_voc else [])
    compared = difference_metrics(metric)
    header = ["condition", "seeds", *metrics,
              *[f"Δ{m} vs {baseline} [95% CI]" + (" (primary)" if m == metric else " (exploratory)") for m in compared],
              "train min", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary:
        cells = [row["condition"], f"{row['completed']}/{row['runs']}", *[_mean_std(row, m) for m in metrics],
                 *[_difference(row[f"d{m}"], row[f"d{metric}_holm_p"] if m == metric else None) for m in compared],
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
                value = _diverged(row)
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
                 fmt: str = "png", metric: str = "AP", note: str | None = None) -> Path:
    """report.md (the verdict on the primary ``metric``, then tables and figures in format
    ``fmt``: png, pdf or svg), results.csv (one row per run) and results.json in ``out_dir``: a new
    or empty folder, or one holding an earlier report, which this one replaces
    (engine/outputs.py). ``note``: a sentence for the verdict (e.g. a time budget's cut)."""
    out_dir = Path(out_dir)
    rows = [load_run(d) for d in run_dirs]
    check_same_dataset(rows)
    conditions = group_runs(rows)
    summary = summarise(conditions, baseline, metric)
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
        verdict(summary, baseline=baseline, metric=metric, gradient_evidence=gradient_evidence(conditions),
                note=note),
        "## Summary",
        ("One completed seed per condition: single runs, without a standard deviation or an interval. "
         if single else "Mean ± standard deviation over the completed seeds of each condition (a single value: "
                        "one completed seed). ") + summary_explanation(summary, baseline, metric),
        summary_table(summary, baseline, with_voc, metric),
        *class_section(conditions),
        "## AP against IoU threshold",
        figure("ap_vs_iou", "AP against IoU threshold"),
    ]
    plot_ap_vs_iou({c.label: [r["ap_per_iou"] for r in c.completed if r["ap_per_iou"]] for c in conditions},
                   out_dir / f"ap_vs_iou.{fmt}")
    axis = numeric_axis(conditions)
    if axis:
        sections += axis_section(conditions, axis, metric, out_dir / f"metric_vs_option.{fmt}",
                                 figure("metric_vs_option", f"{metric} against {axis}"))
    if len({c.noise for c in conditions}) > 1:
        plot_ap_vs_noise(_noise_points(conditions), out_dir / f"ap_vs_noise.{fmt}")
        sections += ["## AP against box noise",
                     "Training boxes displaced as outlier labels (`--train-box-noise`); validation is clean.",
                     figure("ap_vs_noise", "AP against box noise"),
                     *noise_trend_section(conditions, baseline, metric)]
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

    atomic_write_csv(out_dir / "results.csv", rows,
                     list(RUN_COLUMNS) + ["diverged_at_step", "divergence", "total_s", "path"], extrasaction="ignore")
    atomic_write_json(out_dir / "results.json", {
        "command": command,
        "baseline": baseline,
        "verdict": recommendation(summary, baseline=baseline, metric=metric).replace("**", ""),
        "summary": [_jsonable(row) for row in summary],
        "runs": [{k: v for k, v in r.items() if k not in ("path", "data")} for r in rows],
    })
    folder.finish(written)
    return out_dir / "report.md"


def class_section(conditions: list[Condition]) -> list[str]:
    """AP (IoU 0.50:0.95) of each class in each condition, mean over its completed seeds; nothing
    for a dataset of one class."""
    classes = list(dict.fromkeys(name for c in conditions for r in c.completed for name in r["ap_per_class"]))
    if len(classes) < 2:
        return []
    lines = ["| condition | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for condition in conditions:
        cells = []
        for name in classes:
            values = [r["ap_per_class"][name] for r in condition.completed if name in r["ap_per_class"]]
            cells.append(f"{mean(values):.3f}" if values else "-")
        lines.append(f"| {condition.label} | " + " | ".join(cells) + " |")
    return ["### AP per class", "AP at IoU 0.50:0.95 of each class, mean over the completed seeds:", "\n".join(lines)]


def summary_explanation(summary: list[dict[str, Any]], baseline: str, metric: str) -> str:
    """What the summary's Δ columns are, which comparisons are primary, and how far 3 seeds go."""
    pairs = sorted({row[f"d{metric}"].pairs for row in summary if row.get(f"d{metric}") and row[f"d{metric}"].low})
    text = (f"Δ: mean of the per-seed differences to {baseline} in the same setting at the same noise level, with "
            f"its 95% Student-t interval (paired by seed); an interval that contains 0 means the seeds cannot tell "
            f"the two apart. Primary comparisons: every condition's Δ{metric} against its baseline, with the paired "
            f"t-test's p-value and Holm's adjustment over all of them (bold: Holm-adjusted p < 0.05); the other Δ "
            f"columns are exploratory (unadjusted). AP90: AP at IoU 0.9.")
    if pairs and pairs[0] <= 5:
        text += (f" With {pairs[0]} seeds the interval's half-width is t = {t_quantile(pairs[0]):.2f} standard "
                 f"errors, and the standard error itself rests on {pairs[0] - 1} degree{'s' if pairs[0] > 2 else ''} of "
                 f"freedom: an interval's width is itself uncertain, and a narrow one can come from differences that "
                 f"happen to agree.")
    return text


def gradient_evidence(conditions: list[Condition]) -> dict[str, str]:
    """condition label -> one sentence on its box head's |dl/dx| from its runs' gradients.csv:
    p99 in the first and the last logged steps, and the share at the loss's bound where it has one."""
    evidence = {}
    for condition in conditions:
        tables = [[row for row in gradient_rows(r["path"]) if row["head"] == "box_head"] for r in condition.runs]
        tables = [t for t in tables if t]
        if not tables:
            continue
        early = mean(mean(float(r["p99"]) for r in t[:GRADIENT_WINDOW]) for t in tables)
        late = mean(mean(float(r["p99"]) for r in t[-GRADIENT_WINDOW:]) for t in tables)
        at_bound = _nanmean(mean(float(r["fraction_at_bound"]) for r in t[-GRADIENT_WINDOW:]) for t in tables)
        bound = build_loss(condition.loss_name, _loss_args(condition)).gradient_bound
        text = f"Its box-head p99 |dl/dx| was {early:.3g} in the first logged steps and {late:.3g} in the last"
        if bound is None:
            text += " (it has no bound; L1's and smooth L1's is 1)."
        else:
            text += f"; {at_bound:.0%} of its outputs sat at its bound of {bound:g} at the end."
        evidence[condition.label] = text
    return evidence


def _loss_args(condition: Condition) -> dict[str, Any]:
    return {key: value for key, value in condition.params.items()}


# How far below its best a loss's mean may fall and still count as trained well, in the sweep's table.
NEAR_BEST = 0.05


def numeric_axis(conditions: list[Condition]) -> str | None:
    """The one numeric option besides the loss's own in which the conditions differ (e.g.
    train.lr of a learning-rate sweep), or None. An option that is off by default (None, as
    train.grad_clip) is no axis: the conditions without it have no place on one."""
    defaults = config_lib.flatten(Config())
    keys = {key for c in conditions for key, value in c.options
            if not key.startswith("loss.") and _is_number(value) and _is_number(defaults[key])}
    return next(iter(keys)) if len(keys) == 1 else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def axis_section(conditions: list[Condition], axis: str, metric: str, path: Path, figure_line: str) -> list[str]:
    """The figure of ``metric`` against ``axis`` per loss (diverged runs marked where they
    diverged) and the table of the largest value each loss trained at without diverging, and
    the largest above its best at which its mean stays within NEAR_BEST of that best."""
    default = config_lib.flatten(Config())[axis]
    curves: dict[str, list[tuple[float, list[float], list[int]]]] = {}
    for condition in conditions:
        value = dict(condition.options).get(axis, default)
        name = condition.name(without=axis)
        diverged = [r["diverged_at_step"] for r in condition.runs if r["status"] == "diverged"]
        curves.setdefault(name, []).append((float(value), list(condition.values(metric).values()), diverged))
    plot_metric_vs_option(curves, axis, metric, path)
    lines = [f"| loss | {axis} tried | largest without a diverged run | largest within {NEAR_BEST:g} of the best | "
             f"best mean {metric} (at) |", "|---|---|---|---|---|"]
    for name, points in curves.items():
        points = sorted(points)
        stable = [x for x, _, diverged in points if not diverged]
        means = {x: mean(v) for x, v, _ in points if v}
        best = max(means, key=means.get) if means else None
        near = None
        for x, _, diverged in points:  # upward from the best, until the mean falls further or a run diverges
            if best is None or x < best:
                continue
            if diverged or x not in means or means[x] < means[best] - NEAR_BEST:
                break
            near = x
        lines.append(f"| {name} | {', '.join(f'{x:g}' for x, _, _ in points)} | "
                     f"{f'{max(stable):g}' if stable else 'none'} | {f'{near:g}' if near is not None else '-'} | "
                     f"{f'{means[best]:.3f} ({best:g})' if best is not None else '-'} |")
    return [f"## {metric} against {axis}",
            f"Each loss's mean {metric} over its completed seeds at each {axis} (dots: single seeds); a cross at the "
            f"bottom marks a run whose loss went non-finite (diverged), labelled with the step. In the table, "
            f"'largest within {NEAR_BEST:g} of the best': the largest {axis} above the loss's best at which its mean "
            f"{metric} stays within {NEAR_BEST:g} of that best, every step up included and no run diverged.",
            figure_line, "\n".join(lines)]


def noise_trend_section(conditions: list[Condition], baseline: str, metric: str) -> list[str]:
    """The noise sweep's test: for each loss, the slope of its paired Δmetric against the
    baseline as the noise level grows, seeds as blocks (stats.paired_trend), Holm over the losses."""
    curves: dict[str, list[Condition]] = {}
    for condition in conditions:
        curves.setdefault(condition.name(noise=False), []).append(condition)
    trends = {}
    for label, levels in curves.items():
        per_level: dict[float, dict[int, float]] = {}
        for condition in levels:
            base = find_baseline(conditions, baseline, condition)
            if base is None:
                continue
            values, reference = condition.values(metric), base.values(metric)
            per_level[condition.noise] = {s: values[s] - reference[s] for s in set(values) & set(reference)}
        trend = paired_trend(per_level)
        if trend is not None:
            trends[label] = trend
    if not trends:
        return []
    adjusted = holm({label: trend.p for label, trend in trends.items()})
    lines = [f"| loss | Δ{metric} per 0.1 of noise [95% CI] | df | p | Holm p |", "|---|---|---|---|---|"]
    for label, trend in trends.items():
        bold = adjusted[label] < 1 - CONFIDENCE
        cell = f"{trend.slope / 10:+.4f} {interval_text(trend.low / 10, trend.high / 10, 4)}"
        lines.append(f"| {label} | {f'**{cell}**' if bold else cell} | {trend.df} | {p_text(trend.p)} | "
                     f"{p_text(adjusted[label])} |")
    return ["### Does the gap to the baseline grow with the noise?",
            f"The noise sweep's primary test: the slope of each loss's paired Δ{metric} against {baseline} over the "
            f"noise levels, from one least-squares fit with an offset per seed (seeds as blocks), per 0.1 of noise "
            f"(the fraction of training boxes displaced); Holm-adjusted over the losses (bold: below 0.05).",
            "\n".join(lines)]


def _noise_points(conditions: list[Condition]) -> dict[str, dict[str, list[tuple[float, list[float]]]]]:
    """curve (a loss with its options) -> metric -> [(noise level, the level's values over seeds)],
    for the noise plot."""
    points: dict[str, dict[str, list[tuple[float, list[float]]]]] = {}
    for condition in conditions:
        for metric in ("AP", "AP90"):
            values = list(condition.values(metric).values())
            points.setdefault(condition.name(noise=False), {}).setdefault(metric, []).append((condition.noise, values))
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
        # The runs' logs and the pre-flight said what the data holds; read again, it says nothing.
        data_logger = logging.getLogger("detector.data")
        level = data_logger.level
        data_logger.setLevel(logging.ERROR)
        try:
            dataset = build_dataset(data_cfg, data_cfg.val_split, train=False)
        finally:
            data_logger.setLevel(level)
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
