"""The verdict a report opens with: which loss to use on this dataset, how sure that is, and what
more seeds would resolve; written from the summary rows of a report (``report.summarise``).

The rule: the baseline, unless another loss is better on the primary metric with a paired
difference whose Holm-adjusted p-value (over the losses compared) is below 0.05; then the best
of those. For every other loss one line gives its paired difference and interval, and, when it
cannot be told apart, the difference these seeds could have detected and the seeds that would
detect 0.01.
"""

from __future__ import annotations

from typing import Any

from detector.lab.stats import CONFIDENCE, POWER, detectable_difference, holm, interval_text, p_text, seeds_to_detect

ALPHA = 1 - CONFIDENCE
RESOLUTION = 0.01  # the difference "how many seeds would detect it" is asked for


def verdict(summary: list[dict[str, Any]], *, baseline: str, metric: str, gradient_evidence: dict[str, str],
            note: str | None = None) -> str:
    """The section "What to use on this dataset" from the summary rows of the report's cleanest
    conditions (the lowest noise level). ``gradient_evidence``: condition label -> a sentence
    from its runs' gradients; ``note``: said first (e.g. that a time budget cut the matrix short)."""
    family, adjusted = _family(summary, metric)
    lines = ["## What to use on this dataset", *([note] if note else []),
             _recommendation(family, adjusted, baseline, metric)]
    if not family:
        return "\n\n".join(lines)
    bullets = []
    for row in family:
        d = row[f"d{metric}"]
        text = (f"- {row['condition']}: {metric} {d.mean:+.3f} {interval_text(d.low, d.high)} against {baseline} "
                f"(p {p_text(d.p)}, Holm {p_text(adjusted[row['condition']])}).")
        if adjusted[row["condition"]] >= ALPHA and d.sd is not None:
            text += " " + _resolution(d.sd, d.pairs, len(family), metric)
        evidence = gradient_evidence.get(row["condition"])
        bullets.append(text + (f" {evidence}" if evidence else ""))
    baseline_evidence = gradient_evidence.get(_baseline_label(summary, family))
    if baseline_evidence:
        bullets.append(f"- {baseline}: {baseline_evidence}")
    lines.append("\n".join(bullets))
    other_metrics = _other_metrics(family, metric, baseline)
    lines += [other_metrics] if other_metrics else []
    return "\n\n".join(lines)


def recommendation(summary: list[dict[str, Any]], *, baseline: str, metric: str) -> str:
    """The verdict's first sentence (Markdown): the loss to use and the comparison it rests on,
    also what scripts/compare.py prints at the end."""
    return _recommendation(*_family(summary, metric), baseline, metric)


def _recommendation(family: list[dict[str, Any]], adjusted: dict[str, float], baseline: str, metric: str) -> str:
    if not family:
        return (f"No loss could be compared with {baseline} on {metric}: the comparison needs {baseline} and "
                f"another loss with at least two completed seeds in common.")
    pairs = max(row[f"d{metric}"].pairs for row in family)
    scope = f"{len(family)} loss{'es' if len(family) > 1 else ''} compared with {baseline}, {pairs} seeds, {metric}"
    better = [row for row in family if row[f"d{metric}"].mean > 0 and adjusted[row["condition"]] < ALPHA]
    if not better:
        return (f"**Use {baseline}** (the baseline): no loss is better on {metric} with a Holm-adjusted p below "
                f"{ALPHA:g} ({scope}).")
    best = max(better, key=lambda row: row[f"d{metric}"].mean)
    d = best[f"d{metric}"]
    return (f"**Use {best['condition']}**: {metric} {d.mean:+.3f} {interval_text(d.low, d.high)} over "
            f"{baseline}, Holm-adjusted p {p_text(adjusted[best['condition']])} ({scope}).")


def _family(summary: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The compared rows (the lowest noise level's, with an interval on ``metric``) and their
    Holm-adjusted p-values."""
    lowest = min((row["noise"] for row in summary), default=0.0)
    family = [row for row in summary if row["noise"] == lowest and row.get(f"d{metric}") is not None
              and row[f"d{metric}"].low is not None]
    return family, holm({row["condition"]: row[f"d{metric}"].p for row in family})


def _resolution(sd: float, pairs: int, family_size: int, metric: str) -> str:
    """What these seeds could have detected, at the most demanding Holm step (alpha / m)."""
    alpha = ALPHA / family_size
    detectable = detectable_difference(sd, pairs, alpha)
    needed = seeds_to_detect(RESOLUTION, sd, alpha)
    more = (f"about {needed} seeds would detect {RESOLUTION:g}" if needed
            else f"no practical number of seeds detects {RESOLUTION:g}")
    # Every metric here is an AP in [0, 1]: a detectable difference beyond 1 is none at all.
    detects = (f"detect a difference of {detectable:.3f}" if detectable < 1 else
               f"detect no difference {metric} can show (it lies in [0, 1]; the bound is {detectable:.3g})")
    return (f"Not told apart: with this spread (sd of the paired differences {sd:.4f}), {pairs} seeds {detects} "
            f"({POWER:.0%} power, α = {alpha:.3g}); {more}.")


def _baseline_label(summary: list[dict[str, Any]], family: list[dict[str, Any]]) -> str | None:
    labels = {row["baseline"] for row in family if row.get("baseline")}
    return next(iter(labels)) if len(labels) == 1 else None


def _other_metrics(family: list[dict[str, Any]], metric: str, baseline: str) -> str | None:
    """Exploratory: losses whose difference on another metric excludes 0 (unadjusted)."""
    found = []
    for row in family:
        for key, d in row.items():
            if key.startswith("d") and key[1:] != metric and not key.endswith("_holm_p") and d is not None \
                    and getattr(d, "excludes_zero", False):
                found.append(f"{row['condition']} {key[1:]} {d.mean:+.3f} {interval_text(d.low, d.high)}")
    if not found:
        return None
    return (f"Exploratory, unadjusted: on other metrics, {'; '.join(found)} against {baseline} exclude 0. To decide on "
            f"one of them, name it with --metric (AP, AP50, AP75 or AP90) before looking at the numbers.")
