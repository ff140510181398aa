"""The SQLite cost store: idempotent appends, totals per model and month, history for planning."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from include.finops.meter import ResourceRequest
from include.finops.plan import estimate_run_cost
from include.finops.pod import price_pod
from include.finops.pricing import load_catalogue
from include.finops.store import CostStore, ModelMonth, default_path
from include.paths import xac_home

Pod = Callable[..., dict[str, Any]]
CATALOGUE = load_catalogue()


def _pod_rows(
    pod_factory: Pod, container_factory: Pod, *, model: str, run: str, shard: int, start: datetime, cpu: str
) -> list[dict]:
    pod = pod_factory(
        [container_factory(requests={"cpu": cpu, "memory": "1Gi"})],
        labels={"xac.dev/model": model, "xac.dev/config": f"{model}-cfg", "xac.dev/shard": str(shard)},
        annotations={"xac.dev/run-id": run},
        start=start,
        seconds=3600,
    )
    return price_pod(pod, CATALOGUE).rows


def test_default_path_is_under_xac_home(tmp_path: Path) -> None:
    assert default_path() == xac_home() / "cost" / "costs.db"
    store = CostStore(tmp_path / "x" / "costs.db")
    assert store.path.exists()


def test_append_is_idempotent_per_run_shard_and_resource(
    pod_factory: Pod, container_factory: Pod, tmp_path: Path
) -> None:
    store = CostStore(tmp_path / "costs.db")
    nov = datetime(2026, 11, 27, 8, tzinfo=UTC)
    rows = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=nov, cpu="1")
    assert store.append(rows) == 2
    assert store.append(rows) == 2  # a retried task writes the same rows again
    assert len(store.rows()) == 2
    # the shard re-priced with 2 CPUs replaces the CPU and RAM rows, it does not add to them
    store.append(_pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=nov, cpu="2"))
    (month,) = store.cost_per_model_per_month()
    # 2 x 1 h x 0.031611 + 1 GiB x 1 h x 0.004237 = 0.067459
    assert month == ModelMonth("m", "2026-11", "USD", pytest.approx(0.067459), 1)
    with pytest.raises(ValueError, match="two rows"):
        store.append([rows[0], rows[0]])


def test_cost_per_model_per_month(pod_factory: Pod, container_factory: Pod, tmp_path: Path) -> None:
    store = CostStore(tmp_path / "costs.db")
    nov = datetime(2026, 11, 27, 8, tzinfo=UTC)
    dec = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    one_cpu_hour = 0.031611 + 0.004237  # 1 CPU + 1 GiB for 1 h = 0.035848
    # model a: run r1 with two shards in November (one run), run r2 in December
    store.append(_pod_rows(pod_factory, container_factory, model="a", run="r1", shard=0, start=nov, cpu="1"))
    store.append(_pod_rows(pod_factory, container_factory, model="a", run="r1", shard=1, start=nov, cpu="1"))
    store.append(_pod_rows(pod_factory, container_factory, model="a", run="r2", shard=0, start=dec, cpu="1"))
    # model b: one run in November
    store.append(_pod_rows(pod_factory, container_factory, model="b", run="r1", shard=0, start=nov, cpu="1"))
    assert store.cost_per_model_per_month() == [
        ModelMonth("a", "2026-11", "USD", pytest.approx(2 * one_cpu_hour), 1),
        ModelMonth("a", "2026-12", "USD", pytest.approx(one_cpu_hour), 1),
        ModelMonth("b", "2026-11", "USD", pytest.approx(one_cpu_hour), 1),
    ]
    # money is summed exactly in 1e-10 units
    with sqlite3.connect(store.path) as db:
        (total,) = db.execute("SELECT SUM(billed_e10) FROM cost_rows WHERE model = 'a'").fetchone()
    assert total == 3 * (316110000 + 42370000)


def test_history_feeds_the_planner(pod_factory: Pod, container_factory: Pod, tmp_path: Path) -> None:
    store = CostStore(tmp_path / "costs.db")
    nov = datetime(2026, 11, 27, 8, tzinfo=UTC)
    rows = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=nov, cpu="1")
    store.append(rows)
    store.record_run(
        config="m-cfg", run_id="r1", model="m", method="KernelSHAP", samples_or_steps=500, explained=8
    )
    (run,) = store.history("m", "KernelSHAP")
    assert run["cost"] == pytest.approx(0.035848) and run["explained"] == 8
    assert store.history("m", "IntegratedGradients") == []
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
    pod_factory: Pod, container_factory: Pod, tmp_path: Path
) -> None:
    """A failed try and its retry are two pods of one shard: both used a node, both are billed."""
    store = CostStore(tmp_path / "costs.db")
    nov = datetime(2026, 11, 27, 8, tzinfo=UTC)
    first = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=nov, cpu="1")
    retry = [
        row | {"ResourceId": row["ResourceId"] + "-retry", "ResourceName": row["ResourceName"] + "-retry"}
        for row in first
    ]
    assert store.append(first + retry) == 4
    assert store.append(first + retry) == 4  # still idempotent per pod
    assert len(store.rows()) == 4
    (month,) = store.cost_per_model_per_month()
    assert month.total == pytest.approx(2 * 0.035848)


def test_a_store_of_the_first_schema_is_migrated_in_place(
    pod_factory: Pod, container_factory: Pod, tmp_path: Path
) -> None:
    path = tmp_path / "costs.db"
    nov = datetime(2026, 11, 27, 8, tzinfo=UTC)
    rows = _pod_rows(pod_factory, container_factory, model="m", run="r1", shard=0, start=nov, cpu="1")
    columns = (
        "config, run_id, shard, container, resource, model, model_version, team, cost_center, currency, "
        "billing_month, charge_start, charge_end, billed_e10, row_json, recorded_at"
    )
    with sqlite3.connect(path) as db:  # the schema every store had before the resource id was keyed
        db.execute(
            "CREATE TABLE cost_rows (config TEXT NOT NULL, run_id TEXT NOT NULL, shard INTEGER NOT NULL, "
            "container TEXT NOT NULL, resource TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT, "
            "team TEXT, cost_center TEXT, currency TEXT NOT NULL, billing_month TEXT NOT NULL, "
            "charge_start TEXT NOT NULL, charge_end TEXT NOT NULL, billed_e10 INTEGER NOT NULL, "
            "row_json TEXT NOT NULL, recorded_at TEXT NOT NULL, "
            "PRIMARY KEY (config, run_id, shard, container, resource))"
        )
        db.execute("CREATE INDEX cost_rows_model_month ON cost_rows (model, billing_month)")
        for row in rows:
            db.execute(
                f"INSERT INTO cost_rows ({columns}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row["x_ConfigName"],
                    row["x_RunId"],
                    row["x_Shard"],
                    row["x_Container"],
                    row["x_Resource"],
                    row["x_Model"],
                    None,
                    None,
                    None,
                    row["BillingCurrency"],
                    "2026-11",
                    row["ChargePeriodStart"],
                    row["ChargePeriodEnd"],
                    int(row["BilledCost"] * 1e10),
                    json.dumps(row),
                    "2026-11-27T09:00:00+00:00",
                ),
            )
    store = CostStore(path)
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT DISTINCT resource_id FROM cost_rows").fetchall()
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert stored == [(rows[0]["ResourceId"],)] and "cost_rows_v1" not in tables
    assert len(store.rows()) == len(rows)
    assert store.append(rows) == len(rows) and len(store.rows()) == len(rows)  # same keys: replaced
    (month,) = store.cost_per_model_per_month()
    assert month.total == pytest.approx(0.035848)
