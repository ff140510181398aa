"""The cost store: every run's FOCUS rows in one SQLite file, for month-end questions.

``$XAC_HOME/cost/costs.db`` by default. Appending is idempotent: a row is identified by
(config, run id, shard, resource id, container, resource), the resource id being the pod (with its
uid) or the local shard process, so a retried task or a re-priced pod replaces its rows instead of
adding to them, while every pod of a shard (a failed try and its retry) keeps its own rows. A store
written before the resource id was part of the key is migrated when it is opened. Money is kept as
an integer count of 1e-10 currency units (the precision of the row builder), so SQL sums are exact.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from include.paths import xac_home

_SCALE = Decimal("1e10")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cost_rows (
    config TEXT NOT NULL,
    run_id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    resource_id TEXT NOT NULL,
    container TEXT NOT NULL,
    resource TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT,
    team TEXT,
    cost_center TEXT,
    currency TEXT NOT NULL,
    billing_month TEXT NOT NULL,
    charge_start TEXT NOT NULL,
    charge_end TEXT NOT NULL,
    billed_e10 INTEGER NOT NULL,
    row_json TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (config, run_id, shard, resource_id, container, resource)
);
CREATE INDEX IF NOT EXISTS cost_rows_model_month ON cost_rows (model, billing_month);
CREATE TABLE IF NOT EXISTS runs (
    config TEXT NOT NULL,
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    samples_or_steps INTEGER NOT NULL,
    explained INTEGER NOT NULL,
    shards INTEGER NOT NULL,
    runtime_seconds REAL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (config, run_id)
);
"""


def default_path() -> Path:
    return xac_home() / "cost" / "costs.db"


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


def _migrate_keyed_without_resource(db: sqlite3.Connection) -> None:
    """Rebuild a ``cost_rows`` table of the first schema (no resource id in the key): the resource id
    of each stored row is read back from its FOCUS row (``ResourceId``)."""
    columns = [r[1] for r in db.execute("PRAGMA table_info(cost_rows)")]
    if not columns or "resource_id" in columns:
        return
    # Statement by statement (executescript would commit half-way): the rebuild is one transaction.
    db.execute("ALTER TABLE cost_rows RENAME TO cost_rows_v1")
    db.execute("DROP INDEX IF EXISTS cost_rows_model_month")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    kept = [c for c in columns if c != "resource_id"]
    db.execute(
        f"INSERT INTO cost_rows (resource_id, {', '.join(kept)}) "
        f"SELECT COALESCE(json_extract(row_json, '$.ResourceId'), ''), {', '.join(kept)} FROM cost_rows_v1"
    )
    db.execute("DROP TABLE cost_rows_v1")


class CostStore:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            _migrate_keyed_without_resource(db)
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short connection per call: Airflow tasks in other processes write the same file.
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:  # one transaction: a run's rows land together or not at all
                yield db
        finally:
            db.close()

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store a run's rows; rows with the key of a stored row replace it. Returns the count."""
        now = datetime.now(UTC).isoformat()
        records = []
        seen: set[tuple[str, str, int, str, str, str]] = set()
        for row in rows:
            key = _key(row)
            if key in seen:
                raise ValueError(f"two rows for the same run/shard/pod/container/resource: {key}")
            seen.add(key)
            records.append(
                (
                    *key,
                    str(row["x_Model"]),
                    row.get("x_ModelVersion"),
                    row.get("x_Team"),
                    row.get("x_CostCenter"),
                    str(row["BillingCurrency"]),
                    str(row["BillingPeriodStart"])[:7],
                    str(row["ChargePeriodStart"]),
                    str(row["ChargePeriodEnd"]),
                    _e10(row["BilledCost"]),
                    json.dumps(row, sort_keys=True, default=str),
                    now,
                )
            )
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO cost_rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", records
            )
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
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    config,
                    run_id,
                    model,
                    method,
                    samples_or_steps,
                    explained,
                    shards,
                    runtime_seconds,
                    datetime.now(UTC).isoformat(),
                ),
            )

    def rows(self, *, config: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT row_json FROM cost_rows WHERE 1=1", []
        if config is not None:
            sql, args = sql + " AND config = ?", [*args, config]
        if run_id is not None:
            sql, args = sql + " AND run_id = ?", [*args, run_id]
        with self._connect() as db:
            return [
                json.loads(r[0])
                for r in db.execute(sql + " ORDER BY config, run_id, shard, container, resource", args)
            ]

    def cost_per_model_per_month(self) -> list[ModelMonth]:
        """Total billed cost and number of runs per model and billing month (and currency)."""
        with self._connect() as db:
            result = db.execute(
                """
                SELECT model, billing_month, currency, SUM(billed_e10),
                       COUNT(DISTINCT config || char(0) || run_id)
                FROM cost_rows GROUP BY model, billing_month, currency
                ORDER BY model, billing_month, currency
                """
            ).fetchall()
        return [
            ModelMonth(m, month, cur, float(Decimal(total) / _SCALE), runs)
            for m, month, cur, total, runs in result
        ]

    def history(self, model: str, method: str | None = None) -> list[dict[str, Any]]:
        """Earlier runs of a model with their work and cost: the input of ``plan.estimate_run_cost``."""
        sql = """
            SELECT r.config, r.run_id, r.method, r.samples_or_steps, r.explained, r.shards,
                   r.runtime_seconds, SUM(c.billed_e10), MIN(c.currency)
            FROM runs r JOIN cost_rows c ON c.config = r.config AND c.run_id = r.run_id
            WHERE r.model = ?
        """
        args: list[Any] = [model]
        if method is not None:
            sql, args = sql + " AND r.method = ?", [*args, method]
        sql += " GROUP BY r.config, r.run_id ORDER BY MIN(c.charge_start)"
        with self._connect() as db:
            result = db.execute(sql, args).fetchall()
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
