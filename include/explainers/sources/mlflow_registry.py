"""Models from an MLflow registry or run: ``mlflow:models:/NAME/VERSION``, ``mlflow:models:/NAME@ALIAS``
or ``mlflow:runs:/RUN_ID/PATH``.

The URI is resolved with the MLflow client against ``MLFLOW_TRACKING_URI`` (and
``MLFLOW_REGISTRY_URI`` when the registry is elsewhere); on the embedded default, without either,
against a local store, ``sqlite:///$XAC_HOME/mlflow/mlflow.db``. The model's artifacts are
downloaded (bounded by ``XAC_MAX_MODEL_BYTES`` in all) and its ``MLmodel`` file read as YAML; the
flavor then picks one of this package's loaders, so nothing MLflow stored is ever unpickled:

* ``onnx`` -> the ONNX loader; ``xgboost`` (JSON/UBJ) and ``lightgbm`` (text Booster) -> the tree
  loaders; ``sklearn`` saved with skops (MLflow 3's default) -> the skops loader, trusting only
  the types the catalogue or ``--skops-trust`` lists (never the ``skops_trusted_types`` MLflow
  recorded); ``pytorch`` saved as a ``torch.export`` program (``data/model.pt2``) -> the
  torch-export loader. A pickled flavor (cloudpickle sklearn, ``model.pth``, a LightGBM
  scikit-learn wrapper) is refused naming the formats that are accepted.

What the bundle records: the registry URI, model name, version, alias, run id, flavor, and the
sha256 and size of every artifact file downloaded.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from include.explainers.errors import ModelLoadError, ModelNotFoundError
from include.explainers.sources import (
    SAFE_FORMATS,
    ArtifactDigest,
    LoadOptions,
    ModelOrigin,
    ModelSource,
    SourceModel,
    get_source,
    max_model_bytes,
    sha256_and_size,
)

_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")
_RUNS = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/(?P<path>[A-Za-z0-9._/-]+)$")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the embedded default's local store under ``$XAC_HOME``."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    from include.paths import xac_home

    folder = xac_home() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _resolve(location: str, client: Any) -> dict[str, str]:
    """Registry facts of ``location`` (name, version, alias, run id); errors name what is missing."""
    from mlflow.exceptions import MlflowException

    models, runs = _MODELS.match(location), _RUNS.match(location)
    try:
        if models:
            name = models.group("name")
            if models.group("alias"):
                found = client.get_model_version_by_alias(name, models.group("alias"))
            else:
                found = client.get_model_version(name, models.group("version"))
            return {
                "model": name,
                "version": str(found.version),
                "alias": models.group("alias") or "",
                "run_id": str(found.run_id or ""),
            }
        if runs:
            client.get_run(runs.group("run"))
            return {"run_id": runs.group("run"), "path": runs.group("path")}
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"mlflow:{location}: not found in the registry at {_registry_uri()}: {exc.message}"
        ) from None
    raise ModelLoadError(
        f"mlflow:{location}: expected models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH"
    )


def _registry_uri() -> str:
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def _flavor(mlmodel: dict[str, Any], root: Path, location: str) -> tuple[str, Path]:
    """(our source, the artifact file) for the first flavor this package can load safely."""
    flavors = mlmodel.get("flavors") or {}
    if "onnx" in flavors:
        return "onnx", root / str(flavors["onnx"].get("data", "model.onnx"))
    if "xgboost" in flavors:
        spec = flavors["xgboost"]
        path = root / str(spec.get("data", ""))
        if str(spec.get("model_format", "")) not in ("json", "ubj"):
            raise ModelLoadError(
                f"mlflow:{location}: an XGBoost model saved as {spec.get('model_format')!r}; log it with "
                "mlflow.xgboost.log_model(..., model_format='ubj' or 'json')"
            )
        return "xgboost", path
    if "lightgbm" in flavors:
        spec = flavors["lightgbm"]
        if "sklearn" in str(spec.get("model_class", "")):
            raise ModelLoadError(
                f"mlflow:{location}: a LightGBM scikit-learn wrapper is stored as a pickle; log the "
                "Booster (model.booster_) instead"
            )
        return "lightgbm", root / str(spec.get("data", "model.lgb"))
    if "sklearn" in flavors:
        spec = flavors["sklearn"]
        if spec.get("serialization_format") != "skops":
            raise ModelLoadError(
                f"mlflow:{location}: a scikit-learn model serialised with "
                f"{spec.get('serialization_format')!r} (a pickle) is never loaded; log it with "
                f"serialization_format='skops'. Safe formats: {SAFE_FORMATS}"
            )
        return "skops", root / str(spec.get("pickled_model", "model.skops"))
    if "pytorch" in flavors:
        data = root / str(flavors["pytorch"].get("model_data", "data"))
        exported = sorted(data.glob("*.pt2")) if data.is_dir() else []
        if exported:
            return "torch-export", exported[0]
        raise ModelLoadError(
            f"mlflow:{location}: a PyTorch model saved as a pickle (model.pth) is never loaded; log a "
            "torch.export program (MLflow 3 does with an input_example)"
        )
    raise ModelLoadError(
        f"mlflow:{location}: no flavor this runtime loads safely among {', '.join(flavors) or 'none'} "
        "(onnx, xgboost, lightgbm, sklearn with skops, pytorch exported)"
    )


def load_mlflow(location: str, options: LoadOptions) -> SourceModel:
    import mlflow
    import yaml
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a task log, not a terminal
    uri = tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=_registry_uri())
    facts = _resolve(location, client)
    with tempfile.TemporaryDirectory(prefix="xac-mlflow-") as scratch:
        try:
            root = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=scratch, tracking_uri=uri)
            )
        except Exception as exc:  # MlflowException, botocore, OSError: the artifact store failed
            raise ModelNotFoundError(f"mlflow:{location}: cannot download its artifacts: {exc}") from None
        files = sorted(p for p in root.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        if total > max_model_bytes():
            raise ModelLoadError(f"mlflow:{location}: {total} bytes of artifacts, over XAC_MAX_MODEL_BYTES")
        if not (root / "MLmodel").is_file():
            raise ModelLoadError(
                f"mlflow:{location}: no MLmodel file among its artifacts (not an MLflow model)"
            )
        try:
            mlmodel = yaml.safe_load((root / "MLmodel").read_text()) or {}
        except yaml.YAMLError as exc:
            raise ModelLoadError(f"mlflow:{location}: MLmodel is not valid YAML: {exc}") from None
        source, artifact = _flavor(mlmodel, root, location)
        if not artifact.is_file():
            raise ModelLoadError(f"mlflow:{location}: the {source} flavor's file {artifact.name} is missing")
        digests = tuple(
            ArtifactDigest(str(p.relative_to(root)), d.sha256, d.bytes)
            for p in files
            for d in (sha256_and_size(p),)
        )
        loaded = get_source(source).load(str(artifact), options)
    version = facts.get("version") or options.version
    loaded.origin = ModelOrigin(
        "mlflow",
        location,
        digests,
        version,
        f"MLflow model, {source} flavor ({loaded.origin.format})",
        {
            "registry_uri": _registry_uri(),
            "flavor": source,
            "mlflow_version": str(mlmodel.get("mlflow_version", "")),
            **{k: v for k, v in facts.items() if v},
            **loaded.origin.details,
        },
    )
    return loaded


SOURCES = {
    "mlflow": ModelSource(
        "mlflow",
        "A model in an MLflow registry or run (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN/PATH); "
        "its flavor picks the loader (onnx, xgboost, lightgbm, sklearn via skops, pytorch exported).",
        "MLflow model",
        True,  # as the flavor's: a torch.export program takes every method, the others are refused
        load_mlflow,
    ),
}
