"""The cost store: every run's FOCUS rows in one database, for month-end questions and planning.

Two back ends, one class (SQLAlchemy Core):

* **SQLite**, the embedded default: the file ``$XAC_HOME/cost/costs.db`` (``default_path()``), in WAL
  mode with a 30 s busy timeout because several local processes (Airflow tasks) write it.
* **PostgreSQL**, for deployments with several workers (Celery) that need one shared store: set
  ``XAC_COST_STORE_URL`` to a SQLAlchemy URL (``postgresql+psycopg2://user:pw@host/db``; the
  ``postgres://`` scheme of Airflow connection URIs and a bare ``postgresql://`` mean psycopg2, the
  driver the project pins; a plain path there is a SQLite file). ``CostStore(target)`` takes a path or
  a URL too (``sqlite:///…`` included); ``cost_store_target()`` says which one ``CostStore()`` opens.

Appending is idempotent: a row is identified by (config, run id, shard, resource id, container,
resource), the resource id being the pod (with its uid) or the local shard process, so a retried task
or a re-priced pod replaces its rows instead of adding to them, while every pod of a shard (a failed
try and its retry) keeps its own rows. A run's rows are written in one transaction. Money is kept as an
integer count of 1e-10 currency units (the precision of the row builder; BIGINT on PostgreSQL), so SQL
sums are exact.

The tables are prefixed (``xac_cost_rows``, ``xac_cost_runs``) so that the store can share a database
with other things; ``xac_cost_schema`` holds one row, the schema version (``SCHEMA_VERSION``, 3). The
schema is migrated in place when a store is opened, in one transaction taken under a lock (a
PostgreSQL advisory lock, SQLite's ``BEGIN IMMEDIATE``) so that two processes opening a fresh store at
once create it once:

* version 1, a SQLite file of the first schema (tables ``cost_rows`` keyed without the resource id,
  and ``runs``): the resource id of each row is read back from its FOCUS row (``ResourceId``);
* version 2, a SQLite file of the second schema (``cost_rows`` keyed with the resource id, ``runs``);

both are moved into the new tables with every row kept and the old tables dropped. A store whose
recorded version is newer than this code knows is refused (``CostStoreError``) rather than written.
An unreachable or refusing database raises ``CostStoreError`` from the constructor, naming the URL
with its password masked.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    inspect,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError

from include.paths import xac_home

_SCALE = Decimal("1e10")

COST_STORE_URL_ENV = "XAC_COST_STORE_URL"
SCHEMA_VERSION = 3
_FIRST_VERSIONED = 3  # the first version with the prefixed tables and the version table

_SQLITE_BUSY_SECONDS = 30
_PG_CONNECT_TIMEOUT_SECONDS = 10
# "xac_cost" in ASCII: one advisory lock key for the store's migrations (advisory locks are per
# database, so stores in other databases of the same server do not wait for each other).
_PG_MIGRATION_LOCK = 0x7861635F636F7374
# A connection execution option read by the SQLite "begin" hook: writers start BEGIN IMMEDIATE.
_BEGIN_IMMEDIATE = "xac_sqlite_begin_immediate"

# PostgreSQL sorts text by the database's locale, SQLite byte-wise: the "C" collation makes ORDER BY
# (rows, months, models) the same on both back ends.
_TEXT = Text().with_variant(Text(collation="C"), "postgresql")

_METADATA = MetaData()

_ROWS = Table(
    "xac_cost_rows",
    _METADATA,
    Column("config", _TEXT, primary_key=True),
    Column("run_id", _TEXT, primary_key=True),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("resource_id", _TEXT, primary_key=True),
    Column("container", _TEXT, primary_key=True),
    Column("resource", _TEXT, primary_key=True),
    Column("model", _TEXT, nullable=False),
    Column("model_version", _TEXT),
    Column("team", _TEXT),
    Column("cost_center", _TEXT),
    Column("currency", _TEXT, nullable=False),
    Column("billing_month", _TEXT, nullable=False),
    Column("charge_start", _TEXT, nullable=False),
    Column("charge_end", _TEXT, nullable=False),
    Column("billed_e10", BigInteger, nullable=False),
    Column("row_json", _TEXT, nullable=False),
    Column("recorded_at", _TEXT, nullable=False),
    Index("xac_cost_rows_model_month", "model", "billing_month"),
)

_RUNS = Table(
    "xac_cost_runs",
    _METADATA,
    Column("config", _TEXT, primary_key=True),
    Column("run_id", _TEXT, primary_key=True),
    Column("model", _TEXT, nullable=False),
    Column("method", _TEXT, nullable=False),
    Column("samples_or_steps", BigInteger, nullable=False),
    Column("explained", Integer, nullable=False),
    Column("shards", Integer, nullable=False),
    Column("runtime_seconds", Double),
    Column("recorded_at", _TEXT, nullable=False),
)

_VERSION = Table(
    "xac_cost_schema",
    _METADATA,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("migrated_at", _TEXT, nullable=False),
    # one row: a second "CREATE" of the store fails instead of recording two versions
    CheckConstraint("id = 1", name="xac_cost_schema_one_row"),
)

# Columns of the legacy SQLite table cost_rows (both legacy schemas; version 2 adds resource_id).
_LEGACY_ROW_COLUMNS = [c.name for c in _ROWS.columns if c.name != "resource_id"]


class CostStoreError(RuntimeError):
    """The cost store cannot be used: unreachable or refusing database, or a schema it cannot use."""


def default_path() -> Path:
    return xac_home() / "cost" / "costs.db"


def cost_store_target() -> str | Path:
    """What ``CostStore()`` opens: ``$XAC_COST_STORE_URL`` when set, else the SQLite ``default_path()``."""
    return os.environ.get(COST_STORE_URL_ENV) or default_path()


class ModelMonth(NamedTuple):
    model: str
    month: str  # YYYY-MM, the billing period the runs started in
    currency: str
    total: float
    runs: int


def _e10(value: object) -> int:
    return int(
        (Decimal(repr(value) if isinstance(value, float) else str(value)) * _SCALE).to_integral_value()
    )


def _key(row: Mapping[str, Any]) -> tuple[str, str, int, str, str, str]:
    return (
        str(row["x_ConfigName"]),
        str(row["x_RunId"]),
        int(row["x_Shard"]),
        str(row.get("ResourceId") or ""),
        str(row.get("x_Container") or ""),
        str(row["x_Resource"]),
    )


# --------------------------------------------------------------------------------------------- engines

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # sqlite3 would emit its own (deferred) BEGIN and none before DDL; _sqlite_on_begin takes over so
    # that a migration's DDL is transactional and writers can ask for BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    # readers do not block the writer (and the other way round): several processes share the file
    deadline = time.monotonic() + _SQLITE_BUSY_SECONDS
    while True:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            # Switching a fresh file into WAL needs an exclusive lock and SQLite answers "database is
            # locked" at once, without its busy handler, while another process opening the same fresh
            # file holds a lock: wait for it as the busy timeout would.
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
        finally:
            cursor.close()
        time.sleep(0.02)


def _sqlite_on_begin(connection: Connection) -> None:
    # A writer takes the write lock at BEGIN (waiting up to the busy timeout) instead of failing with
    # "database is locked" when it upgrades a read lock that another writer has overtaken.
    immediate = connection.get_execution_options().get(_BEGIN_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        # a timeout given in the URL wins; the default lets several local writers queue up
        connect_args = {} if "timeout" in url.query else {"timeout": _SQLITE_BUSY_SECONDS}
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # an unreachable host fails the task in seconds, not after the kernel's TCP timeout
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": _PG_CONNECT_TIMEOUT_SECONDS}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _engine(url: URL) -> Engine:
    """One engine (and connection pool) per URL and process: every task of a worker shares it."""
    key = url.render_as_string(hide_password=False)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _create_engine(url)
        return engine


def _forget_engines_in_child() -> None:
    # A forked worker (Celery prefork) must not use, nor close, the connections its parent opened:
    # dispose(close=False) gives the child fresh pools and leaves the parent's sockets alone.
    global _ENGINES_LOCK
    _ENGINES_LOCK = threading.Lock()  # another thread may have held it at fork time
    for engine in list(_ENGINES.values()):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_engines_in_child)


def _url(target: str | Path) -> URL:
    if isinstance(target, Path) or "://" not in target:
        # absolute, so that the engine cache does not mix up relative paths of different cwds
        return URL.create("sqlite", database=str(Path(target).absolute()))
    try:
        url = make_url(target)
    except (ArgumentError, ValueError) as exc:  # unparsable, or a port that is not a number
        scheme = target.split("://", 1)[0]
        raise CostStoreError(f"cost store {scheme}://…: not a database URL: {exc}") from exc
    # Airflow connection URIs write "postgres://"; SQLAlchemy 2.1 reads a bare "postgresql://" as
    # psycopg 3, which the project does not install: both mean the pinned psycopg2.
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg2")
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # absolute, as for a path: the engine cache must not mix up relative paths of different cwds
        url = url.set(database=str(Path(url.database).absolute()))
    return url


# ------------------------------------------------------------------------------------------ migrations


def _create_tables(connection: Connection) -> None:
    # checkfirst=False: a table of ours that exists without a recorded version is not silently adopted
    _METADATA.create_all(connection, checkfirst=False)


def _move_legacy_tables(connection: Connection) -> None:
    """Move the tables of a legacy SQLite store (versions 1 and 2) into the prefixed tables."""
    _create_tables(connection)
    legacy_rows = Table("cost_rows", MetaData(), autoload_with=connection)
    # version 1 keyed rows without the pod: its id is read back from the stored FOCUS row
    resource_id = (
        legacy_rows.c.resource_id
        if "resource_id" in legacy_rows.c
        else func.coalesce(func.json_extract(legacy_rows.c.row_json, "$.ResourceId"), "")
    )
    connection.execute(
        insert(_ROWS).from_select(
            ["resource_id", *_LEGACY_ROW_COLUMNS],
            select(resource_id, *(legacy_rows.c[name] for name in _LEGACY_ROW_COLUMNS)),
        )
    )
    legacy_rows.drop(connection)  # its index goes with it
    if inspect(connection).has_table("runs"):
        legacy_runs = Table("runs", MetaData(), autoload_with=connection)
        names = [c.name for c in _RUNS.columns]
        connection.execute(insert(_RUNS).from_select(names, select(*(legacy_runs.c[n] for n in names))))
        legacy_runs.drop(connection)


# From a version to the version its step reaches. A fresh database (0) is created at SCHEMA_VERSION
# from the current tables; a future version 4 adds its step here (3 -> 4) and moves 0 to 4.
_MIGRATIONS: dict[int, tuple[int, Callable[[Connection], None]]] = {
    0: (SCHEMA_VERSION, _create_tables),
    1: (_FIRST_VERSIONED, _move_legacy_tables),
    2: (_FIRST_VERSIONED, _move_legacy_tables),
}


def _legacy_version(connection: Connection) -> int:
    """1 or 2 for a SQLite file of the first two schemas, else 0. Only SQLite files held them: a
    ``cost_rows`` table on PostgreSQL, or one without the store's columns, belongs to someone else."""
    if connection.dialect.name != "sqlite" or not inspect(connection).has_table("cost_rows"):
        return 0
    columns = {c["name"] for c in inspect(connection).get_columns("cost_rows")}
    if not set(_LEGACY_ROW_COLUMNS) <= columns:
        return 0
    return 2 if "resource_id" in columns else 1


# ---------------------------------------------------------------------------------------------- store


class CostStore:
    def __init__(self, target: str | Path | None = None) -> None:
        """Open (and create or migrate) the store at ``target``: a SQLite file path, or a SQLAlchemy URL
        (PostgreSQL or SQLite); ``None`` is ``cost_store_target()``."""
        if target is None:
            target = cost_store_target()
        url = _url(target)
        self.url: str = url.render_as_string(hide_password=True)
        self._password = url.password
        backend = url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise CostStoreError(f"cost store {self.url}: only PostgreSQL and SQLite are supported")
        self.path: Path | None = None
        if backend == "sqlite" and url.database not in (None, "", ":memory:"):
            # a path as given; for a URL, the file it names
            self.path = (
                Path(target) if isinstance(target, Path) or "://" not in target else Path(url.database)
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._engine = _engine(url)
        except (ArgumentError, ImportError) as exc:  # unknown driver, or its module is not installed
            raise CostStoreError(f"cost store {self.url}: cannot use this URL: {exc}") from exc
        try:
            connection = self._engine.connect()
        except DBAPIError as exc:
            raise CostStoreError(f"cost store {self.url}: cannot connect: {self._reason(exc)}") from exc
        with connection:
            try:
                self._bring_schema_up_to_date(connection)
            except DBAPIError as exc:
                raise CostStoreError(
                    f"cost store {self.url}: cannot bring the schema to version {SCHEMA_VERSION}: "
                    f"{self._reason(exc)}"
                ) from exc

    def _reason(self, exc: DBAPIError) -> str:
        """The driver's message on one line, without the password (should a driver ever echo it)."""
        reason = " ".join(str(exc.orig if exc.orig is not None else exc).split())
        return reason.replace(self._password, "***") if self._password else reason

    def _found_version(self, connection: Connection) -> int:
        """The schema version the database holds: 0 when empty, 1 or 2 for a legacy SQLite file."""
        if inspect(connection).has_table(_VERSION.name):
            version = connection.execute(select(_VERSION.c.version)).scalar_one_or_none()
            if version is None:
                raise CostStoreError(f"cost store {self.url}: table {_VERSION.name} holds no version")
            if version > SCHEMA_VERSION:
                raise CostStoreError(
                    f"cost store {self.url}: schema version {version} is newer than this code knows "
                    f"({SCHEMA_VERSION}); upgrade the code that opens it, the store is left as it is"
                )
            return int(version)
        return _legacy_version(connection)

    def _bring_schema_up_to_date(self, connection: Connection) -> None:
        # Most opens find the current version: read it without taking the lock.
        with connection.begin():
            if self._found_version(connection) == SCHEMA_VERSION:
                return
        connection.execution_options(**{_BEGIN_IMMEDIATE: True})
        with connection.begin():  # one transaction: a failed migration leaves the store as it was
            if connection.dialect.name == "postgresql":
                # held until commit; DDL is transactional on PostgreSQL, so the second process sees
                # the first one's tables once it gets the lock
                connection.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            found = version = self._found_version(connection)  # again: another process may have won
            while version < SCHEMA_VERSION:
                version, step = _MIGRATIONS[version]
                step(connection)
            if version == found:
                return
            now = datetime.now(UTC).isoformat()
            if found >= _FIRST_VERSIONED:  # the version table exists: one row to update
                connection.execute(update(_VERSION).values(version=version, migrated_at=now))
            else:
                connection.execute(insert(_VERSION).values(id=1, version=version, migrated_at=now))

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            connection.execution_options(**{_BEGIN_IMMEDIATE: True})
            with connection.begin():  # one transaction: a run's rows land together or not at all
                yield connection

    def _upsert(self, connection: Connection, table: Table, records: list[dict[str, Any]]) -> None:
        """INSERT OR REPLACE: a record with the key of a stored one replaces all its other columns."""
        dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        statement = dialect_insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={c.name: statement.excluded[c.name] for c in table.columns if not c.primary_key},
        )
        connection.execute(statement, records)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store a run's rows; rows with the key of a stored row replace it. Returns the count."""
        now = datetime.now(UTC).isoformat()
        records: list[dict[str, Any]] = []
        seen: set[tuple[str, str, int, str, str, str]] = set()
        for row in rows:
            key = _key(row)
            # also what PostgreSQL requires: one statement may not update the same row twice
            if key in seen:
                raise ValueError(f"two rows for the same run/shard/pod/container/resource: {key}")
            seen.add(key)
            config, run_id, shard, resource_id, container, resource = key
            records.append(
                {
                    "config": config,
                    "run_id": run_id,
                    "shard": shard,
                    "resource_id": resource_id,
                    "container": container,
                    "resource": resource,
                    "model": str(row["x_Model"]),
                    "model_version": row.get("x_ModelVersion"),
                    "team": row.get("x_Team"),
                    "cost_center": row.get("x_CostCenter"),
                    "currency": str(row["BillingCurrency"]),
                    "billing_month": str(row["BillingPeriodStart"])[:7],
                    "charge_start": str(row["ChargePeriodStart"]),
                    "charge_end": str(row["ChargePeriodEnd"]),
                    "billed_e10": _e10(row["BilledCost"]),
                    "row_json": json.dumps(row, sort_keys=True, default=str),
                    "recorded_at": now,
                }
            )
        if not records:  # an executemany without parameters is not "nothing"
            return 0
        with self._write() as connection:
            self._upsert(connection, _ROWS, records)
        return len(records)

    def record_run(
        self,
        *,
        config: str,
        run_id: str,
        model: str,
        method: str,
        samples_or_steps: int,
        explained: int,
        shards: int = 1,
        runtime_seconds: float | None = None,
    ) -> None:
        """The work a run did, so that ``history`` can relate its cost to it (plan.py)."""
        record = {
            "config": config,
            "run_id": run_id,
            "model": model,
            "method": method,
            "samples_or_steps": samples_or_steps,
            "explained": explained,
            "shards": shards,
            "runtime_seconds": runtime_seconds,
            "recorded_at": datetime.now(UTC).isoformat(),
        }
        with self._write() as connection:
            self._upsert(connection, _RUNS, [record])

    def rows(self, *, config: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        c = _ROWS.c
        statement = select(c.row_json)
        if config is not None:
            statement = statement.where(c.config == config)
        if run_id is not None:
            statement = statement.where(c.run_id == run_id)
        statement = statement.order_by(c.config, c.run_id, c.shard, c.container, c.resource, c.resource_id)
        with self._engine.connect() as connection:
            return [json.loads(row_json) for row_json in connection.scalars(statement)]

    def cost_per_model_per_month(self) -> list[ModelMonth]:
        """Total billed cost and number of runs per model and billing month (and currency)."""
        c = _ROWS.c
        # one row per run first: counting distinct (config, run_id) pairs is not portable SQL
        per_run = (
            select(c.model, c.billing_month, c.currency, func.sum(c.billed_e10).label("billed_e10"))
            .group_by(c.model, c.billing_month, c.currency, c.config, c.run_id)
            .subquery()
        )
        r = per_run.c
        statement = (
            select(r.model, r.billing_month, r.currency, func.sum(r.billed_e10), func.count())
            .group_by(r.model, r.billing_month, r.currency)
            .order_by(r.model, r.billing_month, r.currency)
        )
        with self._engine.connect() as connection:
            result = connection.execute(statement).all()
        # SUM of BIGINT is NUMERIC (a Decimal) on PostgreSQL, an int on SQLite: both exact
        return [
            ModelMonth(m, month, cur, float(Decimal(total) / _SCALE), runs)
            for m, month, cur, total, runs in result
        ]

    def history(self, model: str, method: str | None = None) -> list[dict[str, Any]]:
        """Earlier runs of a model with their work and cost: the input of ``plan.estimate_run_cost``."""
        r, c = _RUNS.c, _ROWS.c
        statement = (
            select(
                r.config,
                r.run_id,
                r.method,
                r.samples_or_steps,
                r.explained,
                r.shards,
                r.runtime_seconds,
                func.sum(c.billed_e10),
                func.min(c.currency),
            )
            .join_from(_RUNS, _ROWS, and_(c.config == r.config, c.run_id == r.run_id))
            .where(r.model == model)
        )
        if method is not None:
            statement = statement.where(r.method == method)
        statement = statement.group_by(
            r.config, r.run_id, r.method, r.samples_or_steps, r.explained, r.shards, r.runtime_seconds
        ).order_by(func.min(c.charge_start), r.config, r.run_id)
        with self._engine.connect() as connection:
            result = connection.execute(statement).all()
        return [
            {
                "config": config,
                "run_id": run_id,
                "method": run_method,
                "samples_or_steps": samples,
                "explained": explained,
                "shards": shards,
                "runtime_seconds": runtime,
                "cost": float(Decimal(total) / _SCALE),
                "currency": currency,
            }
            for config, run_id, run_method, samples, explained, shards, runtime, total, currency in result
        ]
