"""Loss specs: the rows of a comparison matrix and a report's baseline, a loss name with
optional parameters, and optionally the loss's weight (``l2(weight=4.5)``)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from detector.engine.errors import ConfigError

WEIGHT = "weight"  # in a spec, the loss's weight (loss.weight), not a parameter of the loss


def parse_loss_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A matrix row: a loss name, or a name with parameters, ``smooth_l1(beta=0.5)`` or
    ``balanced_l1(alpha=0.5, gamma=1.5)``; values are read as YAML (numbers, booleans, text).
    ``weight=W`` among them is the loss's weight (:func:`split_weight` takes it out)."""
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


def split_weight(params: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """A spec's parameters without ``weight``, and the weight (None: the loss's default)."""
    rest = {key: value for key, value in params.items() if key != WEIGHT}
    return rest, (float(params[WEIGHT]) if WEIGHT in params else None)
