"""The comparison matrix on a SLURM cluster, through submitit (``compare.py --launcher slurm``).

Every unfinished cell is one job of a submitit array: a task per GPU (``--slurm-gpus-per-cell``,
with ``--slurm-nodes-per-cell``), where the cell trains with Lightning's DDP, which reads SLURM's
environment for the ranks; the cell's own configuration says ``train.devices`` and
``train.num_nodes``. SLURM signals USR2 (submitit's choice) ``SIGNAL_DELAY_S`` before the time limit: the cell stops
after its step with a checkpoint, as interrupted (engine/callbacks.py), and the next run of the
same command resumes it. Each cell's job id and logs are noted beside its run directory
(``<cell>.job.json``; the logs under ``<runs dir>/slurm/<job id>/``), so a rerun waits for a job
that is still queued or running instead of submitting it again, and names the job of a cell the
cluster ended (a node failure, the time limit).

``submitit-local`` runs the same jobs as local processes (submitit's LocalExecutor: the real
submission, pickling and result path), to try a matrix before a cluster sees it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.engine import config as config_lib
from detector.engine.cli import parse_duration
from detector.engine.config import Config, ConfigError
from detector.engine.rundir import TRAIN_LOG, continues, run_status

LAUNCHERS = ("local", "slurm", "submitit-local")
# At import submitit gives its logger two console handlers of its own (each message printed twice
# beside the command's); NOCONFIG leaves its messages to the command's logging. Jobs inherit it.
os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
SIGNAL_DELAY_S = 120  # SLURM's USR2 this long before the time limit: time for a step and a checkpoint
POLL_S = 15.0
# States in which the cluster, not the cell, ended a job.
CLUSTER_ENDED = ("TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "CANCELLED", "BOOT_FAIL", "DEADLINE")


@dataclass
class SlurmOptions:
    """What each cell's job asks SLURM for (README "On a SLURM cluster" maps them to sbatch's)."""

    partition: str | None = None
    gpus_per_cell: int = 0
    nodes_per_cell: int = 1
    time_min: int = 240
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def cell_config(self, cfg: Config) -> Config:
        """``cfg`` trained on this job's devices: DDP over every GPU of every node of the cell."""
        if self.gpus_per_cell:
            cfg.train.accelerator, cfg.train.devices = "gpu", self.gpus_per_cell
            cfg.train.num_nodes = self.nodes_per_cell
            if self.gpus_per_cell * self.nodes_per_cell > 1:
                cfg.train.strategy = "ddp"
        config_lib.validate(cfg)
        return cfg


# What the slurm launcher runs on this machine: sbatch submits the array, srun starts each job's tasks.
SLURM_COMMANDS = ("sbatch", "srun")


def check_slurm_commands() -> None:
    """A ConfigError unless SLURM's commands are on PATH here, before any data is read."""
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        raise ConfigError(f"--launcher slurm submits through SLURM's {' and '.join(SLURM_COMMANDS)}, and "
                          f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH here: run the "
                          f"command on the cluster's login node, or --launcher submitit-local to try the matrix's "
                          f"jobs on this machine")


def make_executor(launcher: str, folder: Path, options: SlurmOptions):
    import submitit  # an optional extra: pip install -e ".[cluster]"

    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options.time_min)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    tasks = max(options.gpus_per_cell, 1)
    parameters: dict[str, Any] = {
        "name": "detector-cell", "timeout_min": options.time_min, "nodes": options.nodes_per_cell,
        "tasks_per_node": tasks, "slurm_signal_delay_s": SIGNAL_DELAY_S,
        "slurm_additional_parameters": dict(options.extra)}
    if options.gpus_per_cell:
        parameters["gpus_per_node"] = options.gpus_per_cell
    optional = {"slurm_partition": options.partition, "slurm_mem": options.mem, "slurm_account": options.account,
                "slurm_qos": options.qos, "cpus_per_task": options.cpus_per_task}
    parameters.update({key: value for key, value in optional.items() if value is not None})
    executor.update_parameters(**parameters)
    return executor


class CellJob:
    """A cell's training, as a job runs it: in the job's own process (every task of a DDP cell),
    resumed from its checkpoint when it was interrupted or killed, trained again when it failed."""

    def __init__(self, config: dict[str, Any], run_dir: str):
        self.config, self.run_dir = config, run_dir

    def __call__(self) -> str:
        from detector.engine.training import train

        cfg = config_lib.from_dict(self.config)
        run_dir = Path(self.run_dir)
        status = run_status(run_dir)
        if continues(run_dir):
            resumed = config_lib.load(run_dir / "config.yaml", overrides=[f"train.out_dir={run_dir.parent}",
                                                                          f"train.run_name={run_dir.name}"])
            train(resumed, resume=True)
        else:
            train(cfg, overwrite=status != "missing")
        return run_status(run_dir)


def pointer(run_dir: Path) -> Path:
    """The note beside a cell's run directory of the job that trains it."""
    return run_dir.parent / f"{run_dir.name}.job.json"


def submit_cells(cells: list, configs: dict, runs_dir: Path, *, launcher: str, options: SlurmOptions,
                 wait: bool, progress, report_command: str, poll_s: float = POLL_S) -> dict:
    """Submit every cell (a job array; ``configs[cell]`` as SlurmOptions.cell_config made it)
    except those whose job is still queued or running, then, with ``wait``, follow them with
    ``progress`` until every job has ended; cells the cluster ended are named with their job
    id and log. Returns each cell's job."""
    jobs = {}
    for cell in cells:
        job = _active_job(pointer(runs_dir / cell.name), launcher)
        if job is not None:
            print(f"{cell.name}: job {job.job_id} is still {job.state.lower()}; waiting for it", flush=True)
            jobs[cell] = job
    fresh = [cell for cell in cells if cell not in jobs]
    if fresh:
        for cell, job in zip(fresh, _submit_array(fresh, configs, runs_dir, launcher, options)):
            jobs[cell] = job
            note = {"job_id": job.job_id, "launcher": launcher, "folder": str(job.paths.folder),
                    "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
            pointer(runs_dir / cell.name).write_text(json.dumps(note, indent=2) + "\n")
            progress.started(cell, f" as job {job.job_id}")
    if not wait:
        print(f"{len(jobs)} cells queued; the report, once they have finished: {report_command}", flush=True)
        return jobs
    pending = dict(jobs)
    while pending:
        for cell, job in list(pending.items()):
            if not _ended(job, launcher):
                continue
            del pending[cell]
            _keep_logs(job, runs_dir / cell.name)
            problem = _cluster_problem(job, launcher)
            progress.finished(cell, f" (job {job.job_id}{': ' + problem if problem else ''})")
        if pending:
            time.sleep(poll_s)
    return jobs


def _submit_array(cells: list, configs: dict, runs_dir: Path, launcher: str, options: SlurmOptions) -> list:
    """One job array of ``cells``' trainings; a refusal by sbatch (nothing queued) is a ConfigError."""
    import submitit

    executor = make_executor(launcher, runs_dir / "slurm" / "%j", options)
    cell_jobs = [CellJob(config_lib.to_dict(configs[cell]), str(runs_dir / cell.name)) for cell in cells]
    try:
        with executor.batch():
            return [executor.submit(job) for job in cell_jobs]
    except submitit.core.utils.FailedJobError as exc:
        raise ConfigError(f"the cluster refused the cells' job array: {str(exc).strip()}; the submission script "
                          f"is in {runs_dir / 'slurm'} (fix the --slurm-* option it names)") from None


@functools.cache
def _accounting() -> bool:
    """Whether the cluster keeps job accounting (sacct answers). Without it a job's final state
    is unknown, and asking submitit for it would run sacct, whose error lands in the console at
    every poll; the queue (squeue) tells which jobs have ended instead."""
    try:
        return subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ended(job, launcher: str) -> bool:
    """Whether a job has ended: its result is there, or (SLURM) the queue no longer lists it."""
    if launcher != "slurm":
        return job.done()
    if job.paths.result_pickle.exists():
        return True
    try:
        queued = subprocess.run(["squeue", "-h", "-j", str(job.job_id)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return not queued.stdout.strip()


def _active_job(note: Path, launcher: str):
    """The job of a pointer that is still queued or running, or None."""
    if not note.is_file():
        return None
    import submitit

    try:
        recorded = json.loads(note.read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("launcher") != launcher:
        return None
    folder = Path(recorded["folder"]).parent / "%j"
    if launcher != "slurm":  # a local job is its controller process: active while that lives
        job = submitit.LocalJob(folder=folder, job_id=recorded["job_id"])
        try:
            os.kill(int(recorded["job_id"]), 0)
        except (OSError, ValueError):
            return None
        return None if job.done() else job
    job = submitit.SlurmJob(folder=folder, job_id=recorded["job_id"])
    return None if _ended(job, launcher) else job


def _cluster_problem(job, launcher: str) -> str | None:
    """What ended a job from outside the cell (its state, where the cluster keeps accounting, and
    its log), or None when the cell ran to its own end (completed, diverged, failed or
    interrupted: its run directory says which)."""
    state = str(job.state).upper() if launcher != "slurm" or _accounting() else None
    if state and any(state.startswith(ended) for ended in CLUSTER_ENDED):
        return f"the cluster ended it ({state}); its log: {job.paths.stderr}"
    if launcher == "slurm" and not job.paths.result_pickle.exists():  # result() would wait on the state
        return f"the job ended without a result{f' ({state})' if state else ''}; its log: {job.paths.stderr}"
    try:
        job.result()
    except Exception as exc:  # noqa: BLE001 - the job's own error, which its log holds in full
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}; its log: " \
               f"{job.paths.stderr}"
    return None


def _keep_logs(job, run_dir: Path) -> None:
    """The job's output, appended to the cell's train.log (a resumed cell's after the earlier part)."""
    if not run_dir.is_dir():
        return
    parts = [path.read_text(errors="replace") for path in (job.paths.stdout, job.paths.stderr) if path.is_file()]
    if parts:
        with (run_dir / TRAIN_LOG).open("a") as handle:
            handle.write("".join(parts))


def slurm_options(args) -> SlurmOptions:
    """The --slurm-* options of compare.py."""
    extra = {}
    for item in args.slurm_extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-extra {item!r} must look like KEY=VALUE (an sbatch option without its --)")
        extra[key] = value
    return SlurmOptions(partition=args.slurm_partition, gpus_per_cell=args.slurm_gpus_per_cell,
                        nodes_per_cell=args.slurm_nodes_per_cell, time_min=_minutes(args.slurm_time),
                        mem=args.slurm_mem, account=args.slurm_account, qos=args.slurm_qos,
                        cpus_per_task=args.slurm_cpus_per_task, extra=extra)


def _minutes(text: str) -> int:
    """The --slurm-time option in whole minutes, rounded up, at least 1 (a plain number counts minutes)."""
    return max(1, math.ceil(parse_duration(text, "--slurm-time", unit="m") / 60))


def report_command(argv: list[str]) -> str:
    """The compare.py command that waits for the queued cells and writes the report."""
    return "python scripts/compare.py " + " ".join(shlex.quote(a) for a in argv if a != "--no-wait")
