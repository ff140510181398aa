"""The model store: ``models_dir()/<name>/<version>/model.pt`` + ``model.json``.

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
    ref = ModelRef(source.type, location or source.location(str(version), str(xac_home())))
    options = LoadOptions(
        task=entry.task or None,
        output_scale=source.output_scale,
        class_names=entry.class_names,
        skops_trusted=source.trusted_types,
        version=str(version),
        headers=source.headers,
        endpoint_output=source.output,
    )
    return model_from_source(
        ref,
        declared_columns,
        options=options,
        entity=entry.entity,
        name=name,
        version=str(version),
        expected_sha256=expected_sha256,
    )


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
