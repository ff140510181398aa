"""Expectation suites kept as data: one file per feature service, found by its name.

A suite is ``<feature_service>.json`` in Great Expectations 1.x's own suite format (``{"name",
"expectations": [{"type", "kwargs", "notes"?, "meta"?}, ...], "meta"?}``, so a team reuses the
suites it already has) or ``<feature_service>.yaml``/``.yml`` with the same mapping or just the
list of expectations. Suites are looked up in ``XAC_EXPECTATIONS_DIR`` when it is set, then in
``include/expectations/`` (a team's own, beside its configs), then in ``examples/expectations/``
(the samples').

This module reads and checks the files without importing Great Expectations (the explainer
image has no GX: the counterfactual search reads the declared value ranges from here); the
provenance stage (:mod:`include.provenance.suites`) builds GX's expectation objects from them,
which checks each type and its arguments. What the stage adds itself are the contract checks no
team should have to write: the feature service's columns in order, and hashed entity keys.

Bad suites are refused before any data is read, naming the file and the field
(``expectations[3].kwargs.column``): malformed JSON/YAML, an unknown expectation type or
argument, an expectation on a column the feature service does not deliver.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.paths import REPO_ROOT

# A team's suites (kept with its configs), then the samples' (examples/expectations).
DEFAULT_SUITES_DIR = REPO_ROOT / "include" / "expectations"
SAMPLE_SUITES_DIR = REPO_ROOT / "examples" / "expectations"
SUITE_SUFFIXES = (".json", ".yaml", ".yml")
MAX_SUITE_BYTES = 4 << 20
# Keyword arguments that name columns, by expectation argument name.
COLUMN_ARGUMENTS = ("column", "column_A", "column_B")
COLUMN_LIST_ARGUMENTS = ("column_list",)


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ExpectationSpec:
    """One expectation as the file declares it."""

    type: str
    kwargs: Mapping[str, Any]
    notes: str | None
    meta: Mapping[str, Any]
    where: str  # "FILE: expectations[i]"


@dataclass(frozen=True)
class SuiteFile:
    """A feature service's suite as read from its file."""

    name: str
    path: Path
    expectations: tuple[ExpectationSpec, ...]


def suite_dirs() -> list[Path]:
    configured = os.environ.get("XAC_EXPECTATIONS_DIR")
    dirs = [Path(configured)] if configured else []
    return [*dirs, DEFAULT_SUITES_DIR, SAMPLE_SUITES_DIR]


def find_suite(feature_service: str) -> Path | None:
    for folder in suite_dirs():
        for suffix in SUITE_SUFFIXES:
            path = folder / f"{feature_service}{suffix}"
            if path.is_file():
                return path
    return None


def _parse(path: Path) -> Any:
    size = path.stat().st_size
    if size > MAX_SUITE_BYTES:
        raise SuiteError(f"{path}: {size} bytes, over the {MAX_SUITE_BYTES}-byte limit of a suite file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SuiteError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


def read_suite(path: Path, feature_service: str) -> SuiteFile:
    """Parse and shape-check one suite file (GX checks each expectation's type and arguments later)."""
    data = _parse(path)
    items: Any
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        name = data.get("name", feature_service)
        if name != feature_service:
            raise SuiteError(f"{path}: name: {name!r}, but the file is the suite of {feature_service!r}")
        items = data.get("expectations")
        unknown = sorted(set(data) - {"name", "expectations", "meta", "notes", "id"})
        if unknown:
            raise SuiteError(f"{path}: unknown top-level field(s) {', '.join(unknown)}")
    else:
        raise SuiteError(
            f"{path}: expected a GX suite (a mapping with 'expectations') or a list of expectations"
        )
    if not isinstance(items, list) or not items:
        raise SuiteError(f"{path}: expectations: expected a non-empty list")
    out = []
    for index, item in enumerate(items):
        where = f"{path}: expectations[{index}]"
        if not isinstance(item, dict):
            raise SuiteError(f"{where}: expected a mapping with type and kwargs")
        kind = item.get("type", item.get("expectation_type"))
        if not isinstance(kind, str) or not kind.startswith("expect_"):
            raise SuiteError(
                f"{where}.type: expected an expectation type such as expect_column_to_exist, got {kind!r}"
            )
        kwargs = item.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise SuiteError(f"{where}.kwargs: expected a mapping")
        unknown = sorted(
            set(item) - {"type", "expectation_type", "kwargs", "notes", "meta", "id", "rendered_content"}
        )
        if unknown:
            raise SuiteError(f"{where}: unknown field(s) {', '.join(unknown)}")
        notes = item.get("notes")
        out.append(
            ExpectationSpec(
                kind,
                dict(kwargs),
                str(notes) if notes is not None else None,
                dict(item.get("meta") or {}),
                where,
            )
        )
    return SuiteFile(feature_service, path, tuple(out))


def load_suite_file(feature_service: str) -> SuiteFile:
    path = find_suite(feature_service)
    if path is None:
        looked = ", ".join(str(d / f"{feature_service}{{{','.join(SUITE_SUFFIXES)}}}") for d in suite_dirs())
        raise SuiteError(
            f"no expectation suite for feature service {feature_service!r}: looked for {looked}; "
            f"draft one with `xac expectations init --feature-service {feature_service}`"
        )
    return read_suite(path, feature_service)


def check_columns(suite: SuiteFile, columns: Sequence[str]) -> None:
    """Every column an expectation names must be one the validated frame has."""
    known = set(columns)
    for spec in suite.expectations:
        named: list[tuple[str, Any]] = [(k, spec.kwargs[k]) for k in COLUMN_ARGUMENTS if k in spec.kwargs]
        for key in COLUMN_LIST_ARGUMENTS:
            for position, value in enumerate(spec.kwargs.get(key) or []):
                named.append((f"{key}[{position}]", value))
        for key, value in named:
            if value not in known:
                raise SuiteError(
                    f"{spec.where}.kwargs.{key}: {spec.type} on column {value!r}, which feature service "
                    f"{suite.name!r} does not deliver (its columns: {', '.join(columns)})"
                )


def declared_ranges(suites: Iterable[SuiteFile]) -> dict[str, tuple[float, float]]:
    """Column -> (min, max) from the suites' ``expect_column_values_to_be_between`` (both bounds set).

    The counterfactual search keeps its examples inside these ranges. A column declared with
    different ranges by two suites would make the answer depend on the service: refused.
    """
    out: dict[str, tuple[float, float]] = {}
    for suite in suites:
        for spec in suite.expectations:
            if spec.type != "expect_column_values_to_be_between":
                continue
            low, high, column = (
                spec.kwargs.get("min_value"),
                spec.kwargs.get("max_value"),
                spec.kwargs.get("column"),
            )
            if not isinstance(column, str) or low is None or high is None:
                continue
            bounds = (float(low), float(high))
            if column in out and out[column] != bounds:
                raise SuiteError(
                    f"{spec.where}: column {column!r} has different declared ranges in two suites"
                )
            out[column] = bounds
    return out


def all_suites() -> list[SuiteFile]:
    """Every suite file in the suite folders (the first of each name wins)."""
    found: dict[str, Path] = {}
    for folder in suite_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in SUITE_SUFFIXES and path.stem not in found:
                found[path.stem] = path
    return [read_suite(path, name) for name, path in sorted(found.items())]


def _widened(low: float, high: float, margin: float) -> tuple[float, float]:
    """Observed [low, high] widened by ``margin`` of the span each side; never below 0 when low >= 0."""
    span = (high - low) or max(abs(high), 1.0)
    lo, hi = low - margin * span, high + margin * span
    if low >= 0 > lo:
        lo = 0.0
    return _round(lo, down=True), _round(hi, down=False)


def _round(value: float, *, down: bool) -> float:
    """Three significant digits, outwards: a reviewer reads 0 and 8000, not -1.234567e-05."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    scale = 10 ** (math.floor(math.log10(abs(value))) - 2)
    return float((math.floor if down else math.ceil)(value / scale) * scale)


def draft_suite(
    feature_service: str,
    *,
    entity_key: str,
    timestamp_column: str,
    features: Sequence[tuple[str, str]],
    reference: Any,
    age_columns: Sequence[tuple[str, float | None]],
    margin: float = 0.5,
) -> dict[str, Any]:
    """A suite for a person to review and commit: from the Feast schema (``features``: name and
    pandas dtype; ``age_columns``: each view's age column and TTL seconds) and a reference frame
    (observed ranges, widened by ``margin`` of their span each side; nulls)."""
    expectations: list[dict[str, Any]] = [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
        {"type": "expect_column_to_exist", "kwargs": {"column": entity_key}},
        {"type": "expect_column_to_exist", "kwargs": {"column": timestamp_column}},
    ]
    for name, dtype in features:
        expectations += [
            {"type": "expect_column_to_exist", "kwargs": {"column": name}},
            {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": name, "type_": dtype}},
        ]
        series = reference[name] if name in reference else None
        if series is not None and not series.isna().any():
            expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": name}})
        numeric = series is not None and str(series.dtype).startswith(("float", "int", "uint"))
        if numeric and series.notna().any():
            low, high = float(series.min()), float(series.max())
            lo, hi = _widened(low, high, margin)
            expectations.append(
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {"column": name, "min_value": lo, "max_value": hi},
                    "notes": f"observed {low:.6g}..{high:.6g} in {len(series)} reference rows; widened "
                    f"by {margin:.0%} of the span each side: review before committing",
                }
            )
    for column, ttl in age_columns:
        expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": column}})
        if ttl is not None:
            expectations.append(
                {
                    "type": "expect_column_max_to_be_between",
                    "kwargs": {"column": column, "min_value": 0, "max_value": ttl},
                    "notes": f"Freshness: no feature row used is older than the view's ttl ({ttl:.0f} s).",
                }
            )
    return {
        "name": feature_service,
        "meta": {
            "notes": f"Drafted by `xac expectations init --feature-service {feature_service}` from the Feast "
            f"schema and {len(reference)} reference rows; review the ranges, then commit this file."
        },
        "expectations": expectations,
    }
