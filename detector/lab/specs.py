"""Loss specs: the rows of a comparison matrix and a report's baseline, a loss name with
optional parameters."""

from __future__ import annotations

import re
from typing import Any

import yaml

from detector.engine.errors import ConfigError


def parse_loss_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A matrix row: a loss name, or a name with parameters, ``smooth_l1(beta=0.5)`` or
    ``balanced_l1(alpha=0.5, gamma=1.5)``; values are read as YAML (numbers, booleans, text)."""
    match = re.fullmatch(r"\s*([^()\s]+)\s*(?:\((.*)\))?\s*", spec)
    if match is None:
        raise ConfigError(f"loss '{spec}' must look like name or name(key=value, ...)")
    params = {}
    for item in filter(None, (part.strip() for part in (match.group(2) or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"loss '{spec}': parameter '{item}' must look like key=value")
        params[key.strip()] = yaml.safe_load(value)
    return match.group(1), params
