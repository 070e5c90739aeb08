"""The engine: configuration, building the model and the datasets from it, the Lightning module
and data module, training, evaluation and the command-line helpers.

The names below are what the lab and the scripts use. They load on first access
(``detector/lazy.py``), so that ``detector.engine.cli`` and ``detector.engine.errors``
import without torch and a script answers ``--help`` at once.
"""

from __future__ import annotations

from detector.lazy import lazy_exports

_EXPORTS = {
    "Config": ("detector.engine.config", "Config"),
    "ConfigError": ("detector.engine.errors", "ConfigError"),
    "atomic_path": ("detector.engine.io", "atomic_path"),
    "atomic_write_csv": ("detector.engine.io", "atomic_write_csv"),
    "atomic_write_json": ("detector.engine.io", "atomic_write_json"),
    "atomic_write_text": ("detector.engine.io", "atomic_write_text"),
    "build_dataset": ("detector.engine.build", "build_dataset"),
    "build_model": ("detector.engine.build", "build_model"),
    "evaluate_coco": ("detector.engine.evaluation", "evaluate_coco"),
    "evaluate_voc": ("detector.engine.evaluation", "evaluate_voc"),
    "read_csv_rows": ("detector.engine.io", "read_csv_rows"),
    "train": ("detector.engine.training", "train"),
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
