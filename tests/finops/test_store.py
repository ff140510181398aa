"""The cost store on both back ends (SQLite file, PostgreSQL database): idempotent appends, totals per
model and month, history for planning, legacy SQLite stores migrated in place, concurrent opens."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from include.finops.meter import ResourceRequest
from include.finops.plan import estimate_run_cost
from include.finops.pod import price_pod
from include.finops.pricing import load_catalogue
from include.finops.store import (
    SCHEMA_VERSION,
    CostStore,
    CostStoreError,
    ModelMonth,
    cost_store_target,
    default_path,
)
from include.paths import xac_home

Pod = Callable[..., dict[str, Any]]
Target = Path | str  # a SQLite file, or the SQLAlchemy URL of a PostgreSQL database
CATALOGUE = load_catalogue()
NOV = datetime(2026, 11, 27, 8, tzinfo=UTC)
ONE_CPU_HOUR = 0.031611 + 0.004237  # 1 CPU + 1 GiB for 1 h = 0.035848
STORE_TABLES = ("xac_cost_rows", "xac_cost_runs", "xac_cost_schema")
ROW_COLUMNS = (
    "config, run_id, shard, container, resource, model, model_version, team, cost_center, currency, "
    "billing_month, charge_start, charge_end, billed_e10, row_json, recorded_at"
)
RUN_COLUMNS = (
    "config, run_id, model, method, samples_or_steps, explained, shards, runtime_seconds, recorded_at"
)
PG_HOST, PG_PORT = "127.0.0.1", 5432


def _pod_rows(
    pod_factory: Pod, container_factory: Pod, *, model: str, run: str, shard: int, start: datetime, cpu: str
) -> list[dict]:
    pod = pod_factory(
        [container_factory(requests={"cpu": cpu, "memory": "1Gi"})],
        labels={"xac.dev/model": model, "xac.dev/config": f"{model}-cfg", "xac.dev/shard": str(shard)},
        annotations={"xac.dev/run-id": run},
        start=start,
        seconds=3600,
        name=f"explain-{run}-{shard}",
    )
    return price_pod(pod, CATALOGUE).rows


# ------------------------------------------------------------------------------------------ back ends


def _libpq(url: str) -> str:
    """The SQLAlchemy URL of a test database as a libpq URI (psycopg2 reads it without SQLAlchemy)."""
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


def _admin() -> psycopg2.extensions.connection:
    connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return connection


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of its own for this module (dropped at the end), as a SQLAlchemy URL."""
    try:
        psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres", connect_timeout=3
        ).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT} as user postgres: {exc}")
    name = f"xac_cost_test_{os.getpid()}"
    with closing(_admin()) as admin, admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        # FORCE: the store's pooled connections in this process (and any a test left) are still open
        with closing(_admin()) as admin, admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sql(target: Target, statement: str, *args: Any) -> list[tuple]:
    """Run one statement on the store's database without the code under test; returns its rows."""
    if isinstance(target, Path):
        with closing(sqlite3.connect(target)) as db, db:
            return db.execute(statement, args).fetchall()
    with closing(psycopg2.connect(_libpq(target))) as db, db, db.cursor() as cursor:
        if args:
            cursor.execute(statement.replace("?", "%s"), args)
        else:  # no arguments, no %-formatting: a LIKE pattern keeps its %
            cursor.execute(statement)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """A store that does not exist yet: a SQLite file, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "costs.db"
    url: str = request.getfixturevalue("postgres_url")
    _sql(url, f"DROP TABLE IF EXISTS {', '.join(STORE_TABLES)}")  # what the previous test left
    return url


# -------------------------------------------------------------------------------------------- targets


def test_default_path_is_under_xac_home(tmp_path: Path) -> None:
    assert default_path() == xac_home() / "cost" / "costs.db"
    store = CostStore(tmp_path / "x" / "costs.db")
    assert store.path == tmp_path / "x" / "costs.db" and store.path.exists()
    assert store.url == f"sqlite:///{tmp_path / 'x' / 'costs.db'}"
    # several local processes write the file: WAL mode is persistent in it
    assert _sql(store.path, "PRAGMA journal_mode") == [("wal",)]
    assert _sql(store.path, "SELECT version FROM xac_cost_schema") == [(SCHEMA_VERSION,)]


def test_the_target_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XAC_COST_STORE_URL", raising=False)
    assert cost_store_target() == default_path()
    url = f"sqlite:///{tmp_path / 'env' / 'costs.db'}"
    monkeypatch.setenv("XAC_COST_STORE_URL", url)
    assert cost_store_target() == url
    store = CostStore()
    assert (store.path, store.url) == (tmp_path / "env" / "costs.db", url)
    assert store.append([]) == 0 and store.rows() == []


# ------------------------------------------------------------------------------------------ behaviour


def test_append_is_idempotent_per_run_shard_and_resource(
    pod_factory: Pod, container_factory: Pod, target: Target
) -> None:
    store = CostStore(target)
    rows = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="1")
    assert store.append(rows) == 2
    assert store.append(rows) == 2  # a retried task writes the same rows again
    assert len(store.rows()) == 2
    # the shard re-priced with 2 CPUs replaces the CPU and RAM rows, it does not add to them
    store.append(_pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="2"))
    (month,) = store.cost_per_model_per_month()
    # 2 x 1 h x 0.031611 + 1 GiB x 1 h x 0.004237 = 0.067459
    assert month == ModelMonth("m", "2026-11", "USD", pytest.approx(0.067459), 1)
    assert [r["PricingQuantity"] for r in store.rows() if r["x_Resource"] == "CPU"] == [2.0]
    with pytest.raises(ValueError, match="two rows"):
        store.append([rows[0], rows[0]])
    assert len(store.rows()) == 2


def test_cost_per_model_per_month(pod_factory: Pod, container_factory: Pod, target: Target) -> None:
    store = CostStore(target)
    dec = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    # model a: run r1 with two shards in November (one run), run r2 in December
    store.append(_pod_rows(pod_factory, container_factory, model="a", run="r1", shard=0, start=NOV, cpu="1"))
    store.append(_pod_rows(pod_factory, container_factory, model="a", run="r1", shard=1, start=NOV, cpu="1"))
    store.append(_pod_rows(pod_factory, container_factory, model="a", run="r2", shard=0, start=dec, cpu="1"))
    # model b: one run in November
    store.append(_pod_rows(pod_factory, container_factory, model="b", run="r1", shard=0, start=NOV, cpu="1"))
    assert store.cost_per_model_per_month() == [
        ModelMonth("a", "2026-11", "USD", pytest.approx(2 * ONE_CPU_HOUR), 1),
        ModelMonth("a", "2026-12", "USD", pytest.approx(ONE_CPU_HOUR), 1),
        ModelMonth("b", "2026-11", "USD", pytest.approx(ONE_CPU_HOUR), 1),
    ]
    # money is summed exactly in 1e-10 units
    (total,) = _sql(target, "SELECT SUM(billed_e10) FROM xac_cost_rows WHERE model = 'a'")
    assert total == (3 * (316110000 + 42370000),)
    assert [(r["x_RunId"], r["x_Shard"]) for r in store.rows(config="a-cfg")] == [
        ("r1", 0),
        ("r1", 0),
        ("r1", 1),
        ("r1", 1),
        ("r2", 0),
        ("r2", 0),
    ]
    assert len(store.rows(config="a-cfg", run_id="r2")) == 2 and store.rows(run_id="r3") == []


def test_money_beyond_32_bits_is_summed_exactly(
    pod_factory: Pod, container_factory: Pod, target: Target
) -> None:
    store = CostStore(target)
    big = Decimal("1234567.0123456789")  # 12345670123456789 units: needs 54 bits
    rows = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="1")
    store.append([row | {"BilledCost": big} for row in rows])
    assert _sql(target, "SELECT SUM(billed_e10) FROM xac_cost_rows") == [(2 * 12345670123456789,)]
    (month,) = store.cost_per_model_per_month()
    assert month.total == pytest.approx(2 * 1234567.0123456789)
    if not isinstance(target, Path):
        (kind,) = _sql(
            target,
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'xac_cost_rows' AND column_name = 'billed_e10'",
        )
        assert kind == ("bigint",)


def test_history_feeds_the_planner(pod_factory: Pod, container_factory: Pod, target: Target) -> None:
    store = CostStore(target)
    rows = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="1")
    store.append(rows)
    store.record_run(
        config="m-cfg", run_id="r1", model="m", method="KernelSHAP", samples_or_steps=500, explained=8
    )
    (run,) = store.history("m", "KernelSHAP")
    assert run == {
        "config": "m-cfg",
        "run_id": "r1",
        "method": "KernelSHAP",
        "samples_or_steps": 500,
        "explained": 8,
        "shards": 1,
        "runtime_seconds": None,
        "cost": pytest.approx(0.035848),
        "currency": "USD",
    }
    assert store.history("m", "IntegratedGradients") == []
    # recording the run again replaces it
    store.record_run(
        config="m-cfg",
        run_id="r1",
        model="m",
        method="KernelSHAP",
        samples_or_steps=500,
        explained=8,
        runtime_seconds=12.5,
    )
    assert [r["runtime_seconds"] for r in store.history("m")] == [12.5]
    estimate = estimate_run_cost(
        method="KernelSHAP",
        num_samples_or_steps=1000,
        instances=8,
        shards=1,
        request=ResourceRequest(1, 2**30),
        history=store.history("m"),
        catalogue=CATALOGUE,
    )
    # one run: proportional to work; twice the samples -> twice 0.035848
    assert estimate.cost == pytest.approx(0.071696)


def test_every_pod_of_a_shard_keeps_its_rows(
    pod_factory: Pod, container_factory: Pod, target: Target
) -> None:
    """A failed try and its retry are two pods of one shard: both used a node, both are billed."""
    store = CostStore(target)
    first = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="1")
    retry = [
        row | {"ResourceId": row["ResourceId"] + "-retry", "ResourceName": row["ResourceName"] + "-retry"}
        for row in first
    ]
    assert store.append(first + retry) == 4
    assert store.append(first + retry) == 4  # still idempotent per pod
    assert len(store.rows()) == 4
    (month,) = store.cost_per_model_per_month()
    assert month.total == pytest.approx(2 * 0.035848)


def _dump(target: Target) -> list[list[tuple]]:
    return [
        _sql(target, f"SELECT {ROW_COLUMNS}, resource_id FROM xac_cost_rows ORDER BY row_json"),
        _sql(target, f"SELECT {RUN_COLUMNS} FROM xac_cost_runs ORDER BY config, run_id"),
        _sql(target, "SELECT id, version, migrated_at FROM xac_cost_schema"),
    ]


def test_a_store_of_a_newer_schema_is_refused_and_left_alone(
    pod_factory: Pod, container_factory: Pod, target: Target
) -> None:
    store = CostStore(target)
    store.append(_pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="1"))
    store.record_run(config="m-cfg", run_id="r1", model="m", method="KS", samples_or_steps=1, explained=1)
    newer = SCHEMA_VERSION + 1
    _sql(target, "UPDATE xac_cost_schema SET version = ?", newer)  # as a newer release would leave it
    before = _dump(target)
    with pytest.raises(CostStoreError) as refused:
        CostStore(target)
    message = str(refused.value)
    assert message.startswith(f"cost store {store.url}: ")
    assert f"schema version {newer} is newer than this code knows ({SCHEMA_VERSION})" in message
    assert _dump(target) == before and before[2][0][1] == newer and len(before[0]) == 2


@pytest.mark.slow
def test_two_processes_open_a_fresh_store_at_once(
    pod_factory: Pod, container_factory: Pod, target: Target
) -> None:
    """Two workers' first tasks: both create the schema at the same moment; it is created once."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    runs = {
        run: _pod_rows(pod_factory, container_factory, model="m", run=run, shard=0, start=NOV, cpu="1")
        for run in ("r1", "r2")
    }
    workers = [
        context.Process(target=_append_run_in_a_process, args=(target, rows, run, start))
        for run, rows in runs.items()
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert _sql(target, "SELECT id, version FROM xac_cost_schema") == [(1, SCHEMA_VERSION)]
    store = CostStore(target)
    assert sorted((r["x_RunId"], r["x_Resource"]) for r in store.rows()) == [
        ("r1", "CPU"),
        ("r1", "RAM"),
        ("r2", "CPU"),
        ("r2", "RAM"),
    ]
    assert [(r["run_id"], r["cost"]) for r in store.history("m")] == [
        ("r1", pytest.approx(ONE_CPU_HOUR)),
        ("r2", pytest.approx(ONE_CPU_HOUR)),
    ]


def _append_run_in_a_process(target: Target, rows: list[dict], run_id: str, start: Barrier) -> None:
    start.wait(timeout=60)  # both open the fresh store together
    store = CostStore(target)
    store.append(rows)
    store.record_run(config="m-cfg", run_id=run_id, model="m", method="KS", samples_or_steps=1, explained=1)


# --------------------------------------------------------------------------------- legacy SQLite files


def _legacy_store(path: Path, rows: list[dict], *, schema: int, runs: Sequence[tuple] = ()) -> list[tuple]:
    """A SQLite file as the first (1) or second (2) schema wrote it; returns its cost_rows."""
    resource_id = "" if schema == 1 else "resource_id TEXT NOT NULL, "
    key = (
        "config, run_id, shard, container, resource"
        if schema == 1
        else ("config, run_id, shard, resource_id, container, resource")
    )
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE cost_rows (config TEXT NOT NULL, run_id TEXT NOT NULL, shard INTEGER NOT NULL, "
            f"{resource_id}container TEXT NOT NULL, resource TEXT NOT NULL, model TEXT NOT NULL, "
            "model_version TEXT, team TEXT, cost_center TEXT, currency TEXT NOT NULL, "
            "billing_month TEXT NOT NULL, charge_start TEXT NOT NULL, charge_end TEXT NOT NULL, "
            "billed_e10 INTEGER NOT NULL, row_json TEXT NOT NULL, recorded_at TEXT NOT NULL, "
            f"PRIMARY KEY ({key}))"
        )
        db.execute("CREATE INDEX cost_rows_model_month ON cost_rows (model, billing_month)")
        if runs:
            db.execute(
                "CREATE TABLE runs (config TEXT NOT NULL, run_id TEXT NOT NULL, model TEXT NOT NULL, "
                "method TEXT NOT NULL, samples_or_steps INTEGER NOT NULL, explained INTEGER NOT NULL, "
                "shards INTEGER NOT NULL, runtime_seconds REAL, recorded_at TEXT NOT NULL, "
                "PRIMARY KEY (config, run_id))"
            )
            db.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)", runs)
        for row in rows:
            values = [
                row["x_ConfigName"],
                row["x_RunId"],
                row["x_Shard"],
                row["x_Container"],
                row["x_Resource"],
                row["x_Model"],
                row["x_ModelVersion"],
                None,
                None,
                row["BillingCurrency"],
                "2026-11",
                row["ChargePeriodStart"],
                row["ChargePeriodEnd"],
                int(row["BilledCost"] * 1e10),
                json.dumps(row),
                "2026-11-27T09:00:00+00:00",
            ]
            columns = ROW_COLUMNS if schema == 1 else f"{ROW_COLUMNS}, resource_id"
            if schema == 2:
                values.append(row["ResourceId"])
            marks = ",".join("?" * len(values))
            db.execute(f"INSERT INTO cost_rows ({columns}) VALUES ({marks})", values)
        return db.execute(f"SELECT {ROW_COLUMNS} FROM cost_rows").fetchall()


def _tables(path: Path) -> set[str]:
    return {name for (name,) in _sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_store_of_the_first_schema_is_migrated_in_place(
    pod_factory: Pod, container_factory: Pod, tmp_path: Path
) -> None:
    path = tmp_path / "costs.db"
    rows = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="1")
    _legacy_store(path, rows, schema=1)  # the schema every store had before the resource id was keyed
    store = CostStore(path)
    stored = _sql(path, "SELECT DISTINCT resource_id FROM xac_cost_rows")
    assert stored == [(rows[0]["ResourceId"],)]
    assert _tables(path) == set(STORE_TABLES)
    assert len(store.rows()) == len(rows)
    assert store.append(rows) == len(rows) and len(store.rows()) == len(rows)  # same keys: replaced
    (month,) = store.cost_per_model_per_month()
    assert month.total == pytest.approx(0.035848)


@pytest.mark.parametrize("schema", [1, 2])
def test_legacy_sqlite_stores_are_migrated_with_every_row(
    pod_factory: Pod, container_factory: Pod, tmp_path: Path, schema: int
) -> None:
    path = tmp_path / "costs.db"
    rows = [
        *_pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="1"),
        *_pod_rows(pod_factory, container_factory, model="m", run="r1", shard=1, start=NOV, cpu="2"),
        *_pod_rows(pod_factory, container_factory, model="m", run="r2", shard=0, start=NOV, cpu="1"),
    ]
    runs = [
        ("m-cfg", "r1", "m", "KernelSHAP", 500, 8, 2, 61.5, "2026-11-27T09:00:00+00:00"),
        ("m-cfg", "r2", "m", "KernelSHAP", 1000, 8, 1, None, "2026-11-27T10:00:00+00:00"),
    ]
    legacy = _legacy_store(path, rows, schema=schema, runs=runs)
    assert len(legacy) == 6
    store = CostStore(path)
    assert _tables(path) == set(STORE_TABLES)  # cost_rows and runs are gone
    assert _sql(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'cost_rows%'") == []
    assert _sql(path, "SELECT id, version FROM xac_cost_schema") == [(1, SCHEMA_VERSION)]
    # every row kept, value for value, with the pod's id in the key
    assert sorted(_sql(path, f"SELECT {ROW_COLUMNS} FROM xac_cost_rows")) == sorted(legacy)
    assert sorted(_sql(path, "SELECT run_id, shard, resource, resource_id FROM xac_cost_rows")) == sorted(
        (r["x_RunId"], r["x_Shard"], r["x_Resource"], r["ResourceId"]) for r in rows
    )
    assert sorted(_sql(path, f"SELECT {RUN_COLUMNS} FROM xac_cost_runs")) == runs
    assert [(r["run_id"], r["shards"], r["runtime_seconds"]) for r in store.history("m", "KernelSHAP")] == [
        ("r1", 2, 61.5),
        ("r2", 1, None),
    ]
    # opening it again changes nothing
    before = _dump(path)
    CostStore(path)
    assert _dump(path) == before


def test_an_unrelated_cost_rows_table_is_not_taken_for_a_legacy_store(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    _sql(path, "CREATE TABLE cost_rows (id INTEGER PRIMARY KEY, amount REAL)")
    _sql(path, "INSERT INTO cost_rows (amount) VALUES (1.5)")
    store = CostStore(path)
    assert _sql(path, "SELECT id, amount FROM cost_rows") == [(1, 1.5)]
    assert _tables(path) == {"cost_rows", *STORE_TABLES} and store.rows() == []


# ---------------------------------------------------------------------------------------------- errors


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_an_unreachable_database_fails_at_once_naming_it_without_its_password() -> None:
    port = _closed_port()
    with pytest.raises(CostStoreError) as failed:
        CostStore(f"postgresql+psycopg2://postgres:s3cret-pw@127.0.0.1:{port}/xac")
    message = str(failed.value)
    assert message.startswith(
        f"cost store postgresql+psycopg2://postgres:***@127.0.0.1:{port}/xac: cannot connect: "
    )
    assert "Connection refused" in message and "s3cret-pw" not in message
    assert isinstance(failed.value, RuntimeError)
    # an Airflow connection URI's scheme names the same driver
    with pytest.raises(
        CostStoreError, match=rf"^cost store postgresql\+psycopg2://u:\*\*\*@127.0.0.1:{port}/x: "
    ):
        CostStore(f"postgres://u:pw@127.0.0.1:{port}/x")


def test_a_database_that_refuses_is_an_error(postgres_url: str) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/xac_no_such_database"
    with pytest.raises(
        CostStoreError, match=r'cannot connect: .*database "xac_no_such_database" does not exist'
    ):
        CostStore(missing)


def test_urls_it_cannot_use_are_errors_without_their_password() -> None:
    with pytest.raises(
        CostStoreError, match=r"^cost store mysql://u:\*\*\*@h/db: only PostgreSQL and SQLite"
    ):
        CostStore("mysql://u:pw-123@h/db")
    with pytest.raises(CostStoreError, match=r"^cost store postgresql://…: not a database URL") as failed:
        CostStore("postgresql://u:pw-123@h:port/db")
    assert "pw-123" not in str(failed.value)


def test_postgres_uris_are_accepted(pod_factory: Pod, container_factory: Pod, postgres_url: str) -> None:
    _sql(postgres_url, f"DROP TABLE IF EXISTS {', '.join(STORE_TABLES)}")
    database = postgres_url.rsplit("/", 1)[1]
    # trust authentication ignores the password; the store must still never show it
    store = CostStore(f"postgres://postgres:hunter2@{PG_HOST}:{PG_PORT}/{database}")
    assert store.url == f"postgresql+psycopg2://postgres:***@{PG_HOST}:{PG_PORT}/{database}"
    assert store.path is None
    rows = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=NOV, cpu="1")
    assert store.append(rows) == 2
    assert CostStore(postgres_url).rows() == store.rows() and len(store.rows()) == 2
    # a bare postgresql:// means the same driver (SQLAlchemy 2.1 alone would pick psycopg 3)
    bare = CostStore(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}")
    assert bare.url == postgres_url and bare.rows() == store.rows()
