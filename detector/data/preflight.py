"""The pre-flight of a dataset's images: every file opened and decoded once, before anything is
trained, in parallel, with a progress bar on a terminal, and remembered.

Files that cannot be decoded (or are missing) stop the command with all of them listed at once,
or, with ``skip_bad_images``, are left out and counted. JPEGs cut short, which torchvision
refuses, are used as Pillow completes them, with one warning that counts and names them.

The results are cached by path, size and modification time in one JSON file per image folder
under ``$DETECTOR_CACHE`` (default: ``$XDG_CACHE_HOME/detector``, else ``~/.cache/detector``):
the cells of a comparison, each its own process, pay for the decoding once. Nothing is ever
written into the dataset's own folders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from detector.data.errors import DataError
from detector.data.images import image_problem

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when what a status means changes
LISTED = 20  # bad files named in one error before "and N more"
SHOWN = 5  # truncated files named in the warning


def cache_root() -> Path:
    if os.environ.get("DETECTOR_CACHE"):
        return Path(os.environ["DETECTOR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detector"


def check_images(paths: Sequence[Path], source: str, *, skip_bad_images: bool, known: dict[str, str] | None = None,
                 workers: int | None = None) -> set[str]:
    """Decode every image of ``paths`` (once per file version: cached); returns the paths left
    out (missing or undecodable, with ``skip_bad_images``). Without it such files are a DataError
    that lists them all; when none is readable, always. ``source`` names the dataset in messages;
    ``known``: path -> the problem of a file the reader could not find (not looked at again)."""
    known = known or {}
    statuses = _statuses([Path(p) for p in paths if str(p) not in known], workers, source)
    statuses.update({path: ("bad", message) for path, message in known.items()})
    bad = {path: message for path, (status, message) in statuses.items() if status == "bad"}
    truncated = sorted(path for path, (status, _) in statuses.items() if status == "truncated")
    if truncated:
        names = ", ".join(Path(p).name for p in truncated[:SHOWN]) + (f" and {len(truncated) - SHOWN} more"
                                                                      if len(truncated) > SHOWN else "")
        logger.warning("%s: %d JPEG file%s end%s early (cut short: %s); they are used as Pillow completes them, the "
                       "missing part grey", source, len(truncated), "s" if len(truncated) > 1 else "",
                       "" if len(truncated) > 1 else "s", names)
    if not bad:
        return set()
    listed = "; ".join(list(bad.values())[:LISTED]) + (f"; and {len(bad) - LISTED} more" if len(bad) > LISTED else "")
    if len(bad) == len(statuses):
        raise DataError(f"{source}: none of its {len(statuses)} images can be read ({listed})")
    if not skip_bad_images:
        raise DataError(f"{source}: {len(bad)} of {len(statuses)} images cannot be used: {listed} "
                        f"(set data.skip_bad_images=true to leave out such images)")
    logger.warning("%s: leaving out %d of %d images whose files are missing or cannot be decoded (first: %s)",
                   source, len(bad), len(statuses), next(iter(bad.values())))
    return set(bad)


def _statuses(paths: list[Path], workers: int | None, source: str) -> dict[str, tuple[str, str | None]]:
    """path -> (status, message) of image_problem, from the cache where the file is unchanged."""
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for path in paths:
        by_folder[path.parent].append(path)
    caches = {folder: _FolderCache(folder) for folder in by_folder}
    results: dict[str, tuple[str, str | None]] = {}
    todo = []
    for folder, members in by_folder.items():
        for path in members:
            known = caches[folder].get(path)
            if known is None:
                todo.append(path)
            else:
                results[str(path)] = known
    if todo:
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:  # decoding releases the GIL
            checked = pool.map(image_problem, todo)
            for path, found in tqdm(zip(todo, checked), total=len(todo), desc=f"checking images of {Path(source).name}",
                                    unit="image", disable=None, leave=False):
                results[str(path)] = found
                caches[path.parent].put(path, found)
        for cache in caches.values():
            cache.save()
    return results


class _FolderCache:
    """The statuses of one folder's images by name, valid while a file's size and mtime stay."""

    def __init__(self, folder: Path):
        key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:20]
        self.file = cache_root() / "preflight" / f"{key}.json"
        self.entries: dict[str, list] = {}
        self.changed = False
        try:
            stored = json.loads(self.file.read_text())
            if stored.get("version") == CACHE_VERSION:
                self.entries = stored["entries"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass

    @staticmethod
    def _stamp(path: Path) -> list[int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def get(self, path: Path) -> tuple[str, str | None] | None:
        entry, stamp = self.entries.get(path.name), self._stamp(path)
        if entry is None or stamp is None or entry[:2] != stamp:
            return None
        return entry[2], entry[3]

    def put(self, path: Path, found: tuple[str, str | None]) -> None:
        stamp = self._stamp(path)
        if stamp is not None:  # a missing file is checked again next time
            self.entries[path.name] = [*stamp, *found]
            self.changed = True

    def save(self) -> None:
        """Atomically, so that concurrent cells never read half a file (the last writer wins)."""
        if not self.changed:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=f".{self.file.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                json.dump({"version": CACHE_VERSION, "entries": self.entries}, handle)
            os.replace(tmp, self.file)
        except OSError as exc:  # a read-only home: the check still ran, it is only not remembered
            logger.info("image checks not cached (%s)", exc)
