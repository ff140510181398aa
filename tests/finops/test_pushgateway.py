"""Per-run metrics pushed to a real Pushgateway (Debian's prometheus-pushgateway on 127.0.0.1), read
back from its /metrics page."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from include.finops.pushgateway import ENV_URL, METRICS, push_run_metrics, run_metric_values

FINISHED = datetime(2026, 11, 27, 8, 0, 30, tzinfo=UTC)


def summary(
    total: float = 0.0123, explanations: int = 8, budget: float | None = 1.0, plan: bool = True
) -> dict:
    out: dict[str, Any] = {
        "currency": "USD",
        "total": total,
        "explanations": explanations,
        "cost_per_1000_explanations": total / explanations * 1000 if explanations else None,
        "budget": budget,
        "within_budget": None if budget is None else total <= budget,
    }
    if plan:
        out["estimate"] = {"estimate": 0.01, "estimate_high": 0.011, "basis": "history (1 run)"}
    return out


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """The Pushgateway's /metrics as {(name, labels): value}, only our xac_ metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("xac_"):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def for_run(metrics: dict[tuple[str, frozenset], float], run: str) -> dict[str, tuple[dict, float]]:
    return {
        name: (dict(labels), value) for (name, labels), value in metrics.items() if dict(labels)["run"] == run
    }


@pytest.fixture
def gateway(pushgateway_url: str) -> Iterator[str]:
    yield pushgateway_url
    # every test starts from an empty gateway
    request = urllib.request.Request(f"{pushgateway_url}/api/v1/admin/wipe", method="PUT")
    urllib.request.urlopen(request, timeout=5).close()


def test_push_and_read_back(gateway: str) -> None:
    logged: list[str] = []
    run = "manual__2026-11-27T08:00:00.123456+00:00"
    assert push_run_metrics(
        summary(),
        model="diagnosis-risk-tabular",
        config="diagnosis-risk-kernelshap",
        run=run,
        duration_seconds=4.0,
        finished_at=FINISHED,
        url=gateway,
        log=logged.append,
    )
    assert any("pushed" in line for line in logged)
    got = for_run(scrape(gateway), run)
    assert set(got) == set(METRICS)  # every metric the dashboard may query
    labels, cost = got["xac_run_cost"]
    assert labels == {
        "job": "xac_explainer",
        "config": "diagnosis-risk-kernelshap",
        "run": run,
        "model": "diagnosis-risk-tabular",
        "currency": "USD",
        "instance": "",
    }
    assert cost == pytest.approx(0.0123)
    assert got["xac_run_duration_seconds"][1] == 4.0
    assert got["xac_run_explanations"][1] == 8
    assert got["xac_run_explanations_per_second"][1] == pytest.approx(2.0)  # 8 / 4 s
    assert got["xac_run_cost_per_1000_explanations"][1] == pytest.approx(1.5375)  # 0.0123 / 8 x 1000
    assert got["xac_run_budget"][1] == 1.0
    assert got["xac_run_over_budget"][1] == 0
    assert got["xac_run_estimated_cost"][1] == pytest.approx(0.01)
    assert got["xac_run_estimated_cost_high"][1] == pytest.approx(0.011)
    assert got["xac_run_over_estimate"][1] == 1  # 0.0123 > 0.011
    assert got["xac_run_finished_timestamp_seconds"][1] == FINISHED.timestamp()
    assert "currency" not in got["xac_run_duration_seconds"][0]


def test_a_retried_run_replaces_its_group_and_runs_stay_apart(gateway: str) -> None:
    common = {"model": "m", "config": "c", "duration_seconds": 2.0, "url": gateway, "log": lambda _: None}
    assert push_run_metrics(summary(total=0.5), run="run/1", **common)  # "/" needs base64 in the URL
    assert push_run_metrics(summary(total=0.7), run="run-2", **common)
    assert push_run_metrics(summary(total=2.5, plan=False), run="run/1", **common)  # retried: replaced
    metrics = scrape(gateway)
    first, second = for_run(metrics, "run/1"), for_run(metrics, "run-2")
    assert first["xac_run_cost"][1] == 2.5 and first["xac_run_over_budget"][1] == 1
    assert "xac_run_estimated_cost" not in first  # the retry had no plan: the old estimate is gone
    assert second["xac_run_cost"][1] == 0.7
    assert sum(1 for name, _ in metrics if name == "xac_run_cost") == 2


def test_not_configured_pushes_nothing(gateway: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    assert not push_run_metrics(summary(), model="m", config="c", run="r", duration_seconds=1.0)
    monkeypatch.setenv(ENV_URL, gateway)
    assert push_run_metrics(
        summary(), model="m", config="c", run="r", duration_seconds=1.0, log=lambda _: None
    )
    assert for_run(scrape(gateway), "r")["xac_run_cost"][1] == pytest.approx(0.0123)


def test_an_unreachable_gateway_is_logged_not_raised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logged: list[str] = []
    ok = push_run_metrics(
        summary(),
        model="m",
        config="c",
        run="r",
        duration_seconds=1.0,
        url=f"http://127.0.0.1:{port}",
        timeout=2,
        log=logged.append,
    )
    assert not ok and logged and logged[0].startswith("WARNING: metrics not pushed")


def test_metric_values_without_plan_budget_or_duration() -> None:
    values = run_metric_values(summary(explanations=0, budget=None, plan=False), duration_seconds=0.0)
    assert values["xac_run_explanations_per_second"] == 0.0
    assert not {"xac_run_budget", "xac_run_over_budget", "xac_run_estimated_cost"} & set(values)
    assert "xac_run_cost_per_1000_explanations" not in values


def test_meter_step_pushes_the_run(gateway: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The meter_cost task's function prices a measured explainer process and pushes its metrics."""
    monkeypatch.setenv("XAC_HOME", str(tmp_path))
    monkeypatch.setenv(ENV_URL, gateway)
    from include.embedded import s3_server
    from include.orchestration.pipeline import ExplainResult, meter_step, start_run
    from include.paths import CONFIGS_DIR
    from include.storage import s3_client

    config = CONFIGS_DIR / "explainers" / "diagnosis-risk-kernelshap.yaml"
    with s3_server.environment() as server:
        client = s3_client(server.endpoint_url)
        run = start_run(
            str(config),
            dag_id="diagnosis-risk-kernelshap",
            run_id="manual__push",
            params={},
            identity={},
            s3_client=client,
            log=lambda line: None,
        )
        started = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
        usage = {
            "started_at": started.isoformat(),
            "finished_at": (started + timedelta(seconds=10)).isoformat(),
            "cpu_seconds": 15.0,
            "peak_memory_bytes": 2**30,
            "exit_code": 0,
        }
        explain = ExplainResult(
            explain_uri=run.staging(client).uri("explain.tar"),
            fidelity_uri=run.staging(client).uri("fidelity.json"),
            explained=8,
            params=run.params,
            backend="local",
            shards=1,
            log_uri=run.staging(client).uri("logs/explain.log"),
            usages=(usage,),
            usage=usage,
        )
        logged: list[str] = []
        cost = meter_step(run, explain, None, client, log=logged.append)
        assert run.staging(client).get_json("cost.json")["summary"]["total"] == cost["total"]
    got = for_run(scrape(gateway), "manual__push")
    assert got["xac_run_cost"][1] == pytest.approx(cost["total"])
    assert got["xac_run_cost"][0]["model"] == run.model_name
    assert got["xac_run_cost"][0]["config"] == run.config_name
    assert got["xac_run_duration_seconds"][1] == 10.0
    assert got["xac_run_explanations_per_second"][1] == pytest.approx(0.8)
