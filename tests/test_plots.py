"""Figures: formats and resolution, readable labels in class colours, single runs labelled as
such, validation AP as points, coinciding curves told apart."""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from detector.engine import figures as engine_figures
from detector.engine.config import ConfigError
from detector.engine.drawing import class_colour
from detector.lab import plots


@pytest.fixture
def figures(monkeypatch):
    """Every figure a plot function saves, kept open for inspection instead of written."""
    saved = []

    def keep(fig, path, **options):
        saved.append(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    return saved


def legend_texts(fig):
    return [text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()]


def test_png_is_200_dpi_and_vector_formats_are_vector(tmp_path):
    curves = {"l1": [{"0.50": 0.9, "0.95": 0.1}]}
    png = Image.open(plots.plot_ap_vs_iou(curves, tmp_path / "ap.png"))
    assert png.size == (8 * 200, 5 * 200)  # an 8 x 5 inch figure at 200 dpi
    assert plots.plot_ap_vs_iou(curves, tmp_path / "ap.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in plots.plot_ap_vs_iou(curves, tmp_path / "ap.svg").read_bytes()[:500]


def test_plot_losses_format_replaces_the_suffix(tmp_path):
    out = plots.plot_from_args(argparse.Namespace(out=str(tmp_path / "curves.png"), format="svg", gradients=None,
                                                       overwrite=False))
    assert out == tmp_path / "curves.svg" and b"<svg" in out.read_bytes()[:500]
    with pytest.raises(ConfigError, match=r"--out .*curves.jpg: a figure is written as png, pdf, svg"):
        plots.plot_from_args(argparse.Namespace(out=str(tmp_path / "curves.jpg"), format=None, gradients=None, overwrite=False))


def test_a_single_run_is_labelled_as_one_not_as_a_mean(figures):
    plots.plot_ap_vs_iou({"l1": [{"0.50": 0.9}], "l2": [{"0.50": 0.8}, {"0.50": 0.7}, {"0.50": 0.6}]}, "ap.png")
    assert legend_texts(figures[0]) == ["l1 (single run)", "l2 (mean ± std of 3 seeds)"]
    # Only the condition with seeds has a band of one std.
    assert len(figures[0].axes[0].collections) == 1


def test_validation_ap_is_a_point_per_evaluation_and_identical_curves_differ_in_style(figures):
    rows = [{"step": "9", "train/loss": "1.0", "train/loss_box_reg": "0.5", "val/AP": ""},
            {"step": "19", "train/loss": "0.8", "train/loss_box_reg": "0.4", "val/AP": ""},
            {"step": "19", "train/loss": "", "train/loss_box_reg": "", "val/AP": "0.6"},
            {"step": "29", "train/loss": "", "train/loss_box_reg": "", "val/AP": "0.7"}]
    plots.plot_training_curves({"l1": [rows], "smooth_l1": [rows]}, "training.png")
    loss_ax, _, ap_ax = figures[0].axes
    first, second = loss_ax.get_lines()
    assert np.array_equal(first.get_ydata(), second.get_ydata())  # the same numbers ...
    assert first.get_linestyle() != second.get_linestyle()  # ... drawn so that both show
    for line in ap_ax.get_lines():
        assert line.get_linestyle() == "None" and list(line.get_xdata()) == [19, 29]  # points, no line between
        assert line.get_markerfacecolor() == "none"  # hollow: one over the other leaves both visible
    assert ap_ax.get_lines()[0].get_marker() != ap_ax.get_lines()[1].get_marker()
    assert legend_texts(figures[0])[:2] == ["l1 (single run)", "smooth_l1 (single run)"]


def test_example_labels_are_readable_in_their_class_colour(figures):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    truth = [([4, 4, 20, 20], "cat", class_colour(1))]
    detections = [([30, 30, 20, 20], "dog 0.93", class_colour(2))]
    plots.plot_examples([image], ["ground truth", "l1"], [[truth, detections]], "examples.png")
    texts = [t for ax in figures[0].axes for t in ax.texts]
    assert [t.get_text() for t in texts] == ["cat", "dog 0.93"]
    assert all(t.get_fontsize() >= 9 for t in texts)  # points at the saved size: nothing rescales the figure
    assert [to_hex(t.get_bbox_patch().get_facecolor()) for t in texts] == [class_colour(1), class_colour(2)]
    assert [to_hex(p.get_edgecolor()) for ax in figures[0].axes for p in ax.patches] == [class_colour(1), class_colour(2)]


def test_a_palette_png_keeps_the_size_and_the_colours(tmp_path):
    images = {}
    for palette in (False, True):
        fig, ax = plt.subplots(figsize=(2, 1))
        ax.imshow(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8))
        ax.set_axis_off()
        path = plots.save_figure(fig, tmp_path / f"palette{palette}.png", palette=palette)
        images[palette] = Image.open(path)
    assert images[True].mode == "P" and images[True].size == images[False].size == (2 * engine_figures.DPI, engine_figures.DPI)
    full, reduced = (np.asarray(images[p].convert("RGB"), dtype=int) for p in (False, True))
    assert np.abs(full - reduced).max() <= 8  # a few colours: the palette holds them all but antialiasing


def test_the_figure_of_runs_draws_each_runs_curves(tmp_path, monkeypatch):
    kept = []
    monkeypatch.setattr(engine_figures, "save_figure", lambda fig, path, **options: kept.append(fig) or path)
    runs = []
    for name, scale in (("a", 1.0), ("b", 2.0)):
        run = tmp_path / name
        run.mkdir()
        rows = ["step,train/loss,train/loss_box_reg,lr-AdamW/pg1,val/AP,val/AP50,val/AP90"]
        rows += [f"{step},{scale / (1 + step)},{scale / (2 + step)},0.001,,," for step in range(0, 40, 2)]
        rows += ["39,,,,0.5,0.8,0.2"]
        (run / "metrics.csv").write_text("\n".join(rows) + "\n")
        (run / "gradients.csv").write_text("step,head,loss,boxes,median\n0,box_head,l1,all,1.0\n10,box_head,l1,all,0.9\n"
                                           "10,box_head,l1,displaced,5.0\n")
        runs.append(run)
    assert engine_figures.plot_runs(runs, tmp_path / "x.png") == tmp_path / "x.png"
    (fig,) = kept
    losses, rate, validation, gradients = fig.axes
    assert [line.get_label() for line in losses.get_lines() if not line.get_label().startswith("_")] == [
        "a: loss", "b: loss"]
    assert [list(line.get_ydata()) for line in validation.get_lines()][:3] == [[0.5], [0.8], [0.2]]
    assert [list(line.get_ydata()) for line in gradients.get_lines()] == [[1.0, 0.9], [1.0, 0.9]]  # "all" rows only
    assert engine_figures.plot_runs([tmp_path / "empty"], tmp_path / "y.png") is None


def test_plot_run_script_refuses_a_folder_that_is_not_a_run(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "scripts/plot_run.py", str(tmp_path)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 2 and f"error: {tmp_path}: no metrics.csv (not a run directory)" in result.stderr


def test_the_moving_average_is_trailing_and_shorter_at_the_start():
    import numpy as np

    from detector.engine.figures import moving_average

    # window 2: [1], [1, 2], [2, 3], [3, 4]; window 10 over 3 values: the running mean
    assert moving_average(np.array([1.0, 2.0, 3.0, 4.0]), window=2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert moving_average(np.array([3.0, 1.0, 2.0])).tolist() == [3.0, 2.0, 2.0]
