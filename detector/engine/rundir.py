"""A run directory: the names of its files, its record (metrics.json), making a new one, and
continuing an unfinished one.

A run directory holds everything a report needs:
  config.yaml            the resolved configuration
  metrics.json           status, COCO stats of the final model, AP per IoU threshold and per
                         class, the best validation AP, timings
  metrics.csv            per-step training losses and learning rate, COCO stats of the
                         validations inside training (the final one is in metrics.json)
  gradients.csv          |dl/dx| of the regression outputs (box head, RPN) at logging steps
  detections_val.json    the final model's validation detections, COCO results format
  val_images.txt         with data.val_fraction: the held-out images' file names
  results.png            the run's figure: losses, learning rate, validation AP, gradients
  checkpoints/           last.ckpt and best.ckpt (by validation AP), interrupted.ckpt while
                         a stopped run waits to be resumed

A new run never reuses a directory silently: an existing one is refused, or with ``overwrite``
replaced when it is a run directory; a folder that is not one is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from detector.engine.config import Config, ConfigError
from detector.engine.io import atomic_write_csv, atomic_write_json, read_csv_rows

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
METRICS = "metrics.json"
METRICS_CSV = "metrics.csv"
GRADIENTS_CSV = "gradients.csv"
DETECTIONS = "detections_val.json"
VAL_IMAGES = "val_images.txt"
TRAIN_LOG = "train.log"  # a comparison cell's output (lab/compare.py)
CHECKPOINTS = "checkpoints"
BEST = "best.ckpt"
LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"
# Lightning's CSV logger deletes an existing metrics.csv when it opens the folder: a resumed run
# moves it aside to this name first, and merges it back at the end.
EARLIER_METRICS_CSV = ".metrics-before-resume.csv"

FINISHED = ("completed", "diverged")  # a run with nothing left to train
# scripts/train.py's exit status for each way a run ends (README: "Exit status"); interrupted:
# 128 + the signal's number, as a shell reports a process the signal ended.
EXIT_STATUS = {"completed": 0, "failed": 1, "diverged": 3}
RUN_NAME_VARIABLE = "DETECTOR_RUN_NAME"


def default_run_name(cfg: Config) -> str:
    """<dataset>-<loss>-seed<seed>-<timestamp>, or in a DDP rank above 0 the name rank 0 chose."""
    if rank_zero_only.rank != 0 and os.environ.get(RUN_NAME_VARIABLE):
        return os.environ[RUN_NAME_VARIABLE]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.data.name}-{cfg.loss.name.replace(':', '.')}-seed{cfg.train.seed}-{stamp}"


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's metrics.json, or None when there is none or it cannot be read."""
    try:
        record = json.loads((Path(run_dir) / METRICS).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run_status(run_dir: str | Path) -> str:
    """``missing`` when there is no metrics.json, else its status (``unknown`` if unreadable)."""
    if not (Path(run_dir) / METRICS).is_file():
        return "missing"
    return (read_record(run_dir) or {}).get("status", "unknown")


def checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints an unfinished run can continue from: the one written when it was
    stopped, and the last end-of-epoch one."""
    return [path for path in (run_dir / CHECKPOINTS / INTERRUPTED, run_dir / CHECKPOINTS / LAST) if path.is_file()]


def continues(run_dir: Path) -> bool:
    """Whether the owner of a run (a matrix's cell, a cluster job) should continue it from its
    newest checkpoint rather than train it again: it was interrupted, or it still says
    ``running`` because its process was killed outright (SIGKILL, out of memory, a lost node or
    session), which leaves no chance to record it. A failed run is trained again."""
    return run_status(run_dir) in ("interrupted", "running") and bool(checkpoints(run_dir))


def find_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / CHECKPOINTS / BEST, path / CHECKPOINTS / LAST):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint at {path} (expected a .ckpt file or a run directory with {CHECKPOINTS}/)")


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint file belongs to (the folder above its checkpoints/), or
    None for a checkpoint kept elsewhere."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else None


def checkpoint_step(checkpoint: Path) -> int:
    """The optimiser step a checkpoint was saved at, read without loading its tensors (mmap)."""
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["global_step"])


class RunRecord:
    """The run's metrics.json: fields added as the run goes and written at every status change
    (by rank 0 only), so the file always says how far the run got."""

    def __init__(self, path: Path, *, enabled: bool, **fields: Any):
        self.path, self.enabled, self.fields = path, enabled, dict(fields)

    def save(self, **fields: Any) -> None:
        self.fields.update(fields)
        if self.enabled:
            atomic_write_json(self.path, self.fields)


def check_new_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse (ConfigError) a run directory that exists, unless it is empty, or ``overwrite``
    and it is a run directory; the message names the ways on."""
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return
    if not (run_dir / METRICS).is_file():
        raise ConfigError(f"{run_dir} exists and is not a run directory (no {METRICS}); it is left as it is: "
                          f"choose another --run-name or --out-dir")
    if overwrite:
        return
    record = read_record(run_dir) or {}
    status, steps = record.get("status", "unknown"), record.get("steps")
    ways = f"continue it with --resume {run_dir}, " if status not in FINISHED and checkpoints(run_dir) else ""
    raise ConfigError(f"run directory {run_dir} already exists (a {status} run{f' of {steps} steps' if steps else ''}); "
                      f"{ways}choose another --run-name, or replace it with --overwrite")


def make_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Create the new run's directory; with ``overwrite``, a run directory there is removed first
    (check_new_run_dir has made sure it is one), so nothing of the old run stays beside the new."""
    check_new_run_dir(run_dir, overwrite=overwrite)  # again: the data were read in the meantime
    if overwrite and (run_dir / METRICS).is_file():
        log.warning("--overwrite: removing the earlier run in %s", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # exists only when empty (check_new_run_dir)


def resume_checkpoint(run_dir: Path, record: dict[str, Any] | None) -> Path:
    """The checkpoint an unfinished run (``record``: its metrics.json) continues from: the newer
    of the one written when it was stopped and the last end-of-epoch one."""
    if record is None:
        raise ConfigError(f"--resume {run_dir}: not a run directory (no readable {METRICS})")
    status = record.get("status")
    if status in FINISHED:
        raise ConfigError(f"--resume {run_dir}: the run is {status}; there is nothing to continue")
    candidates = checkpoints(run_dir)
    if not candidates:
        raise ConfigError(f"--resume {run_dir}: the run ({status}) left no checkpoint in {run_dir / CHECKPOINTS}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


@rank_zero_only
def prepare_resume(run_dir: Path, step: int) -> None:
    """Before a run resumed at ``step`` opens its loggers (rank 0 only): metrics.csv goes aside,
    since Lightning's CSV logger deletes it (``merge_metrics_csv`` puts its rows back), and
    gradients.csv loses the rows of the steps trained again (a run killed outright logged steps
    after its last checkpoint)."""
    if (run_dir / METRICS_CSV).is_file():
        os.replace(run_dir / METRICS_CSV, run_dir / EARLIER_METRICS_CSV)
    path = run_dir / GRADIENTS_CSV
    if path.is_file():
        rows = read_csv_rows(path)
        kept = [row for row in rows if int(row["step"]) < step]
        if len(kept) < len(rows):
            atomic_write_csv(path, kept, list(rows[0]))  # a row's keys are the header, in its order


def merge_metrics_csv(run_dir: Path, until_step: int) -> None:
    """metrics.csv = the rows logged before the resumed step, then the resumed run's rows."""
    earlier_path, path = run_dir / EARLIER_METRICS_CSV, run_dir / METRICS_CSV
    if not earlier_path.is_file():
        return
    earlier = [row for row in read_csv_rows(earlier_path) if row.get("step") and int(row["step"]) < until_step]
    later = read_csv_rows(path)
    atomic_write_csv(path, earlier + later, sorted(set().union(*(row.keys() for row in earlier + later))))
    earlier_path.unlink()


def gradient_rows(run_dir: str | Path, boxes: str = "all") -> list[dict[str, str]]:
    """The rows of the run's gradients.csv that describe ``boxes``: "all" foreground outputs
    (what a run before the displaced/clean split wrote, without that column), or with box
    noise "displaced" or "clean" ones; [] without the file."""
    return [row for row in read_csv_rows(Path(run_dir) / GRADIENTS_CSV) if row.get("boxes", "all") == boxes]


def exit_status(run_dir: Path) -> int:
    """scripts/train.py's exit status for the run in ``run_dir``: 0 completed, 3 diverged, 1
    failed, 130 / 143 interrupted by SIGINT / SIGTERM."""
    record = read_record(run_dir) or {}
    if record.get("status") == "interrupted":
        return 128 + int(getattr(signal, record.get("stopped_by") or "SIGINT"))
    return EXIT_STATUS.get(record.get("status"), 1)
