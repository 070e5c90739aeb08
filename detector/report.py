"""Reports: a pure function of run directories -> tables and plots.

Runs made on a laptop, a GPU box or a cluster can be compared in one table, because
everything needed is in each run directory (metrics.json, config.yaml, gradients.csv).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from detector.io import atomic_write_json, atomic_write_text  # noqa: E402
from detector.plots import plot_gradient_statistics, read_gradient_rows, save_figure  # noqa: E402

COLUMNS = ("run", "loss", "status", "steps", "AP", "AP50", "AP75", "AP90", "AP_small", "AP_medium", "AP_large",
           "train_s", "total_s")


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
    loss = metrics.get("loss", {}).get("box_head", {})
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in loss.get("params", {}).items())
    row: dict[str, Any] = {
        "run": run_dir.name,
        "loss": loss.get("name", "?") + (f" ({params})" if params else ""),
        "status": metrics.get("status", "unknown"),
        "steps": metrics.get("steps"),
        "train_s": metrics.get("timings", {}).get("train_s"),
        "total_s": metrics.get("timings", {}).get("total_s"),
        "ap_per_iou": {},
    }
    val = metrics.get("val") or {}
    stats = val.get("stats", {})
    for key in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"):
        row[key] = stats.get(key)
    row["ap_per_iou"] = val.get("ap_per_iou", {})
    row["AP90"] = row["ap_per_iou"].get("0.90")
    row["path"] = str(run_dir)
    return row


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "n/a" if value < 0 else f"{value:.3f}" if value <= 1 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


GRADIENT_WINDOW = 5  # logged steps averaged at the start and at the end of training


def gradient_summary(runs: dict[str, Path]) -> str:
    """Markdown table: |dl/dx| statistics averaged over the first and the last
    ``GRADIENT_WINDOW`` logged steps of each run, box head and RPN."""
    header = ("| run | head | steps | median | p99 | max | at bound | steps | median | p99 | max | at bound |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for name, run_dir in runs.items():
        rows = read_gradient_rows(run_dir)
        for head in ("box_head", "rpn"):
            mine = [r for r in rows if r["head"] == head]
            if not mine:
                continue
            cells = []
            for window in (mine[:GRADIENT_WINDOW], mine[-GRADIENT_WINDOW:]):
                mean = {k: sum(float(r[k]) for r in window) / len(window)
                        for k in ("median", "p99", "max", "fraction_at_bound")}
                bound = "-" if mean["fraction_at_bound"] != mean["fraction_at_bound"] else f"{mean['fraction_at_bound']:.2f}"
                cells += [f"{window[0]['step']}-{window[-1]['step']}", f"{mean['median']:.3f}", f"{mean['p99']:.3f}",
                          f"{mean['max']:.3f}", bound]
            lines.append(f"| {name} | {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_ap_vs_iou(rows: list[dict[str, Any]], path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        if row["ap_per_iou"]:
            thresholds = [float(t) for t in row["ap_per_iou"]]
            ax.plot(thresholds, list(row["ap_per_iou"].values()), marker="o", label=f"{row['run']}: {row['loss']}")
    ax.set(xlabel="IoU threshold", ylabel="AP", title="AP against IoU threshold", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_report(run_dirs: list[str | Path], out_dir: str | Path, command: str) -> Path:
    """report.md (table + plots), results.csv and results.json in ``out_dir``."""
    out_dir = Path(out_dir)
    rows = [load_run(d) for d in run_dirs]
    plot_ap_vs_iou(rows, out_dir / "ap_vs_iou.png")
    with_gradients = {r["run"]: Path(r["path"]) for r in rows if (Path(r["path"]) / "gradients.csv").is_file()}
    sections = [
        "# Regression-loss comparison",
        f"Made by `{command}` from the run directories below.",
        markdown_table(rows),
        "## AP against IoU threshold",
        "![AP against IoU threshold](ap_vs_iou.png)",
    ]
    if with_gradients:
        plot_gradient_statistics(with_gradients, out_dir / "gradients.png")
        sections += ["## Regression gradients during training",
                     "|dl/dx| of the foreground regression outputs (median solid, p99 dashed) and the "
                     "fraction of outputs at the loss's gradient bound.",
                     "![gradient statistics](gradients.png)",
                     f"Averaged over the first and the last {GRADIENT_WINDOW} logged steps:",
                     gradient_summary(with_gradients)]
    atomic_write_text(out_dir / "report.md", "\n\n".join(sections) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    atomic_write_json(out_dir / "results.json", [{k: v for k, v in r.items() if k != "path"} for r in rows])
    return out_dir / "report.md"
