"""The Grafana dashboard shipped in deploy/grafana/ against the metrics the pusher emits.

1. Static: every metric a panel or variable queries is one ``include.finops.pushgateway`` pushes;
   the datasource is the one docker-compose.yaml provisions; compose mounts the dashboard and its
   provider where the provider looks.
2. Live: runs are pushed to a real Pushgateway, a real Prometheus scrapes it (with the
   ``honor_labels`` of deploy/prometheus.yml), and every panel's query, with Grafana's variables
   filled in, must parse and return the figures that were pushed.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from include.finops.pushgateway import METRICS, push_run_metrics
from include.finops.usage_sources import PrometheusSource
from include.paths import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "xac-finops.json"
PROVIDER = REPO_ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "xac.yaml"
COMPOSE = REPO_ROOT / "docker-compose.yaml"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus.yml"

_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"|\{[^}]*\}|\[[^\]]*\]|\$\{?\w+(?::\w+)?\}?|[A-Za-z_:][\w:]*|\d+(?:\.\d+)?[A-Za-z]*|.',
    re.S,
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label lists and Grafana
    variables are not metrics)."""
    tokens = [t for t in _TOKEN.findall(expr) if not t.isspace()]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in _LABEL_LIST_KEYWORDS and following == "(":
            i = tokens.index(")", i + 1) + 1  # the label list: by (model), on(config, run)
            continue
        # a name followed by "(" is a function; by "by"/"without", an aggregation: sum by (model) (...)
        called = following in ("(", "by", "without")
        if re.fullmatch(r"[A-Za-z_:][\w:]*", token) and token not in _KEYWORDS and not called:
            names.add(token)
        i += 1
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            out.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert match, f"variable {variable['name']}: unsupported query {query!r}"
            out.append((f"variable {variable['name']}", match[1]))
    return out


def unknown_metrics(dashboard: dict[str, Any]) -> list[str]:
    return [
        f"{where}: {name} is not pushed by include/finops/pushgateway.py"
        for where, expr in dashboard_queries(dashboard)
        for name in sorted(metric_names(expr) - set(METRICS))
    ]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- static checks


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (model) (xac_run_cost{model=~"$model", run!="a b"} and on(config, run) '
        "(time() - xac_run_finished_timestamp_seconds[5m] offset 1h < $__range_s)) or vector(0)"
    )
    assert metric_names(expr) == {"xac_run_cost", "xac_run_finished_timestamp_seconds"}
    assert metric_names("rate(node_cpu_seconds_total[1m]) / on(instance) group_left() up") == {
        "node_cpu_seconds_total",
        "up",
    }


def test_every_queried_metric_is_pushed(dashboard: dict[str, Any]) -> None:
    assert unknown_metrics(dashboard) == []
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard)))
    # the panels the FinOps issue asks for: cost, duration, explanations/s, budget overruns
    assert {
        "xac_run_cost",
        "xac_run_duration_seconds",
        "xac_run_explanations_per_second",
        "xac_run_over_budget",
        "xac_run_finished_timestamp_seconds",
    } <= used
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Cost per run", "Cost per model per day", "Budget overruns"} <= titles
    # the check fails on a metric the pusher does not emit
    broken = copy.deepcopy(dashboard)
    broken["panels"][0]["targets"][0]["expr"] = "sum(xac_run_costs)"
    assert unknown_metrics(broken) == [
        "panel 'Cost per run' target A: xac_run_costs is not pushed by include/finops/pushgateway.py"
    ]


def test_dashboard_uses_the_provisioned_prometheus_datasource(
    dashboard: dict[str, Any], compose: dict[str, Any]
) -> None:
    datasources = yaml.safe_load(compose["configs"]["grafana-datasources"]["content"])["datasources"]
    prometheus = {d["uid"] for d in datasources if d["type"] == "prometheus"}
    refs = [dashboard["templating"]["list"][0]["datasource"]]
    for panel in dashboard["panels"]:
        refs.append(panel["datasource"])
        refs += [t["datasource"] for t in panel["targets"]]
    assert {(r["type"], r["uid"]) for r in refs} == {("prometheus", uid) for uid in prometheus}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_compose_mounts_the_dashboard_where_the_provider_reads_it(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {}
    for volume in grafana.get("volumes") or []:
        source, target, *_ = volume.split(":")
        mounts[PurePosixPath(source)] = PurePosixPath(target)
    provider_dir = mounts[PurePosixPath("deploy/grafana/provisioning/dashboards")]
    assert provider_dir == PurePosixPath("/etc/grafana/provisioning/dashboards")
    dashboards_dir = mounts[PurePosixPath("deploy/grafana/dashboards")]
    provider = yaml.safe_load(PROVIDER.read_text(encoding="utf-8"))
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and PurePosixPath(entry["options"]["path"]) == dashboards_dir
    assert DASHBOARD.parent == REPO_ROOT / "deploy" / "grafana" / "dashboards"
    # Prometheus keeps the pushed labels (job, config, run) instead of the gateway's own
    jobs = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))["scrape_configs"]
    (pushgateway,) = [j for j in jobs if j["job_name"] == "pushgateway"]
    assert pushgateway["honor_labels"] is True


# --------------------------------------------------------------------------- live: Pushgateway -> Prometheus


def fill(expr: str, model: str = ".*") -> str:
    """The query as Grafana sends it: ``$model`` is the variable ("All" is ``.*``), ``$__range_s``
    the dashboard's range in seconds (7 days)."""
    variables = {"$__range_s": str(7 * 86400), "$model": model}
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    assert "$" not in expr, f"a Grafana variable the test does not fill: {expr}"
    return expr


@pytest.fixture(scope="module")
def live(
    pushgateway_url: str, prometheus_factory: Callable[[list[dict[str, Any]]], str], poll: Callable[..., Any]
) -> tuple[PrometheusSource, dict[str, dict[str, Any]]]:
    now = datetime.now(UTC)
    runs = {
        # two runs of one config (the later is the "latest run"), one over its budget
        "run-1": {
            "model": "model-a",
            "config": "cfg-a",
            "total": 0.2,
            "budget": 1.0,
            "duration": 10.0,
            "n": 8,
        },
        "run-2": {
            "model": "model-a",
            "config": "cfg-a",
            "total": 1.5,
            "budget": 1.0,
            "duration": 20.0,
            "n": 10,
        },
        "run-3": {
            "model": "model-b",
            "config": "cfg-b",
            "total": 0.3,
            "budget": 1.0,
            "duration": 6.0,
            "n": 12,
        },
    }
    for age, (run, r) in zip((90, 60, 30), runs.items(), strict=True):
        summary = {
            "currency": "USD",
            "total": r["total"],
            "explanations": r["n"],
            "cost_per_1000_explanations": r["total"] / r["n"] * 1000,
            "budget": r["budget"],
            "estimate": {"estimate": 0.25, "estimate_high": 0.3},
        }
        assert push_run_metrics(
            summary,
            model=r["model"],
            config=r["config"],
            run=run,
            duration_seconds=r["duration"],
            finished_at=now - timedelta(seconds=age),
            url=pushgateway_url,
            log=lambda _: None,
        )
    address = pushgateway_url.removeprefix("http://")
    url = prometheus_factory(
        [{"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [address]}]}]
    )
    source = PrometheusSource(url)
    poll(
        lambda: len(source.query("xac_run_cost", datetime.now(UTC))) == 3,
        timeout=60,
        what="Prometheus to scrape the three runs from the Pushgateway",
    )
    return source, runs


def query(source: PrometheusSource, expr: str, model: str = ".*") -> list[dict[str, Any]]:
    return source.query(fill(expr, model), datetime.now(UTC))


def test_every_panel_query_runs_and_returns_data(
    dashboard: dict[str, Any], live: tuple[PrometheusSource, dict]
) -> None:
    source, _ = live
    for where, expr in dashboard_queries(dashboard):
        assert query(source, expr), f"{where}: no data for {fill(expr)}"


def panel_expr(dashboard: dict[str, Any], title: str, ref: str = "A") -> str:
    (panel,) = [p for p in dashboard["panels"] if p["title"] == title]
    (target,) = [t for t in panel["targets"] if t["refId"] == ref]
    return target["expr"]


def by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def test_panel_figures_are_the_pushed_ones(
    dashboard: dict[str, Any], live: tuple[PrometheusSource, dict]
) -> None:
    source, runs = live
    assert by(query(source, panel_expr(dashboard, "Cost per run")), "run") == {
        run: r["total"] for run, r in runs.items()
    }
    assert by(query(source, panel_expr(dashboard, "Cost per run", "C")), "run") == {
        run: r["budget"] for run, r in runs.items()
    }
    # one run over its budget; the estimate's high mark 0.3 was exceeded by run-2 only (0.3 is not > 0.3)
    assert by(query(source, panel_expr(dashboard, "Budget overruns")), "") == {"": 1.0}
    assert by(query(source, panel_expr(dashboard, "Budget overruns", "B")), "") == {"": 1.0}
    per_day = by(query(source, panel_expr(dashboard, "Cost per model per day")), "model")
    assert per_day == pytest.approx({"model-a": 1.7, "model-b": 0.3})
    # latest run per config: run-2 for cfg-a, run-3 for cfg-b
    duration = query(source, panel_expr(dashboard, "Run duration (latest run per config)"))
    assert {(r["metric"]["config"], r["metric"]["run"]): float(r["value"][1]) for r in duration} == {
        ("cfg-a", "run-2"): 20.0,
        ("cfg-b", "run-3"): 6.0,
    }
    rate = by(
        query(source, panel_expr(dashboard, "Explanations per second (latest run per config)")), "config"
    )
    assert rate == pytest.approx({"cfg-a": 0.5, "cfg-b": 2.0})
    ratio = by(query(source, panel_expr(dashboard, "Actual vs estimate (latest run per config)")), "config")
    assert ratio == pytest.approx({"cfg-a": 6.0, "cfg-b": 1.2})
    per_1000 = by(
        query(source, panel_expr(dashboard, "Cost per 1,000 explanations (latest run per config)")), "config"
    )
    assert per_1000 == pytest.approx({"cfg-a": 150.0, "cfg-b": 25.0})
    # a model filter selects only that model's runs
    assert set(by(query(source, panel_expr(dashboard, "Cost per run"), model="model-b"), "run")) == {"run-3"}


def test_provider_and_dashboard_files_are_what_grafana_loads() -> None:
    # Grafana's file provider loads *.json files in the folder: only dashboards belong there.
    files = sorted(p.name for p in DASHBOARD.parent.iterdir())
    assert files == ["xac-finops.json"]
    for path in DASHBOARD.parent.iterdir():
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["uid"] and data["title"] and isinstance(data["panels"], list)
    assert Path(PROVIDER).suffix == ".yaml"
