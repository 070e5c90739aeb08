import csv
import json

import pytest

from detector.report import load_run, markdown_table, write_report


def make_run(root, name, loss, ap, status="completed"):
    run = root / name
    run.mkdir()
    ap_per_iou = {f"{t / 100:.2f}": round(ap + (0.5 - t / 100), 3) for t in range(50, 100, 5)}
    metrics = {"status": status, "steps": 940,
               "loss": {"box_head": {"name": loss, "space": "deltas", "params": {"beta": 1 / 9} if loss == "smooth_l1" else {}, "weight": 1.0}},
               "val": {"stats": {"AP": ap, "AP50": 0.9, "AP75": 0.8, "AP_small": 0.7, "AP_medium": 0.85, "AP_large": -1.0},
                       "ap_per_iou": ap_per_iou},
               "timings": {"train_s": 480.0, "total_s": 520.5}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_report_numbers_equal_the_run_directories(tmp_path):
    runs = [make_run(tmp_path, "a", "l1", 0.71), make_run(tmp_path, "b", "smooth_l1", 0.76)]
    report = write_report(runs, tmp_path / "report", "python scripts/report.py a b --out report")
    text = report.read_text()
    assert "| a | l1 | completed | 940 | 0.710 | 0.900 | 0.800 | 0.310 | 0.700 | 0.850 | n/a | 480 | 520 |" in text
    assert "| b | smooth_l1 (beta=0.1111) |" in text
    assert "python scripts/report.py a b --out report" in text
    rows = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert [float(r["AP"]) for r in rows] == [0.71, 0.76]
    assert float(rows[1]["AP90"]) == pytest.approx(0.76 - 0.4)
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results[0]["ap_per_iou"]["0.50"] == 0.71
    assert (tmp_path / "report" / "ap_vs_iou.png").stat().st_size > 1000


def test_unfinished_run_shows_its_status(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "running"}))
    row = load_run(run)
    assert row["status"] == "running" and row["AP"] is None
    assert "| r | ? | running | - | - |" in markdown_table([row])


def test_missing_or_corrupt_run_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text("{broken")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        load_run(tmp_path)


def test_gradient_summary_averages_first_and_last_windows(tmp_path):
    from detector.report import gradient_summary

    run = make_run(tmp_path, "g", "l1", 0.7)
    lines = ["step,head,loss,count,mean,median,p90,p99,max,fraction_at_bound"]
    for step in range(0, 100, 10):  # medians 0.5..9.5 -> first five average 2.5, last five 7.5
        lines.append(f"{step},box_head,l1,10,1,{step / 10 + 0.5},1,1,1,1.0")
    (run / "gradients.csv").write_text("\n".join(lines) + "\n")
    table = gradient_summary({"g": run})
    assert "| g | box_head | 0-40 | 2.500 | 1.000 | 1.000 | 1.00 | 50-90 | 7.500 | 1.000 | 1.000 | 1.00 |" in table
    report = write_report([run], tmp_path / "out", "cmd").read_text()
    assert "![gradient statistics](gradients.png)" in report and (tmp_path / "out" / "gradients.png").is_file()
