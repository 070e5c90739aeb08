import math
from types import SimpleNamespace

import pytest
import torch

from detector.engine.callbacks import GradientStatistics
from detector.model.gradients import GradientProbe
from detector.model.losses import build_loss


def probe_backward(loss_name, x, foreground, weight=2.0, displaced=None):
    """A probe driven as a head drives it: loss summed over foreground, times weight / normaliser."""
    loss = build_loss(loss_name)
    output = x.clone().requires_grad_(True)
    normaliser = torch.tensor(4.0)
    probe = GradientProbe("box_head", loss_name, loss.gradient_bound)
    probe.attach(output, foreground, weight / normaliser, displaced)
    values = loss(output, torch.zeros_like(output)) * foreground[..., None]
    (weight * values.sum() / normaliser).backward()
    return probe


def probe_after_backward(loss_name, x, foreground, weight=2.0):
    """The one row (all foreground outputs) of a run without outlier labels."""
    (row,) = probe_backward(loss_name, x, foreground, weight).statistics(step=7)
    assert row["boxes"] == "all" and row["share"] == 1.0
    return row


def test_l2_statistics_are_the_loss_derivative_2x():
    x = torch.tensor([[0.5, -1.0, 2.0, 0.25], [9.0, 9.0, 9.0, 9.0]])
    row = probe_after_backward("l2", x, torch.tensor([True, False]))  # the 9s are background
    # |dl/dx| = 2|x| = 1, 2, 4, 0.5 over the foreground row only
    assert row["count"] == 4 and row["step"] == 7 and row["head"] == "box_head"
    assert row["mean"] == pytest.approx(1.875) and row["max"] == pytest.approx(4.0)
    assert row["median"] == pytest.approx(1.5)  # torch.quantile interpolates between 1 and 2
    assert math.isnan(row["fraction_at_bound"])  # l2 has no bound


def test_l1_and_smooth_l1_fraction_at_bound():
    x = torch.tensor([[0.05, -1.0, 2.0, 0.01]])
    row = probe_after_backward("l1", x, torch.tensor([True]))
    assert row["fraction_at_bound"] == 1.0 and row["max"] == pytest.approx(1.0)
    row = probe_after_backward("smooth_l1", x, torch.tensor([True]))  # beta 1/9: 0.05 and 0.01 inside
    assert row["fraction_at_bound"] == 0.5
    assert row["median"] == pytest.approx((0.45 + 1.0) / 2, rel=1e-5)  # sorted 0.09, 0.45, 1, 1


def test_no_foreground_gives_no_row():
    assert probe_backward("l1", torch.ones(1, 4), torch.tensor([False])).statistics(step=7) == []


def test_displaced_and_clean_outputs_are_described_apart():
    # L2 on three foreground boxes: |dl/dx| = 2|x|. The second box's ground truth was displaced.
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5], [3.0, -3.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0], [9.0, 9.0, 9.0, 9.0]])
    foreground = torch.tensor([True, True, True, False])
    displaced = torch.tensor([False, True, False, True])  # the background row's flag does not count
    rows = probe_backward("l2", x, foreground, displaced=displaced).statistics(step=3)
    assert [row["boxes"] for row in rows] == ["all", "displaced", "clean"]
    everything, outliers, clean = rows
    # all: 1 1 1 1 6 6 4 4 2 2 2 2, sum 32; displaced: 6 6 4 4, sum 20; clean: 1 x4 and 2 x4, sum 12
    assert (everything["count"], outliers["count"], clean["count"]) == (12, 4, 8)
    assert outliers["share"] == pytest.approx(20 / 32) and clean["share"] == pytest.approx(12 / 32)
    assert everything["share"] == 1.0 and everything["mean"] == pytest.approx(32 / 12)
    assert outliers["median"] == pytest.approx(5.0) and outliers["max"] == pytest.approx(6.0)
    assert clean["median"] == pytest.approx(1.5) and clean["max"] == pytest.approx(2.0)


def test_a_step_without_displaced_outputs_says_so_with_a_share_of_0():
    rows = probe_backward("l1", torch.ones(2, 4), torch.tensor([True, True]),
                          displaced=torch.tensor([False, False])).statistics(step=0)
    outliers = rows[1]
    assert outliers["boxes"] == "displaced" and outliers["count"] == 0 and outliers["share"] == 0.0
    assert math.isnan(outliers["median"]) and rows[2]["share"] == 1.0


def test_gradient_csv_rows_at_logging_steps_appended_below_one_header(tmp_path):
    path = tmp_path / "gradients.csv"
    logged = []  # what the trainer's loggers (metrics.csv, TensorBoard) receive
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))
    for run in range(2):  # the second fit is a resumed run: it appends below the existing header
        callback = GradientStatistics(path, every_n_steps=10)
        trainer = SimpleNamespace(is_global_zero=True, global_step=0, loggers=[logger])
        callback.on_fit_start(trainer, None)
        for step in (10 * run, 10 * run + 5):  # only the first is a logging step
            module = SimpleNamespace(diverged=None, gradient_probes=[probe_backward("l1", torch.ones(1, 4),
                                                                                     torch.tensor([True]))])
            trainer.global_step = step + 1  # Lightning has advanced past the step the probe saw
            callback.on_train_batch_end(trainer, module, None, None, 0)
        callback.teardown(trainer, None, "fit")
    lines = path.read_text().splitlines()
    assert lines[0] == "step,head,loss,boxes,count,mean,median,p90,p99,max,fraction_at_bound,share"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "10"]
    assert lines[1] == "0,box_head,l1,all,4,1.0,1.0,1.0,1.0,1.0,1.0,1.0"
    assert [step for step, _ in logged] == [0, 10]
    assert logged[0][1] == {f"gradients/box_head/{key}": value for key, value in
                            (("count", 4.0), ("mean", 1.0), ("median", 1.0), ("p90", 1.0), ("p99", 1.0), ("max", 1.0),
                             ("fraction_at_bound", 1.0))}


def test_global_gradient_norm_is_logged_before_clipping_at_logging_steps(tmp_path):
    class Logger:
        def __init__(self):
            self.logged = []

        def log_metrics(self, metrics, step):
            self.logged.append((step, metrics))

    module = torch.nn.Linear(2, 1)
    module.weight.grad = torch.tensor([[3.0, 0.0]])
    module.bias.grad = torch.tensor([4.0])  # norm of (3, 0, 4) = 5
    logger = Logger()
    callback = GradientStatistics(tmp_path / "gradients.csv", every_n_steps=10)
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, loggers=[logger])
    callback.on_fit_start(trainer, module)
    for step in (10, 15):  # only the first is a logging step
        trainer.global_step = step
        callback.on_before_optimizer_step(trainer, module, None)
    callback.teardown(trainer, module, "fit")
    assert logger.logged == [(10, {"train/grad_norm": pytest.approx(5.0)})]


def test_a_resumed_run_appends_under_the_header_its_file_has(tmp_path):
    path = tmp_path / "gradients.csv"
    path.write_text("step,head,loss,count,mean,median,p90,p99,max,fraction_at_bound\n0,rpn,l1,4,1,1,1,1,1,1\n")
    callback = GradientStatistics(path, every_n_steps=10)
    trainer = SimpleNamespace(is_global_zero=True, global_step=11, loggers=[])
    callback.on_fit_start(trainer, None)
    module = SimpleNamespace(diverged=None, gradient_probes=[probe_backward("l1", torch.ones(1, 4), torch.tensor([True]))])
    callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.teardown(trainer, None, "fit")
    assert path.read_text().splitlines()[2] == "10,box_head,l1,4,1.0,1.0,1.0,1.0,1.0,1.0"


def test_box_noise_marks_the_displaced_boxes_of_every_target_and_the_model_reads_them(tmp_path):
    """From the records to the probes: each training target carries which of its boxes are
    outlier labels, and a training step hands the probes the flags of their outputs' matches."""
    from detector.data import corrupt_boxes
    from detector.data.dataset import ImageRecord
    from detector.engine import build_model
    from detector.engine import config as config_lib
    from detector.engine.build import attach_gradient_probes

    records = [ImageRecord("a.png", 1, 64, 64, torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 30.0, 60.0, 60.0]]).numpy(),
                           torch.tensor([1, 1]).numpy())]
    (noisy,), count = corrupt_boxes(records, 0.5, seed=0)
    assert count == 1 and noisy.displaced.sum() == 1 and records[0].displaced is None
    model = build_model(config_lib.load(), num_classes=1).train()
    probes = attach_gradient_probes(model)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    target = {"boxes": torch.tensor(noisy.boxes), "labels": torch.tensor(noisy.labels),
              "displaced": torch.tensor(noisy.displaced)}
    sum(model([image], [target]).values()).backward()
    for probe in probes:
        rows = {row["boxes"]: row for row in probe.statistics(step=0)}
        assert set(rows) == {"all", "displaced", "clean"}
        assert rows["displaced"]["count"] + rows["clean"]["count"] == rows["all"]["count"]
        assert rows["displaced"]["share"] + rows["clean"]["share"] == pytest.approx(1.0)
