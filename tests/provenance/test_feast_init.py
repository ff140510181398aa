"""`xac feast init`: a working Feast repository from one Parquet file, against real Feast.

One repository is generated and applied per module (Feast's import and first apply are the
slow part); the error cases fail before anything is written and use their own folders.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from include.provenance.feast_init import (
    FeastInitError,
    FeastInitResult,
    default_repo_name,
    init_feature_repo,
)

T0 = pd.Timestamp("2024-03-01 08:00", tz="UTC")
FEATURES = ("balance", "orders_30d", "score", "utilization")


def _customer_frame() -> pd.DataFrame:
    """Three customers at T0 and T0+1h, plus one row of c1 two days later (the future)."""
    return pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3", "c1", "c2", "c3", "c1"],
            "balance": [1.0, 2.0, 3.0, 11.0, 12.0, 13.0, 99.0],
            "orders_30d": np.array([1, 2, 3, 4, 5, 6, 7], dtype="int64"),
            # The timestamp sits between features: it must not become one, nor shift the order.
            "event_timestamp": [T0] * 3 + [T0 + pd.Timedelta(hours=1)] * 3 + [T0 + pd.Timedelta(days=2)],
            "score": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], dtype="float32"),
            "utilization": [0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75],
        }
    )


def _write(path: Path, frame: pd.DataFrame, *, index: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=index)
    return path


@pytest.fixture(scope="module")
def features_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("source") / "Customer Features.parquet", _customer_frame())


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory, features_file: Path) -> FeastInitResult:
    out_dir = tmp_path_factory.mktemp("repos") / "customers"  # missing: init creates it
    return init_feature_repo(
        features_file, entity="customer_id", timestamp="event_timestamp", out_dir=out_dir
    )


def _store(result: FeastInitResult) -> Any:
    from feast import FeatureStore

    return FeatureStore(repo_path=str(result.repo_dir))


def _tree(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------
# The generated repository
# --------------------------------------------------------------------------------------------


def test_result_and_files(applied: FeastInitResult, features_file: Path) -> None:
    repo = applied.repo_dir
    assert applied.repo_dir.is_absolute()
    assert applied.feature_store_yaml == repo / "feature_store.yaml"
    assert applied.definitions_py == repo / "definitions.py"
    assert applied.registry_path == repo / "data" / "registry.db"
    assert applied.registry_path.is_file()
    assert (repo / "data" / "online_store.db").is_file()
    # Name from the stem "Customer Features"; view and service share it; entity = key column.
    assert (applied.feature_service, applied.feature_view, applied.entity) == (
        "customer_features",
        "customer_features",
        "customer_id",
    )
    assert applied.features == FEATURES
    assert "data/" in (repo / ".gitignore").read_text().splitlines()
    # No temporary file is left behind.
    assert sorted(p.name for p in repo.iterdir()) == [
        ".gitignore",
        "data",
        "definitions.py",
        "feature_store.yaml",
    ]
    assert str(features_file) in applied.definitions_py.read_text()


def test_feature_store_yaml_is_a_valid_repo_config(applied: FeastInitResult) -> None:
    from feast.repo_config import load_repo_config

    raw = yaml.safe_load(applied.feature_store_yaml.read_text())
    assert raw == {
        "project": "customer_features",
        "provider": "local",
        "registry": {"registry_type": "file", "path": "data/registry.db"},
        "offline_store": {"type": "file"},
        "online_store": {"type": "sqlite", "path": "data/online_store.db"},
        "entity_key_serialization_version": 3,
        "auth": {"type": "no_auth"},
    }
    config = load_repo_config(applied.repo_dir, applied.feature_store_yaml)
    assert config.project == "customer_features"
    assert config.registry.registry_type == "file"
    assert config.registry.path == "data/registry.db"
    assert config.online_store.type == "sqlite"
    assert config.online_store.path == "data/online_store.db"
    assert type(config.offline_store).__name__ == "DaskOfflineStoreConfig"  # Feast's "file" store
    assert config.entity_key_serialization_version == 3
    assert config.auth_config.type == "no_auth"


def test_feature_service_lists_the_features_in_file_order(applied: FeastInitResult) -> None:
    from feast import ValueType
    from feast.types import Float32, Float64, Int64, String

    store = _store(applied)
    service = store.get_feature_service(applied.feature_service)
    [projection] = service.feature_view_projections
    assert projection.name == applied.feature_view
    assert [f.name for f in projection.features] == list(FEATURES)
    assert [f.dtype for f in projection.features] == [Float64, Int64, Float32, Float64]

    view = store.get_feature_view(applied.feature_view)
    assert view.ttl == timedelta(days=3650)
    assert view.entities == ["customer_id"]
    assert [(c.name, c.dtype) for c in view.entity_columns] == [("customer_id", String)]
    assert view.batch_source.timestamp_field == "event_timestamp"
    entity = store.get_entity("customer_id")
    assert entity.join_key == "customer_id"
    assert entity.value_type == ValueType.STRING


def test_historical_features_are_point_in_time_correct(
    applied: FeastInitResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relative paths in feature_store.yaml resolve against the repository, not the cwd.
    monkeypatch.chdir(tmp_path)
    store = _store(applied)
    entity_df = pd.DataFrame(
        {
            "customer_id": ["c2", "c1", "c1"],
            "event_timestamp": [
                T0 + pd.Timedelta(days=1),
                T0 + pd.Timedelta(days=1),
                T0 + pd.Timedelta(minutes=30),
            ],
        }
    )
    frame = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(applied.feature_service)
    ).to_df()
    frame = frame.sort_values(["customer_id", "event_timestamp"]).reset_index(drop=True)
    assert list(frame.columns) == ["customer_id", "event_timestamp", *FEATURES]
    assert list(frame["customer_id"]) == ["c1", "c1", "c2"]
    # c1 at T0+30min sees its T0 row; c1 and c2 a day later see their T0+1h rows, never the
    # row c1 gets two days later (balance 99).
    assert list(frame["balance"]) == [1.0, 11.0, 12.0]
    assert list(frame["orders_30d"]) == [1, 4, 5]
    assert list(frame["score"]) == pytest.approx([0.1, 0.4, 0.5])
    assert list(frame["utilization"]) == pytest.approx([0.15, 0.45, 0.55])


def test_definitions_file_builds_the_applied_objects(applied: FeastInitResult) -> None:
    namespace = runpy.run_path(str(applied.definitions_py))
    store = _store(applied)
    assert namespace["entity"] == store.get_entity(applied.entity)
    assert namespace["source"] == store.get_data_source(f"{applied.feature_view}_source")
    assert namespace["feature_view"] == store.get_feature_view(applied.feature_view)
    assert namespace["feature_service"] == store.get_feature_service(applied.feature_service)
    compile(applied.definitions_py.read_text(), str(applied.definitions_py), "exec")


def _registry_state(repo_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The registry's objects as dicts, without the timestamps that differ between two applies.

    The registry's ``infra`` section is left out: ``FeatureStore.apply`` creates the SQLite table
    but (unlike the CLI) does not record it there; the next `feast apply` records it.
    """
    from feast import FeatureStore
    from google.protobuf.json_format import MessageToDict

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: clean(v) for k, v in value.items() if k not in {"createdTimestamp", "lastUpdatedTimestamp"}
            }
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    store = FeatureStore(repo_path=str(repo_dir))
    registry, project = store.registry, store.project
    listings: dict[str, Callable[[], list[Any]]] = {
        "projects": registry.list_projects,
        "entities": lambda: registry.list_entities(project),
        "data_sources": lambda: registry.list_data_sources(project),
        "feature_views": lambda: registry.list_feature_views(project),
        "feature_services": lambda: registry.list_feature_services(project),
    }
    return {
        kind: sorted((clean(MessageToDict(o.to_proto())) for o in listing()), key=repr)
        for kind, listing in listings.items()
    }


@pytest.mark.slow
def test_feast_apply_cli_on_the_definitions_gives_the_same_registry(
    applied: FeastInitResult, features_file: Path, tmp_path: Path
) -> None:
    feast_cli = Path(sys.executable).parent / "feast"
    if not feast_cli.is_file():
        pytest.skip("the feast CLI is not installed next to this Python")
    cli_repo = init_feature_repo(
        features_file,
        entity="customer_id",
        timestamp="event_timestamp",
        out_dir=tmp_path / "cli",
        apply=False,
    )
    assert not cli_repo.registry_path.exists()
    done = subprocess.run(
        [str(feast_cli), "apply"],
        cwd=cli_repo.repo_dir,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli_repo.registry_path.is_file()

    cli_state = _registry_state(cli_repo.repo_dir)
    assert [e["spec"]["name"] for e in cli_state["entities"]] == ["__dummy", "customer_id"]
    assert cli_state == _registry_state(applied.repo_dir)


# --------------------------------------------------------------------------------------------
# Options: name, ttl, integer entity, existing .gitignore
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("customers", "customers"),
        ("Customer Features", "customer_features"),
        ("2024 Kundé-Features.v2", "fs_2024_kunde_features_v2"),
        ("__weird__name__", "weird_name"),
        ("---", "features"),
    ],
)
def test_default_repo_name(stem: str, expected: str) -> None:
    assert default_repo_name(stem) == expected


def test_integer_entity_ttl_name_and_existing_gitignore(tmp_path: Path) -> None:
    from feast import ValueType
    from feast.types import Bool, Int32, Int64, String, UnixTimestamp

    frame = pd.DataFrame(
        {
            "store_id": np.array([1, 2], dtype="int32"),
            "ts": [T0, T0],
            "open": [True, False],
            "region": ["north", "south"],
            "staff": np.array([3, 4], dtype="int16"),
            "opened_at": [T0, T0],
        }
    )
    source = _write(tmp_path / "2024 Stores.parquet", frame)
    out_dir = tmp_path / "repo"
    out_dir.mkdir()
    (out_dir / ".gitignore").write_text("*.pyc")
    result = init_feature_repo(
        source, entity="store_id", timestamp="ts", out_dir=out_dir, name="stores", ttl_days=7, apply=False
    )
    assert result.feature_service == "stores"
    assert result.features == ("open", "region", "staff", "opened_at")
    assert not (out_dir / "data").exists()
    assert (out_dir / ".gitignore").read_text() == "*.pyc\ndata/\n"
    assert yaml.safe_load(result.feature_store_yaml.read_text())["project"] == "stores"

    namespace = runpy.run_path(str(result.definitions_py))
    assert namespace["entity"].value_type == ValueType.INT64
    view = namespace["feature_view"]
    assert view.ttl == timedelta(days=7)
    assert [(f.name, f.dtype) for f in view.features] == [
        ("open", Bool),
        ("region", String),
        ("staff", Int32),
        ("opened_at", UnixTimestamp),
    ]
    assert [(c.name, c.dtype) for c in view.entity_columns] == [("store_id", Int64)]


# --------------------------------------------------------------------------------------------
# Errors: nothing is written
# --------------------------------------------------------------------------------------------


def _frame_without(*columns: str) -> pd.DataFrame:
    return _customer_frame().drop(columns=list(columns))


@pytest.mark.parametrize(
    ("make_source", "options", "expected"),
    [
        (lambda d: d / "missing.parquet", {}, ["not found", "missing.parquet"]),
        (lambda d: _text_file(d / "notes.parquet"), {}, ["cannot read", "not Parquet"]),
        (lambda d: _directory(d / "dir.parquet"), {}, ["not a file"]),
        (
            lambda d: _write(d / "f.parquet", _customer_frame()),
            {"entity": "client"},
            [
                "entity column 'client' not found",
                "columns: customer_id, balance, orders_30d, event_timestamp",
            ],
        ),
        (
            lambda d: _write(d / "f.parquet", _customer_frame()),
            {"timestamp": "ts"},
            ["timestamp column 'ts' not found", "columns: customer_id"],
        ),
        (
            lambda d: _write(d / "f.parquet", _customer_frame().astype({"event_timestamp": str})),
            {},
            ["timestamp column 'event_timestamp'", "string", "must be a timestamp"],
        ),
        (
            lambda d: _write(d / "f.parquet", _customer_frame()),
            {"entity": "balance"},
            ["entity column 'balance'", "double", "string or an integer"],
        ),
        (
            lambda d: _write(d / "f.parquet", _customer_frame()),
            {"entity": "event_timestamp"},
            ["must differ"],
        ),
        (
            lambda d: _write(d / "f.parquet", _customer_frame().set_index("customer_id"), index=True),
            {},
            ["entity column 'customer_id'", "pandas index"],
        ),
        (
            lambda d: _write(d / "f.parquet", _frame_without(*FEATURES)),
            {},
            ["no feature columns"],
        ),
        (
            lambda d: _unsupported_types(d / "f.parquet"),
            {},
            ["unsupported column type", "'tags' (list<", "'blob' (binary)", "'price' (decimal128"],
        ),
        (
            lambda d: _write(d / "f.parquet", _customer_frame()),
            {"name": "1st_repo"},
            ["invalid name '1st_repo'"],
        ),
        (
            lambda d: _write(d / "f.parquet", _customer_frame()),
            {"name": "Bad-Name"},
            ["invalid name", "lowercase"],
        ),
        (lambda d: _write(d / "f.parquet", _customer_frame()), {"name": "_x"}, ["invalid name"]),
        (lambda d: _write(d / "f.parquet", _customer_frame()), {"ttl_days": 0}, ["invalid ttl_days 0"]),
        (lambda d: _write(d / "f.parquet", _customer_frame()), {"ttl_days": 10**9}, ["invalid ttl_days"]),
    ],
    ids=[
        "missing-file",
        "not-parquet",
        "directory",
        "missing-entity",
        "missing-timestamp",
        "timestamp-not-timestamp",
        "entity-float",
        "entity-is-timestamp",
        "entity-in-pandas-index",
        "no-features",
        "unsupported-types",
        "name-digit",
        "name-uppercase-hyphen",
        "name-underscore",
        "ttl-zero",
        "ttl-huge",
    ],
)
def test_errors(
    tmp_path: Path, make_source: Callable[[Path], Path], options: dict[str, Any], expected: list[str]
) -> None:
    source = make_source(tmp_path / "in")
    out_dir = tmp_path / "repo"
    kwargs: dict[str, Any] = {"entity": "customer_id", "timestamp": "event_timestamp", **options}
    with pytest.raises(FeastInitError) as raised:
        init_feature_repo(source, out_dir=out_dir, apply=False, **kwargs)
    for words in expected:
        assert words in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert not out_dir.exists()


def _text_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("customer_id,balance\nc1,1.0\n")
    return path


def _directory(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _unsupported_types(path: Path) -> Path:
    import decimal

    table = pa.table(
        {
            "customer_id": ["c1"],
            "event_timestamp": pa.array([T0], type=pa.timestamp("us", tz="UTC")),
            "balance": [1.0],
            "tags": [["a", "b"]],
            "blob": pa.array([b"\x00"], type=pa.binary()),
            "price": pa.array([decimal.Decimal("1.50")], type=pa.decimal128(5, 2)),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_existing_feature_store_yaml_is_not_overwritten(features_file: Path, tmp_path: Path) -> None:
    (tmp_path / "feature_store.yaml").write_text("project: mine\n")
    before = _tree(tmp_path)
    with pytest.raises(FeastInitError, match=r"feature_store\.yaml already exists"):
        init_feature_repo(features_file, entity="customer_id", timestamp="event_timestamp", out_dir=tmp_path)
    assert _tree(tmp_path) == before


def test_a_failing_apply_leaves_nothing_behind(
    features_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast import FeatureStore

    def broken_apply(self: Any, objects: Any, **kwargs: Any) -> None:
        (Path(self.repo_path) / "data" / "registry.db").write_bytes(b"half")
        raise RuntimeError("registry unavailable")

    monkeypatch.setattr(FeatureStore, "apply", broken_apply)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / ".gitignore").write_text("*.pyc\n")
    before = _tree(existing)
    for out_dir in (tmp_path / "new" / "repo", existing):
        with pytest.raises(RuntimeError, match="registry unavailable"):
            init_feature_repo(
                features_file, entity="customer_id", timestamp="event_timestamp", out_dir=out_dir
            )
    assert not (tmp_path / "new").exists()
    assert _tree(existing) == before
    assert sorted(p.name for p in existing.iterdir()) == [".gitignore"]
