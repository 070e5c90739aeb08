"""The comparison matrix: losses x seeds x box-noise levels, one run directory per cell.

``scripts/compare.py`` plans the matrix here, trains the cells that have no finished run and
then writes the report (:mod:`detector.lab.report`). A cell is finished when its run directory's
metrics.json says ``completed`` or ``diverged`` (a diverged run would diverge again: it is a
result, not a failure to retry). Cells that are missing or failed are trained (again); an
interrupted cell, or one left ``running`` by a process killed outright, continues from its
newest checkpoint, so an interrupted matrix continues where it stopped. A finished run made with a
different configuration is never silently reused: the cell is rejected, naming the option.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from detector.engine import config as config_lib
from detector.engine.build import build_splits, load_trunk_weights, report_data, resolve_classes
from detector.engine.callbacks import StopOnSignal
from detector.engine.cli import parse_duration
from detector.engine.config import Config, ConfigError
from detector.engine.outputs import check_folder
from detector.engine.rundir import FINISHED, TRAIN_LOG, continues, run_status
from detector.engine.trainers import resolve_precision
from detector.lab.cluster import check_slurm_commands, report_command, slurm_options, submit_cells
from detector.lab.report import write_report
from detector.lab.specs import parse_loss_spec, split_weight

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
# Options that change only how or where a run executes (their declared roles): a finished run
# that differs in them is reused.
IGNORED_IN_MATCH = config_lib.options_where(lambda roles: not roles.result)
# Files and folders: matched by the place they name (a relative path from the working directory).
PATH_OPTIONS = config_lib.options_where(lambda roles: roles.path)


def compare_from_args(args: argparse.Namespace, argv: list[str], cfg: Config | None = None) -> Path:
    """``scripts/compare.py``: train the matrix's unfinished cells (unless ``--runs`` names the run
    directories to report on), then write the report; returns report.md's path. ``cfg``: the
    matrix's configuration when the script has made it already."""
    command = "python scripts/compare.py " + " ".join(shlex.quote(a) for a in argv)
    check_folder(args.out, "report")  # a folder that cannot take the report is refused before any training
    if args.launcher == "slurm" and not args.runs:
        check_slurm_commands()
    note = None
    if args.runs:
        run_dirs = [Path(d) for d in args.runs]
    else:
        cells = plan(args.losses, args.seeds, args.noise)
        base = cfg or config_lib.from_args(args)
        if base.train.patience and not args.allow_early_stopping:
            raise ConfigError(f"train.patience={base.train.patience} stops cells when their validation AP stalls, so "
                              f"cells train for different lengths and a comparison mixes schedules; leave it out, or "
                              f"add --allow-early-stopping to compare such runs anyway")
        base.data.classes = resolve_classes(base.data)  # one list for every cell
        # Every image checked once, before the first cell (the cells find the checks cached).
        report_data(base.data, *build_splits(base.data))
        budget = budget_seconds(args.budget) if args.budget else None
        if args.launcher != "local":
            if budget is not None:
                raise ConfigError("--budget schedules cells on this machine; a cluster's queue decides when jobs run "
                                  "(use --slurm-time for each cell's limit)")
            load_trunk_weights(base.model)  # weights that cannot be had stop the matrix before any job is queued
            run_dirs = queue_matrix(cells, base, Path(args.runs_dir), launcher=args.launcher,
                                    options=slurm_options(args), wait=not args.no_wait, report_command=report_command(argv))
            if args.no_wait:
                return Path(args.out) / "report.md"
            left_out = []
        else:
            run_dirs, left_out = train_matrix(cells, base, Path(args.runs_dir), jobs=args.jobs, budget_s=budget,
                                              train_command=[sys.executable, str(TRAIN_SCRIPT)])
        if left_out:
            note = (f"**The time budget ({args.budget}) ended the matrix early**: {len(cells) - len(left_out)} of "
                    f"{len(cells)} planned cells trained; left out: {', '.join(c.name for c in left_out)}. The verdict "
                    f"rests on the cells that finished; rerun the command with a larger --budget to add the others.")
            run_dirs = [d for d in run_dirs if run_status(d) != "missing"]
    return write_report(run_dirs, args.out, command, baseline=args.baseline, fmt=args.format, metric=args.metric,
                        note=note)


def budget_seconds(text: str) -> float:
    """The --budget option in seconds (a plain number counts seconds)."""
    seconds = parse_duration(text, "--budget")
    if seconds <= 0:
        raise ConfigError(f"--budget {text!r}: the budget must be positive")
    return seconds


@dataclass(frozen=True)
class Cell:
    loss: str  # a loss spec: name, or name(key=value, ...)
    seed: int
    noise: float

    @property
    def name(self) -> str:
        """Run directory name, e.g. ``l2-seed1``, ``l2-noise0.2-seed1``, ``smooth_l1-beta0.5-seed1`` or
        ``l2-weight4.5-seed1``."""
        name, params = parse_loss_spec(self.loss)
        loss = "-".join([name.replace(":", "."), *(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
                                                   for k, v in params.items())])
        return f"{loss}-seed{self.seed}" if self.noise == 0 else f"{loss}-noise{self.noise:g}-seed{self.seed}"


def plan(losses: list[str], seeds: list[int], noise_levels: list[float]) -> list[Cell]:
    """Cells in the order they are trained: noise level, then seed, then loss, so that an
    unfinished matrix already holds every loss at the first seeds."""
    if not losses or not seeds or not noise_levels:
        raise ConfigError("compare needs at least one loss, one seed and one noise level")
    return [Cell(loss, seed, noise) for noise in noise_levels for seed in seeds for loss in losses]


def cell_config(base: Config, cell: Cell, runs_dir: str | Path) -> Config:
    """``base`` with the cell's loss, seed and noise level and its run directory."""
    raw = config_lib.to_dict(base)
    name, params = parse_loss_spec(cell.loss)
    params, weight = split_weight(params)
    if params or name != raw["loss"]["name"]:
        # Parameters and weights belong to a loss (smooth_l1's beta means nothing to giou).
        raw["loss"].update(name=name, args=params, weight=None)
    if weight is not None:
        raw["loss"]["weight"] = weight
    raw["train"].update(seed=cell.seed, run_name=cell.name, out_dir=str(runs_dir))
    raw["data"]["train_box_noise"] = cell.noise
    cfg = config_lib.from_dict(raw)
    config_lib.resolve_data_format(cfg.data)
    config_lib.validate(cfg)
    return cfg


def config_differences(wanted: Config, run_dir: str | Path) -> list[str]:
    """Options whose values differ between ``wanted`` and the run's config.yaml, as
    ``key: run value != wanted value``; options in IGNORED_IN_MATCH do not count."""
    found = config_lib.load(Path(run_dir) / "config.yaml")
    differences = []
    theirs = config_lib.flatten(found)
    for key, value in config_lib.flatten(wanted).items():
        if key in IGNORED_IN_MATCH:
            continue
        if key in PATH_OPTIONS and None not in (theirs[key], value):
            same = Path(theirs[key]).resolve() == Path(value).resolve()
        else:
            same = theirs[key] == value
        if not same:
            differences.append(f"{key}: {theirs[key]!r} != {value!r}")
    return differences


def check_reusable(cfg: Config, run_dir: Path) -> None:
    """Raise ConfigError when a finished run in ``run_dir`` was made with another configuration."""
    differences = config_differences(cfg, run_dir)
    if differences:
        raise ConfigError(
            f"{run_dir} holds a finished run made with a different configuration "
            f"({'; '.join(differences[:3])}); remove it or choose another --runs-dir"
        )


def train_matrix(cells: list[Cell], base: Config, runs_dir: Path, *, jobs: int | None, train_command: list[str],
                 budget_s: float | None = None) -> tuple[list[Path], list[Cell]]:
    """Train every unfinished cell in a process of its own, ``train_command + ["--config",
    config.yaml]``, or ``train_command + ["--resume", run_dir]`` for a run that was interrupted
    after saving a checkpoint; return all cells' run directories in matrix order, and the cells
    ``budget_s`` left out. ``jobs`` cells run at once (default: one per visible GPU, else
    CPU_JOBS), on a CPU with the cores split between them (train.threads) unless it is set.
    With a budget, a cell starts only while the mean cell time still fits; the cells of seeds
    beyond the first two wait until the rest have started, so they are the first left out."""
    # A run records the precision it resolved train.precision=auto to; resolved here the same
    # way, a finished run matches the configuration that made it.
    base = config_lib.from_dict(config_lib.to_dict(base))
    resolve_precision(base)
    configs = {cell: cell_config(base, cell, runs_dir) for cell in cells}
    todo = unfinished(cells, configs, runs_dir)
    gpus = torch.cuda.device_count()
    jobs = jobs or (gpus if gpus else CPU_JOBS)
    if not gpus and jobs > 1 and base.train.threads is None:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        for config in configs.values():
            config.train.threads = threads
    budget = Budget(budget_s, jobs) if budget_s else None
    progress = MatrixProgress(cells, runs_dir, todo, jobs)
    progress.show()
    free_gpus = list(range(gpus))
    lock = threading.Lock()
    cannot_start = threading.Event()  # a cell that cannot start: the others would not either

    processes = CellProcesses()

    def run(cell: Cell) -> None:
        if cannot_start.is_set() or processes.signum is not None:
            return
        with lock:
            if budget is not None and not budget.allows(progress.durations):
                left_out.append(cell)
                return
            gpu = free_gpus.pop(0) if free_gpus else None
            progress.started(cell)
        try:
            train_cell(configs[cell], runs_dir / cell.name, train_command, gpu=gpu, quiet=jobs > 1,
                       processes=processes, cell=cell)
        except ConfigError:
            cannot_start.set()
            raise
        finally:
            with lock:
                if gpu is not None:
                    free_gpus.append(gpu)
                progress.finished(cell)
                if budget is not None and len(progress.durations) == 1:
                    print(budget.forecast(progress, todo), flush=True)

    left_out: list[Cell] = []
    with processes, ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(run, cell) for cell in todo]:
            future.result()
    processes.raise_if_stopped(order=todo)
    return [runs_dir / cell.name for cell in cells], sorted(left_out, key=cells.index)


class MatrixStopped(Exception):
    """A signal stopped the matrix: the cells that were training stopped (with a checkpoint, as
    train.py does on that signal) and no other cell started. ``exit_status``: 128 + the signal."""

    def __init__(self, signum: int, cells: list[Cell]):
        self.exit_status = 128 + signum
        stopped = f"{', '.join(cell.name for cell in cells)} stopped" if cells else "no cell was training"
        super().__init__(f"matrix stopped by {signal.Signals(signum).name}: {stopped}; the same command continues it")


class CellProcesses:
    """The cells' training processes while a matrix runs. Each runs in a session of its own and
    this process passes on to every running cell the signals that stop a run
    (StopOnSignal.SIGNALS; a hang-up as SIGTERM): a Ctrl-C, and a kill of compare.py alone,
    which before left its cells training without it. After a signal no cell starts."""

    def __init__(self):
        self.signum: int | None = None
        self.stopped: set[Cell] = set()  # the cells that were training when the signal came
        self._running: dict[subprocess.Popen, Cell] = {}
        self._lock = threading.Lock()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> CellProcesses:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (*StopOnSignal.SIGNALS, signal.SIGHUP):
                if signal.getsignal(signum) is not signal.SIG_IGN:  # under nohup a hang-up stays ignored
                    self._previous[signum] = signal.signal(signum, self._pass_on)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def raise_if_stopped(self, order: list[Cell]) -> None:
        """MatrixStopped, naming the stopped cells in ``order``, if a signal came."""
        if self.signum is not None:
            raise MatrixStopped(self.signum, [cell for cell in order if cell in self.stopped])

    def _pass_on(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        with self._lock:
            for process, cell in self._running.items():
                self.stopped.add(cell)
                process.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    def run(self, cell: Cell, command: list[str], **popen) -> int | None:
        """The cell's process to its end: its exit status, None when a signal came before it started."""
        with self._lock:
            if self.signum is not None:
                return None
            # A session of its own only where this process passes the signals on.
            process = subprocess.Popen(command, start_new_session=bool(self._previous), **popen)
            self._running[process] = cell
        try:
            return process.wait()
        finally:
            with self._lock:
                del self._running[process]


def queue_matrix(cells: list[Cell], base: Config, runs_dir: Path, *, launcher: str, options, wait: bool,
                 report_command: str) -> list[Path]:
    """The matrix's unfinished cells as jobs of a submitit array (lab/cluster.py), followed until
    they end with ``wait``; returns every cell's run directory in matrix order."""
    base = config_lib.from_dict(config_lib.to_dict(base))
    resolve_precision(base)
    # Each cell as its job trains it (its devices and nodes), so that a finished one matches.
    configs = {cell: options.cell_config(cell_config(base, cell, runs_dir)) for cell in cells}
    todo = unfinished(cells, configs, runs_dir)
    progress = MatrixProgress(cells, runs_dir, todo, jobs=max(1, len(todo)))  # the array may run every cell at once
    progress.show()
    runs_dir.mkdir(parents=True, exist_ok=True)  # the matrix's own folder: the jobs' notes and logs go there
    submit_cells(todo, configs, runs_dir, launcher=launcher, options=options, wait=wait, progress=progress,
                 report_command=report_command)
    return [runs_dir / cell.name for cell in cells]


def unfinished(cells: list[Cell], configs: dict[Cell, Config], runs_dir: Path) -> list[Cell]:
    """The cells to train, those of seeds beyond the first two last; a finished cell is kept
    when its run was made with the cell's configuration, and refused (ConfigError) otherwise."""
    todo = []
    for cell in cells:
        run_dir = runs_dir / cell.name
        if run_status(run_dir) in FINISHED:
            check_reusable(configs[cell], run_dir)
        else:
            todo.append(cell)
    seed_rank = {seed: rank for rank, seed in enumerate(dict.fromkeys(cell.seed for cell in cells))}
    return sorted(todo, key=lambda cell: seed_rank[cell.seed] >= 2)  # stable: the matrix order otherwise


# Cells at once on a machine without GPUs (README "Comparing losses across seeds": cells per hour).
CPU_JOBS = 2


class Budget:
    """A time budget for a matrix: a cell starts only while the mean cell time so far still fits."""

    def __init__(self, seconds: float, jobs: int):
        self.seconds, self.jobs, self.begin = seconds, jobs, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.begin

    def allows(self, durations: list[float]) -> bool:
        return not durations or self.elapsed() + sum(durations) / len(durations) <= self.seconds

    def forecast(self, progress: MatrixProgress, todo: list[Cell]) -> str:
        """After the first cell: how many of the cells still to start fit, and which will be left out."""
        waiting = [cell for cell in todo if cell not in progress.started_at]
        mean = sum(progress.durations) / len(progress.durations)
        rounds = max(0.0, (self.seconds - self.elapsed()) / mean)
        fit = min(len(waiting), int(rounds * self.jobs))
        out = waiting[fit:]
        return (f"budget {self.seconds / 60:.0f} min: a cell takes about {mean / 60:.1f} min; about {fit} of the "
                f"{len(waiting)} cells still to start fit" +
                (f"; left out unless cells get faster: {', '.join(c.name for c in out)}" if out else ""))


def train_cell(cfg: Config, run_dir: Path, train_command: list[str], *, gpu: int | None, quiet: bool,
               processes: CellProcesses, cell: Cell) -> None:
    """One training process for the cell. A failed or diverged run is recorded in its run
    directory (and shown in the report), so it does not stop the matrix; a run that cannot
    start (its data or weights cannot be read) stops it, since every other cell would fail
    the same way. The cell's configuration goes to a file beside the run directory, which
    only training creates, so a failed start leaves no directory behind."""
    if quiet:  # parallel runs: each run's output goes to its own log instead of the terminal
        cfg.train.progress = False
    config_path = run_dir.parent / f".{run_dir.name}.yaml"
    config_lib.save(cfg, config_path)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    command = [*train_command, "--config", str(config_path)]
    if continues(run_dir):
        command = [*train_command, "--resume", str(run_dir)]  # continue where it was stopped or killed
    elif run_status(run_dir) != "missing":
        command.append("--overwrite")  # a failed cell, or one stopped before its first checkpoint: trained again
    log_path = run_dir.parent / f"{run_dir.name}.log"
    try:
        if quiet:
            with open(log_path, "w") as log:
                returncode = processes.run(cell, command, env=env, stdout=log, stderr=subprocess.STDOUT)
        else:
            returncode = processes.run(cell, command, env=env)
    finally:
        config_path.unlink(missing_ok=True)
    if returncode is None:  # the matrix was stopped before this cell started
        if quiet:
            log_path.unlink()  # the empty log opened above
        return
    if run_status(run_dir) == "missing":
        where = f"; its output is in {log_path}" if quiet else " (its error is above)"
        raise ConfigError(f"{run_dir.name} could not start (exit status {returncode}){where}")
    if quiet:
        _keep_log(log_path, run_dir / TRAIN_LOG, resumed="--resume" in command)


def _keep_log(log_path: Path, kept: Path, *, resumed: bool) -> None:
    """The cell's log into its run directory; a resumed cell's after the log of its earlier part."""
    if resumed and kept.is_file():
        with kept.open("a") as handle:
            handle.write(log_path.read_text())
        log_path.unlink()
    else:
        os.replace(log_path, kept)


class MatrixProgress:
    """One line per started or finished run: where the matrix stands and roughly how long is left."""

    def __init__(self, cells: list[Cell], runs_dir: Path, todo: list[Cell], jobs: int = 1):
        self.cells, self.runs_dir, self.todo, self.jobs = cells, runs_dir, todo, jobs
        self.started_at: dict[Cell, float] = {}
        self.running: set[Cell] = set()
        self.durations: list[float] = []
        self.begin = time.perf_counter()

    def show(self) -> None:
        done = len(self.cells) - len(self.todo)
        print(f"matrix: {len(self.cells)} runs in {self.runs_dir}; {done} finished, {len(self.todo)} to train",
              flush=True)

    def started(self, cell: Cell, note: str = "") -> None:
        self.started_at[cell] = time.perf_counter()
        self.running.add(cell)
        index = self.todo.index(cell) + 1
        print(f"[{index}/{len(self.todo)}] training {cell.name}{note}{self._eta()}", flush=True)

    def finished(self, cell: Cell, note: str = "") -> None:
        self.durations.append(time.perf_counter() - self.started_at.setdefault(cell, self.begin))
        self.running.discard(cell)
        print(f"[{len(self.durations)}/{len(self.todo)} done] {cell.name}: {run_status(self.runs_dir / cell.name)} "
              f"in {self.durations[-1]:.0f} s{note}{self._eta()}", flush=True)

    def _eta(self) -> str:
        """The work left (the running cells' rest at the mean cell time, then the queued cells)
        shared by the ``jobs`` cells that train at once."""
        if not self.durations:
            return ""
        now = time.perf_counter()
        mean = sum(self.durations) / len(self.durations)
        queued = len(self.todo) - len(self.durations) - len(self.running)
        work = sum(max(0.0, mean - (now - self.started_at[c])) for c in self.running) + queued * mean
        return f"; elapsed {(now - self.begin) / 60:.0f} min, about {work / self.jobs / 60:.0f} min left"
