"""Great Expectations suites of the feature services, kept as code, and their validation.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.provenance.retrieval import TIMESTAMP_COLUMN, ServiceSpec
from include.samples.datasets import PIXEL_FEATURES

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.expectations import Expectation

# Value ranges of the diagnosis features. The Wisconsin data are measurements of cell nuclei
# in digitised images (lengths in pixels); the bounds are physical limits where one exists and
# otherwise about twice the largest value in the data, so a unit or scaling error is caught
# while a real but unusual patient is not.
TABULAR_RANGES: dict[str, tuple[float, float]] = {
    "mean_radius": (0.0, 50.0),  # observed 7..28
    "mean_texture": (0.0, 128.0),  # std. dev. of 8-bit grey levels: at most 127.5
    "mean_perimeter": (0.0, 350.0),  # ≈ 2π·50, consistent with the radius bound
    "mean_area": (0.0, 8000.0),  # ≈ π·50², consistent with the radius bound
    "mean_smoothness": (0.0, 0.5),  # relative local variation of radius lengths, observed ≤ 0.17
    "mean_compactness": (0.0, 1.0),  # scaled perimeter²/area − 1, observed ≤ 0.35
    "mean_concavity": (0.0, 1.0),  # observed ≤ 0.43
    "mean_concave_points": (0.0, 0.5),  # observed ≤ 0.21
    "mean_symmetry": (0.0, 1.0),  # observed 0.11..0.31
    "mean_fractal_dimension": (0.0, 1.0),  # "coastline" dimension − 1 of a plane curve: 0..1
}

# The digits are 8x8 images with 17 grey levels; the scan features are ratios of ink, a
# top/bottom balance and a standard-normal scanner reading.
IMAGE_RANGES: dict[str, tuple[float, float]] = {
    **{px: (0.0, 16.0) for px in PIXEL_FEATURES},
    "ink_mean": (0.0, 1.0),  # mean of pixels / 16
    "ink_coverage": (0.0, 1.0),  # share of pixels above a quarter of full ink
    "vertical_balance": (-1.0, 1.0),  # (top − bottom) / (top + bottom)
    "scan_noise": (-6.0, 6.0),  # N(0, 1): |x| > 6 has probability ~2e-9 per reading
}

FEATURE_DTYPE = "float32"  # every feature is declared Float32 in the feature views
KEY_TYPES = ["object", "str", "string"]


def _expectations(spec: ServiceSpec, ranges: Mapping[str, tuple[float, float]]) -> list[Expectation]:
    """The expectations of one feature service, in reading order."""
    import great_expectations.expectations as gxe

    unranged = [f for f in spec.features if f not in ranges]
    if unranged:
        # A feature added to a view without a range here would go unchecked.
        raise ValueError(f"suite of {spec.name!r} has no value range for {', '.join(unranged)}")
    key = spec.entity_key
    ages = [v.age_column for v in spec.views]
    columns = [key, TIMESTAMP_COLUMN, *spec.features, *ages]
    out: list[Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectTableColumnsToMatchOrderedList(
            column_list=columns,
            notes="The model reads features by position: the order is part of the contract.",
        ),
        *(gxe.ExpectColumnToExist(column=c) for c in columns),
        gxe.ExpectColumnValuesToNotBeNull(column=key),
        gxe.ExpectColumnValuesToBeInTypeList(column=key, type_list=KEY_TYPES),
        gxe.ExpectColumnValuesToMatchRegex(
            column=key,
            regex=r"^[0-9a-f]{64}$",
            notes="Keys are HMAC-SHA256 hashes here, so GX results never carry a raw entity id.",
        ),
        gxe.ExpectColumnValuesToNotBeNull(column=TIMESTAMP_COLUMN),
    ]
    for feature in spec.features:
        low, high = ranges[feature]
        out += [
            gxe.ExpectColumnValuesToBeOfType(column=feature, type_=FEATURE_DTYPE),
            gxe.ExpectColumnValuesToNotBeNull(column=feature),
            gxe.ExpectColumnValuesToBeBetween(column=feature, min_value=low, max_value=high),
        ]
    for view in spec.views:
        out.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=view.age_column,
                notes=f"Every entity has a {view.name} row at or before the retrieval time.",
            )
        )
        if view.ttl is not None:
            out.append(
                gxe.ExpectColumnMaxToBeBetween(
                    column=view.age_column,
                    min_value=0,
                    max_value=view.ttl.total_seconds(),
                    notes=f"Freshness: no {view.name} row used is older than the view's ttl ({view.ttl}).",
                )
            )
    return out


def diagnosis_risk_tabular_suite(spec: ServiceSpec) -> list[Expectation]:
    return _expectations(spec, TABULAR_RANGES)


def multimodal_image_classifier_v3_suite(spec: ServiceSpec) -> list[Expectation]:
    return _expectations(spec, IMAGE_RANGES)


SUITES: dict[str, Callable[[ServiceSpec], list[Expectation]]] = {
    "diagnosis_risk_tabular": diagnosis_risk_tabular_suite,
    "multimodal_image_classifier_v3": multimodal_image_classifier_v3_suite,
}

# The declared value ranges per feature service: the ones the suites above enforce.
SERVICE_RANGES: dict[str, Mapping[str, tuple[float, float]]] = {
    "diagnosis_risk_tabular": TABULAR_RANGES,
    "multimodal_image_classifier_v3": IMAGE_RANGES,
}


def declared_feature_ranges() -> dict[str, tuple[float, float]]:
    """Feature name -> (min, max) as declared in the suites (one source for the explainers too).

    The counterfactual search keeps its examples inside these ranges. A feature declared by two
    services with different ranges would make the answer depend on the service: refused.
    """
    out: dict[str, tuple[float, float]] = {}
    for service, ranges in SERVICE_RANGES.items():
        for feature, bounds in ranges.items():
            if feature in out and out[feature] != bounds:
                raise ValueError(f"feature {feature!r} has different declared ranges (service {service!r})")
            out[feature] = bounds
    return out


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
    """Validate every frame with the feature service's suite; never raises for failed expectations."""
    if spec.name not in SUITES:
        raise ValueError(f"no expectation suite is defined for feature service {spec.name!r}")
    with _quiet_gx():
        return _validate(spec, frames)


def _validate(spec: ServiceSpec, frames: Mapping[str, pd.DataFrame]) -> ValidationOutcome:
    import great_expectations as gx

    context = _context()
    batch_definition = (
        context.data_sources.add_pandas("provenance")
        .add_dataframe_asset("retrieved_features")
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=spec.name, expectations=SUITES[spec.name](spec)))
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
