"""What a run directory's files must hold before anything uses them: the one place their values are validated.

A run directory may come from anyone (a colleague, a download, an attacker), and its files are read by predict,
serve, export and evaluate. Each value that would otherwise give a traceback or, worse, a quietly wrong answer is
checked here: labels are distinct strings, the temperature is a finite positive number (a negative one inverts the
ranking, zero or NaN flattens it), head tensors are finite with positive standard deviations, the preprocessing is one
timm can apply, and a configured cache directory is used only when it already is a graft cache. Every failure is one
:class:`~graft.errors.RunError` naming the file and the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graft.errors import RunError, first_line
from graft.files import read_text

MAX_JSON_BYTES = 256 * 1024 * 1024  # a taxonomy or labels file of a very large flora is megabytes, never this
TEMPERATURE_RANGE = (1e-3, 1e4)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")
REFIT = "run `graft fit` again (or restore the file from the original run)"


def read_json(path: Path, fix: str = REFIT) -> Any:
    """A run file's JSON: a missing, unreadable, non-UTF-8, oversized or malformed file is one RunError."""
    try:
        return json.loads(read_text(path, MAX_JSON_BYTES))
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{path}: cannot read it ({first_line(error)}); {fix}") from error


def refuse(path: Path, what: str, fix: str = REFIT) -> RunError:
    return RunError(f"{path}: {what}; {fix}")


def check_labels(value: Any, path: Path) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(label, str) and label for label in value):
        raise refuse(path, "expected a non-empty list of label names")
    if len(set(value)) != len(value):
        raise refuse(path, "a label is listed twice")
    return value


def check_temperature(value: Any, path: Path) -> float:
    temperature = value.get("temperature") if isinstance(value, Mapping) else None
    low, high = TEMPERATURE_RANGE
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
            or not low <= temperature <= high:
        raise refuse(path, f"temperature {temperature!r} is not a number from {low:g} to {high:g} (a negative one "
                     "would invert the ranking, zero or NaN flatten it)", "delete the file (temperature 1) or "
                     "run `graft fit` again")
    return float(temperature)


def check_data_config(value: Any, path: Path) -> dict[str, Any]:
    """timm's data config as a run stores it: a 3-channel input size, 3 finite means, 3 positive stds, a known
    interpolation and a crop share in (0, 4]."""
    if not isinstance(value, Mapping):
        raise refuse(path, "data_config is not a mapping")
    size = value.get("input_size")
    if not _numbers(size, 3) or size[0] != 3 or not all(16 <= s <= 8192 and float(s).is_integer() for s in size[1:]):
        raise refuse(path, f"input_size {size!r} is not [3, height, width] with sides from 16 to 8192")
    if not _numbers(value.get("mean"), 3):
        raise refuse(path, f"mean {value.get('mean')!r} is not 3 finite numbers")
    if not _numbers(value.get("std"), 3) or min(value["std"]) <= 0:
        raise refuse(path, f"std {value.get('std')!r} is not 3 finite positive numbers")
    if value.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise refuse(path, f"interpolation {value.get('interpolation')!r} is not one of {', '.join(INTERPOLATIONS)}")
    crop = value.get("crop_pct", 1.0)
    if not _numbers([crop], 1) or not 0 < crop <= 4:
        raise refuse(path, f"crop_pct {crop!r} is not a number in (0, 4]")
    return dict(value)


def check_backbone_description(value: Any, path: Path) -> dict[str, Any]:
    """One backbone's description (name, identity, pooling, data_config), or concatenated ones' (``members``)."""
    if not isinstance(value, Mapping):
        raise refuse(path, "expected the backbone's description (a mapping with name, identity, data_config)")
    members = value.get("members")
    if members is not None and (not isinstance(members, list) or not members):
        raise refuse(path, "'members' is not a list of backbone descriptions")
    for key in ("name", "identity") if members else ("name", "identity", "pooling"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise refuse(path, f"{key!r} is missing or not a string")
    for member in members or []:
        check_backbone_description(member, path)
    if not members:
        check_data_config(value.get("data_config"), path)
    return dict(value)


def check_taxonomy(value: Any, path: Path) -> dict[str, Any]:
    fields = ("genus", "family", "authorship", "gbif")
    if not isinstance(value, Mapping) or not all(
            isinstance(label, str) and isinstance(taxon, Mapping)
            and all(isinstance(taxon.get(field, ""), str) for field in fields)
            and isinstance(taxon.get("common_names", []), list) for label, taxon in value.items()):
        raise refuse(path, "expected {label: {genus, family, authorship, common_names, gbif}} with strings")
    return dict(value)


def check_ensemble_spec(value: Any, path: Path) -> dict[str, Any]:
    runs, weights = (value.get("runs"), value.get("weights")) if isinstance(value, Mapping) else (None, None)
    if not isinstance(runs, list) or not runs or not all(isinstance(run, str) for run in runs):
        raise refuse(path, "expected 'runs', a non-empty list of run directories", "run `graft ensemble` again")
    if not _numbers(weights, len(runs)) or min(weights) < 0 or sum(weights) <= 0:
        raise refuse(path, f"expected 'weights', {len(runs)} finite non-negative numbers, not all 0",
                     "run `graft ensemble` again")
    return dict(value)


def check_head_state(state: Mapping[str, Any], path: Path) -> None:
    """Every head tensor finite, and the standardisation's stds positive (a zero std divides by zero)."""
    for name, tensor in state.items():
        array = np.asarray(tensor.float() if hasattr(tensor, "float") else tensor)
        if not np.isfinite(array).all():
            raise refuse(path, f"tensor {name!r} holds NaN or infinite values")
        if name.split(".")[-1] == "std" and (array <= 0).any():
            raise refuse(path, f"tensor {name!r} has a standard deviation <= 0")


def _numbers(value: Any, count: int) -> bool:
    return isinstance(value, list | tuple) and len(value) == count and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
