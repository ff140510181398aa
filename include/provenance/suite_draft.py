"""``xac expectations init``: draft a feature service's suite from Feast and a reference frame.

The draft is a starting point for a person to review and commit (``examples/expectations/`` or
``XAC_EXPECTATIONS_DIR``): column presence and dtypes from the Feast schema, no-null checks where
the reference frame has no nulls, each numeric feature's observed range widened by half its span
on each side, a row count, and freshness from each feature view's TTL. The reference frame is
``--reference FRAME`` (Parquet/CSV with the feature columns) or, by default, the latest row of
every entity in the feature views' batch sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

    from include.provenance.retrieval import ServiceSpec

# Feast's value types -> the pandas dtype the retrieved column has.
_PANDAS_DTYPES = {
    "Float32": "float32",
    "Float64": "float64",
    "Int32": "int32",
    "Int64": "int64",
    "String": "object",
    "Bool": "bool",
}


def feature_dtypes(spec: ServiceSpec) -> list[tuple[str, str]]:
    out = []
    for view in spec.views:
        declared = {field.name: str(field.dtype) for field in view.view.schema}
        for feature in view.features:
            dtype = declared.get(feature, "")
            out.append((feature, _PANDAS_DTYPES.get(dtype.split("(")[0], "float64")))
    return out


def source_reference(spec: ServiceSpec) -> pd.DataFrame:
    """The latest row of each entity in every view's batch source, features side by side."""

    merged: pd.DataFrame | None = None
    for view in spec.views:
        frame = view.read_source(spec.entity_key, view.features)
        frame = frame.sort_values(view.timestamp_field).drop_duplicates(spec.entity_key, keep="last")
        frame = frame.drop(columns=[view.timestamp_field])
        merged = frame if merged is None else merged.merge(frame, on=spec.entity_key, how="inner")
    assert merged is not None
    return merged


def draft_for_service(
    feature_service: str, *, reference: Path | None = None, store: FeatureStore | None = None
) -> dict[str, Any]:
    """The draft suite of ``feature_service`` (see the module docstring)."""
    from include.explainers.direct import read_frame
    from include.provenance.expectations import draft_suite
    from include.provenance.feature_data import get_store
    from include.provenance.retrieval import TIMESTAMP_COLUMN, service_spec

    spec = service_spec(store or get_store(), feature_service)
    if reference is None:
        frame = source_reference(spec)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            frame = read_frame(str(reference), "--reference", Path(scratch))
        missing = [f for f in spec.features if f not in frame.columns]
        if missing:
            raise ValueError(f"--reference {reference} lacks the feature column(s) {', '.join(missing)}")
    return draft_suite(
        feature_service,
        entity_key=spec.entity_key,
        timestamp_column=TIMESTAMP_COLUMN,
        features=feature_dtypes(spec),
        reference=frame,
        age_columns=[(v.age_column, v.ttl.total_seconds() if v.ttl else None) for v in spec.views],
    )
