"""The engine: configuration, building the model and the datasets from it, the Lightning module
and data module, training, evaluation and the command-line helpers.

The names below are what the lab and the scripts use. They load on first access (PEP 562), so
that ``detector.engine.cli`` and ``detector.engine.errors`` import without torch and a script
answers ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Config": "detector.engine.config",
    "ConfigError": "detector.engine.errors",
    "atomic_path": "detector.engine.io",
    "atomic_write_json": "detector.engine.io",
    "atomic_write_text": "detector.engine.io",
    "build_dataset": "detector.engine.build",
    "build_model": "detector.engine.build",
    "evaluate_coco": "detector.engine.evaluation",
    "evaluate_voc": "detector.engine.evaluation",
    "read_csv_rows": "detector.engine.io",
    "train": "detector.engine.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'detector.engine' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
