import math

import pytest
import torch

from detector.gradients import GradientLog, GradientProbe
from detector.losses import build_loss


def probe_after_backward(loss_name, x, foreground, weight=2.0):
    """Drive a probe as a head does: loss summed over foreground, times weight / normaliser."""
    loss = build_loss(loss_name)
    output = x.clone().requires_grad_(True)
    normaliser = torch.tensor(4.0)
    probe = GradientProbe("box_head", loss_name, loss.gradient_bound)
    probe.attach(output, foreground, weight / normaliser)
    values = loss(output, torch.zeros_like(output)) * foreground[..., None]
    (weight * values.sum() / normaliser).backward()
    return probe.statistics(step=7)


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


def test_no_foreground_gives_no_row_and_log_appends(tmp_path):
    assert probe_after_backward("l1", torch.ones(1, 4), torch.tensor([False])) is None
    log = GradientLog(tmp_path / "gradients.csv")
    log.write({"step": 0, "head": "rpn", "loss": "l1", "count": 1, "mean": 1, "median": 1, "p90": 1, "p99": 1,
               "max": 1, "fraction_at_bound": 1})
    log.close()
    log = GradientLog(tmp_path / "gradients.csv")  # a resumed run appends below the header
    log.write({"step": 10, "head": "rpn", "loss": "l1", "count": 1, "mean": 1, "median": 1, "p90": 1, "p99": 1,
               "max": 1, "fraction_at_bound": 1})
    log.close()
    lines = (tmp_path / "gradients.csv").read_text().splitlines()
    assert lines[0].startswith("step,head,loss") and len(lines) == 3
