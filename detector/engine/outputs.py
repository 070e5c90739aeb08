"""Where commands write: output folders claimed before anything is written, and default names.

A command writes only into a place it made or one an earlier run of the same command made:

- an output folder (an evaluation, predictions, a report, an inspection) is claimed first. A new
  or empty folder becomes this command's; a folder that holds a manifest (``MANIFEST``) of the
  same kind of output may be written again: with the same identity (the same checkpoint, data
  and options: the same result) at once, with another only under ``--overwrite``. Any other
  folder is refused, and a refusal leaves it untouched.
- a single file (a figure) is written only where nothing exists yet, unless ``--overwrite``.
- a default location is new: ``runs/<name>-<timestamp>``, with a suffix if that exists.

When the output is written, the entries an earlier output of the folder listed and this one
does not are removed (a figure the new report no longer has), and nothing else.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from detector.engine.errors import ConfigError
from detector.engine.io import atomic_write_json

MANIFEST = ".detector-output.json"


class OutputFolder:
    """A claimed output folder: :meth:`finish` records what this output wrote."""

    def __init__(self, path: Path, kind: str, identity: dict[str, Any] | None, earlier: list[str]):
        self.path, self.kind, self.identity, self.earlier = path, kind, identity, earlier

    def finish(self, entries: list[str]) -> None:
        """Record ``entries`` (names directly in the folder) as this output's, and remove those
        that only the earlier output of this folder had written."""
        self._remove(set(self.earlier) - set(entries))
        self.earlier = sorted(set(entries))
        self._write()

    def _remove(self, names: set[str]) -> None:
        for name in sorted(names):
            if not name or Path(name).name != name or name in (".", "..", MANIFEST):
                continue  # only names directly in the folder (a manifest edited by hand reaches nothing else)
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)

    def _write(self) -> None:
        atomic_write_json(self.path / MANIFEST, {"kind": self.kind, "identity": self.identity, "entries": self.earlier})


def claim_folder(path: str | Path, kind: str, identity: dict[str, Any] | None = None, *,
                 overwrite: bool = False) -> OutputFolder:
    """Claim ``path`` for an output of ``kind`` (e.g. "evaluation"); ``identity``: what makes two
    outputs of that kind the same (None: every output of the kind may replace another, as a
    report, which is a function of its run directories). Raises ConfigError, writing nothing,
    when the folder is not this project's or holds another output of the kind without ``overwrite``."""
    path = Path(path)
    identity = None if identity is None else json.loads(json.dumps(identity))  # as the manifest will read it back
    manifest, replaced = check_folder(path, kind, identity, overwrite=overwrite)
    path.mkdir(parents=True, exist_ok=True)
    folder = OutputFolder(path, kind, identity, list((manifest or {}).get("entries", [])))
    if replaced:  # --overwrite: nothing of the other output may stay mixed with this one
        folder._remove(set(folder.earlier))
        folder.earlier = []
    folder._write()  # the folder is this project's from now on, also if the command stops half-way
    return folder


def check_folder(path: str | Path, kind: str, identity: dict[str, Any] | None = None, *,
                 overwrite: bool = False) -> tuple[dict[str, Any] | None, bool]:
    """The checks of :func:`claim_folder` alone, nothing created; returns the folder's manifest
    (None if it has none) and whether the output there is one of another identity to replace."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file; the {kind} is written to a folder: give a new or empty folder")
    manifest = _read_manifest(path)
    if path.is_dir() and any(path.iterdir()):
        if manifest is None:
            raise ConfigError(f"{path} is not empty and holds no output of this project, so nothing is written "
                              f"there; give a new or empty folder for the {kind}")
        if manifest.get("kind") != kind:
            raise ConfigError(f"{path} holds a{'n' if str(manifest.get('kind'))[:1] in 'aeiou' else ''} "
                              f"{manifest.get('kind')}, not a{'n' if kind[:1] in 'aeiou' else ''} {kind}; "
                              f"give another folder")
    replaced = identity is not None and manifest is not None and manifest.get("identity") != identity
    if replaced and not overwrite:
        raise ConfigError(f"{path} holds the {kind} of {_difference(manifest.get('identity') or {}, identity)}; "
                          f"give another folder, or --overwrite to replace it")
    return manifest, replaced


def check_new_file(path: str | Path, *, overwrite: bool = False) -> Path:
    """``path`` for a new file: an existing one is refused unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; give another file name, or --overwrite to replace it")
    return path


def default_location(name: str, suffix: str = "", parent: str | Path = "runs") -> Path:
    """A new path ``parent/<name>-<timestamp><suffix>`` (``-2``, ``-3`` ... added while it exists)."""
    stem = f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return unique_path(Path(parent) / f"{stem}{suffix}")


def unique_path(path: Path) -> Path:
    """``path``, or the first of ``<stem>-2<suffix>``, ``<stem>-3<suffix>`` ... that does not exist."""
    candidate, number = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}") if path.suffix else \
            path.with_name(f"{path.name}-{number}")
        number += 1
    return candidate


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _difference(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    """'another checkpoint (a != b)': the first key in which two identities differ."""
    for key in wanted:
        if found.get(key) != wanted[key]:
            return f"another {key} ({found.get(key)!r} there, {wanted[key]!r} now)"
    return "other options"
