"""The runtime entry point: what ``xac explain`` runs in the pod (or a local process).

``run_explain(request)`` validates everything first — method, parameters, model, data — and
raises an :class:`~include.explainers.errors.ExplainError` before any work and before
writing anything. It then computes in a temp folder inside ``out_dir`` and moves the results
into place at the end (``run_summary.json`` last: its presence marks a complete run), so a
failure leaves no half-written outputs.

Layout of ``out_dir``::

    explanations/<inference_id>.json | .parquet   one per inference row
    plots/<inference_id>_saliency.png             image models only
    plots/global_importance.png
    summary.json                                  global mean |attribution|
    fidelity.json                                 per-instance and aggregate fidelity
    run_summary.json                              counts, runtime, shard, peak RSS, versions

Sharding: the inference rows are sorted by id; shard i of n takes the contiguous slice
``[i*N//n, (i+1)*N//n)``. Each row's randomness is seeded from (seed, inference id) and batch
shapes depend only on the whole job, so the union of the shards equals the single-process
result bit for bit; :func:`merge_shards` combines shard folders into one run folder.

This module imports torch/pandas only inside functions: importing it is cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.explainers.errors import (
    ExplainError,
    InputValidationError,
    OutputExistsError,
    ParameterError,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from include.explainers.base import Attributions, ExplainedModel, Explainer
    from include.explainers.model_store import LoadedModel

OUTPUT_FORMATS = ("json", "parquet")
OUTPUT_NAMES = ("explanations", "plots", "summary.json", "fidelity.json", "run_summary.json")
PARQUET_METADATA_KEY = b"xac.explanation"


@dataclass
class ExplainRequest:
    """One ``xac explain`` invocation."""

    model_name: str
    model_version: str
    method: str  # "KernelSHAP" | "IntegratedGradients"
    params: dict[str, Any]  # camelCase keys from the config's explainerConfig
    seed: int
    inference_path: Path  # Parquet: entity column, event_timestamp, feature columns
    background_path: Path  # same columns
    out_dir: Path
    output_format: str = "json"  # "json" | "parquet"
    shard_index: int = 0
    shard_count: int = 1
    overwrite: bool = False  # replace the outputs of an earlier run in out_dir
    # A model already loaded from a source (include.explainers.sources); None: the model store's
    # model_name/model_version.
    model: LoadedModel | None = None
    # A catalogue model with a source: a copy of its artifact to read instead of the declared
    # location (what a run staged for its pods), and the sha256 it must have.
    model_location: str | None = None
    model_sha256: str | None = None


@dataclass
class _Plan:
    """Everything validated, ready to compute."""

    request: ExplainRequest
    loaded: LoadedModel
    model: ExplainedModel
    explainer: Explainer
    params: dict[str, Any]
    shard: pd.DataFrame
    background: pd.DataFrame
    ids: list[str]
    file_stems: list[str]
    n_total: int
    shard_range: tuple[int, int]
    device: Any = None  # torch.device the method computes on (include.explainers.device)
    device_requested: str = "auto"
    timings: dict[str, float] = field(default_factory=dict)


# ============================================================================ validation


def _check_request_fields(request: ExplainRequest) -> None:
    if request.output_format not in OUTPUT_FORMATS:
        raise ParameterError(
            f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {request.output_format!r}"
        )
    if isinstance(request.seed, bool) or not isinstance(request.seed, int) or request.seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {request.seed!r}")
    count, index = request.shard_count, request.shard_index
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ParameterError(f"shard_count must be a positive integer, got {count!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ParameterError(f"shard_index must be an integer in [0, {count}), got {index!r}")
    out_dir = Path(request.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"out_dir {out_dir} exists and is not a directory")
    present = [name for name in OUTPUT_NAMES if (out_dir / name).exists()]
    if present and not request.overwrite:
        raise OutputExistsError(
            f"out_dir {out_dir} already holds outputs of an earlier run ({', '.join(present)}); "
            "use a fresh folder or overwrite=True"
        )


def _read_frame(path: Path, role: str) -> pd.DataFrame:
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputValidationError(f"{role} data not found: {path}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise InputValidationError(f"{role} data {path} is not readable Parquet: {exc}") from exc


_GRID = re.compile(r"^(?P<prefix>.*r)(?P<row>\d+)c(?P<col>\d+)$")


def _image_shape_hint(modality_columns: tuple[str, ...], shape: tuple[int, ...], columns: list[str]) -> str:
    """Describe the image grid found in ``columns`` when it is not the one the model expects."""
    match = _GRID.match(modality_columns[0])
    if not match:
        return ""
    prefix = match.group("prefix")
    rows, cols = set(), set()
    for column in columns:
        found = _GRID.match(column)
        if found and found.group("prefix") == prefix:
            rows.add(int(found.group("row")))
            cols.add(int(found.group("col")))
    height, width = shape[-2], shape[-1]
    got = f"{max(rows) + 1}x{max(cols) + 1}" if rows else "no"
    return (
        f"wrong image shape: the model expects a {height}x{width} image "
        f"({modality_columns[0]}..{modality_columns[-1]}), the data has {got} pixel columns "
        f"named {prefix}<row>c<col>"
    )


def _check_frame(frame: pd.DataFrame, role: str, path: Path, loaded: LoadedModel, need_entity: bool) -> None:
    import numpy as np
    import pandas as pd

    if len(frame) == 0:
        raise InputValidationError(f"{role} data {path} has no rows")
    if need_entity and loaded.entity not in frame.columns:
        raise InputValidationError(f"{role} data {path} lacks the entity column {loaded.entity!r}")
    for modality in loaded.modalities:
        missing = [c for c in modality.columns if c not in frame.columns]
        if not missing:
            continue
        if modality.kind == "image":
            hint = _image_shape_hint(modality.columns, modality.shape, list(frame.columns))
            raise InputValidationError(
                f"{role} data {path}: {hint or 'missing image columns'} "
                f"({len(missing)} of {len(modality.columns)} expected pixel columns missing)"
            )
        raise InputValidationError(
            f"{role} data {path} lacks feature column(s) of input {modality.name!r}: {', '.join(missing)}"
        )
    columns = loaded.feature_columns
    bad_types = [
        c
        for c in columns
        if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
    ]
    if bad_types:
        raise InputValidationError(
            f"{role} data {path}: non-numeric feature column(s): {', '.join(bad_types)}"
        )
    values = frame[columns].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        names = sorted({columns[c] for c in cols})
        where = (
            [str(frame[loaded.entity].iloc[r]) for r in sorted(set(rows))[:5]]
            if loaded.entity in frame.columns
            else [f"row {r}" for r in sorted(set(rows))[:5]]
        )
        raise InputValidationError(
            f"{role} data {path}: {int(bad.sum())} NaN or infinite value(s) in column(s) "
            f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''} "
            f"(e.g. {', '.join(where)}); features must be complete"
        )


def _file_stem(inference_id: str) -> str:
    """A safe file name for an id; a hash suffix keeps sanitised ids apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", inference_id)[:120]
    if safe != inference_id or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha256(inference_id.encode()).hexdigest()[:10]}"
    return safe


def _sorted_by_entity(frame: pd.DataFrame, entity: str) -> pd.DataFrame:
    if entity not in frame.columns:
        return frame.reset_index(drop=True)
    return frame.sort_values(entity, kind="mergesort").reset_index(drop=True)


def _prepare(request: ExplainRequest) -> _Plan:
    """All validation; no side effects (nothing written)."""
    from include.explainers.base import get_explainer
    from include.explainers.catalogue import catalogue_entries
    from include.explainers.device import device_for, requested_device
    from include.explainers.model_store import is_source_model, load_model, load_source_model
    from include.explainers.params import KERNEL_SHAP, method_parameters, normalise_params

    timings: dict[str, float] = {}
    started = time.perf_counter()
    method_parameters(request.method)  # UnknownMethodError first: the cheapest check
    _check_request_fields(request)
    raw_params = {} if request.params is None else request.params
    if not isinstance(raw_params, dict):
        raise ParameterError(f"params must be a mapping, got {type(raw_params).__name__}")
    inference = None
    if request.model is not None:
        loaded = request.model
    elif is_source_model(request.model_name):
        # A user's model is fed the feature service's columns as retrieved (entity and event time
        # aside), unless the catalogue lists its inputs; the artifact's own input names are checked.
        inference = _read_frame(request.inference_path, "inference")
        entity = catalogue_entries()[request.model_name].entity
        columns = [c for c in inference.columns if c not in (entity, "event_timestamp")]
        loaded = load_source_model(
            request.model_name,
            str(request.model_version),
            columns,
            location=request.model_location,
            expected_sha256=request.model_sha256,
        )
    else:
        loaded = load_model(request.model_name, str(request.model_version))
    model = loaded.explained()
    explainer = get_explainer(request.method)
    explainer.check_model(model)
    device_requested = requested_device()
    device = device_for(explainer, device_requested)  # XAC_EXPLAIN_DEVICE=cuda without a GPU: refused
    params = normalise_params(
        request.method,
        raw_params,
        has_image=model.has_image,
        modalities=[m.name for m in model.modalities],
    )
    if request.method == KERNEL_SHAP:
        from include.explainers.kernel_shap import build_players

        build_players(model.modalities, int(params.get("imageSuperpixel") or 2))  # range check
    check_params = getattr(explainer, "check_params", None)
    if check_params is not None:
        check_params(model, params)  # checks that need the parameters (e.g. ExactShapley's player cap)

    if inference is None:
        inference = _read_frame(request.inference_path, "inference")
    background = _read_frame(request.background_path, "background")
    _check_frame(inference, "inference", request.inference_path, loaded, need_entity=True)
    _check_frame(background, "background", request.background_path, loaded, need_entity=False)

    ids_all = inference[loaded.entity].astype(str)
    duplicated = ids_all[ids_all.duplicated()].unique().tolist()
    if duplicated:
        raise InputValidationError(
            f"inference data {request.inference_path}: duplicate {loaded.entity} value(s) "
            f"{', '.join(duplicated[:5])}; each row must be one instance"
        )
    inference = inference.assign(**{loaded.entity: ids_all})
    inference = _sorted_by_entity(inference, loaded.entity)
    background = _sorted_by_entity(background, loaded.entity)
    n_total = len(inference)
    lo = request.shard_index * n_total // request.shard_count
    hi = (request.shard_index + 1) * n_total // request.shard_count
    shard = inference.iloc[lo:hi].reset_index(drop=True)
    ids = shard[loaded.entity].tolist()
    stems = [_file_stem(i) for i in ids]
    timings["validate_seconds"] = time.perf_counter() - started
    return _Plan(
        request=request,
        loaded=loaded,
        model=model,
        explainer=explainer,
        params=params,
        shard=shard,
        background=background,
        ids=ids,
        file_stems=stems,
        n_total=n_total,
        shard_range=(lo, hi),
        device=device,
        device_requested=device_requested,
        timings=timings,
    )


# ============================================================================ computing


def _tensors(frame: pd.DataFrame, model: ExplainedModel) -> tuple[Any, ...]:
    import numpy as np
    import torch

    dtype = {torch.float64: np.float64}.get(model.dtype, np.float32)
    return tuple(
        torch.from_numpy(frame[list(m.columns)].to_numpy(dtype=dtype).reshape(len(frame), *m.shape).copy())
        for m in model.modalities
    )


def _timestamp(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _clean(value: float) -> float | None:
    """A JSON-safe float (NaN/inf are not JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _modality_totals(model: ExplainedModel, features: np.ndarray) -> dict[str, dict[str, float | None]]:
    import numpy as np

    total = float(features.sum())
    total_abs = float(np.abs(features).sum())
    out = {}
    for modality, part in zip(model.modalities, model.modality_slices(), strict=True):
        values = features[part]
        s, a = float(values.sum()), float(np.abs(values).sum())
        out[modality.name] = {
            "sum": s,
            "abs_sum": a,
            # Shares of a near-zero total are meaningless (the modalities cancel out).
            "share": s / total if abs(total) > 1e-12 else None,
            "abs_share": a / total_abs if total_abs > 0 else None,
        }
    return out


def _instance_records(
    plan: _Plan, attributions: Attributions, fidelity: dict[str, Any], seconds_each: float, versions: dict
) -> list[dict[str, Any]]:
    """One explanation document per inference row."""
    import numpy as np

    from include.explainers.base import PREDICT_CHUNK_ROWS, instance_seed

    model, loaded, request = plan.model, plan.loaded, plan.request
    inputs = _tensors(plan.shard, model)
    flat = model.flatten(inputs)
    probabilities = model.class_probabilities(model.evaluate(flat, PREDICT_CHUNK_ROWS)).double().numpy()
    flat_np = flat.double().numpy()
    per_instance = fidelity["per_instance"]
    component_names = [k for k in per_instance if k != "score"]
    has_time = "event_timestamp" in plan.shard.columns
    records = []
    for i, inference_id in enumerate(plan.ids):
        target = int(attributions.targets[i])
        probs = probabilities[i]
        if model.task == "regression":
            predicted, class_name, probability = 0, None, None
        else:
            predicted = int(np.argmax(probs))
            class_name, probability = model.class_names[predicted], float(probs[predicted])
        feats = attributions.features[i]
        attribution: dict[str, Any] = {"total": float(feats.sum())}
        inputs_doc: dict[str, Any] = {}
        for modality, part in zip(model.modalities, model.modality_slices(), strict=True):
            values, attrs = flat_np[i, part], feats[part]
            if modality.kind == "image":
                grid_shape = modality.shape[1:] if modality.shape[0] == 1 else modality.shape
                attribution[modality.name] = {
                    "shape": list(grid_shape),
                    "columns": [modality.columns[0], modality.columns[-1]],
                    "pixels": values.reshape(grid_shape).tolist(),
                    "attributions": attrs.reshape(grid_shape).tolist(),
                }
            else:
                inputs_doc.update(dict(zip(modality.columns, values.tolist(), strict=True)))
                attribution.setdefault("features", {}).update(
                    dict(zip(modality.columns, attrs.tolist(), strict=True))
                )
        attribution["modalities"] = _modality_totals(model, feats)
        attribution["players"] = [
            {"name": name, "attribution": float(v)}
            for name, v in zip(attributions.player_names, attributions.players[i], strict=True)
        ]
        record = {
            "inference_id": inference_id,
            "entity": {"column": loaded.entity, "value": inference_id},
            "event_timestamp": _timestamp(plan.shard["event_timestamp"].iloc[i]) if has_time else None,
            "model": {
                "name": loaded.name,
                "version": loaded.version,
                "sha256": loaded.sha256,
                "architecture": loaded.metadata.get("architecture"),
                "task": model.task,
                # a user's model: what was loaded (source, URI, version, every artifact's digest)
                **({"source": loaded.origin.to_json()} if loaded.origin is not None else {}),
            },
            "prediction": {
                "class": class_name,
                "class_index": predicted if model.task != "regression" else None,
                "probability": probability,
                "probabilities": (
                    dict(zip(model.class_names, probs.tolist(), strict=True))
                    if model.task != "regression"
                    else None
                ),
                "explained_output": {
                    "description": model.explained_output_description(),
                    "output_index": target,
                    "class": (
                        model.class_names[-1]
                        if model.task == "binary"
                        else model.class_names[target]
                        if model.task == "multiclass"
                        else None
                    ),
                    "value": float(attributions.outputs[i]),
                },
            },
            "method": attributions.method,
            "parameters": attributions.resolved_params,
            "seed": request.seed,
            "instance_seed": instance_seed(request.seed, inference_id),
            "baseline": {"kind": attributions.baseline_kind, "value": float(attributions.baselines[i])},
            "inputs": inputs_doc,
            "attributions": attribution,
            "fidelity": {
                "metric": fidelity["metric"],
                "score": _clean(per_instance["score"][i]),
                **{name: _clean(per_instance[name][i]) for name in component_names},
            },
            # Per-instance details may be scalars, vectors (tolist) or documents (object arrays).
            "method_details": {
                key: _jsonable(values[i].tolist() if hasattr(values[i], "tolist") else values[i])
                for key, values in attributions.per_instance.items()
            },
            "runtime_seconds": seconds_each,
            "runtime_note": "amortised: the run's explanation time divided by its instances (batched)",
            "libraries": versions,
        }
        records.append(record)
    return records


def _write_explanation(
    folder: Path, stem: str, record: dict[str, Any], output_format: str, model: ExplainedModel
) -> None:
    """``<stem>.json`` (the document) or ``<stem>.parquet`` (one row per feature + the document
    without its inputs in the schema metadata, key ``xac.explanation``)."""
    if output_format == "json":
        (folder / f"{stem}.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        return
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: dict[str, list[Any]] = {
        "inference_id": [],
        "modality": [],
        "feature": [],
        "input_value": [],
        "attribution": [],
    }
    attrs = record["attributions"]
    for modality in model.modalities:
        if modality.kind == "image":
            block = attrs[modality.name]
            values = np.asarray(block["pixels"], dtype=np.float64).reshape(-1).tolist()
            attributions = np.asarray(block["attributions"], dtype=np.float64).reshape(-1).tolist()
        else:
            values = [record["inputs"][c] for c in modality.columns]
            attributions = [attrs["features"][c] for c in modality.columns]
        rows["inference_id"] += [record["inference_id"]] * modality.size
        rows["modality"] += [modality.name] * modality.size
        rows["feature"] += list(modality.columns)
        rows["input_value"] += values
        rows["attribution"] += attributions
    table = pa.table(rows)
    header = {k: v for k, v in record.items() if k not in ("inputs",)}
    header = json.loads(json.dumps(header, allow_nan=False))
    table = table.replace_schema_metadata({PARQUET_METADATA_KEY: json.dumps(header).encode()})
    pq.write_table(table, folder / f"{stem}.parquet")


def read_explanation(path: Path) -> dict[str, Any]:
    """The explanation document of one instance, from its ``.json`` or ``.parquet`` file."""
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[PARQUET_METADATA_KEY])


def _aggregate(records: list[dict[str, Any]], method_fidelity: dict[str, Any]) -> tuple[dict, dict]:
    """summary.json and fidelity.json contents from the per-instance documents."""
    import numpy as np

    names = [p["name"] for p in records[0]["attributions"]["players"]]
    players = np.array([[p["attribution"] for p in r["attributions"]["players"]] for r in records])
    mean_abs = np.abs(players).mean(axis=0)
    order = np.argsort(-mean_abs, kind="stable")
    modality_names = list(records[0]["attributions"]["modalities"])
    modalities = {}
    for name in modality_names:
        abs_share = [r["attributions"]["modalities"][name]["abs_share"] for r in records]
        abs_share = [v for v in abs_share if v is not None]
        sums = [r["attributions"]["modalities"][name]["sum"] for r in records]
        modalities[name] = {
            "mean_abs_share": float(np.mean(abs_share)) if abs_share else None,
            "mean_sum": float(np.mean(sums)),
        }
    predicted: dict[str, int] = {}
    for r in records:
        key = str(r["prediction"]["class"])
        predicted[key] = predicted.get(key, 0) + 1
    first = records[0]
    summary = {
        "model": first["model"],
        "method": first["method"],
        "parameters": first["parameters"],
        "seed": first["seed"],
        "instances": len(records),
        "explained_output": first["prediction"]["explained_output"]["description"],
        "global_importance": {
            "statistic": "mean |attribution| over instances",
            "players": [{"name": names[i], "mean_abs_attribution": float(mean_abs[i])} for i in order],
        },
        "modalities": modalities,
        "predicted_classes": dict(sorted(predicted.items())),
        "mean_explained_output": float(
            np.mean([r["prediction"]["explained_output"]["value"] for r in records])
        ),
        "mean_baseline": float(np.mean([r["baseline"]["value"] for r in records])),
    }
    scores = np.array(
        [r["fidelity"]["score"] if r["fidelity"]["score"] is not None else 0.0 for r in records]
    )
    component_names = [k for k in records[0]["fidelity"] if k not in ("metric", "score")]
    fidelity = {
        "method": method_fidelity["method"],
        "metric": method_fidelity["metric"],
        "definition": method_fidelity["definition"],
        "aggregate": float(scores.mean()),
        "aggregate_statistic": "mean of the per-instance scores",
        "min": float(scores.min()),
        "components": {
            name: float(np.mean([r["fidelity"][name] for r in records])) for name in component_names
        },
        "instances": len(records),
        "per_instance": [
            {"inference_id": r["inference_id"], **{k: v for k, v in r["fidelity"].items() if k != "metric"}}
            for r in records
        ],
    }
    return summary, fidelity


def _plots(
    folder: Path, records: list[dict[str, Any]], summary: dict[str, Any], stems: list[str]
) -> list[str]:
    import numpy as np

    from include.explainers.plots import global_importance_png, saliency_png

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for record, stem in zip(records, stems, strict=True):
        attrs = record["attributions"]
        images = [k for k, v in attrs.items() if isinstance(v, dict) and "pixels" in v]
        if not images:
            continue
        block = attrs[images[0]]
        tab = attrs.get("features", {})
        prediction = record["prediction"]
        title = (
            f"{record['inference_id']}: predicted {prediction['class']} (p={prediction['probability']:.3f}); "
            f"{record['method']}, explained output {prediction['explained_output']['value']:.3f}"
        )
        saliency_png(
            folder / f"{stem}_saliency.png",
            np.asarray(block["pixels"]),
            np.asarray(block["attributions"]),
            title,
            list(tab),
            list(tab.values()),
        )
        written.append(f"plots/{stem}_saliency.png")
    players = summary["global_importance"]["players"]
    global_importance_png(
        folder / "global_importance.png",
        [p["name"] for p in players],
        [p["mean_abs_attribution"] for p in players],
        f"{summary['model']['name']} v{summary['model']['version']} - {summary['method']} "
        f"({summary['instances']} instances)",
    )
    written.append("plots/global_importance.png")
    return written


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 1024 if os.uname().sysname == "Linux" else peak / 2**20, 1)


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished outputs from ``tmp`` into ``out_dir`` (run_summary.json last)."""
    names = [n for n in OUTPUT_NAMES if n != "run_summary.json" and (tmp / n).exists()] + ["run_summary.json"]
    for name in OUTPUT_NAMES:
        target = out_dir / name
        if target.exists():
            if not overwrite:
                raise OutputExistsError(f"{target} appeared while the run was computing")
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    for name in names:
        os.replace(tmp / name, out_dir / name)


def _compute_and_write(plan: _Plan, tmp: Path) -> dict[str, Any]:
    import numpy as np

    from include.explainers.base import instance_seed, library_versions
    from include.explainers.device import describe_device
    from include.explainers.fidelity import evaluate_fidelity

    request, model = plan.request, plan.model
    versions = library_versions()
    inputs = _tensors(plan.shard, model)
    background = _tensors(plan.background, model)
    seeds = [instance_seed(request.seed, i) for i in plan.ids]

    started = time.perf_counter()
    rerun = None
    # Only the method's own evaluation runs on the chosen device; probes and outputs on the CPU.
    with model.on_device(plan.device):
        attributions = plan.explainer.explain(
            model, inputs, background, plan.params, request.seed, seeds, n_global=plan.n_total
        )
        plan.timings["explain_seconds"] = time.perf_counter() - started
        exact = attributions.per_instance.get("exact")
        if attributions.method == "KernelSHAP" and exact is not None and not bool(np.all(exact)):
            started = time.perf_counter()
            rerun_seeds = [instance_seed(request.seed + 1, i) for i in plan.ids]
            rerun = plan.explainer.explain(
                model, inputs, background, plan.params, request.seed, rerun_seeds, n_global=plan.n_total
            )
            plan.timings["stability_rerun_seconds"] = time.perf_counter() - started
    # The Captum-backed methods (gradient_family) define their own rerun (which seed moves) and
    # hand Captum's fidelity metrics a probe of the run.
    stability_rerun = getattr(plan.explainer, "stability_rerun", None)
    if stability_rerun is not None:
        started = time.perf_counter()
        rerun_seeds = [instance_seed(request.seed + 1, i) for i in plan.ids]
        rerun = stability_rerun(
            model,
            inputs,
            background,
            plan.params,
            request.seed,
            seeds,
            rerun_seeds,
            attributions,
            n_global=plan.n_total,
        )
        plan.timings["stability_rerun_seconds"] = time.perf_counter() - started
    probe = None
    fidelity_probe = getattr(plan.explainer, "fidelity_probe", None)
    if fidelity_probe is not None:
        probe = fidelity_probe(
            model, inputs, background, plan.params, request.seed, seeds, attributions, n_global=plan.n_total
        )
    started = time.perf_counter()
    fidelity = evaluate_fidelity(attributions, rerun, probe)
    plan.timings["fidelity_seconds"] = time.perf_counter() - started
    seconds_each = (plan.timings["explain_seconds"] + plan.timings.get("stability_rerun_seconds", 0.0)) / len(
        plan.ids
    )

    started = time.perf_counter()
    records = _instance_records(plan, attributions, fidelity, seconds_each, versions)
    explanations = tmp / "explanations"
    explanations.mkdir(parents=True)
    for record, stem in zip(records, plan.file_stems, strict=True):
        _write_explanation(explanations, stem, record, request.output_format, model)
    summary, fidelity_doc = _aggregate(records, fidelity)
    summary["details"] = _jsonable(attributions.details)
    written_plots = _plots(tmp / "plots", records, summary, plan.file_stems)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (tmp / "fidelity.json").write_text(json.dumps(fidelity_doc, indent=2, allow_nan=False) + "\n")
    plan.timings["write_seconds"] = time.perf_counter() - started

    lo, hi = plan.shard_range
    return {
        "status": "complete",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": records[0]["model"],
        "method": attributions.method,
        "parameters": attributions.resolved_params,
        "seed": request.seed,
        "output_format": request.output_format,
        "counts": {
            "inference_rows_total": plan.n_total,
            "instances": len(plan.ids),
            "background_rows": len(plan.background),
            "explanations": len(records),
            "plots": len(written_plots),
        },
        "shard": {
            "index": request.shard_index,
            "count": request.shard_count,
            "rows": [lo, hi],
            "first_id": plan.ids[0],
            "last_id": plan.ids[-1],
        },
        "fidelity": {
            "metric": fidelity_doc["metric"],
            "aggregate": fidelity_doc["aggregate"],
            "min": fidelity_doc["min"],
        },
        "runtime": {k: round(v, 4) for k, v in plan.timings.items()},
        "device": describe_device(plan.device, plan.device_requested),
        "peak_rss_mb": _peak_rss_mb(),
        "libraries": versions,
        "inputs": {
            "inference_path": str(request.inference_path),
            "background_path": str(request.background_path),
        },
    }


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and paths -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float):
        return _clean(value)
    if isinstance(value, Path):
        return str(value)
    return value


def run_explain(request: ExplainRequest) -> dict[str, Any]:
    """Explain the request's shard of inference rows; returns the run summary.

    Raises :class:`~include.explainers.errors.ExplainError` (before any work, writing nothing)
    for an unknown method, a method or parameter that does not fit the model, missing or
    non-numeric feature columns, NaN inputs, a wrong image shape, duplicate ids, a missing or
    unloadable model, or an ``out_dir`` already holding outputs.
    """
    started = time.perf_counter()
    plan = _prepare(request)
    out_dir = Path(request.out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".xac-tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        summary = _compute_and_write(plan, tmp)
        summary["runtime"]["total_seconds"] = round(time.perf_counter() - started, 4)
        summary = _jsonable(summary)
        (tmp / "run_summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        _publish(tmp, out_dir, request.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return summary


# ============================================================================ merging shards


def merge_shards(shard_dirs: list[Path], out_dir: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Combine the output folders of the shards of one job into one run folder.

    Explanations and saliency plots are copied; summary.json, fidelity.json and the global
    importance plot are recomputed from the per-instance documents (the same code as a single
    run, so a merged folder reads like one); run_summary.json lists the shards.
    """
    shard_dirs = [Path(d) for d in shard_dirs]
    summaries = []
    for folder in shard_dirs:
        path = folder / "run_summary.json"
        if not path.is_file():
            raise InputValidationError(f"shard folder {folder} has no run_summary.json (incomplete run)")
        summaries.append(json.loads(path.read_text()))
    keys = {
        (
            s["model"]["name"],
            s["model"]["version"],
            s["model"]["sha256"],
            s["method"],
            s["seed"],
            s["shard"]["count"],
        )
        for s in summaries
    }
    if len(keys) != 1:
        raise InputValidationError(
            "shard folders come from different jobs (model, method, seed or shard count differ)"
        )
    indices = sorted(s["shard"]["index"] for s in summaries)
    if len(set(indices)) != len(indices):
        raise InputValidationError(f"shard folders repeat shard indices: {indices}")
    out_dir = Path(out_dir)
    present = [n for n in OUTPUT_NAMES if (out_dir / n).exists()]
    if present and not overwrite:
        raise OutputExistsError(f"out_dir {out_dir} already holds outputs ({', '.join(present)})")

    ordered = sorted(zip(summaries, shard_dirs, strict=True), key=lambda pair: pair[0]["shard"]["index"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".xac-tmp-{uuid.uuid4().hex}"
    (tmp / "explanations").mkdir(parents=True)
    try:
        records, stems = [], []
        for _, folder in ordered:
            files = sorted((folder / "explanations").iterdir())
            for file in files:
                shutil.copy2(file, tmp / "explanations" / file.name)
                records.append(read_explanation(file))
                stems.append(file.stem)
            plots = folder / "plots"
            if plots.is_dir():
                (tmp / "plots").mkdir(exist_ok=True)
                for png in plots.glob("*_saliency.png"):
                    shutil.copy2(png, tmp / "plots" / png.name)
        order = sorted(range(len(records)), key=lambda k: records[k]["inference_id"])
        records = [records[k] for k in order]
        first_fidelity = json.loads((ordered[0][1] / "fidelity.json").read_text())
        summary, fidelity_doc = _aggregate(records, first_fidelity)
        from include.explainers.plots import global_importance_png

        (tmp / "plots").mkdir(exist_ok=True)
        players = summary["global_importance"]["players"]
        global_importance_png(
            tmp / "plots" / "global_importance.png",
            [p["name"] for p in players],
            [p["mean_abs_attribution"] for p in players],
            f"{summary['model']['name']} v{summary['model']['version']} - {summary['method']} "
            f"({summary['instances']} instances)",
        )
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        (tmp / "fidelity.json").write_text(json.dumps(fidelity_doc, indent=2, allow_nan=False) + "\n")
        first = ordered[0][0]
        run_summary = {
            "status": "complete",
            "merged_from": [str(folder) for _, folder in ordered],
            "shards": [s["shard"] for s, _ in ordered],
            "shards_complete": len(ordered) == first["shard"]["count"],
            "model": first["model"],
            "method": first["method"],
            "parameters": first["parameters"],
            "seed": first["seed"],
            "counts": {
                "instances": len(records),
                "inference_rows_total": first["counts"]["inference_rows_total"],
            },
            "fidelity": {k: fidelity_doc[k] for k in ("metric", "aggregate", "min")},
            "runtime": {"shard_total_seconds": [s["runtime"].get("total_seconds") for s, _ in ordered]},
            "peak_rss_mb": max(s.get("peak_rss_mb") or 0 for s, _ in ordered),
            "libraries": first["libraries"],
        }
        (tmp / "run_summary.json").write_text(json.dumps(run_summary, indent=2, allow_nan=False) + "\n")
        _publish(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return run_summary


__all__ = ["ExplainError", "ExplainRequest", "merge_shards", "read_explanation", "run_explain"]
