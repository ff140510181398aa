"""Create a minimal, working Feast feature repository from one Parquet file (``xac feast init``).

A team that has a Parquet file of features but no feature store yet should not have to learn
Feast's configuration format before it can use the provenance stage: :func:`init_feature_repo`
reads the file's *schema* (never its rows), turns every column except the entity key and the
event timestamp into a feature, and writes into ``out_dir``:

* ``feature_store.yaml`` — local provider, file offline store, SQLite online store, file
  registry, all under ``data/`` (paths relative to the repository, as Feast resolves them);
* ``definitions.py`` — plain Feast code (``Entity``, ``FileSource``, ``FeatureView`` with an
  explicit schema, ``FeatureService``): the file a person reads, edits, commits and runs
  ``feast apply`` on;
* ``.gitignore`` — ignores ``data/`` (registry and online store are derived state).

With ``apply=True`` the same objects are registered through Feast's public API
(``FeatureStore.apply``), so the repository can be queried at once.

The definitions are described once, as a small expression tree (:class:`_Call`, :class:`_Name`,
...). That one description is both *rendered* as the Python source of ``definitions.py`` and
*evaluated* against the real Feast classes to build the objects that are applied, so the file
a person edits and the registry that was written from it cannot drift apart.

Every check (file, columns, types, name, existing repository) runs before anything is
written; each file is written to a temporary file and renamed into place, and when a later
step fails (including ``apply``) whatever this call created is removed again. Heavy imports
(Feast, pyarrow, PyYAML) stay inside the functions: the ``xac`` CLI imports this module and
must start fast.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DEFAULT_TTL_DAYS",
    "FeastInitError",
    "FeastInitResult",
    "default_repo_name",
    "init_feature_repo",
]

DEFAULT_TTL_DAYS = 3650
MAX_TTL_DAYS = 36500  # Feast subtracts the ttl from pandas timestamps, which end in 1677.
FEATURE_STORE_YAML = "feature_store.yaml"
DEFINITIONS_PY = "definitions.py"
GITIGNORE = ".gitignore"
DATA_DIR = "data"
# Relative to the repository: Feast 0.67 resolves a relative file-registry path and a relative
# SQLite path against the repo path (FileRegistryStore, SqliteOnlineStore), not the cwd.
REGISTRY_PATH = f"{DATA_DIR}/registry.db"
ONLINE_STORE_PATH = f"{DATA_DIR}/online_store.db"

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_LINE_LENGTH = 88  # black / ruff format default, so the generated file is already "formatted"


class FeastInitError(ValueError):
    """The Parquet file, the options or the target folder do not allow creating the repository."""


@dataclass(frozen=True)
class FeastInitResult:
    """What :func:`init_feature_repo` wrote (absolute paths) and the names it registered."""

    repo_dir: Path
    feature_store_yaml: Path
    definitions_py: Path
    feature_service: str
    feature_view: str
    entity: str
    features: tuple[str, ...]
    # Where the file registry is (or will be, after `feast apply` when apply=False).
    registry_path: Path


# --------------------------------------------------------------------------------------------
# Schema analysis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RepoSpec:
    """Everything the generated repository depends on, derived from the schema and the options."""

    name: str
    source_path: str  # absolute
    source_file: str  # file name, for descriptions
    entity_column: str
    entity_value_type: str  # attribute of feast.ValueType
    entity_dtype: str  # attribute of feast.types
    timestamp_column: str
    features: tuple[tuple[str, str], ...]  # (column, attribute of feast.types), in file order
    ttl_days: int

    @property
    def source_name(self) -> str:
        return f"{self.name}_source"

    @property
    def view_name(self) -> str:
        return self.name

    @property
    def service_name(self) -> str:
        return self.name

    @property
    def entity_name(self) -> str:
        return self.entity_column


def default_repo_name(stem: str) -> str:
    """A Feast-safe project name from a file stem: lowercase ``[a-z0-9_]``, starting with a letter.

    Accents are folded to ASCII, every other run of characters becomes one ``_``; a stem that
    starts with a digit gets an ``fs_`` prefix, an empty result becomes ``features``.
    """
    ascii_text = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    if not name:
        return "features"
    return f"fs_{name}" if name[0].isdigit() else name


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise FeastInitError(
            f"invalid name {name!r}: a Feast project / feature service name here must use only "
            "lowercase letters, digits and underscores, and start with a letter"
        )
    return name


def _check_ttl(ttl_days: int | None) -> int:
    if ttl_days is None:
        return DEFAULT_TTL_DAYS
    if isinstance(ttl_days, bool) or not isinstance(ttl_days, int) or not 1 <= ttl_days <= MAX_TTL_DAYS:
        raise FeastInitError(f"invalid ttl_days {ttl_days!r}: expected an integer from 1 to {MAX_TTL_DAYS}")
    return ttl_days


def _read_schema(source: Path) -> pa.Schema:
    """The Parquet schema of ``source`` (footer only; no row is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not source.exists():
        raise FeastInitError(f"Parquet file not found: {source}")
    if not source.is_file():
        raise FeastInitError(f"not a file: {source} (expected one Parquet file)")
    try:
        return pq.read_schema(source)
    except (OSError, pa.ArrowException) as exc:
        raise FeastInitError(f"cannot read {source} as a Parquet file (not Parquet?): {exc}") from exc


def _feature_type(arrow_type: pa.DataType) -> str | None:
    """The feast.types name for a feature column's Arrow type; None when unsupported."""
    import pyarrow as pa

    t = pa.types
    if t.is_float32(arrow_type):
        return "Float32"
    if t.is_float64(arrow_type):
        return "Float64"
    if t.is_int8(arrow_type) or t.is_int16(arrow_type) or t.is_int32(arrow_type):
        return "Int32"
    if t.is_uint8(arrow_type) or t.is_uint16(arrow_type):
        return "Int32"
    if t.is_int64(arrow_type) or t.is_uint32(arrow_type):
        return "Int64"
    if t.is_boolean(arrow_type):
        return "Bool"
    if t.is_timestamp(arrow_type):
        return "UnixTimestamp"
    if _is_string(arrow_type):
        return "String"
    # pandas' "category" columns of strings are stored as dictionary<values=string>.
    if t.is_dictionary(arrow_type) and _is_string(arrow_type.value_type):
        return "String"
    return None


def _is_string(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    t = pa.types
    return bool(t.is_string(arrow_type) or t.is_large_string(arrow_type) or t.is_string_view(arrow_type))


def _entity_types(arrow_type: pa.DataType) -> tuple[str, str] | None:
    """(feast.ValueType name, feast.types name) of an entity key column; None when unsupported."""
    import pyarrow as pa

    if _is_string(arrow_type):
        return "STRING", "String"
    if pa.types.is_integer(arrow_type) and not pa.types.is_uint64(arrow_type):
        return "INT64", "Int64"
    return None


def _pandas_index_columns(schema: pa.Schema) -> set[str]:
    """Columns that pandas stored as the frame's index (``to_parquet`` with a non-default index).

    Feast's file offline store reads the file with Dask, which turns them back into the index,
    so they are not columns Feast can see.
    """
    metadata = schema.pandas_metadata or {}
    return {c for c in metadata.get("index_columns", []) if isinstance(c, str)}


def _analyse(
    schema: pa.Schema, source: Path, *, entity: str, timestamp: str, name: str, ttl: int
) -> _RepoSpec:
    import pyarrow as pa

    names = list(schema.names)
    listed = ", ".join(names) or "(none)"
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise FeastInitError(f"{source} has duplicated column names: {', '.join(duplicated)}")
    index_columns = _pandas_index_columns(schema)
    if entity == timestamp:
        raise FeastInitError(f"the entity and the timestamp column must differ (both {entity!r})")
    for role, column in (("entity", entity), ("timestamp", timestamp)):
        if column not in names:
            raise FeastInitError(f"{role} column {column!r} not found in {source}; columns: {listed}")
        if column in index_columns:
            raise FeastInitError(
                f"{role} column {column!r} is stored as the pandas index of {source}, which Feast "
                "does not read as a column; rewrite the file with df.reset_index().to_parquet(...)"
            )

    entity_type = schema.field(entity).type
    entity_types = _entity_types(entity_type)
    if entity_types is None:
        raise FeastInitError(
            f"entity column {entity!r} has type {entity_type}; an entity key must be a string or an integer"
        )
    timestamp_type = schema.field(timestamp).type
    if not pa.types.is_timestamp(timestamp_type):
        raise FeastInitError(
            f"timestamp column {timestamp!r} has type {timestamp_type}; it must be a timestamp "
            "(e.g. pandas datetime64[ns, UTC])"
        )

    feature_columns = [n for n in names if n not in (entity, timestamp) and n not in index_columns]
    if not feature_columns:
        raise FeastInitError(
            f"{source} has no feature columns: every column besides the entity {entity!r} and the "
            f"timestamp {timestamp!r} becomes a feature, and there is none (columns: {listed})"
        )
    features: list[tuple[str, str]] = []
    unsupported: list[str] = []
    for column in feature_columns:
        arrow_type = schema.field(column).type
        feast_type = _feature_type(arrow_type)
        if feast_type is None:
            unsupported.append(f"{column!r} ({arrow_type})")
        else:
            features.append((column, feast_type))
    if unsupported:
        raise FeastInitError(
            f"unsupported column type(s) in {source}: {', '.join(unsupported)}; supported feature "
            "types: float32/float64, integers (up to int64/uint32), string, bool, timestamp"
        )
    return _RepoSpec(
        name=name,
        source_path=str(source),
        source_file=source.name,
        entity_column=entity,
        entity_value_type=entity_types[0],
        entity_dtype=entity_types[1],
        timestamp_column=timestamp,
        features=tuple(features),
        ttl_days=ttl,
    )


# --------------------------------------------------------------------------------------------
# One description of the definitions, rendered as Python and evaluated into Feast objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Name:
    """A name in definitions.py: an imported symbol (dotted: ``ValueType.STRING``) or a variable."""

    name: str


@dataclass(frozen=True)
class _List:
    items: tuple[_Expr, ...]


@dataclass(frozen=True)
class _Call:
    func: str  # an imported symbol
    kwargs: tuple[tuple[str, _Expr], ...] = field(default=())


_Expr: TypeAlias = "str | int | bool | _Name | _List | _Call"

# Every symbol the definitions may use, and the module it is imported from.
_IMPORTS: Mapping[str, str] = {
    "timedelta": "datetime",
    "Entity": "feast",
    "FeatureService": "feast",
    "FeatureView": "feast",
    "Field": "feast",
    "FileSource": "feast",
    "ValueType": "feast",
    "Bool": "feast.types",
    "Float32": "feast.types",
    "Float64": "feast.types",
    "Int32": "feast.types",
    "Int64": "feast.types",
    "String": "feast.types",
    "UnixTimestamp": "feast.types",
}

# Variable names in definitions.py, in definition order (the order FeatureStore.apply gets).
_ENTITY_VAR, _SOURCE_VAR, _VIEW_VAR, _SERVICE_VAR = "entity", "source", "feature_view", "feature_service"


def _definitions(spec: _RepoSpec) -> list[tuple[str, _Call]]:
    """The assignments of definitions.py: (variable, Feast constructor call)."""
    entity = _Call(
        "Entity",
        (
            ("name", spec.entity_name),
            ("join_keys", _List((spec.entity_column,))),
            ("value_type", _Name(f"ValueType.{spec.entity_value_type}")),
            ("description", f"Entity key of {spec.source_file} (column {spec.entity_column!r})."),
        ),
    )
    source = _Call(
        "FileSource",
        (
            ("name", spec.source_name),
            ("path", spec.source_path),
            ("timestamp_field", spec.timestamp_column),
            ("description", f"The Parquet file {spec.source_file}."),
        ),
    )
    schema = _List(
        (
            _Call("Field", (("name", spec.entity_column), ("dtype", _Name(spec.entity_dtype)))),
            *(_Call("Field", (("name", column), ("dtype", _Name(dtype)))) for column, dtype in spec.features),
        )
    )
    view = _Call(
        "FeatureView",
        (
            ("name", spec.view_name),
            ("entities", _List((_Name(_ENTITY_VAR),))),
            ("ttl", _Call("timedelta", (("days", spec.ttl_days),))),
            ("schema", schema),
            ("source", _Name(_SOURCE_VAR)),
            ("online", True),
            ("description", f"Every feature column of {spec.source_file}, in file order."),
        ),
    )
    service = _Call(
        "FeatureService",
        (
            ("name", spec.service_name),
            ("features", _List((_Name(_VIEW_VAR),))),
            ("description", f"The features of {spec.source_file}, in file order."),
        ),
    )
    return [(_ENTITY_VAR, entity), (_SOURCE_VAR, source), (_VIEW_VAR, view), (_SERVICE_VAR, service)]


def _walk(expr: _Expr) -> Iterator[_Expr]:
    yield expr
    if isinstance(expr, _List):
        for item in expr.items:
            yield from _walk(item)
    elif isinstance(expr, _Call):
        for _, value in expr.kwargs:
            yield from _walk(value)


def _used_symbols(definitions: list[tuple[str, _Call]]) -> set[str]:
    used: set[str] = set()
    for _, call in definitions:
        for node in _walk(call):
            if isinstance(node, _Call):
                used.add(node.func)
            elif isinstance(node, _Name) and node.name.split(".")[0] in _IMPORTS:
                used.add(node.name.split(".")[0])
    return used


def _evaluate(expr: _Expr, namespace: Mapping[str, Any]) -> Any:
    if isinstance(expr, _Name):
        head, *attributes = expr.name.split(".")
        value = namespace[head]
        for attribute in attributes:
            value = getattr(value, attribute)
        return value
    if isinstance(expr, _List):
        return [_evaluate(item, namespace) for item in expr.items]
    if isinstance(expr, _Call):
        function: Callable[..., Any] = namespace[expr.func]
        return function(**{key: _evaluate(value, namespace) for key, value in expr.kwargs})
    return expr


def _build_objects(definitions: list[tuple[str, _Call]]) -> list[Any]:
    """Evaluate the definitions against the real imports, like running definitions.py would."""
    import importlib

    namespace: dict[str, Any] = {
        symbol: getattr(importlib.import_module(module), symbol) for symbol, module in _IMPORTS.items()
    }
    objects = []
    for variable, call in definitions:
        namespace[variable] = _evaluate(call, namespace)
        objects.append(namespace[variable])
    return objects


def _python_str(text: str) -> str:
    """A Python string literal, in double quotes where that needs no escaping (ruff's style)."""
    literal = repr(text)
    if literal.startswith("'") and '"' not in text:
        literal = f'"{literal[1:-1]}"'
    return literal


def _flat(expr: _Expr) -> str:
    if isinstance(expr, bool | int):
        return repr(expr)
    if isinstance(expr, str):
        return _python_str(expr)
    if isinstance(expr, _Name):
        return expr.name
    if isinstance(expr, _List):
        return "[" + ", ".join(_flat(item) for item in expr.items) + "]"
    return f"{expr.func}(" + ", ".join(f"{key}={_flat(value)}" for key, value in expr.kwargs) + ")"


def _render(expr: _Expr, indent: int, used: int) -> str:
    """``expr`` as Python source: on one line when it fits after ``used`` columns, else split."""
    flat = _flat(expr)
    if used + len(flat) + 1 <= _LINE_LENGTH or not isinstance(expr, _List | _Call):
        return flat
    inner = " " * (indent + 4)
    if isinstance(expr, _List):
        lines = [f"{inner}{_render(item, indent + 4, indent + 4)}," for item in expr.items]
        return "[\n" + "\n".join(lines) + "\n" + " " * indent + "]"
    lines = [
        f"{inner}{key}={_render(value, indent + 4, indent + 4 + len(key) + 1)}," for key, value in expr.kwargs
    ]
    return f"{expr.func}(\n" + "\n".join(lines) + "\n" + " " * indent + ")"


def _definitions_source(spec: _RepoSpec, definitions: list[tuple[str, _Call]]) -> str:
    used = _used_symbols(definitions)
    by_module: dict[str, list[str]] = {}
    for symbol in sorted(used):
        by_module.setdefault(_IMPORTS[symbol], []).append(symbol)
    stdlib = [f"from {m} import {', '.join(by_module[m])}" for m in sorted(by_module) if m == "datetime"]
    feast = [f"from {m} import {', '.join(by_module[m])}" for m in sorted(by_module) if m != "datetime"]
    header = (
        f'"""Feast definitions of the {spec.name!r} feature repository, generated by `xac feast init`.\n'
        "\n"
        "Source: one Parquet file; every column except the entity key and the event timestamp is a\n"
        "feature, in file order. Edit this file freely (descriptions, owners, tags, ttl, more views)\n"
        "and run `feast apply` in this folder to register the changes.\n"
        '"""\n'
    )
    body = [f"{variable} = {_render(call, 0, len(variable) + 3)}" for variable, call in definitions]
    return header + "\n" + "\n".join(stdlib) + "\n\n" + "\n".join(feast) + "\n\n" + "\n\n".join(body) + "\n"


def _feature_store_yaml(spec: _RepoSpec) -> str:
    import yaml

    config = {
        "project": spec.name,
        "provider": "local",
        "registry": {"registry_type": "file", "path": REGISTRY_PATH},
        "offline_store": {"type": "file"},
        "online_store": {"type": "sqlite", "path": ONLINE_STORE_PATH},
        "entity_key_serialization_version": 3,
        "auth": {"type": "no_auth"},
    }
    header = (
        "# Feast feature repository generated by `xac feast init`; the objects are in definitions.py.\n"
        "# Relative paths are resolved against this folder. data/ holds derived state (registry,\n"
        "# online store) and is git-ignored: `feast apply` here rebuilds it.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def _check_repo_config(text: str) -> None:
    """Load the rendered feature_store.yaml with Feast's own model before writing it."""
    import yaml
    from feast.repo_config import RepoConfig

    try:
        RepoConfig(**yaml.safe_load(text))
    except Exception as exc:  # pydantic's ValidationError and Feast's config errors
        raise FeastInitError(f"Feast rejects the generated feature_store.yaml: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Writing, with roll-back
# --------------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


class _Undo:
    """What this call created or changed, so that a failure can put the folder back as it was."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def created_dir(self, path: Path) -> None:
        self._steps.append(lambda: shutil.rmtree(path, ignore_errors=True))

    def created_file(self, path: Path) -> None:
        self._steps.append(lambda: path.unlink(missing_ok=True))

    def replaced_file(self, path: Path, previous: str) -> None:
        self._steps.append(lambda: _write_atomic(path, previous))

    def run(self) -> None:
        for step in reversed(self._steps):
            with contextlib.suppress(OSError):
                step()


def _write_file(path: Path, text: str, undo: _Undo) -> None:
    existed = path.exists()
    previous = path.read_text(encoding="utf-8") if existed else None
    _write_atomic(path, text)
    if previous is None:
        undo.created_file(path)
    else:
        undo.replaced_file(path, previous)


def _gitignore_text(path: Path) -> str | None:
    """The .gitignore with ``data/`` added; None when it already ignores it."""
    if not path.exists():
        return f"# Derived Feast state (registry, online store): rebuilt by `feast apply`.\n{DATA_DIR}/\n"
    current = path.read_text(encoding="utf-8")
    if any(
        line.strip() in (DATA_DIR, f"{DATA_DIR}/", f"/{DATA_DIR}", f"/{DATA_DIR}/")
        for line in current.splitlines()
    ):
        return None
    separator = "" if not current or current.endswith("\n") else "\n"
    return f"{current}{separator}{DATA_DIR}/\n"


def _make_dir(path: Path, undo: _Undo) -> None:
    missing = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    path.mkdir(parents=True, exist_ok=True)
    if missing:
        undo.created_dir(missing[-1])  # the topmost folder this call created


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def init_feature_repo(
    source: Path,
    *,
    entity: str,
    timestamp: str,
    out_dir: Path,
    name: str | None = None,
    ttl_days: int | None = None,
    apply: bool = True,
) -> FeastInitResult:
    """Write a Feast repository for the Parquet file ``source`` into ``out_dir`` (and apply it).

    ``entity`` is the entity key column (string or integer), ``timestamp`` the event timestamp
    column (a timestamp type); every other column becomes a feature, in file order. ``name``
    (default: made from the file stem) names the Feast project, the feature view and the
    feature service; ``ttl_days`` (default 3650) is the feature view's ttl. With ``apply`` the
    objects are registered in ``out_dir/data/registry.db`` with ``FeatureStore.apply``.

    Raises :class:`FeastInitError` for an unreadable file, missing or mistyped columns,
    unsupported feature types, an invalid name or ttl, or an existing ``feature_store.yaml``.
    """
    source = Path(source).expanduser().resolve()
    repo_dir = Path(out_dir).expanduser().resolve()
    repo_name = _check_name(name if name is not None else default_repo_name(source.stem))
    ttl = _check_ttl(ttl_days)
    spec = _analyse(_read_schema(source), source, entity=entity, timestamp=timestamp, name=repo_name, ttl=ttl)

    yaml_path = repo_dir / FEATURE_STORE_YAML
    definitions_path = repo_dir / DEFINITIONS_PY
    gitignore_path = repo_dir / GITIGNORE
    if repo_dir.exists() and not repo_dir.is_dir():
        raise FeastInitError(f"{repo_dir} exists and is not a folder")
    if yaml_path.exists():
        raise FeastInitError(
            f"{yaml_path} already exists: {repo_dir} is already a Feast repository (not overwritten)"
        )
    if definitions_path.exists():
        raise FeastInitError(f"{definitions_path} already exists (not overwritten); choose another folder")

    # Render and validate everything before the first write.
    definitions = _definitions(spec)
    try:
        objects = _build_objects(definitions)  # Feast's constructors check names and the schema
    except Exception as exc:
        raise FeastInitError(f"Feast rejects the definitions made from {source}: {exc}") from exc
    definitions_text = _definitions_source(spec, definitions)
    yaml_text = _feature_store_yaml(spec)
    _check_repo_config(yaml_text)
    gitignore_text = _gitignore_text(gitignore_path)

    undo = _Undo()
    try:
        _make_dir(repo_dir, undo)
        _write_file(definitions_path, definitions_text, undo)
        if gitignore_text is not None:
            _write_file(gitignore_path, gitignore_text, undo)
        # Last: feature_store.yaml is what makes the folder a Feast repository.
        _write_file(yaml_path, yaml_text, undo)
        if apply:
            _apply(repo_dir, objects, undo)
    except BaseException:
        undo.run()
        raise

    return FeastInitResult(
        repo_dir=repo_dir,
        feature_store_yaml=yaml_path,
        definitions_py=definitions_path,
        feature_service=spec.service_name,
        feature_view=spec.view_name,
        entity=spec.entity_name,
        features=tuple(column for column, _ in spec.features),
        registry_path=repo_dir / REGISTRY_PATH,
    )


def _apply(repo_dir: Path, objects: list[Any], undo: _Undo) -> None:
    """Register the objects like `feast apply` in ``repo_dir`` would, through the public API."""
    from feast import FeatureStore

    # The file registry creates its folder, the SQLite online store does not.
    _make_dir(repo_dir / DATA_DIR, undo)
    for relative in (REGISTRY_PATH, ONLINE_STORE_PATH):
        if not (repo_dir / relative).exists():
            undo.created_file(repo_dir / relative)
    FeatureStore(repo_path=str(repo_dir)).apply(objects)
