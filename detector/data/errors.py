"""The error type of bad dataset files, and the message a user should see for it."""

from __future__ import annotations

import re


class DataError(ValueError):
    """A dataset file (annotations, split list or image) that cannot be used; the message names
    the file and the problem. Scripts print it and exit with status 2."""


# PyTorch re-raises an exception from a DataLoader worker as the same type, with this line and
# the worker's whole traceback as its message.
_WORKER_HEADER = re.compile(r"Caught \w+ in DataLoader worker process \d+")


def error_message(exc: BaseException) -> str:
    """``str(exc)``; for an exception re-raised from a DataLoader worker, the original message
    alone (what follows the traceback's last "module.Type: ")."""
    text = str(exc)
    if not _WORKER_HEADER.match(text):
        return text
    cls = type(exc)
    # The traceback names the type as traceback.format_exception_only does.
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    _, found, message = text.rpartition(f"\n{name}: ")
    return message.strip() if found else text
