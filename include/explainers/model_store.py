"""The model store: ``<store>/<name>/<version>/model.pt`` + ``model.json``.

The store is a folder (``models_dir()``, under ``$XAC_HOME``: the embedded default) or, for a
deployment with several workers, an object-storage prefix named by ``XAC_MODEL_STORE``
(``s3://bucket/models``): a run then pins the version's ``model.pt`` by the sha256 its ``model.json``
records and every explainer process fetches that copy (no worker's disk is read). :func:`push_model`
copies a local version there.

A PyTorch module of the team's own code with its weights: for the methods that need the module's
structure (DeepSHAP's rules, attention rollout's attention layers, ``torch.compile``), which an
exported or scripted artifact (:mod:`include.explainers.sources`) does not keep.

``model.pt`` holds only a ``state_dict`` (loaded with ``weights_only=True``: a model file is
never allowed to run code). ``model.json`` says how to rebuild the module (the importable module
that defines the architecture, the class name and its constructor kwargs: code from the team's
repository, never from the artifact), how to feed it (the input spec: modalities and their columns in order),
what it predicts (task, class names), how well (held-out metrics) and which bytes were stored
(sha256 of ``model.pt``, checked on every load so a swapped file cannot go unnoticed into a
signed compliance bundle).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.digests import sha256_file
from include.explainers.base import ExplainedModel, Modality
from include.explainers.catalogue import catalogue_entries, known_models
from include.explainers.errors import ModelLoadError, ModelNotFoundError
from include.identifiers import model_version_problem
from include.paths import models_dir

if TYPE_CHECKING:
    from torch import nn

    from include.explainers.sources import ModelOrigin

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "ModelNotFoundError",
    "catalogue_entries",
    "known_models",
    "load_model",
    "model_dir",
    "model_path",
    "save_model",
]


def model_dir(name: str, version: str) -> Path:
    """``models_dir()/<name>/<version>``; a name or version that could leave that folder is refused."""
    for what, value in (("model name", name), ("model version", str(version))):
        if model_version_problem(value):  # the same rule for both: one safe path segment
            raise ModelLoadError(
                f"{what} {value!r} cannot name a model store folder: {model_version_problem(value)}"
            )
    return models_dir() / name / str(version)


MAX_MODEL_JSON_BYTES = 1 << 20


def remote_model_store() -> str | None:
    """``XAC_MODEL_STORE`` (an ``s3://`` prefix), or None for the local folder."""
    value = os.environ.get("XAC_MODEL_STORE", "").strip()
    if not value:
        return None
    if not value.startswith("s3://") or len(value) <= len("s3://"):
        raise ModelLoadError(f"XAC_MODEL_STORE={value!r}: expected an s3://bucket/prefix URI")
    return value.rstrip("/")


def remote_model_uri(name: str, version: str) -> str:
    """``<XAC_MODEL_STORE>/<name>/<version>/`` (names checked as for a folder)."""
    model_dir(name, version)  # the same safe-segment rule as the local store
    store = remote_model_store()
    if store is None:
        raise ModelLoadError("XAC_MODEL_STORE is not set: the model store is the local folder")
    return f"{store}/{name}/{version}/"


def remote_model_sha256(name: str, version: str, s3_client: Any) -> str:
    """The sha256 of ``model.pt`` that the remote store's ``model.json`` records (read, bounded)."""
    from include.compliance import parse_s3_uri

    uri = remote_model_uri(name, version) + "model.json"
    bucket, key = parse_s3_uri(uri)
    try:
        response = s3_client.get_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore's errors: missing object, no credentials, unreachable
        raise ModelNotFoundError(f"model {name!r} version {version!r}: {uri} not readable: {exc}") from None
    raw = response["Body"].read(MAX_MODEL_JSON_BYTES + 1)
    try:
        if len(raw) > MAX_MODEL_JSON_BYTES:
            raise ValueError(f"over {MAX_MODEL_JSON_BYTES} bytes")
        recorded = json.loads(raw)["sha256"]
        if not isinstance(recorded, str) or not re.fullmatch(r"[0-9a-f]{64}", recorded):
            raise ValueError(f"sha256 {recorded!r} is not a hex digest")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model {name!r} version {version!r}: unreadable {uri}: {exc}") from None
    return recorded


def push_model(name: str, version: str, s3_client: Any) -> str:
    """Copy a version of the local store to ``XAC_MODEL_STORE`` (``model.json`` last: a reader that
    finds it finds the weights); returns its URI."""
    from include.compliance import parse_s3_uri

    folder = model_dir(name, version)
    weights, meta = folder / "model.pt", folder / "model.json"
    if not weights.is_file() or not meta.is_file():
        raise ModelNotFoundError(f"model {name!r} version {version!r} is not in the local store ({folder})")
    uri = remote_model_uri(name, version)
    bucket, prefix = parse_s3_uri(uri)
    for path in (weights, meta):
        s3_client.upload_file(str(path), bucket, prefix.rstrip("/") + "/" + path.name)
    return uri


def model_path(name: str, version: str) -> Path:
    return model_dir(name, version) / "model.pt"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file + rename so a crash never leaves a truncated artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class LoadedModel:
    """A model ready to explain, with everything its ``model.json`` records."""

    name: str
    version: str
    module: nn.Module
    modalities: list[Modality]
    task: str
    class_names: list[str]
    entity: str
    sha256: str
    metadata: dict[str, Any]
    path: Path
    # Models from a source (include.explainers.sources): what was loaded, how the module's outputs
    # read, the dtype it takes, and the library's own model object (TreeSHAP reads it).
    origin: ModelOrigin | None = None
    output_scale: str = "logits"
    dtype: Any = None
    native: Any = None

    @property
    def feature_columns(self) -> list[str]:
        return [c for m in self.modalities for c in m.columns]

    def explained(self) -> ExplainedModel:
        return ExplainedModel(
            self.module,
            self.modalities,
            self.task,
            self.class_names,
            differentiable=bool(self.metadata.get("differentiable", True)),
            output_scale=self.output_scale,
            dtype=self.dtype,
        )


def save_model(
    name: str,
    version: str,
    module: nn.Module,
    *,
    architecture: str,
    kwargs: dict[str, Any],
    modalities: Sequence[Modality],
    task: str,
    class_names: Sequence[str],
    metrics: dict[str, Any],
    entity: str,
    differentiable: bool = True,
    code: str,
) -> Path:
    """Store ``module``'s state_dict and its metadata; returns the ``model.pt`` path.

    ``code`` is the importable module defining ``architecture`` (e.g. ``examples.models``).
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    data = buffer.getvalue()
    target = model_path(name, version)
    _atomic_write(target, data)
    catalogue = catalogue_entries().get(name)
    metadata = {
        "name": name,
        "version": str(version),
        "architecture": architecture,
        "code": code,
        "kwargs": kwargs,
        "inputs": {"entity": entity, "modalities": [m.to_json() for m in modalities]},
        "task": task,
        "class_names": list(class_names),
        "positive_class": class_names[-1] if task == "binary" else None,
        "differentiable": differentiable,
        "feature_service": catalogue.feature_service if catalogue else None,
        "metrics": metrics,
        "sha256": hashlib.sha256(data).hexdigest(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }
    _atomic_write(target.with_name("model.json"), (json.dumps(metadata, indent=2) + "\n").encode())
    return target


def is_source_model(name: str) -> bool:
    """Whether the catalogue declares ``name`` with a ``source`` (a user's own artifact)."""
    entry = catalogue_entries().get(name)
    return entry is not None and (entry.source is not None or bool(entry.source_problems))


def load_source_model(
    name: str,
    version: str,
    columns: Sequence[str],
    *,
    location: str | None = None,
    expected_sha256: str | None = None,
) -> LoadedModel:
    """Load catalogue model ``name`` from its declared source, fed ``columns`` in order.

    ``location`` replaces the declared one (a pod reads the copy the run staged in object storage;
    ``expected_sha256`` then pins its bytes).
    """
    from include.explainers.sources import LoadOptions, ModelRef, model_from_source
    from include.paths import xac_home

    entry = catalogue_entries()[name]
    if entry.source is None:
        problems = "; ".join(f"{p.field}: {p.message}" for p in entry.source_problems)
        raise ModelLoadError(f"model {name!r}: invalid source in the model catalogue: {problems}")
    source = entry.source
    declared_columns = entry.inputs or tuple(columns)
    # A KServe endpoint declared without a URI has no location of its own: the caller passes its URL.
    declared = None if source.from_inference_service else source.location(str(version), str(xac_home()))
    ref = ModelRef(source.type, location or declared or "")
    options = LoadOptions(
        task=entry.task or None,
        output_scale=source.output_scale,
        class_names=entry.class_names,
        skops_trusted=source.trusted_types,
        version=str(version),
        headers=source.headers,
        endpoint_output=source.output,
        connection=source.connection,
        model_name=name,
    )
    loaded = model_from_source(
        ref,
        declared_columns,
        options=options,
        entity=entry.entity,
        name=name,
        version=str(version),
        expected_sha256=expected_sha256,
    )
    if declared is not None and location is not None and location != declared and loaded.origin is not None:
        # The record names the declared artifact (the staged copy is removed after publishing); the
        # digests are of the bytes actually read, which the run pinned to the declared file's.
        from dataclasses import replace

        loaded.origin = replace(
            loaded.origin, uri=declared, details={**loaded.origin.details, "read_from": location}
        )
        loaded.metadata["source"] = loaded.origin.to_json()
    return loaded


_CODE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def build_architecture(code: Any, architecture: str, kwargs: dict[str, Any], where: Path) -> nn.Module:
    """``code.architecture(**kwargs)``: the class, imported from the team's code, must be an nn.Module."""
    from torch import nn

    if not isinstance(code, str) or not _CODE_PATH.match(code):
        raise ModelLoadError(
            f"{where}: 'code' must name the importable module that defines {architecture!r} (e.g. "
            "examples.models); models stored before it was recorded are retrained by `xac samples prepare`"
        )
    try:
        cls = getattr(importlib.import_module(code), architecture)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"{where}: cannot import {code}.{architecture}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"{where}: {code}.{architecture} is not a torch.nn.Module class")
    return cls(**kwargs)


def load_model(name: str, version: str) -> LoadedModel:
    """Load ``name``/``version`` from the store.

    Raises :class:`ModelNotFoundError` (naming the model, version and path looked at) when the
    artifact is missing and :class:`ModelLoadError` when it is unreadable, does not match its
    recorded sha256 or does not fit its recorded architecture.
    """
    import torch

    folder = model_dir(name, version)
    weights, meta_path = folder / "model.pt", folder / "model.json"
    if not weights.is_file() or not meta_path.is_file():
        hint = (
            " (the sample models are trained by `xac samples prepare`, which `make demo` runs)"
            if name in catalogue_entries()
            else f" (known models: {', '.join(known_models())})"
        )
        raise ModelNotFoundError(
            f"model {name!r} version {version!r} not found: looked for {weights} and {meta_path}{hint}"
        )
    try:
        metadata = json.loads(meta_path.read_text())
        modalities = [Modality.from_json(m) for m in metadata["inputs"]["modalities"]]
        architecture, kwargs = metadata["architecture"], dict(metadata["kwargs"])
        code = metadata.get("code")
        recorded_sha = metadata["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model {name!r} version {version!r}: unreadable {meta_path}: {exc}") from exc
    actual_sha = sha256_file(weights)
    if actual_sha != recorded_sha:
        raise ModelLoadError(
            f"model {name!r} version {version!r}: {weights} has sha256 {actual_sha}, "
            f"but model.json records {recorded_sha}; the artifact was modified or is corrupt"
        )
    try:
        module = build_architecture(code, architecture, kwargs, meta_path)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except ModelLoadError:
        raise
    except Exception as exc:  # torch raises many types (pickle, RuntimeError on key mismatch, ...)
        raise ModelLoadError(
            f"model {name!r} version {version!r}: cannot load {weights} as {architecture}({kwargs}): {exc}"
        ) from exc
    module.eval()
    return LoadedModel(
        name=name,
        version=str(version),
        module=module,
        modalities=modalities,
        task=str(metadata["task"]),
        class_names=[str(c) for c in metadata["class_names"]],
        entity=str(metadata["inputs"]["entity"]),
        sha256=actual_sha,
        metadata=metadata,
        path=weights,
    )
