"""The matrix through submitit: real submissions of picklable cell jobs, on local processes
(submitit's LocalExecutor) and on a one-node SLURM where one runs (.ci/slurm.sh starts it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.engine import config as config_lib
from detector.lab.cluster import SlurmOptions, _minutes, make_executor, pointer, submit_cells
from detector.lab.compare import MatrixProgress, cell_config, plan, queue_matrix

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=shapes", "data.shapes_image_size=64", "data.shapes_num_train=16", "data.shapes_num_val=8",
        "data.batch_size=8", "data.num_workers=0", "train.epochs=1", "train.warmup_steps=1", "train.log_every_n_steps=1",
        "train.progress=false"]


def _slurm_is_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    found = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return found.returncode == 0 and "idle" in found.stdout or "mix" in found.stdout


def compare(tmp_path, *args, timeout=900):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--losses", "l1", "l2", "--seeds", "0",
                           "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "report"),
                           "--set", *TINY, f"data.root={tmp_path / 'shapes'}", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_a_two_cell_matrix_through_submitits_local_executor(tmp_path):
    result = compare(tmp_path, "--launcher", "submitit-local")
    assert result.returncode == 0, result.stderr[-3000:]
    for cell in ("l1-seed0", "l2-seed0"):
        run_dir = tmp_path / "runs" / cell
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
        note = json.loads(pointer(run_dir).read_text())
        assert note["launcher"] == "submitit-local" and Path(note["stdout"]).is_file()
        assert (run_dir / "train.log").stat().st_size > 0  # the job's output kept with the run
    assert "[2/2 done]" in result.stdout and "as job" in result.stdout
    assert (tmp_path / "report" / "report.md").read_text().startswith("# Regression-loss comparison")
    again = compare(tmp_path, "--launcher", "submitit-local")  # a finished matrix: nothing queued
    assert again.returncode == 0 and "2 finished, 0 to train" in again.stdout


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_a_killed_job_is_resubmitted_and_resumed_from_its_checkpoint(tmp_path, capsys):
    cfg = config_lib.load(overrides=[*TINY, f"data.root={tmp_path / 'shapes'}", "train.epochs=8"])
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    cells = plan(["l1"], [0], [0.0])
    configs = {cell: SlurmOptions().cell_config(cell_config(cfg, cell, runs_dir)) for cell in cells}
    run_dir = runs_dir / cells[0].name
    progress = MatrixProgress(cells, runs_dir, cells)
    (job,) = submit_cells(cells, configs, runs_dir, launcher="submitit-local", options=SlurmOptions(), wait=False,
                          progress=progress, report_command="").values()
    deadline = time.time() + 300
    while time.time() < deadline and not ((run_dir / "gradients.csv").is_file()
                                          and (run_dir / "gradients.csv").read_text().count("\n") > 4):
        time.sleep(0.5)
    for task in _children(int(job.job_id)):  # the task that trains, as a pre-emption's SIGTERM reaches it
        os.kill(task, signal.SIGTERM)
    job.wait()
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["stopped_by"] == "SIGTERM" and 0 < stopped["steps"] < 16
    # The same matrix again: the interrupted cell is queued again and continues where it stopped.
    queue_matrix(cells, cfg, runs_dir, launcher="submitit-local", options=SlurmOptions(), wait=True, report_command="")
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == 16  # 2 steps x 8 epochs
    assert resumed["resumed_from_step"] == stopped["steps"]
    print(f"killed at step {stopped['steps']}, resumed from {resumed['resumed_from_step']} to {resumed['steps']}")


def _fake_slurm_commands(tmp_path, monkeypatch):
    """sbatch and srun that do nothing, first on PATH: the submission script is written without a cluster."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("sbatch", "srun"):
        (bin_dir / command).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_slurm_options_become_the_jobs_sbatch_parameters(tmp_path, monkeypatch):
    _fake_slurm_commands(tmp_path, monkeypatch)
    options = SlurmOptions(partition="gpu", gpus_per_cell=4, nodes_per_cell=2, time_min=90, mem="64G", account="lab",
                           qos="high", extra={"constraint": "a100"})
    executor = make_executor("slurm", tmp_path / "%j", options)
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "1234")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --time=90", "#SBATCH --mem=64G", "#SBATCH --account=lab",
                 "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --signal=USR2@120"):
        assert line in script, line
    cfg = options.cell_config(config_lib.load())
    assert (cfg.train.accelerator, cfg.train.devices, cfg.train.num_nodes, cfg.train.strategy) == ("gpu", 4, 2, "ddp")
    assert (_minutes("90m"), _minutes("4h"), _minutes("1:30:00"), _minutes("45")) == (90, 240, 90, 45)


def test_the_slurm_launcher_without_slurm_here_is_one_line_before_anything_is_read(tmp_path):
    bin_dir = tmp_path / "bin"  # an empty PATH: no sbatch, no srun
    bin_dir.mkdir()
    result = subprocess.run([sys.executable, "scripts/compare.py", "--launcher", "slurm", "--losses", "l1",
                             "--data", "shapes", "--data-root", str(tmp_path / "shapes"), "--runs-dir", str(tmp_path / "runs")],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --launcher slurm submits through SLURM's sbatch and srun, and sbatch and srun are not on PATH here: "
        "run the command on the cluster's login node, or --launcher submitit-local to try the matrix's jobs on this "
        "machine")
    assert "Traceback" not in result.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # nothing made


@pytest.mark.skipif(not _slurm_is_up(), reason="needs a running SLURM (.ci/slurm.sh starts a one-node one)")
def test_a_tiny_matrix_on_a_one_node_slurm_end_to_end(tmp_path):
    result = compare(tmp_path, "--launcher", "slurm", "--slurm-time", "20", "--slurm-cpus-per-task", "1",
                     "--set", "train.threads=1", timeout=1500)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    for cell in ("l1-seed0", "l2-seed0"):
        assert json.loads((tmp_path / "runs" / cell / "metrics.json").read_text())["status"] == "completed"
        note = json.loads(pointer(tmp_path / "runs" / cell).read_text())
        array = note["job_id"].split("_")[0]  # a job of the array "<array>_<index>"
        script = Path(note["folder"]).parent / array / f"{array}_submission.sh"
        assert "#SBATCH --signal=USR2@120" in script.read_text()
    assert (tmp_path / "report" / "report.md").is_file()


@pytest.mark.skipif(not _slurm_is_up(), reason="needs a running SLURM (.ci/slurm.sh starts a one-node one)")
def test_an_array_the_cluster_refuses_is_one_clear_error_and_queues_nothing(tmp_path):
    result = compare(tmp_path, "--launcher", "slurm", "--no-wait", "--slurm-extra", "constraint=no-such-feature",
                     timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "error: the cluster refused the cells' job array: sbatch: error: Batch job submission failed: Invalid feature "
        f"specification; the submission script is in {tmp_path / 'runs' / 'slurm'} (fix the --slurm-* option it names)")
    assert not list((tmp_path / "runs").glob("*.job.json"))  # no cell thinks a job trains it


def test_without_accounting_the_queue_tells_a_slurm_job_ended_and_sacct_is_never_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from detector.lab import cluster

    calls = []
    queue = {"listed": "20_0 debug detector-cell R"}

    def run(command, **kwargs):
        calls.append(command[0])
        if command[0] == "sacct":
            return SimpleNamespace(returncode=1, stdout="", stderr="Slurm accounting storage is disabled")
        return SimpleNamespace(returncode=0, stdout=queue["listed"], stderr="")

    monkeypatch.setattr(cluster.subprocess, "run", run)
    cluster._accounting.cache_clear()
    class Job:  # a SLURM job of submitit's whose state would be asked of sacct
        job_id = "20_0"
        paths = SimpleNamespace(result_pickle=tmp_path / "20_0_result.pkl", stderr=tmp_path / "20_0_log.err")

        @property
        def state(self):
            pytest.fail("the state asks sacct")

    job = Job()
    assert cluster._ended(job, "slurm") is False  # still in the queue
    queue["listed"] = ""
    assert cluster._ended(job, "slurm") is True
    assert cluster._cluster_problem(job, "slurm") == f"the job ended without a result; its log: {tmp_path / '20_0_log.err'}"
    assert calls == ["squeue", "squeue", "sacct"]  # sacct once, to learn that there is no accounting
    cluster._accounting.cache_clear()
