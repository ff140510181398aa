"""Model sources: how a user's own model is found, checked and loaded for explaining.

A model is a *source* plus a *location*, written ``SOURCE:LOCATION`` (``onnx:/models/risk.onnx``,
``xgboost:s3://bucket/risk/model.ubj``). Each source is one module of this package that declares
itself in one :class:`ModelSource` (its name, the file formats it takes, whether gradients flow
through what it loads, and its loader); :data:`SOURCE_MODULES` lists them. Every loader returns a
:class:`SourceModel`: a torch module the explanation methods evaluate (a differentiable network,
or a black box whose forward calls the real model in batches), what the artifact declares about
its inputs and outputs, the real model object where a method needs it (TreeSHAP hands XGBoost,
LightGBM and scikit-learn models to ``shap.TreeExplainer``), and a :class:`ModelOrigin` recording
what was loaded (URI, version, sha256 and size of every artifact byte) for the signed bundle.

Only formats that cannot run code when they are loaded are accepted: TorchScript and
``torch.export`` archives, ONNX, XGBoost JSON/UBJ, LightGBM text models and skops files (with an
explicit list of trusted types). Pickle, joblib, dill and ``torch.save`` checkpoints are refused
before anything is read by a loader (:func:`refuse_code_on_load`).

This module imports nothing heavy: the CLI parses ``--model`` with it while starting.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.explainers.errors import InputValidationError, ModelLoadError, ModelNotFoundError
from include.identifiers import model_version_problem

if TYPE_CHECKING:
    from torch import nn

    from include.explainers.model_store import LoadedModel

# Source name -> module declaring it (a ``SOURCE`` object). Adding a source = adding a module here.
SOURCE_MODULES: dict[str, str] = {
    "torchscript": "include.explainers.sources.torch_files",
    "torch-export": "include.explainers.sources.torch_files",
    "onnx": "include.explainers.sources.onnx_file",
    "xgboost": "include.explainers.sources.trees",
    "lightgbm": "include.explainers.sources.trees",
    "skops": "include.explainers.sources.trees",
    "oip": "include.explainers.sources.oip",
    "mlflow": "include.explainers.sources.mlflow_registry",
}

SAFE_FORMATS = (
    "TorchScript (torch.jit.save), torch.export (torch.export.save, .pt2), ONNX, XGBoost JSON/UBJ "
    "(Booster.save_model), LightGBM text (Booster.save_model), scikit-learn via skops (skops.io.dump), "
    "or serve it behind an Open Inference Protocol endpoint (oip:URL)"
)
# Suffixes of formats that execute code while loading (pickle and its relatives).
CODE_ON_LOAD_SUFFIXES = (".pkl", ".pickle", ".joblib", ".dill", ".cloudpickle", ".sav")
# The largest model artifact accepted (bytes); XAC_MAX_MODEL_BYTES overrides.
DEFAULT_MAX_MODEL_BYTES = 8 << 30
TASKS = ("binary", "multiclass", "regression")


def max_model_bytes() -> int:
    raw = os.environ.get("XAC_MAX_MODEL_BYTES")
    return int(raw) if raw else DEFAULT_MAX_MODEL_BYTES


@dataclass(frozen=True)
class ModelRef:
    """``SOURCE:LOCATION``: where a model comes from and how to read it."""

    source: str
    location: str

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``SOURCE:LOCATION``; a clear :class:`ModelLoadError` names the known sources."""
        source, sep, location = str(text).partition(":")
        if not sep or not location or source not in SOURCE_MODULES:
            raise ModelLoadError(
                f"--model {text!r}: expected SOURCE:LOCATION with SOURCE one of "
                f"{', '.join(known_sources())} (e.g. onnx:/models/risk.onnx)"
            )
        return cls(source, location)

    def __str__(self) -> str:
        return f"{self.source}:{self.location}"


@dataclass(frozen=True)
class ArtifactDigest:
    """One file that was loaded: its name within the model, its sha256 and size."""

    path: str
    sha256: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class ModelOrigin:
    """What was loaded, recorded in every explanation and in the signed bundle."""

    source: str
    uri: str
    artifacts: tuple[ArtifactDigest, ...]
    version: str | None = None
    format: str = ""
    details: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """The single artifact's sha256, or the sha256 of the sorted ``path sha256`` lines."""
        if len(self.artifacts) == 1:
            return self.artifacts[0].sha256
        lines = "".join(f"{a.path} {a.sha256}\n" for a in sorted(self.artifacts, key=lambda a: a.path))
        return hashlib.sha256(lines.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "uri": self.uri,
            "version": self.version,
            "format": self.format,
            "sha256": self.sha256,
            "artifacts": [a.to_json() for a in self.artifacts],
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class OutputSpec:
    """What the model predicts and on which scale its module returns it (see ExplainedModel.scores)."""

    task: str  # binary | multiclass | regression
    scale: str  # logits | probabilities | raw
    class_names: tuple[str, ...] = ()


@dataclass
class SourceModel:
    """A loaded model, ready to wrap in an :class:`~include.explainers.base.ExplainedModel`."""

    module: nn.Module
    differentiable: bool
    origin: ModelOrigin
    output: OutputSpec | None  # None: the artifact does not say; the caller must
    input_names: tuple[str, ...] | None = None  # as declared by the artifact, when it declares them
    n_inputs: int | None = None
    dtype: Any = None  # torch dtype the module takes (None: its parameters')
    native: Any = None  # the library's own model object (TreeSHAP reads it)
    # Sources that learn what the model returns from one call (an endpoint's output name):
    # called with the feature count when ``output`` is None.
    infer_output: Callable[[int], OutputSpec | None] | None = None


@dataclass(frozen=True)
class LoadOptions:
    """What a user may say about a model beyond its location."""

    task: str | None = None
    output_scale: str | None = None
    class_names: tuple[str, ...] = ()
    skops_trusted: tuple[str, ...] = ()  # skops: types trusted beyond skops' own defaults
    version: str | None = None
    headers: tuple[str, ...] = ()  # oip: "NAME: VALUE" request headers (VALUE "env:VAR" reads $VAR)
    endpoint_output: str | None = None  # oip: the output to request (e.g. predict_proba)
    connection: str | None = None  # oip: the Airflow connection with the URL and/or credentials
    model_name: str | None = None  # the catalogue model's name (an endpoint URL may end in it)


@dataclass(frozen=True)
class ModelSource:
    """One source, declared in one place by its module."""

    name: str
    description: str
    formats: str
    differentiable: bool  # whether gradient methods can run on what it loads
    load: Callable[[str, LoadOptions], SourceModel]


SOURCE_FIELDS = ("type", "uri", "trustedTypes", "output", "headers", "outputScale", "connection")
_CONN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class SourceProblem:
    """One problem of a model's ``source`` block in the model catalogue: its field and what is wrong."""

    field: str
    message: str


@dataclass(frozen=True)
class SourceDeclaration:
    """A catalogue model's ``source`` (include/configs/models.yaml): where its artifact lives.

    ``uri`` may hold ``{version}`` (the run's model version, checked against VERSION_PATTERN) and
    ``{xac_home}`` (the embedded default's state folder).
    """

    type: str
    uri: str
    trusted_types: tuple[str, ...] = ()
    output: str | None = None
    headers: tuple[str, ...] = ()
    output_scale: str | None = None
    connection: str | None = None  # oip: an Airflow connection (URL, credentials, headers)

    @classmethod
    def parse(cls, data: Any) -> tuple[SourceDeclaration | None, list[SourceProblem]]:
        """The declaration, or the problems found (each naming its field)."""
        if not isinstance(data, dict):
            return None, [SourceProblem("source", "expected a mapping with type and uri")]
        problems = [
            SourceProblem(f"source.{k}", f"unknown field; known: {', '.join(SOURCE_FIELDS)}")
            for k in data
            if k not in SOURCE_FIELDS
        ]
        kind, uri = data.get("type"), data.get("uri")
        if kind not in SOURCE_MODULES:
            problems.append(
                SourceProblem("source.type", f"{kind!r} is not one of {', '.join(known_sources())}")
            )
        connection = data.get("connection")
        if connection is not None and (not isinstance(connection, str) or not _CONN_ID.match(connection)):
            problems.append(SourceProblem("source.connection", "expected an Airflow connection id"))
            connection = None
        elif connection is not None and kind != "oip":
            problems.append(SourceProblem("source.connection", "only an oip (endpoint) source reads one"))
        if uri is None and kind == "oip":
            uri = ""  # the connection's URL, or the config's spec.integration.inferenceServiceRef (KServe)
        elif not isinstance(uri, str) or not uri.strip() or len(uri) > 2048:
            problems.append(
                SourceProblem("source.uri", "a path, s3:// URI or V2 URL of at most 2048 characters")
            )
        lists = {}
        for key in ("trustedTypes", "headers"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                problems.append(SourceProblem(f"source.{key}", "expected a list of strings"))
                value = []
            lists[key] = tuple(value)
        output, scale = data.get("output"), data.get("outputScale")
        if output is not None and (not isinstance(output, str) or not output):
            problems.append(SourceProblem("source.output", "expected an output name"))
        if scale is not None and scale not in ("logits", "probabilities", "raw"):
            problems.append(SourceProblem("source.outputScale", "one of logits, probabilities, raw"))
        if problems:
            return None, problems
        return (
            cls(str(kind), str(uri), lists["trustedTypes"], output, lists["headers"], scale, connection),
            [],
        )

    @property
    def from_inference_service(self) -> bool:
        """An endpoint without a URI or connection: the config's ``integration.inferenceServiceRef``
        names it."""
        return self.type == "oip" and not self.uri and not self.connection

    def location(self, version: str, xac_home: str) -> str:
        if self.from_inference_service:
            raise ModelLoadError(
                "this model is served by a KServe InferenceService: set spec.integration.inferenceServiceRef "
                "in the config (or a source.uri in the model catalogue)"
            )
        if self.type == "oip" and not self.uri:
            return ""  # the connection's URL (oip.endpoint_connection)
        problem = model_version_problem(version)
        if "{version}" in self.uri and problem:
            raise ModelLoadError(f"{problem}; it cannot name a location")
        return self.uri.replace("{version}", version).replace("{xac_home}", xac_home)


def known_sources() -> list[str]:
    return list(SOURCE_MODULES)


def get_source(name: str) -> ModelSource:
    if name not in SOURCE_MODULES:
        raise ModelLoadError(f"unknown model source {name!r}; known sources: {', '.join(known_sources())}")
    module = importlib.import_module(SOURCE_MODULES[name])
    return module.SOURCES[name]


def sha256_and_size(path: Path) -> ArtifactDigest:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return ArtifactDigest(path.name, digest.hexdigest(), size)


def refuse_code_on_load(path: Path, source: str) -> None:
    """Refuse a pickle-like file (a loader never sees it): it runs code when it is loaded."""
    if path.suffix.lower() in CODE_ON_LOAD_SUFFIXES:
        raise ModelLoadError(
            f"{path}: {path.suffix} files are pickles, which run code when loaded, and are never "
            f"accepted; save the model in a safe format: {SAFE_FORMATS}"
        )
    with path.open("rb") as handle:
        head = handle.read(2)
    # Pickle protocols 2-5 start with PROTO (0x80) and the protocol number.
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise ModelLoadError(
            f"{path} is a pickle (read as {source}); pickles run code when loaded and are never "
            f"accepted; save the model in a safe format: {SAFE_FORMATS}"
        )


def _bounded_file(path: Path, uri: str) -> Path:
    if not path.exists():
        raise ModelNotFoundError(f"model file {uri} not found")
    if not path.is_file():
        raise ModelLoadError(f"model location {uri} is not a file")
    size = path.stat().st_size
    if size > max_model_bytes():
        raise ModelLoadError(
            f"model file {uri} is {size} bytes, over the {max_model_bytes()}-byte limit (XAC_MAX_MODEL_BYTES)"
        )
    if size == 0:
        raise ModelLoadError(f"model file {uri} is empty")
    return path


def _local_copy(location: str, scratch: Path) -> Path:
    """``location`` as a local file: a path as is, an ``s3://`` object downloaded into ``scratch``."""
    if not location.startswith("s3://"):
        return _bounded_file(Path(location).expanduser(), location)
    from include.compliance import parse_s3_uri
    from include.storage import s3_client

    bucket, key = parse_s3_uri(location)
    client = s3_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore: 404, no credentials, unreachable endpoint
        raise ModelNotFoundError(f"model object {location} cannot be read: {exc}") from None
    if int(head.get("ContentLength", 0)) > max_model_bytes():
        raise ModelLoadError(
            f"model object {location} is {head['ContentLength']} bytes, over the "
            f"{max_model_bytes()}-byte limit (XAC_MAX_MODEL_BYTES)"
        )
    target = scratch / Path(key).name
    scratch.mkdir(parents=True, exist_ok=True)
    client.download_file(bucket, key, str(target))
    return _bounded_file(target, location)


@contextlib.contextmanager
def artifact_file(location: str, source: str) -> Iterator[tuple[Path, ArtifactDigest]]:
    """The artifact at ``location`` as a local file (an ``s3://`` object downloaded into a temporary
    folder, removed after), refused when it is a pickle, with its sha256 and size."""
    with tempfile.TemporaryDirectory(prefix="xac-model-") as scratch:
        path = _local_copy(location, Path(scratch))
        refuse_code_on_load(path, source)
        yield path, sha256_and_size(path)


def check_task(options: LoadOptions, inferred: OutputSpec) -> OutputSpec:
    """The user's ``task``/``output_scale``/``class_names`` over what the artifact says (or implies)."""
    if options.task is not None and options.task not in TASKS:
        raise ModelLoadError(f"task must be one of {', '.join(TASKS)}, got {options.task!r}")
    task = options.task or inferred.task
    same = inferred.task == task
    scale = options.output_scale or (
        inferred.scale if same else ("raw" if task == "regression" else "logits")
    )
    names = options.class_names or (inferred.class_names if same else ())
    return OutputSpec(task, scale, tuple(str(n) for n in names))


def model_from_source(
    ref: ModelRef | str,
    columns: Sequence[str],
    *,
    options: LoadOptions | None = None,
    entity: str = "row_id",
    name: str | None = None,
    version: str | None = None,
    expected_sha256: str | None = None,
) -> LoadedModel:
    """Load ``ref`` and check it against the tabular feature ``columns`` it is to be fed, in order.

    Raises :class:`ModelLoadError` (or :class:`ModelNotFoundError`) for a refused or unreadable
    artifact, and :class:`InputValidationError` naming both column lists when the inputs the
    artifact declares are not ``columns``.
    """
    import torch

    from include.explainers.base import Modality
    from include.explainers.model_store import LoadedModel

    ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
    options = options or LoadOptions()
    source = get_source(ref.source)
    loaded = source.load(ref.location, options)
    columns = tuple(str(c) for c in columns)
    check_inputs(loaded, columns, str(ref))
    inferred = loaded.output
    if inferred is None and loaded.infer_output is not None:
        inferred = loaded.infer_output(len(columns))
    n_out = _probe_width(loaded, len(columns))  # one forward of a zero row, whatever else we learn
    output = check_task(options, inferred or _output_from_width(n_out))
    if options.task is None and output.task == "binary" and n_out > 2:  # probabilities of K classes
        output = OutputSpec("multiclass", output.scale, output.class_names)
    if output.task == "multiclass":
        names = output.class_names or tuple(str(k) for k in range(n_out))
        if len(names) != n_out:
            raise ModelLoadError(f"{ref}: {len(names)} class names for a model with {n_out} outputs")
        output = OutputSpec(output.task, output.scale, names)
    elif output.task == "binary":
        if n_out not in (1, 2):
            raise ModelLoadError(f"{ref}: task binary, but the model returns {n_out} columns per row")
        output = OutputSpec(output.task, output.scale, output.class_names or ("0", "1"))
    origin = loaded.origin
    if expected_sha256 is not None and origin.sha256 != expected_sha256:
        raise ModelLoadError(
            f"{ref}: the loaded model has sha256 {origin.sha256}, expected {expected_sha256} "
            "(the artifact changed after the run staged it)"
        )
    metadata = {
        "name": name or Path(origin.uri).stem or ref.source,
        "version": version or origin.version or origin.sha256[:12],
        "architecture": f"{ref.source} model",
        "source": origin.to_json(),
        "inputs": {"entity": entity, "modalities": []},
        "task": output.task,
        "output_scale": output.scale,
        "class_names": list(output.class_names),
        "differentiable": loaded.differentiable,
        "sha256": origin.sha256,
    }
    modality = Modality("tabular", "tabular", columns, (len(columns),))
    metadata["inputs"]["modalities"] = [modality.to_json()]
    dtype = loaded.dtype
    return LoadedModel(
        name=str(metadata["name"]),
        version=str(metadata["version"]),
        module=loaded.module,
        modalities=[modality],
        task=output.task,
        class_names=list(output.class_names),
        entity=entity,
        sha256=origin.sha256,
        metadata=metadata,
        path=Path(origin.uri),
        origin=origin,
        output_scale=output.scale,
        dtype=dtype if dtype is not None else torch.float64,
        native=loaded.native,
    )


def check_inputs(loaded: SourceModel, columns: tuple[str, ...], where: str) -> None:
    """The inputs the artifact declares must be the feed's columns, in order."""
    if loaded.input_names is not None and tuple(loaded.input_names) != columns:
        raise InputValidationError(
            f"{where}: the model's inputs are not the data's feature columns (same names, same order).\n"
            f"  model inputs ({len(loaded.input_names)}): {', '.join(loaded.input_names)}\n"
            f"  feature columns ({len(columns)}): {', '.join(columns)}"
        )
    if loaded.n_inputs is not None and loaded.n_inputs != len(columns):
        raise InputValidationError(
            f"{where}: the model takes {loaded.n_inputs} input features, the data has {len(columns)} "
            f"feature columns ({', '.join(columns)})"
        )


def _probe_width(loaded: SourceModel, n_features: int) -> int:
    """Columns the module returns per row (one forward of a zero row)."""
    import torch

    dtype = loaded.dtype if loaded.dtype is not None else torch.float64
    try:
        with torch.inference_mode():
            out = loaded.module(torch.zeros((1, n_features), dtype=dtype))
    except Exception as exc:  # the model's own error for inputs it does not take
        hint = (
            " (export it with a dynamic batch dimension: "
            "dynamic_shapes={<input>: {0: torch.export.Dim('batch')}})"
            if loaded.origin.source == "torch-export" and "Guard failed" in str(exc)
            else ""
        )
        raise ModelLoadError(
            f"{loaded.origin.uri}: the model fails on a row of {n_features} features: {exc}{hint}"
        ) from None
    if out.ndim > 2 or out.shape[0] != 1:
        raise ModelLoadError(
            f"{loaded.origin.uri}: the model returns shape {tuple(out.shape)} for one row; expected (1, K)"
        )
    return int(out.reshape(1, -1).shape[1])


def _output_from_width(width: int) -> OutputSpec:
    """The artifact does not say what it predicts: one column is a regression, several logits."""
    if width == 1:
        return OutputSpec("regression", "raw")
    return OutputSpec("multiclass", "logits")


__all__ = [
    "SAFE_FORMATS",
    "SOURCE_MODULES",
    "ArtifactDigest",
    "LoadOptions",
    "ModelOrigin",
    "ModelRef",
    "ModelSource",
    "OutputSpec",
    "SourceDeclaration",
    "SourceModel",
    "get_source",
    "known_sources",
    "model_from_source",
    "refuse_code_on_load",
]
