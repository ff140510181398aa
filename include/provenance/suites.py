"""Validation of retrieved feature frames with Great Expectations, from suites kept as data.

Each feature service's expectations are a file (:mod:`include.provenance.expectations`: GX 1.x
suite JSON or the equivalent YAML, found by the service's name). This module adds the contract
checks the stage itself depends on (the feature service's columns in order, hashed entity keys,
event times present), builds GX's expectation objects from the file (which checks each type and
its arguments; a bad one is refused naming the file and the expectation) and runs them.

GX Core 1.x is called directly: an ephemeral (in-memory) context, a pandas data source with
one dataframe asset and a whole-dataframe batch definition, one ExpectationSuite per feature
service and a ValidationDefinition run once per frame.

The validated frame is the retrieved frame with two changes made by the stage: the entity key
holds salted hashes (so no raw id can leak into the GX result, which lists unexpected values),
and one ``<view>__feature_age_seconds`` column per feature view is appended (the age of the
feature row the point-in-time join used; Feast does not return it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.provenance.expectations import (
    ExpectationSpec,
    SuiteError,
    all_suites,
    check_columns,
    declared_ranges,
    load_suite_file,
)
from include.provenance.retrieval import TIMESTAMP_COLUMN, ServiceSpec

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.expectations import Expectation

KEY_TYPES = ["object", "str", "string"]


def validated_columns(spec: ServiceSpec) -> list[str]:
    """The columns of the frame GX sees, in order: key, event time, features, feature ages."""
    return [spec.entity_key, TIMESTAMP_COLUMN, *spec.features, *(v.age_column for v in spec.views)]


def _contract(spec: ServiceSpec) -> list[Expectation]:
    """What the stage guarantees and relies on, whatever the team's suite says."""
    import great_expectations.expectations as gxe

    key = spec.entity_key
    return [
        gxe.ExpectTableColumnsToMatchOrderedList(
            column_list=validated_columns(spec),
            notes="The model reads features by position: the order is part of the contract.",
        ),
        gxe.ExpectColumnValuesToNotBeNull(column=key),
        gxe.ExpectColumnValuesToBeInTypeList(column=key, type_list=KEY_TYPES),
        gxe.ExpectColumnValuesToMatchRegex(
            column=key,
            regex=r"^[0-9a-f]{64}$",
            notes="Keys are HMAC-SHA256 hashes here, so GX results never carry a raw entity id.",
        ),
        gxe.ExpectColumnValuesToNotBeNull(column=TIMESTAMP_COLUMN),
    ]


def _expectation(spec: ExpectationSpec) -> Expectation:
    """GX's expectation object for one declared expectation (GX checks the type and arguments)."""
    import great_expectations.expectations as gxe

    class_name = "".join(part.capitalize() for part in spec.type.split("_"))
    cls = getattr(gxe, class_name, None)
    if cls is None:
        raise SuiteError(f"{spec.where}.type: {spec.type!r} is not a Great Expectations 1.x expectation")
    extra = {"notes": spec.notes} if spec.notes else {}
    if spec.meta:
        extra["meta"] = dict(spec.meta)
    try:
        return cls(**spec.kwargs, **extra)
    except Exception as exc:  # pydantic's ValidationError: unknown or ill-typed arguments
        problems = "; ".join(line.strip() for line in str(exc).splitlines()[1:4] if line.strip())
        raise SuiteError(f"{spec.where}.kwargs: invalid arguments for {spec.type}: {problems}") from None


def suite_expectations(spec: ServiceSpec) -> list[Expectation]:
    """The contract checks, then the feature service's suite file; SuiteError names file and field."""
    suite = load_suite_file(spec.name)
    check_columns(suite, validated_columns(spec))
    return [*_contract(spec), *(_expectation(e) for e in suite.expectations)]


def declared_feature_ranges() -> dict[str, tuple[float, float]]:
    """Feature name -> (min, max) as the suites declare them (one source for the explainers too)."""
    return declared_ranges(all_suites())


@dataclass
class ValidationOutcome:
    """The result of validating several frames with a feature service's suite."""

    passed: bool
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # frame name → GX result JSON
    failures: list[str] = field(default_factory=list)  # one readable line per failed expectation

    @property
    def summary(self) -> str:
        if self.passed:
            counts = ", ".join(
                f"{name}: {len(r.get('results', []))} expectations passed" for name, r in self.results.items()
            )
            return f"all expectations passed ({counts})"
        return "\n".join(self.failures)


def _context() -> Any:
    """An in-memory GX context without analytics or progress bars."""
    # GX reads this when the context is created; set it before importing GX anywhere.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _observed(column: str | None, result: Mapping[str, Any]) -> str:
    if "observed_value" in result:
        value = result["observed_value"]
        if column and column.endswith("__feature_age_seconds") and isinstance(value, int | float):
            if not math.isnan(value):
                return f"{value:.0f} s ({value / 86400:.1f} days)"
        return _short(value)
    if "unexpected_count" in result:
        examples = result.get("partial_unexpected_list") or []
        return (
            f"{result['unexpected_count']} of {result.get('element_count')} values unexpected "
            f"({result.get('unexpected_percent') or 0:.1f}%), e.g. {_short(examples[:3], 80)}"
        )
    return "column absent" if column else "-"


def _expected(kind: str, kwargs: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k not in ("batch_id", "column", "result_format")}
    if kind == "expect_column_to_exist":
        return "column present"
    if kind == "expect_column_values_to_not_be_null":
        return "no nulls"
    if "min_value" in shown or "max_value" in shown:
        low, high = shown.get("min_value"), shown.get("max_value")
        return f"between {low} and {high}"
    return _short(", ".join(f"{k}={v}" for k, v in shown.items()))


def _columns_mismatch(kwargs: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    expected = list(kwargs.get("column_list") or [])
    observed = list(result.get("observed_value") or [])
    missing = [c for c in expected if c not in observed]
    extra = [c for c in observed if c not in expected]
    if missing or extra:
        return f"observed missing {_short(missing, 100)}, unexpected {_short(extra, 100)}"
    return "observed the same columns in another order"


def _failure_lines(frame: str, result: Any) -> list[str]:
    failed = [r for r in result.results if not r.success]
    # When a column is absent, every other expectation on it fails to evaluate; one line for
    # the absence says it all.
    absent = {
        r.expectation_config.kwargs.get("column")
        for r in failed
        if r.expectation_config.type == "expect_column_to_exist"
    }
    lines = []
    skipped: dict[str, int] = {}
    for r in failed:
        config = r.expectation_config
        column = config.kwargs.get("column")
        if column in absent and config.type != "expect_column_to_exist":
            skipped[column] = skipped.get(column, 0) + 1
            continue
        where = f" column={column}" if column else ""
        info = r.exception_info or {}
        if info.get("raised_exception"):
            message = str(info.get("exception_message") or "error").splitlines()[0]
            observed = f"could not be evaluated ({_short(message, 120)})"
        elif config.type == "expect_table_columns_to_match_ordered_list":
            observed = _columns_mismatch(config.kwargs, r.result or {})
        else:
            observed = f"observed {_observed(column, r.result or {})}"
        expected = (
            "the feature service's columns in order"
            if config.type == "expect_table_columns_to_match_ordered_list"
            else _expected(config.type, config.kwargs)
        )
        lines.append(f"[{frame}] {config.type}{where}: {observed}; expected {expected}")
    for column, count in skipped.items():
        lines.append(f"[{frame}] {count} more expectations on absent column {column} not evaluated")
    return lines


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """GX logs several INFO lines per expectation; keep task logs readable while it runs."""
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def validate_frames(spec: ServiceSpec, frames: Mapping[str, pd.DataFrame]) -> ValidationOutcome:
    """Validate every frame with the feature service's suite; never raises for failed expectations
    (a missing or invalid suite raises :class:`SuiteError` before any frame is validated)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # read when GX is first imported
    with _quiet_gx():
        expectations = suite_expectations(spec)
        return _validate(spec, frames, expectations)


def _validate(
    spec: ServiceSpec, frames: Mapping[str, pd.DataFrame], expectations: list[Expectation]
) -> ValidationOutcome:
    import great_expectations as gx

    context = _context()
    batch_definition = (
        context.data_sources.add_pandas("provenance")
        .add_dataframe_asset("retrieved_features")
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=spec.name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{spec.name}_provenance", data=batch_definition, suite=suite)
    )
    outcome = ValidationOutcome(passed=True)
    for name, frame in frames.items():
        # SUMMARY keeps up to 20 example values per failure: enough to diagnose, bounded in size.
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        outcome.results[name] = result.to_json_dict()
        if not result.success:
            outcome.passed = False
            outcome.failures.extend(_failure_lines(name, result))
    return outcome
