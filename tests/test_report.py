"""The comparison report: numbers equal the run directories, intervals, diverged runs."""

import csv
import json

import pytest

from detector.engine.config import ConfigError
from detector.lab.report import Condition, _noise_points, group_runs, load_run, run_table, summarise, write_report
from detector.lab.stats import paired_difference


def make_run(root, name, loss, ap, *, seed=0, noise=0.0, status="completed", diverged_at_step=None, train_s=480.0,
             data=None, params=None, train=None, code=None, ap90=None, divergence=None):
    """A run directory as training writes it (metrics.json only; AP at IoU t = ap + 0.5 - t, or
    ``ap90`` at 0.9); ``data``/``train``: options of those sections besides the name, noise level
    and seed; ``params``: the loss's parameters (default: smooth_l1's beta 1/9); ``code``: its code version."""
    run = root / name
    run.mkdir()
    ap_per_iou = {f"{t / 100:.2f}": round(ap + (0.5 - t / 100), 3) for t in range(50, 100, 5)}
    if ap90 is not None:
        ap_per_iou["0.90"] = ap90
    metrics = {"status": status, "steps": 940 if status == "completed" else diverged_at_step,
               "config": {"train": {"seed": seed, **(train or {})},
                          "data": {"name": "shapes", "train_box_noise": noise, **(data or {})}, "loss": {"name": loss}},
               "loss": {"box_head": {"name": loss, "space": "deltas", "weight": 1.0,
                                     "params": params if params is not None else
                                     ({"beta": 1 / 9} if loss == "smooth_l1" else {})}},
               **({"code": code} if code else {}),
               "timings": {"train_s": train_s, "total_s": train_s + 40.5}}
    if status == "completed":
        metrics["val"] = {"stats": {"AP": ap, "AP50": 0.9, "AP75": 0.8, "AP_small": 0.7, "AP_medium": 0.85,
                                    "AP_large": -1.0}, "ap_per_iou": ap_per_iou}
    if diverged_at_step is not None:
        metrics["diverged_at_step"] = diverged_at_step
    if divergence is not None:
        metrics["divergence"] = divergence
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_paired_difference_hand_worked():
    # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, se 0.01 / sqrt(3) = 0.0057735,
    # t(0.975, df=2) = 4.302653 -> half width 0.0248414
    diff = paired_difference({0: 0.71, 1: 0.72, 2: 0.73, 5: 0.9}, {0: 0.70, 1: 0.70, 2: 0.70})
    assert diff.pairs == 3  # seed 5 has no baseline partner and does not count
    assert diff.mean == pytest.approx(0.02)
    assert diff.low == pytest.approx(0.02 - 0.0248414, abs=1e-6)
    assert diff.high == pytest.approx(0.02 + 0.0248414, abs=1e-6)
    one = paired_difference({0: 0.75}, {0: 0.70})
    assert one.mean == pytest.approx(0.05) and one.low is None and one.pairs == 1
    assert paired_difference({1: 0.7}, {0: 0.7}) is None


def test_pairing_removes_shared_seed_variation():
    # Seeds differ by 0.1 between each other, but the loss is better by exactly 0.01 on each:
    # the paired interval is a point, although each loss's own std is large.
    diff = paired_difference({0: 0.61, 1: 0.71, 2: 0.81}, {0: 0.60, 1: 0.70, 2: 0.80})
    assert diff.low == pytest.approx(0.01) and diff.high == pytest.approx(0.01)


def test_report_numbers_equal_the_run_directories(tmp_path):
    runs = [make_run(tmp_path, f"{loss}-seed{s}", loss, ap, seed=s, train_s=400.0 + 60 * s)
            for loss, aps in (("l1", (0.71, 0.72, 0.75)), ("smooth_l1", (0.70, 0.70, 0.70)))
            for s, ap in enumerate(aps)]
    report = write_report(runs, tmp_path / "report", "python scripts/compare.py --runs ...").read_text()
    # l1: mean (0.71 + 0.72 + 0.75) / 3 = 0.726667, std 0.020817; differences 0.01, 0.02, 0.05:
    # mean 0.026667, sd 0.020817, half width 4.302653 * 0.020817 / sqrt(3) = 0.051713
    assert "| l1 | 3/3 | 0.727 ± 0.021 | 0.900 ± 0.000 |" in report
    assert "+0.027 [-0.025, +0.078]" in report
    # AP90 = AP - 0.4 per run, so its difference equals the AP difference: in both columns and the verdict
    assert report.count("+0.027 [-0.025, +0.078]") == 3
    assert "| smooth_l1 (beta=0.1111) | 3/3 | 0.700 ± 0.000 |" in report
    assert "| 7.7 | all completed |" in report  # train time (400 + 460 + 520) / 3 s = 7.67 min
    assert "python scripts/compare.py --runs ..." in report
    rows = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert [float(r["AP"]) for r in rows] == [0.71, 0.72, 0.75, 0.70, 0.70, 0.70]
    assert [int(r["seed"]) for r in rows] == [0, 1, 2, 0, 1, 2]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["summary"][0]["AP_mean"] == pytest.approx(0.726667, abs=1e-6)
    assert results["summary"][0]["dAP"]["low"] == pytest.approx(0.026667 - 0.051713, abs=1e-5)
    assert results["runs"][2]["ap_per_iou"]["0.90"] == pytest.approx(0.35)
    assert (tmp_path / "report" / "ap_vs_iou.png").stat().st_size > 1000


def test_diverged_run_is_shown_not_dropped(tmp_path):
    nan = float("nan")
    # As training records it: every term NaN at step 37, the box term already huge the step before.
    blow_up = {"step": 37, "losses": {"loss": nan, "loss_objectness": nan, "loss_box_reg": nan},
               "last_finite_losses": {"loss": 1.14e31, "loss_objectness": 2.9, "loss_box_reg": 1.14e31}}
    one_term = {"step": 12, "losses": {"loss": float("inf"), "loss_objectness": 0.7, "loss_box_reg": float("inf")},
                "last_finite_losses": {"loss": 3.0, "loss_objectness": 0.8, "loss_box_reg": 2.2}}
    runs = [make_run(tmp_path, "l2-seed0", "l2", 0.6, seed=0),
            make_run(tmp_path, "l2-seed1", "l2", 0.0, seed=1, status="diverged", diverged_at_step=37,
                     divergence=blow_up),
            make_run(tmp_path, "l2-seed2", "l2", 0.0, seed=2, status="diverged", diverged_at_step=12,
                     divergence=one_term),
            make_run(tmp_path, "smooth_l1-seed0", "smooth_l1", 0.7, seed=0),
            make_run(tmp_path, "smooth_l1-seed1", "smooth_l1", 0.7, seed=1),
            make_run(tmp_path, "smooth_l1-seed2", "smooth_l1", 0.7, seed=2)]
    report = write_report(runs, tmp_path / "out", "cmd").read_text()
    assert "| l2 | 1/3 | 0.600 |" in report  # the mean is over the completed seed only ...
    # ... and the summary says why, with the term that went non-finite
    assert ("seed 1 diverged at step 37 (non-finite: every term; loss_box_reg 1.14e+31 the step before); "
            "seed 2 diverged at step 12 (non-finite: loss_box_reg)") in report
    assert ("| l2-seed1 | l2 | 1 | 0 | diverged at step 37 (non-finite: every term; loss_box_reg 1.14e+31 the step "
            "before) | 37 |") in report
    assert "-0.100 (1 seed, no interval)" in report  # paired on seed 0 only
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert rows[1]["status"] == "diverged" and rows[1]["diverged_at_step"] == "37"
    assert rows[2]["divergence"] == "non-finite: loss_box_reg"


def test_noise_levels_are_separate_conditions_with_their_own_baseline(tmp_path):
    runs = [make_run(tmp_path, "l2-seed0", "l2", 0.70), make_run(tmp_path, "smooth_l1-seed0", "smooth_l1", 0.72),
            make_run(tmp_path, "l2-noise0.4-seed0", "l2", 0.50, noise=0.4),
            make_run(tmp_path, "smooth_l1-noise0.4-seed0", "smooth_l1", 0.65, noise=0.4)]
    summary = summarise(group_runs([load_run(r) for r in runs]), baseline="smooth_l1")
    assert [r["condition"] for r in summary] == ["l2", "smooth_l1 (beta=0.1111)", "l2, noise 0.4",
                                                 "smooth_l1 (beta=0.1111), noise 0.4"]
    assert summary[0]["dAP"].mean == pytest.approx(-0.02)
    assert summary[2]["dAP"].mean == pytest.approx(-0.15)
    write_report(runs, tmp_path / "out", "cmd")
    assert (tmp_path / "out" / "ap_vs_noise.png").stat().st_size > 1000


def test_unfinished_run_shows_its_status(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "running"}))
    row = load_run(run)
    assert row["status"] == "running" and row["AP"] is None
    assert "| r | ? | - | 0 | running | - | - |" in run_table([row], with_voc=False)
    condition = Condition("?", "?", 0.0, [row])
    assert summarise([condition], "smooth_l1")[0]["statuses"] == "seed None running"


def test_missing_or_corrupt_run_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text("{broken")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        load_run(tmp_path)


def test_gradient_summary_averages_first_and_last_windows_then_seeds(tmp_path):
    runs = []
    for seed, offset in ((0, 0.0), (1, 1.0)):
        run = make_run(tmp_path, f"g{seed}", "l1", 0.7, seed=seed)
        lines = ["step,head,loss,count,mean,median,p90,p99,max,fraction_at_bound"]
        for step in range(0, 100, 10):  # medians 0.5..9.5 (+ offset) -> first five 2.5, last five 7.5
            lines.append(f"{step},box_head,l1,10,1,{step / 10 + 0.5 + offset},1,1,1,{0.2 + 0.4 * seed}")
        (run / "gradients.csv").write_text("\n".join(lines) + "\n")
        runs.append(run)
    report = write_report(runs, tmp_path / "out", "cmd").read_text()
    # seeds 0 and 1: medians 2.5 and 3.5 -> 3.0; 7.5 and 8.5 -> 8.0; at bound 0.2 and 0.6 -> 0.4
    assert "| l1 | 2 | box_head | 0-40 | 3.000 | 1.000 | 1.000 | 0.40 | 50-90 | 8.000 | 1.000 | 1.000 | 0.40 |" in report
    assert "![gradient statistics](gradients.png)" in report and (tmp_path / "out" / "gradients.png").is_file()


@pytest.mark.parametrize("data, message", [
    ({"name": "coco"}, "data.name: 'coco' != 'shapes'"),
    ({"val_split": "test"}, "data.val_split: 'test' != 'val'"),  # a run without the option had its default
    ({"categories": ["ring"]}, r"data.categories: \['ring'\] != \[\]"),
    ({"shapes_num_train": 100}, "data.shapes_num_train: 100 != 1500"),
])
def test_runs_of_different_datasets_are_refused_naming_the_option(tmp_path, data, message):
    runs = [make_run(tmp_path, "a", "l1", 0.7), make_run(tmp_path, "b", "l2", 0.6, data=data)]
    with pytest.raises(ConfigError, match=f"b and .*a were made on different datasets \\({message}\\)"):
        write_report(runs, tmp_path / "out", "cmd")
    assert not (tmp_path / "out").exists()


def test_the_same_dataset_in_another_folder_compares(tmp_path):
    # Runs made on two machines: the same tiny_coco, kept in different places.
    runs = [make_run(tmp_path, "a", "l1", 0.7, data={"root": "/data/tiny_coco"}),
            make_run(tmp_path, "b", "l2", 0.6, data={"root": "../shared/data/tiny_coco", "train_box_noise": 0.2})]
    assert write_report(runs, tmp_path / "out", "cmd").is_file()


def test_figures_in_the_chosen_format_and_single_runs_said_to_be_single(tmp_path):
    runs = [make_run(tmp_path, "l1-seed0", "l1", 0.7), make_run(tmp_path, "l2-seed0", "l2", 0.6)]
    report = write_report(runs, tmp_path / "out", "cmd", fmt="svg").read_text()
    assert "![AP against IoU threshold](ap_vs_iou.svg)" in report
    assert "One completed seed per condition: single runs, without a standard deviation or an interval." in report
    assert "Mean ± standard deviation" not in report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".detector-output.json", "ap_vs_iou.svg", "report.md", "results.csv", "results.json"]


def test_a_report_replaces_the_earlier_report_of_its_folder_and_nothing_else(tmp_path):
    runs = [make_run(tmp_path, "l1-seed0", "l1", 0.7), make_run(tmp_path, "l2-seed0", "l2", 0.6)]
    out = tmp_path / "out"
    write_report(runs, out, "cmd", fmt="svg")
    write_report(runs, out, "cmd", fmt="pdf")  # the svg figure is the earlier report's: removed
    assert sorted(p.name for p in out.iterdir()) == [
        ".detector-output.json", "ap_vs_iou.pdf", "report.md", "results.csv", "results.json"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is not empty and holds no output of this project"):
        write_report(runs, mine, "cmd")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_options_in_which_runs_differ_make_conditions_and_the_baseline_is_the_default_loss(tmp_path):
    """The clipping control and the beta sweep in one report: l2 with and without gradient
    clipping are two conditions, and smooth_l1 with beta 0.5 is not the baseline smooth_l1."""
    runs = []
    for seed in (0, 1):
        runs += [make_run(tmp_path, f"l2-seed{seed}", "l2", 0.60 + seed / 100, seed=seed),
                 make_run(tmp_path, f"l2-clip-seed{seed}", "l2", 0.65 + seed / 100, seed=seed,
                          train={"grad_clip": 5.0}),
                 make_run(tmp_path, f"sl1-seed{seed}", "smooth_l1", 0.70, seed=seed),
                 make_run(tmp_path, f"sl1-beta0.5-seed{seed}", "smooth_l1", 0.72, seed=seed, params={"beta": 0.5})]
    summary = summarise(group_runs([load_run(r) for r in runs]), baseline="smooth_l1")
    assert [r["condition"] for r in summary] == ["l2", "l2, grad_clip=5.0", "smooth_l1 (beta=0.1111)",
                                                 "smooth_l1 (beta=0.5)"]
    # differences to smooth_l1 with its default beta 1/9: -0.095, -0.045, (itself), +0.02
    assert [r["dAP"] and round(r["dAP"].mean, 3) for r in summary] == [-0.095, -0.045, None, 0.02]
    beta_baseline = summarise(group_runs([load_run(r) for r in runs]), baseline="smooth_l1(beta=0.5)")
    assert round(beta_baseline[2]["dAP"].mean, 3) == -0.02
    # clipping on and off is no numeric sweep: the report has no figure against grad_clip
    report = write_report(runs, tmp_path / "report", "cmd").read_text()
    assert "| l2, grad_clip=5.0 | 2/2 |" in report and "against train.grad_clip" not in report
    assert not (tmp_path / "report" / "metric_vs_option.png").exists()


def test_a_curve_over_the_noise_levels_joins_only_its_own_condition(tmp_path):
    """The clipping control's noise plot: clipped and plain L2 are two curves, not one line
    zigzagging between them; the noise trend is tested for each."""
    ap = {  # (loss, clipped) -> noise level -> AP of seeds 0 and 1
        ("l2", False): {0.0: (0.70, 0.71), 0.2: (0.60, 0.62)},
        ("l2", True): {0.0: (0.72, 0.73), 0.2: (0.66, 0.66)},
        ("smooth_l1", False): {0.0: (0.75, 0.76), 0.2: (0.75, 0.76)}}
    runs = []
    for (loss, clipped), levels in ap.items():
        for noise, per_seed in levels.items():
            for seed, value in enumerate(per_seed):
                runs.append(make_run(tmp_path, f"{loss}{'-clip' * clipped}-noise{noise}-seed{seed}", loss, value,
                                     seed=seed, noise=noise, train={"grad_clip": 5.0} if clipped else None))
    points = _noise_points(group_runs([load_run(r) for r in runs]))
    assert sorted(points) == ["l2", "l2, grad_clip=5.0", "smooth_l1 (beta=0.1111)"]
    assert points["l2"]["AP"] == [(0.0, [0.70, 0.71]), (0.2, [0.60, 0.62])]
    assert points["l2, grad_clip=5.0"]["AP"] == [(0.0, [0.72, 0.73]), (0.2, [0.66, 0.66])]
    report = write_report(runs, tmp_path / "report", "cmd").read_text()
    # gaps to smooth_l1 per seed, P = 0 -> 0.2: plain -0.05 -> -0.15 and -0.05 -> -0.14 (slopes -0.05 and -0.045
    # per 0.1 of noise, mean -0.0475); clipped -0.03 -> -0.09 and -0.03 -> -0.10 (-0.03, -0.035; mean -0.0325)
    trend = report[report.index("Does the gap to the baseline grow"):]
    assert "| l2 | -0.0475 [" in trend and "| l2, grad_clip=5.0 | -0.0325 [" in trend


def test_the_report_names_the_code_versions_and_warns_when_they_differ(tmp_path, caplog):
    same = {"package": "0.2.0", "commit": "3684c1d" + "0" * 33, "dirty": False}
    runs = [make_run(tmp_path, "a", "l1", 0.7, code=same), make_run(tmp_path, "b", "smooth_l1", 0.7, code=same)]
    report = write_report(runs, tmp_path / "one", "cmd").read_text()
    assert "Code version of every run: 3684c1d." in report and "Warning" not in report
    runs.append(make_run(tmp_path, "c", "l2", 0.6, code={**same, "dirty": True}))
    runs.append(make_run(tmp_path, "d", "l2", 0.6, seed=1))  # made before versions were recorded
    report = write_report(runs, tmp_path / "mixed", "cmd").read_text()
    assert ("**Warning: these runs come from 3 code versions (3684c1d: 2 runs; 3684c1d+changes: 1 run; "
            "unknown (run made before versions were recorded): 1 run)") in report
    assert "| c | l2 | 0 | 0 | completed | 940 |" in report and "| 3684c1d+changes |" in report
    assert "come from 3 code versions" in caplog.text


def _gradients_csv(run, rows):
    header = "step,head,loss,boxes,count,mean,median,p90,p99,max,fraction_at_bound,share"
    (run / "gradients.csv").write_text("\n".join([header, *rows]) + "\n")


def test_the_noise_report_says_what_share_of_the_gradient_the_displaced_boxes_carry(tmp_path):
    from detector.lab.report import outlier_gradient_summary

    runs = []
    for seed, (share_a, share_b) in enumerate(((0.5, 0.7), (0.3, 0.5))):
        run = make_run(tmp_path, f"l2-noise0.2-seed{seed}", "l2", 0.6, seed=seed, noise=0.2)
        # two logged steps; 20 of 100 outputs displaced at each, carrying share_a then share_b of the gradient
        _gradients_csv(run, [f"{step},box_head,l2,all,100,1,1,1,1,1,nan,1.0" for step in (0, 10)] +
                       [f"{step},box_head,l2,displaced,20,3,{2 + step / 10},3,3,3,nan,{share}"
                        for step, share in ((0, share_a), (10, share_b))] +
                       [f"{step},box_head,l2,clean,80,0.5,0.5,1,1,1,nan,{1 - share}"
                        for step, share in ((0, share_a), (10, share_b))])
        runs.append(load_run(run))
    clean_run = make_run(tmp_path, "l2-seed0", "l2", 0.7)  # no noise: no split, no row
    _gradients_csv(clean_run, ["0,box_head,l2,all,100,1,1,1,1,1,nan,1.0"])
    table = outlier_gradient_summary(group_runs(runs + [load_run(clean_run)]))
    # shares of the gradient: seed 0 mean 0.6, seed 1 mean 0.4 -> 0.5 over 20% of the outputs: ratio 2.5;
    # median displaced: 2.5 in each seed (2 and 3); clean 0.5
    assert table.splitlines()[2:] == ["| l2, noise 0.2 | 2 | box_head | 20.0% | 50.0% | 2.50 | 2.500 | 0.500 |"]
    assert outlier_gradient_summary(group_runs([load_run(clean_run)])) is None


# ----------------------------------------------------------------------------- the verdict


def _matrix(tmp_path, table):
    """Run directories of ``table``: loss -> [(AP, AP90) per seed]."""
    return [make_run(tmp_path, f"{loss}-seed{seed}", loss, ap, seed=seed, ap90=ap90)
            for loss, values in table.items() for seed, (ap, ap90) in enumerate(values)]


def _verdict(report: str) -> str:
    return report.split("## What to use on this dataset")[1].split("## Summary")[0]


def test_the_verdict_keeps_the_baseline_when_no_loss_differs_and_says_what_more_seeds_would_resolve(tmp_path):
    runs = _matrix(tmp_path, {"smooth_l1": [(0.70, 0.30), (0.72, 0.31), (0.71, 0.30)],
                              "l1": [(0.705, 0.30), (0.715, 0.31), (0.712, 0.30)]})
    verdict = _verdict(write_report(runs, tmp_path / "report", "cmd").read_text())
    assert "**Use smooth_l1** (the baseline): no loss is better on AP with a Holm-adjusted p below 0.05 " \
           "(1 loss compared with smooth_l1, 3 seeds, AP)." in verdict
    # differences +0.005, -0.005, +0.002: mean +0.00067, sd 0.005132
    assert "- l1: AP +0.001 [-0.012, +0.013] against smooth_l1" in verdict
    assert "Not told apart: with this spread (sd of the paired differences 0.0051), 3 seeds detect a difference of " \
           "0.016 (80% power, α = 0.05)" in verdict and "seeds would detect 0.01" in verdict


def test_the_verdict_says_when_two_seeds_cannot_detect_any_possible_difference(tmp_path):
    runs = _matrix(tmp_path, {"smooth_l1": [(0.70, 0.30), (0.70, 0.30)], "l1": [(0.80, 0.30), (0.60, 0.30)]})
    verdict = _verdict(write_report(runs, tmp_path / "report", "cmd").read_text())
    # differences +0.1, -0.1: sd 0.1414; (t(0.975, 1) 12.706 + t(0.8, 1) 1.376) x 0.1414 / sqrt 2 = 1.408 > 1
    assert ("Not told apart: with this spread (sd of the paired differences 0.1414), 2 seeds detect no difference AP "
            "can show (it lies in [0, 1]; the bound is 1.41) (80% power, α = 0.05)") in verdict


def test_the_verdict_names_a_clear_winner_after_holms_adjustment(tmp_path):
    runs = _matrix(tmp_path, {"smooth_l1": [(0.70, 0.30), (0.72, 0.31), (0.71, 0.30)],
                              "giou": [(0.73, 0.33), (0.751, 0.34), (0.741, 0.33)],
                              "l2": [(0.69, 0.29), (0.715, 0.30), (0.70, 0.29)]})
    verdict = _verdict(write_report(runs, tmp_path / "report", "cmd").read_text())
    # giou: +0.030, +0.031, +0.031: t = 0.030667 / (0.000577 / sqrt 3) = 92, p 1.2e-4, Holm over 2 losses 2.4e-4
    assert "**Use giou**: AP +0.031 [+0.029, +0.032] over smooth_l1, Holm-adjusted p < 0.001 (2 losses compared" \
        in verdict
    assert "- l2: AP -0.008" in verdict
    # The same sentence, without the Markdown, is what compare.py prints at the end.
    assert json.loads((tmp_path / "report" / "results.json").read_text())["verdict"] == (
        "Use giou: AP +0.031 [+0.029, +0.032] over smooth_l1, Holm-adjusted p < 0.001 (2 losses compared with "
        "smooth_l1, 3 seeds, AP).")


def test_a_winner_on_ap90_only_is_the_verdict_only_when_ap90_is_the_primary_metric(tmp_path):
    runs = _matrix(tmp_path, {"smooth_l1": [(0.70, 0.30), (0.72, 0.31), (0.71, 0.30)],
                              "giou": [(0.70, 0.36), (0.721, 0.37), (0.709, 0.36)]})
    on_ap = _verdict(write_report(runs, tmp_path / "ap", "cmd").read_text())
    assert "**Use smooth_l1** (the baseline)" in on_ap
    assert "Exploratory, unadjusted: on other metrics, giou AP90 +0.060 [+0.060, +0.060]" in on_ap
    on_ap90 = _verdict(write_report(runs, tmp_path / "ap90", "cmd", metric="AP90").read_text())
    assert "**Use giou**: AP90 +0.060" in on_ap90


def test_a_learning_rate_sweep_pairs_each_loss_with_the_baseline_at_its_own_rate(tmp_path):
    runs = []
    for lr, base_ap, l1_ap in ((0.1, 0.60, 0.62), (0.2, 0.70, 0.69)):
        for seed in (0, 1):
            runs.append(make_run(tmp_path, f"smooth_l1-lr{lr}-seed{seed}", "smooth_l1", base_ap + seed / 100, seed=seed,
                                 train={"lr": lr}))
            runs.append(make_run(tmp_path, f"l1-lr{lr}-seed{seed}", "l1", l1_ap + seed / 100, seed=seed, train={"lr": lr}))
    for lr, l1_ap in ((0.4, 0.66), (0.8, 0.50)):  # no baseline at these rates
        for seed in (0, 1):
            runs.append(make_run(tmp_path, f"l1-lr{lr}-seed{seed}", "l1", l1_ap + seed / 100, seed=seed, train={"lr": lr}))
    runs.append(make_run(tmp_path, "l2-lr0.1-seed0", "l2", 0.5, train={"lr": 0.1}))
    runs.append(make_run(tmp_path, "l2-lr0.2-seed0", "l2", 0.0, train={"lr": 0.2}, status="diverged",
                         diverged_at_step=37))
    rows = [load_run(r) for r in runs]
    summary = {row["condition"]: row for row in summarise(group_runs(rows), "smooth_l1")}
    assert summary["l1, lr=0.1"]["dAP"].mean == pytest.approx(0.02)  # against smooth_l1 at 0.1, not at 0.2
    assert summary["l1, lr=0.2"]["dAP"].mean == pytest.approx(-0.01)
    assert summary["l1, lr=0.1"]["baseline"] == "smooth_l1 (beta=0.1111), lr=0.1"
    report = write_report(runs, tmp_path / "report", "cmd").read_text()
    assert "## AP against train.lr" in report and "![AP against train.lr](metric_vs_option.png)" in report
    assert "| l2 | 0.1, 0.2 | 0.1 | 0.1 | 0.500 (0.1) |" in report  # diverged at 0.2
    assert "| smooth_l1 (beta=0.1111) | 0.1, 0.2 | 0.2 | 0.2 | 0.705 (0.2) |" in report
    # l1's best 0.695 at 0.2; 0.665 at 0.4 is within 0.05 of it, 0.505 at 0.8 is not
    assert "| l1 | 0.1, 0.2, 0.4, 0.8 | 0.8 | 0.4 | 0.695 (0.2) |" in report
    assert (tmp_path / "report" / "metric_vs_option.png").is_file()


def test_the_noise_sweep_tests_whether_the_gap_grows_with_the_noise(tmp_path):
    runs = []
    for noise, gap in ((0.0, -0.01), (0.2, -0.05), (0.4, -0.10)):
        for seed, (shared, jitter) in enumerate(((0.0, 0.002), (0.03, -0.001), (-0.02, 0.0))):
            name = f"-noise{noise}" if noise else ""
            runs.append(make_run(tmp_path, f"smooth_l1{name}-seed{seed}", "smooth_l1", 0.7 + shared - noise / 4,
                                 seed=seed, noise=noise))
            runs.append(make_run(tmp_path, f"l2{name}-seed{seed}", "l2", 0.7 + shared - noise / 4 + gap + jitter,
                                 seed=seed, noise=noise))
    report = write_report(runs, tmp_path / "report", "cmd").read_text()
    section = report.split("### Does the gap to the baseline grow with the noise?")[1].split("##")[0]
    # the gap falls by 0.09 over 0.4 of noise: -0.0225 per 0.1
    (row,) = [line for line in section.splitlines() if line.startswith("| l2 |")]
    slope = float(row.split("|")[2].strip(" *").split()[0])
    assert slope == pytest.approx(-0.0225, abs=0.001) and "**" in row and "| 5 |" in row


def test_the_report_has_each_classs_ap_per_condition(tmp_path):
    runs = []
    for loss, values in (("l1", (0.6, 0.8)), ("l2", (0.5, 0.7))):
        for seed in (0, 1):
            run = make_run(tmp_path, f"{loss}-seed{seed}", loss, 0.7, seed=seed)
            metrics = json.loads((run / "metrics.json").read_text())
            metrics["val"]["ap_per_class"] = {"cat": values[0] + seed / 10, "dog": values[1], "bird": -1.0}
            (run / "metrics.json").write_text(json.dumps(metrics))
            runs.append(run)
    report = write_report(runs, tmp_path / "report", "cmd").read_text()
    assert "| condition | cat | dog |" in report  # bird has no value (-1): no column
    assert "| l1 | 0.650 | 0.800 |" in report and "| l2 | 0.550 | 0.700 |" in report
    rows = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert rows[0]["AP_large"] == ""  # COCO's -1 (no large objects) is no value, not -1
    assert json.loads((tmp_path / "report" / "results.json").read_text())["runs"][0]["AP_large"] is None
