"""What code made a run: the project's version (its git commit and whether the working tree had
changes, or the package version outside a git checkout) and the libraries' versions."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import detector

LIBRARIES = ("torch", "torchvision", "pytorch-lightning", "pycocotools", "numpy")


def code_version() -> dict[str, Any]:
    """{"package": version, "commit": sha or None, "dirty": bool or None}; commit and dirty are
    None when the package is not inside a git checkout (an installed wheel). ``dirty``: tracked
    files differ from the commit (untracked files do not count)."""
    root = Path(detector.__file__).resolve().parents[1]
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"package": detector.__version__, "commit": commit, "dirty": None if status is None else bool(status)}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe(code: dict[str, Any] | None) -> str:
    """A code version in a few characters: ``3684c1d``, ``3684c1d+changes`` or ``0.2.0``."""
    if not code:
        return "unknown (run made before versions were recorded)"
    if not code.get("commit"):
        return f"package {code.get('package')}"
    return code["commit"][:7] + ("+changes" if code.get("dirty") else "")


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine
        return None
    return result.stdout.strip() if result.returncode == 0 else None
