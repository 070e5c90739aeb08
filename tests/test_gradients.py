import math
from types import SimpleNamespace

import pytest
import torch

from detector.engine.callbacks import GradientStatistics
from detector.model.gradients import GradientProbe
from detector.model.losses import build_loss


def probe_backward(loss_name, x, foreground, weight=2.0):
    """A probe driven as a head drives it: loss summed over foreground, times weight / normaliser."""
    loss = build_loss(loss_name)
    output = x.clone().requires_grad_(True)
    normaliser = torch.tensor(4.0)
    probe = GradientProbe("box_head", loss_name, loss.gradient_bound)
    probe.attach(output, foreground, weight / normaliser)
    values = loss(output, torch.zeros_like(output)) * foreground[..., None]
    (weight * values.sum() / normaliser).backward()
    return probe


def probe_after_backward(loss_name, x, foreground, weight=2.0):
    return probe_backward(loss_name, x, foreground, weight).statistics(step=7)


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
    assert probe_after_backward("l1", torch.ones(1, 4), torch.tensor([False])) is None


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
    assert lines[0] == "step,head,loss,count,mean,median,p90,p99,max,fraction_at_bound"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "10"]
    assert lines[1].startswith("0,box_head,l1,4,1.0,1.0,1.0,1.0,1.0,1.0")
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
