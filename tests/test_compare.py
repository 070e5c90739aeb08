"""The comparison matrix: planning, reuse of finished runs, resumption, the real script."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.engine import config as config_lib
from detector.engine.config import Config, ConfigError
from detector.lab.compare import Cell, cell_config, check_reusable, config_differences, parse_loss_spec, plan, train_matrix

REPO = Path(__file__).resolve().parents[1]

# A stand-in for scripts/train.py: records that it ran and finishes the run as training would.
FAKE_TRAIN = """
import json, sys, yaml
from pathlib import Path
mode, target = sys.argv[1], Path(sys.argv[2])
raw = yaml.safe_load((target / "config.yaml" if mode == "--resume" else target).read_text())
run_dir = Path(raw["train"]["out_dir"]) / raw["train"]["run_name"]
with open(run_dir.parent / "trained.txt", "a") as log:
    log.write(run_dir.name + (" resumed" if mode == "--resume" else "") + (" overwrite" if "--overwrite" in sys.argv else "")
              + "\\n")
if raw["train"]["seed"] == 7:  # a start that fails, as with a mistyped data root: nothing written
    sys.exit(2)
if raw["train"]["seed"] >= 10:  # a slow cell, for the time budget
    import time
    time.sleep(1.5)
status = "diverged" if raw["loss"]["name"] == "l2" and raw["train"]["seed"] == 1 else "completed"
run_dir.mkdir(exist_ok=True)
(run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
(run_dir / "metrics.json").write_text(json.dumps({"status": status}))
"""


def trained(runs_dir):
    path = runs_dir / "trained.txt"
    return path.read_text().splitlines() if path.is_file() else []


def test_plan_orders_noise_then_seed_then_loss():
    cells = plan(["l1", "l2"], [0, 1], [0.0, 0.2])
    assert [c.name for c in cells[:4]] == ["l1-seed0", "l2-seed0", "l1-seed1", "l2-seed1"]
    assert cells[4].name == "l1-noise0.2-seed0"
    assert Cell("pkg.mod:loss", 3, 0.0).name == "pkg.mod.loss-seed3"
    with pytest.raises(ConfigError, match="at least one loss"):
        plan([], [0], [0.0])


def test_loss_specs_name_cells_and_set_the_losss_parameters(tmp_path):
    assert parse_loss_spec("smooth_l1(beta=0.5)") == ("smooth_l1", {"beta": 0.5})
    assert parse_loss_spec(" balanced_l1(alpha=0.5, gamma=2) ") == ("balanced_l1", {"alpha": 0.5, "gamma": 2})
    assert parse_loss_spec("my.losses:cubic") == ("my.losses:cubic", {})
    with pytest.raises(ConfigError, match="parameter 'beta' must look like key=value"):
        parse_loss_spec("smooth_l1(beta)")
    with pytest.raises(ConfigError, match=r"must look like name or name\(key=value, ...\)"):
        parse_loss_spec("smooth_l1(beta=1")
    base = config_lib.load(overrides=["loss.args={beta: 0.2}"])
    cells = plan(["smooth_l1", "smooth_l1(beta=3)"], [1], [0.0, 0.2])
    assert [c.name for c in cells] == ["smooth_l1-seed1", "smooth_l1-beta3-seed1", "smooth_l1-noise0.2-seed1",
                                       "smooth_l1-beta3-noise0.2-seed1"]
    assert cell_config(base, cells[0], tmp_path).loss.args == {"beta": 0.2}  # the base's own parameters
    assert cell_config(base, cells[1], tmp_path).loss.args == {"beta": 3}
    with pytest.raises(ConfigError, match="no parameter 'gamma'"):
        cell_config(base, plan(["smooth_l1(gamma=1)"], [0], [0.0])[0], tmp_path)


def test_cell_config_drops_parameters_of_another_loss(tmp_path):
    base = config_lib.load(overrides=["loss.name=smooth_l1", "loss.args={beta: 0.5}", "train.lr=0.001"])
    same = cell_config(base, Cell("smooth_l1", 2, 0.1), tmp_path)
    assert same.loss.args == {"beta": 0.5} and same.train.seed == 2 and same.data.train_box_noise == 0.1
    other = cell_config(base, Cell("giou", 0, 0.0), tmp_path)
    assert other.loss.name == "giou" and other.loss.args == {} and other.train.lr == 0.001
    assert other.train.run_name == "giou-seed0" and other.train.out_dir == str(tmp_path)


def test_finished_run_with_another_configuration_is_rejected(tmp_path):
    wanted = cell_config(Config(), Cell("l1", 0, 0.0), tmp_path)
    run_dir = tmp_path / "l1-seed0"
    run_dir.mkdir()
    made = cell_config(config_lib.load(overrides=["train.epochs=3"]), Cell("l1", 0, 0.0), tmp_path / "elsewhere")
    config_lib.save(made, run_dir / "config.yaml")
    assert config_differences(wanted, run_dir) == ["train.epochs: 3 != 10"]  # out_dir does not count
    with pytest.raises(ConfigError, match=r"l1-seed0 holds a finished run made with a different configuration "
                                          r"\(train.epochs: 3 != 10\)"):
        check_reusable(wanted, run_dir)


def test_a_data_root_given_relative_or_absolute_is_the_same_dataset(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run_dir = tmp_path / "l1-seed0"
    run_dir.mkdir()

    def cell(root):
        return cell_config(config_lib.load(overrides=["data.name=shapes", f"data.root={root}"]), Cell("l1", 0, 0.0),
                           tmp_path)

    config_lib.save(cell(tmp_path / "photos"), run_dir / "config.yaml")
    assert config_differences(cell("../photos"), run_dir) == []
    other = cell("photos")
    assert config_differences(other, run_dir) == [f"data.root: '{tmp_path / 'photos'}' != 'photos'"]


def test_matrix_trains_only_unfinished_cells(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    command = [sys.executable, "-c", FAKE_TRAIN]
    cells = plan(["l1", "l2"], [0, 1], [0.0])
    dirs, left_out = train_matrix(cells, Config(), runs_dir, jobs=1, train_command=command)
    assert left_out == []
    assert [d.name for d in dirs] == ["l1-seed0", "l2-seed0", "l1-seed1", "l2-seed1"]
    assert trained(runs_dir) == ["l1-seed0", "l2-seed0", "l1-seed1", "l2-seed1"]
    assert "[4/4 done] l2-seed1: diverged" in capsys.readouterr().out

    # A finished matrix (diverged is finished: it would diverge again) trains nothing ...
    train_matrix(cells, Config(), runs_dir, jobs=1, train_command=command)
    assert len(trained(runs_dir)) == 4
    assert "4 finished, 0 to train" in capsys.readouterr().out
    # ... a failed one is trained again (its directory replaced: train.py refuses an existing one
    # without --overwrite); an interrupted one with a checkpoint resumes, and so does one that
    # still says running because its process was killed outright after an epoch's checkpoint.
    (runs_dir / "l1-seed1" / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    (runs_dir / "l1-seed1" / "checkpoints").mkdir()
    (runs_dir / "l1-seed1" / "checkpoints" / "interrupted.ckpt").write_bytes(b"")
    (runs_dir / "l2-seed1" / "metrics.json").write_text(json.dumps({"status": "running"}))
    (runs_dir / "l2-seed1" / "checkpoints").mkdir()
    (runs_dir / "l2-seed1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (runs_dir / "l2-seed0" / "metrics.json").write_text("{half-writ")
    train_matrix(cells, Config(), runs_dir, jobs=2, train_command=command)
    assert sorted(trained(runs_dir)[4:]) == ["l1-seed1 resumed", "l2-seed0 overwrite", "l2-seed1 resumed"]
    assert (runs_dir / "l1-seed1" / "train.log").is_file()  # parallel runs log to a file each
    assert sorted(p.name for p in runs_dir.iterdir()) == ["l1-seed0", "l1-seed1", "l2-seed0", "l2-seed1", "trained.txt"]


def test_a_cell_that_cannot_start_stops_the_matrix_and_leaves_no_directory(tmp_path):
    runs_dir = tmp_path / "runs"
    cells = plan(["l1", "l2"], [7], [0.0])
    with pytest.raises(ConfigError, match=r"l1-seed7 could not start \(exit status 2\) \(its error is above\)"):
        train_matrix(cells, Config(), runs_dir, jobs=1, train_command=[sys.executable, "-c", FAKE_TRAIN])
    assert trained(runs_dir) == ["l1-seed7"]  # l2-seed7 was not tried
    assert sorted(p.name for p in runs_dir.iterdir()) == ["trained.txt"]


TINY = ["data.name=shapes", "data.shapes_image_size=64", "data.shapes_num_train=16", "data.shapes_num_val=8", "data.batch_size=8",
        "data.num_workers=0", "train.epochs=1", "train.warmup_steps=1", "train.log_every_n_steps=1"]


def test_compare_script_trains_then_reports_without_retraining(tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "compare.py"), "--losses", "l1", "--seeds", "0",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "report"),
            "--set", *TINY, f"data.root={tmp_path / 'shapes'}"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = tmp_path / "runs" / "l1-seed0" / "metrics.json"
    assert json.loads(metrics.read_text())["status"] == "completed"
    stamp = metrics.stat().st_mtime_ns
    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "1 finished, 0 to train" in second.stdout
    # One loss has nothing to be compared with; the report's verdict says so, and the console too.
    assert second.stdout.rstrip().endswith("verdict: No loss could be compared with smooth_l1 on AP: the comparison "
                                           "needs smooth_l1 and another loss with at least two completed seeds in "
                                           "common.")
    assert metrics.stat().st_mtime_ns == stamp  # nothing was trained again
    report = (tmp_path / "report" / "report.md").read_text()
    ap = json.loads(metrics.read_text())["val"]["stats"]["AP"]
    assert f"| l1 | 1/1 | {ap:.3f} |" in report
    # Another configuration into the same runs folder is refused, naming the option.
    third = subprocess.run(args[:-1] + ["train.lr=0.01", f"data.root={tmp_path / 'shapes'}"],
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 2 and "train.lr: 0.003 != 0.01" in third.stderr


def _processes_naming(text: str) -> list[str]:
    """The live processes whose command line contains ``text`` (pgrep, as tests/test_cluster.py finds a job's tasks)."""
    return subprocess.run(["pgrep", "-af", text], capture_output=True, text=True).stdout.splitlines()


@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["kill-of-compare-alone", "ctrl-c-to-its-process-group"])
def test_a_signal_stops_the_matrix_with_its_cells_and_the_same_command_continues_it(signum, to_group, tmp_path):
    """A kill of compare.py alone left its cell training without it (and a rerun then resumed the
    same run directory beside it); a Ctrl-C stopped the cell but the matrix started the next one.
    Now the running cell stops with a checkpoint, once (not at once), no other cell starts, and
    compare.py exits with 128 + the signal; the same command then finishes the matrix."""
    runs = tmp_path / "runs"
    args = [sys.executable, str(REPO / "scripts" / "compare.py"), "--losses", "l1", "l2", "--seeds", "0", "--jobs", "1",
            "--runs-dir", str(runs), "--out", str(tmp_path / "report"),
            "--set", *TINY, "train.epochs=10", f"data.root={tmp_path / 'shapes'}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    last = runs / "l1-seed0" / "checkpoints" / "last.ckpt"  # the first epoch's end: the cell can be resumed
    deadline = time.time() + 300
    while not last.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    if to_group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert f"matrix stopped by {signal.Signals(signum).name}: l1-seed0 stopped; the same command continues it" in stderr
    stopped = json.loads((runs / "l1-seed0" / "metrics.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["stopped_by"] == signal.Signals(signum).name
    assert 0 < stopped["steps"] < 20 and (runs / "l1-seed0" / "checkpoints" / "interrupted.ckpt").is_file()
    assert not (runs / "l2-seed0").exists()  # no cell started after the signal
    assert _processes_naming(str(runs)) == []  # and none trains on without compare.py
    if to_group:
        return
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    for cell in ("l1-seed0", "l2-seed0"):
        metrics = json.loads((runs / cell / "metrics.json").read_text())
        assert (metrics["status"], metrics["steps"]) == ("completed", 20)  # 2 steps x 10 epochs


def test_parity_configurations_differ_only_where_the_implementations_do(tmp_path):
    from detector.engine import config as config_lib
    from detector.lab.compare import config_differences
    from detector.lab.parity import parity_configs

    configs = parity_configs(config_lib.load(), str(tmp_path), seed=2)
    ours, theirs = configs["ours"], configs["torchvision"]
    assert (ours.train.run_name, theirs.train.run_name) == ("parity-ours-seed2", "parity-torchvision-seed2")
    assert ours.train.seed == theirs.train.seed == 2
    assert (ours.loss.name, ours.loss.args) == ("smooth_l1", {"beta": 0.111})
    config_lib.save(theirs, tmp_path / "config.yaml")
    # ours starts its predictor like torchvision's; gradient statistics are only ours to record
    assert sorted(config_differences(ours, tmp_path)) == [
        "model.implementation: 'torchvision' != 'ours'",
        "model.predictor_init: 'detectron' != 'torchvision'",
        "train.gradient_stats: False != True",
    ]


def _finished_run(tmp_path, cfg):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config_lib.save(cfg, run_dir / "config.yaml")
    return run_dir


@pytest.mark.parametrize("override", ["data.num_workers=2", "train.accelerator=cpu", "train.threads=1",
                                      "train.channels_last=false", "data.skip_bad_images=true", "train.logger=tensorboard",
                                      "train.progress=false", "model.roi_align_kernel=torchvision"])
def test_a_rerun_that_changes_only_how_cells_run_reuses_the_finished_runs(tmp_path, override):
    run_dir = _finished_run(tmp_path, Config())
    check_reusable(config_lib.load(overrides=[override]), run_dir)  # no error: reused
    from detector.lab.report import group_runs

    rows = [{"loss": "smooth_l1", "loss_name": "smooth_l1", "noise": 0.0, "params": {}, "options": options}
            for options in ({}, dict([override.split("=")]))]
    assert len(group_runs(rows)) == 1  # and the report groups them as one condition


@pytest.mark.parametrize("override", ["train.lr=0.01", "train.devices=2", "train.precision=32-true", "loss.weight=2",
                                      "loss.rpn_name=l1"])
def test_a_rerun_that_changes_a_result_is_refused_and_makes_another_condition(tmp_path, override):
    run_dir = _finished_run(tmp_path, Config())
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"holds a finished run made with a different configuration \\({key}: "):
        check_reusable(config_lib.load(overrides=[override]), run_dir)
    from detector.lab.report import group_runs

    changed = config_lib.flatten(config_lib.load(overrides=[override]))[key]
    rows = [{"loss": "smooth_l1", "loss_name": "smooth_l1", "noise": 0.0, "params": {}, "options": options}
            for options in ({}, {key: changed})]
    conditions = group_runs(rows)
    assert len(conditions) == 2 and conditions[1].options == ((key, changed),)


def test_a_spec_with_a_weight_sets_the_losss_weight(tmp_path):
    cell = plan(["l2(weight=4.5)"], [0], [0.0])[0]
    assert cell.name == "l2-weight4.5-seed0"
    cfg = cell_config(Config(), cell, tmp_path)
    assert cfg.loss.name == "l2" and cfg.loss.weight == 4.5 and cfg.loss.args == {}


def test_a_time_budget_leaves_out_the_cells_that_no_longer_fit_later_seeds_first(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    cells = plan(["l1", "l2"], [10, 11, 12], [0.0])  # each cell sleeps 1.5 s (and starts a Python)
    dirs, left_out = train_matrix(cells, Config(), runs_dir, jobs=1, budget_s=4.0,
                                  train_command=[sys.executable, "-c", FAKE_TRAIN])
    started = trained(runs_dir)
    # One after another: a cell starts only while elapsed + the mean cell time (1.5 s and more) fits in 4 s.
    assert 2 <= len(started) <= 3 and started[:2] == ["l1-seed10", "l2-seed10"]
    assert [c.name for c in left_out] == [c.name for c in cells if c.name not in started]
    assert {c.name for c in left_out} >= {"l1-seed12", "l2-seed12"}  # the third seed waits behind the first two
    out = capsys.readouterr().out
    assert "budget 0 min: a cell takes about" in out and "left out unless cells get faster" in out


def test_on_a_cpu_parallel_cells_split_the_cores(tmp_path, monkeypatch):
    import os

    from detector.lab import compare

    seen = []
    monkeypatch.setattr(compare.torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(compare, "train_cell", lambda cfg, *args, **kwargs: seen.append(cfg.train.threads))
    train_matrix(plan(["l1", "l2"], [0], [0.0]), Config(), tmp_path, jobs=None, train_command=[])
    assert seen == [4, 4]  # CPU_JOBS = 2 cells at once, 8 cores
    seen.clear()
    train_matrix(plan(["l1"], [0], [0.0]), config_lib.load(overrides=["train.threads=3"]), tmp_path, jobs=2,
                 train_command=[])
    assert seen == [3]  # the user's own setting stays


def test_budget_durations_parse():
    from detector.lab.compare import budget_seconds

    assert (budget_seconds("90s"), budget_seconds("60m"), budget_seconds("1.5h"), budget_seconds("30")) == (90, 3600,
                                                                                                              5400, 30)
    assert budget_seconds("1:30:00") == 5400
    with pytest.raises(ConfigError, match="give a duration such as 90s, 60m or 2h"):
        budget_seconds("soon")
    with pytest.raises(ConfigError, match="the budget must be positive"):
        budget_seconds("0m")


def test_compare_with_a_data_root_alone_plans_the_default_matrix_beside_its_name(tmp_path, monkeypatch, capsys):
    import runpy

    from exports import write_voc_folder

    import detector.lab.compare as lab_compare

    root = write_voc_folder(tmp_path / "my_photos")
    seen = {}

    def compare_from_args(args, argv, cfg):  # what it was asked to do, and a report of nothing
        seen.update(args=args, cfg=cfg)
        Path(args.out).mkdir(parents=True)
        (Path(args.out) / "results.json").write_text(json.dumps({"verdict": "Use smooth_l1 (a test's verdict)."}))
        return Path(args.out) / "report.md"

    monkeypatch.setattr(lab_compare, "compare_from_args", compare_from_args)
    monkeypatch.setattr(sys, "argv", ["compare.py", "--data-root", str(root)])
    monkeypatch.chdir(tmp_path)
    assert runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "compare.py"))["main"]() == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"report: {Path('runs', 'compare', 'my_photos', 'report', 'report.md')}", "verdict: Use smooth_l1 (a test's verdict)."]
    args = seen["args"]
    assert [c.name for c in plan(args.losses, args.seeds, args.noise)] == [
        f"{loss}-seed{seed}" for seed in (0, 1, 2) for loss in ("smooth_l1", "l1", "l2", "balanced_l1", "giou")]
    assert args.runs_dir == str(Path("runs", "compare", "my_photos"))
    assert args.out == str(Path("runs", "compare", "my_photos", "report"))
    assert seen["cfg"].data.name == "voc" and args.baseline == "smooth_l1"


def test_the_time_left_shares_the_remaining_cells_among_the_jobs(tmp_path, monkeypatch, capsys):
    from detector.lab import compare

    clock = {"now": 0.0}
    monkeypatch.setattr(compare.time, "perf_counter", lambda: clock["now"])
    cells = plan(["l1", "l2"], [0, 1], [0.0])
    progress = compare.MatrixProgress(cells, tmp_path, cells, jobs=2)
    progress.started(cells[0])
    progress.started(cells[1])
    clock["now"] = 600.0
    progress.finished(cells[0])
    progress.started(cells[2])
    clock["now"] = 660.0
    progress.finished(cells[1])
    # mean cell 630 s; the running cell has 570 s left, one cell is queued: (570 + 630) / 2 jobs = 600 s
    assert capsys.readouterr().out.splitlines()[-1].endswith("; elapsed 11 min, about 10 min left")
