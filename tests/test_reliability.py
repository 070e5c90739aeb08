"""Divergence, interruption and resumption, and two-process (DDP) training on the CPU."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from detector.engine import config as config_lib
from detector.engine import rundir, training
from detector.engine.training import train
from detector.lab.report import load_run

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=shapes", "data.shapes_image_size=64", "data.shapes_num_train=24", "data.shapes_num_val=8", "data.batch_size=8",
        "data.num_workers=0", "train.epochs=2", "train.warmup_steps=1", "train.progress=false",
        "train.log_every_n_steps=1", "train.val_every_n_epochs=1"]


def tiny_config(tmp_path, name, *extra):
    return config_lib.load(overrides=TINY + [f"data.root={tmp_path / 'shapes'}", f"train.out_dir={tmp_path / 'runs'}",
                                             f"train.run_name={name}", *extra])


def _wait_for_logged_steps(run_dir: Path, rows: int = 8, timeout_s: float = 300) -> None:
    """Until the run's gradients.csv has ``rows`` lines (header included): training is under way."""
    gradients = run_dir / "gradients.csv"
    deadline = time.time() + timeout_s
    while time.time() < deadline and (not gradients.is_file() or gradients.read_text().count("\n") < rows):
        time.sleep(0.2)


def test_l2_with_a_huge_learning_rate_is_marked_diverged(tmp_path):
    run_dir = train(tiny_config(tmp_path, "l2", "loss.name=l2", "train.lr=1e4"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    step = metrics["diverged_at_step"]
    assert 0 < step < 6 and metrics["divergence"]["step"] == step
    losses = metrics["divergence"]["losses"]
    assert not all(v == v and abs(v) != float("inf") for v in losses.values())  # some loss is nan or inf
    last = metrics["divergence"]["last_finite_losses"]
    assert set(last) == {"loss", "loss_objectness", "loss_rpn_box", "loss_classifier", "loss_box_reg"}
    assert all(v == v and abs(v) != float("inf") for v in last.values())
    assert "val" not in metrics  # no metrics are claimed for a diverged model
    row = load_run(run_dir)  # the report reads it as diverged, at that step
    assert row["status"] == "diverged" and row["diverged_at_step"] == step and row["AP"] is None


class SignalAtStep(pl.Callback):
    """Sends this process SIGTERM once the given number of steps is done (as a user's kill would)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    extra = ("train.deterministic=true", "loss.name=smooth_l1")
    reference = json.loads((train(tiny_config(tmp_path, "whole", *extra)) / "metrics.json").read_text())
    assert reference["status"] == "completed" and reference["steps"] == 6

    build = training.build_trainer
    # The signal arrives before the run's own callbacks look for it, as during a step.
    monkeypatch.setattr(training, "build_trainer",
                        lambda cfg, run_dir, callbacks: build(cfg, run_dir, callbacks=[SignalAtStep(4), *callbacks]))
    run_dir = train(tiny_config(tmp_path, "split", *extra))  # 3 steps per epoch: stops inside epoch 2
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["steps"] == 4
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    monkeypatch.setattr(training, "build_trainer", build)

    resumed = json.loads((train(tiny_config(tmp_path, "split", *extra), resume=True) / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == 6 and resumed["resumed_from_step"] == 4
    assert resumed["val"]["stats"] == reference["val"]["stats"]  # exactly: same weights, same detections
    assert resumed["val"]["num_detections"] == reference["val"]["num_detections"]
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    with (run_dir / "metrics.csv").open() as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    with (tmp_path / "runs" / "whole" / "metrics.csv").open() as handle:
        assert steps == [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss")]


# A training process that kills itself outright (SIGKILL: what out-of-memory, a lost node or the
# end of a session does) after the given step, with no chance to record anything.
KILLED_AT_STEP = """
import os, signal, sys
import pytorch_lightning as pl
from detector.engine import config as config_lib, training

class KillAtStep(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

build = training.build_trainer
training.build_trainer = lambda cfg, run_dir, callbacks: build(cfg, run_dir, callbacks=[*callbacks, KillAtStep()])
training.train(config_lib.load(overrides=sys.argv[2:]))
"""


def test_a_run_killed_outright_continues_from_its_last_epoch_and_equals_an_uninterrupted_one(tmp_path):
    extra = ("train.deterministic=true", "loss.name=smooth_l1", "train.epochs=3")  # 3 steps per epoch
    whole = train(tiny_config(tmp_path, "whole", *extra))
    overrides = [*TINY, f"data.root={tmp_path / 'shapes'}", f"train.out_dir={tmp_path / 'runs'}",
                 "train.run_name=killed", *extra]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP, "5", *overrides], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "runs" / "killed"
    assert rundir.run_status(run_dir) == "running" and rundir.continues(run_dir)
    assert rundir.checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 3  # the end of epoch 1
    assert [int(row["step"]) for row in rundir.gradient_rows(run_dir)][-1] == 4  # logged past the checkpoint

    resumed = json.loads((train(tiny_config(tmp_path, "killed", *extra), resume=True) / "metrics.json").read_text())
    reference = json.loads((whole / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == 3
    assert resumed["val"]["stats"] == reference["val"]["stats"]
    # Steps 3 and 4, trained twice, are in the logs once, with the numbers of the uninterrupted run.
    assert rundir.gradient_rows(run_dir) == rundir.gradient_rows(whole)
    with (run_dir / "metrics.csv").open() as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    with (whole / "metrics.csv").open() as handle:
        assert steps == [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss")]


def test_resume_refuses_a_finished_run(tmp_path):
    cfg = tiny_config(tmp_path, "done", "train.epochs=1")
    train(cfg)
    with pytest.raises(config_lib.ConfigError, match="the run is completed; there is nothing to continue"):
        train(cfg, resume=True)


def run_script(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_sigterm_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    run_dir = tmp_path / "runs" / "killed"
    args = ["--set", *TINY, f"data.root={tmp_path / 'shapes'}", "train.epochs=20",
            "--out-dir", tmp_path / "runs", "--run-name", "killed"]
    process = subprocess.Popen([sys.executable, "scripts/train.py", *map(str, args)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_logged_steps(run_dir)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]  # 128 + SIGTERM
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and 0 < metrics["steps"] < 60
    assert "python scripts/train.py --resume" in stderr
    resumed = run_script("scripts/train.py", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 60  # 3 steps x 20 epochs


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_a_signal_to_the_whole_process_group_stops_the_run_with_a_checkpoint(signum, tmp_path):
    """As SLURM signals every process of a job, and Ctrl-C the terminal's foreground group: the
    DataLoader workers get the signal too, and must leave it to the trainer (a worker killed by it
    failed the run instead of stopping it)."""
    run_dir = tmp_path / "runs" / "group"
    args = ["--set", *TINY, f"data.root={tmp_path / 'shapes'}", "train.epochs=20", "data.num_workers=1",
            "--out-dir", tmp_path / "runs", "--run-name", "group"]
    process = subprocess.Popen([sys.executable, "scripts/train.py", *map(str, args)], cwd=REPO, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_logged_steps(run_dir)
    os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["stopped_by"] == signal.Signals(signum).name
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()


def test_one_signal_delivered_twice_at_once_is_one_request_to_stop_with_a_checkpoint(tmp_path):
    """A job's or cgroup's signal reaches every process and compare.py passes it on to its cells
    too: the two copies arrive together and must not count as the second signal that stops at once."""
    run_dir = tmp_path / "runs" / "twice"
    args = ["--set", *TINY, f"data.root={tmp_path / 'shapes'}", "train.epochs=20",
            "--out-dir", tmp_path / "runs", "--run-name", "twice"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr_file:
        process = subprocess.Popen([sys.executable, "scripts/train.py", *map(str, args)], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr_file, text=True)
    _wait_for_logged_steps(run_dir)
    process.send_signal(signal.SIGTERM)
    while "SIGTERM: stopping after this step" not in log.read_text() and process.poll() is None:
        time.sleep(0.01)  # the first copy handled: the second is a delivery of its own, as compare.py's is
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
    assert process.returncode == 143, log.read_text()[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and (run_dir / "checkpoints" / "interrupted.ckpt").is_file()


def test_resume_takes_no_other_options(tmp_path):
    result = run_script("scripts/train.py", "--resume", tmp_path, "--loss", "l2")
    assert result.returncode == 2 and "leave out --loss" in result.stderr


def test_two_process_ddp_on_the_cpu_equals_one_process_evaluation(tmp_path):
    """Lightning DDP with 2 processes (gloo): trains, evaluates with every rank's detections
    gathered (9 images: one rank gets a padding repeat, which must not count twice), and gives
    the same COCO AP as evaluating the same checkpoint in one process."""
    result = run_script("scripts/train.py", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                        "--set", *TINY, "data.shapes_num_val=9", f"data.root={tmp_path / 'shapes'}",
                        "--out-dir", tmp_path / "runs", "--run-name", "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["val"]["num_images"] == 9
    # 12 training images per rank, batch 8: 2 steps per epoch, 2 epochs
    assert metrics["steps"] == 4
    single = run_script("scripts/evaluate.py", run_dir / "checkpoints" / "last.ckpt", "--out", tmp_path / "eval",
                        "--num-workers", "0")
    assert single.returncode == 0, single.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["val"]
    assert evaluated["num_detections"] == metrics["val"]["num_detections"]
    assert evaluated["stats"]["AP"] == pytest.approx(metrics["val"]["stats"]["AP"], abs=1e-12)
    assert evaluated["ap_per_iou"] == pytest.approx(metrics["val"]["ap_per_iou"], abs=1e-12)


def test_early_stopping_ends_a_run_whose_validation_ap_stalls_and_records_it(tmp_path, monkeypatch):
    from detector.engine import module

    # A validation AP that never improves after the first: patience 2 stops at the third validation.
    real, calls = module.evaluate_coco, []

    def stalled(*args, **kwargs):
        metrics = real(*args, **kwargs)
        calls.append(1)
        metrics["stats"]["AP"] = 0.5 if len(calls) == 1 else 0.1
        return metrics

    monkeypatch.setattr(module, "evaluate_coco", stalled)
    run_dir = train(tiny_config(tmp_path, "patient", "train.epochs=10", "train.patience=2"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 9  # 3 epochs of 3 steps, of 10
    assert metrics["stopped_early"]["patience"] == 2 and metrics["config"]["train"]["patience"] == 2


def test_a_comparison_refuses_early_stopping_unless_asked(tmp_path):
    result = run_script("scripts/compare.py", "--losses", "l1", "--out", tmp_path / "report", "--set", *TINY,
                        f"data.root={tmp_path / 'shapes'}", "train.patience=3")
    assert result.returncode == 2 and "add --allow-early-stopping" in result.stderr


@pytest.mark.parametrize("max_epochs, max_steps, line", [
    (10, -1, "epoch 3/10: step 282, loss 0.742, "),  # the default: the epochs end the run
    (-1, 20, "epoch 1: step 20/20, loss 0.742, "),  # train.max_steps: the steps do
])
def test_the_epoch_line_counts_what_ends_the_run(max_epochs, max_steps, line, caplog):
    import logging
    from types import SimpleNamespace

    import torch

    from detector.engine.callbacks import EpochLine

    trainer = SimpleNamespace(current_epoch=2 if max_steps < 0 else 0, max_epochs=max_epochs, max_steps=max_steps,
                              global_step=282 if max_steps < 0 else 20,
                              callback_metrics={"train/loss": torch.tensor(0.7421)})
    callback = EpochLine()
    with caplog.at_level(logging.INFO, logger="detector.engine.callbacks"):
        callback.on_train_epoch_start(trainer, None)
        callback.on_train_epoch_end(trainer, None)
    assert caplog.messages[-1].startswith(line)
