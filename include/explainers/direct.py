"""Explain a model file in one command, without a config or a feature store.

``xac explain --model SOURCE:LOCATION --data FRAME --method METHOD --out DIR`` is the first thing a
team tries with its own model, and a step CI pipelines script against. It reads the data frame
(Parquet or CSV, a path or ``s3://``) whose columns are the model's inputs in order (plus an
optional id column), loads the model from its source (:mod:`include.explainers.sources`, checking
the inputs the artifact declares against those columns), and runs the same runtime as a DAG's
explainer pods: ``DIR/explanations/<id>.json`` in the same shape, ``summary.json``,
``fidelity.json``, ``run_summary.json``. Every check runs before any work and nothing is written
when one fails.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.explainers.errors import InputValidationError, ParameterError

if TYPE_CHECKING:
    import pandas as pd

# The largest data frame read (bytes); XAC_MAX_FRAME_BYTES overrides.
DEFAULT_MAX_FRAME_BYTES = 2 << 30
FRAME_SUFFIXES = (".parquet", ".pq", ".csv")
ROW_ID_COLUMN = "row"


@dataclass(frozen=True)
class DirectRequest:
    """One ``xac explain --model`` invocation."""

    model: str  # SOURCE:LOCATION
    data: str  # Parquet/CSV path or s3:// URI
    method: str
    out_dir: Path
    background: str | None = None  # default: the data itself
    id_column: str | None = None  # default: the row number
    num_samples: int | None = None  # the method's work knob (numSamples or steps)
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    task: str | None = None
    output_scale: str | None = None
    class_names: tuple[str, ...] = ()
    skops_trusted: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    endpoint_output: str | None = None
    output_format: str = "json"


def max_frame_bytes() -> int:
    raw = os.environ.get("XAC_MAX_FRAME_BYTES")
    return int(raw) if raw else DEFAULT_MAX_FRAME_BYTES


def read_frame(location: str, role: str, scratch: Path) -> pd.DataFrame:
    """A Parquet or CSV frame from a path or ``s3://`` URI, bounded in size."""
    import pandas as pd

    suffix = Path(location).suffix.lower()
    if suffix not in FRAME_SUFFIXES:
        raise InputValidationError(f"{role} {location}: expected a .parquet or .csv file")
    if location.startswith("s3://"):
        from include.compliance import parse_s3_uri
        from include.storage import s3_client

        bucket, key = parse_s3_uri(location)
        client = s3_client()
        try:
            size = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except Exception as exc:  # botocore: missing object, no credentials, unreachable
            raise InputValidationError(f"{role} {location} cannot be read: {exc}") from None
        if size > max_frame_bytes():
            raise InputValidationError(
                f"{role} {location} is {size} bytes, over the {max_frame_bytes()}-byte limit"
            )
        path = scratch / f"{role}{suffix}"
        client.download_file(bucket, key, str(path))
    else:
        path = Path(location).expanduser()
        if not path.is_file():
            raise InputValidationError(f"{role} {location} not found")
        if path.stat().st_size > max_frame_bytes():
            raise InputValidationError(
                f"{role} {location} is {path.stat().st_size} bytes, over the {max_frame_bytes()}-byte limit "
                "(XAC_MAX_FRAME_BYTES)"
            )
    try:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise InputValidationError(f"{role} {location} is not readable {suffix.lstrip('.')}: {exc}") from None
    if len(frame) == 0:
        raise InputValidationError(f"{role} {location} has no rows")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _with_ids(
    frame: pd.DataFrame, id_column: str | None, role: str, location: str
) -> tuple[pd.DataFrame, str]:
    if id_column is not None:
        if id_column not in frame.columns:
            raise InputValidationError(
                f"{role} {location}: no id column {id_column!r}; columns: {', '.join(frame.columns)}"
            )
        return frame, id_column
    entity = ROW_ID_COLUMN
    while entity in frame.columns:
        entity = f"_{entity}"
    return frame.assign(**{entity: [str(k) for k in range(len(frame))]}), entity


def _params(request: DirectRequest) -> dict[str, Any]:
    from include.explainers.params import method_parameters, work_parameter

    method_parameters(request.method)  # UnknownMethodError names the known methods
    params = dict(request.params)
    if request.num_samples is not None:
        knob = work_parameter(request.method)
        if knob is None:
            raise ParameterError(
                f"--num-samples does not apply to {request.method}: its work per row is fixed"
            )
        params[knob.name] = request.num_samples
    return params


def run_direct(request: DirectRequest) -> dict[str, Any]:
    """Explain ``request.data`` with ``request.model``; returns the run summary (see module docstring)."""
    from include.explainers.runtime import ExplainRequest, run_explain
    from include.explainers.sources import LoadOptions, ModelRef, model_from_source

    ref = ModelRef.parse(request.model)
    params = _params(request)
    with tempfile.TemporaryDirectory(prefix="xac-direct-") as tmp:
        scratch = Path(tmp)
        data = read_frame(request.data, "--data", scratch)
        data, entity = _with_ids(data, request.id_column, "--data", request.data)
        columns = [c for c in data.columns if c != entity]
        if not columns:
            raise InputValidationError(f"--data {request.data} has no feature columns besides the id")
        if request.background is None:
            background = data
        else:
            background = read_frame(request.background, "--background", scratch)
            background, _ = _with_ids(background, None, "--background", request.background)
            missing = [c for c in columns if c not in background.columns]
            if missing:
                raise InputValidationError(
                    f"--background {request.background} lacks the feature column(s) {', '.join(missing)}"
                )
        loaded = model_from_source(
            ref,
            columns,
            options=LoadOptions(
                task=request.task,
                output_scale=request.output_scale,
                class_names=tuple(request.class_names),
                skops_trusted=tuple(request.skops_trusted),
                headers=tuple(request.headers),
                endpoint_output=request.endpoint_output,
            ),
            entity=entity,
        )
        inference_path, background_path = scratch / "inference.parquet", scratch / "background.parquet"
        data.to_parquet(inference_path, index=False)
        background[columns].to_parquet(background_path, index=False)
        return run_explain(
            ExplainRequest(
                model_name=loaded.name,
                model_version=loaded.version,
                method=request.method,
                params=params,
                seed=request.seed,
                inference_path=inference_path,
                background_path=background_path,
                out_dir=Path(request.out_dir),
                output_format=request.output_format,
                model=loaded,
            )
        )


def parse_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (numbers, booleans, strings)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ParameterError(f"--param takes KEY=VALUE, not {text!r}")
    return key, yaml.safe_load(value)


def parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    return dict(parse_param(item) for item in items or ())
