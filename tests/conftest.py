"""Suite-wide settings and checks: the image checks' cache in a folder of the session's own,
and the suite leaves the checkout as it found it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def git_status() -> str | None:
    """``git status --porcelain`` of the checkout (tracked changes and untracked, not ignored,
    files), or None outside a git checkout."""
    try:
        result = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """No test, and no script a test runs with its default outputs, may change a tracked file
    or leave an untracked one in the checkout."""
    before = git_status()
    yield
    after = git_status()
    if before is not None:
        assert after == before, f"the test suite changed the checkout:\nbefore:\n{before}\nafter:\n{after}"


def pytest_configure(config):
    # The pre-flight's cache (detector/data/preflight.py) of this session only; scripts the tests
    # start inherit it.
    os.environ["DETECTOR_CACHE"] = tempfile.mkdtemp(prefix="detector-test-cache-")
