"""Per-run metrics (cost, duration, explanations/s, budget and estimate overruns) to a Pushgateway.

Configured by environment: ``XAC_PUSHGATEWAY_URL`` (e.g. ``http://pushgateway:9091``; unset: nothing
is pushed) and optionally ``XAC_PUSHGATEWAY_JOB`` (default ``xac_explainer``). docker-compose.yaml sets
the URL for every Airflow component; Prometheus scrapes the Pushgateway with ``honor_labels: true``
(deploy/prometheus.yml) and the Grafana dashboard deploy/grafana/dashboards/xac-finops.json reads
exactly the metrics named in ``METRICS``.

Each run is one Pushgateway group, grouping key ``{job, config, run}``; every metric of the group
carries the label ``model`` (and ``currency`` for money). A retried meter task replaces its run's
group (HTTP PUT) instead of adding a second one. The Pushgateway keeps groups until they are
deleted, so every run stays visible with its own labels; the dashboard selects runs by
``xac_run_finished_timestamp_seconds`` (when the run's explainer finished). Delete old groups
(``DELETE /metrics/job/<job>/config/<config>/run/<run>``) if the number of runs grows large.

A push that fails is logged and reported (``False``), never raised: metrics must not fail a run
whose cost is already recorded in the cost store and the bundle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

ENV_URL = "XAC_PUSHGATEWAY_URL"
ENV_JOB = "XAC_PUSHGATEWAY_JOB"
DEFAULT_JOB = "xac_explainer"
GROUPING_LABELS = ("config", "run")

# name -> (help, extra label beside "model"), the contract with the Grafana dashboard.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "xac_run_cost": ("Billed cost of the explainer run (sum of its FOCUS rows' BilledCost).", ("currency",)),
    "xac_run_estimated_cost": ("Pre-flight estimate of the run's cost (plan step).", ("currency",)),
    "xac_run_estimated_cost_high": (
        "Estimate the budget was checked against (estimate x worst past actual/fitted ratio).",
        ("currency",),
    ),
    "xac_run_budget": ("The config's spec.budget.maxCostPerRun.", ("currency",)),
    "xac_run_cost_per_1000_explanations": ("Run cost per 1,000 explanations.", ("currency",)),
    "xac_run_over_budget": ("1 when the run's cost exceeded its budget, else 0.", ()),
    "xac_run_over_estimate": ("1 when the run's cost exceeded its high estimate, else 0.", ()),
    "xac_run_duration_seconds": ("Wall time of the explainer (process or pod), start to finish.", ()),
    "xac_run_explanations": ("Explanations the run produced.", ()),
    "xac_run_explanations_per_second": ("Explanations per second of explainer wall time.", ()),
    "xac_run_finished_timestamp_seconds": ("Unix time the run's explainer finished.", ()),
}


def run_metric_values(
    summary: Mapping[str, Any], *, duration_seconds: float, finished_at: datetime | None = None
) -> dict[str, float]:
    """The values pushed for one run, from meter_step's cost summary (metrics it lacks are left out:
    a run without a plan has no estimate)."""
    explanations = int(summary.get("explanations") or 0)
    total = float(summary["total"])
    values: dict[str, float] = {
        "xac_run_cost": total,
        "xac_run_duration_seconds": float(duration_seconds),
        "xac_run_explanations": float(explanations),
        "xac_run_explanations_per_second": explanations / duration_seconds if duration_seconds > 0 else 0.0,
        "xac_run_finished_timestamp_seconds": (finished_at or datetime.now(UTC)).timestamp(),
    }
    if summary.get("cost_per_1000_explanations") is not None:
        values["xac_run_cost_per_1000_explanations"] = float(summary["cost_per_1000_explanations"])
    if summary.get("budget") is not None:
        values["xac_run_budget"] = float(summary["budget"])
        values["xac_run_over_budget"] = 1.0 if total > float(summary["budget"]) else 0.0
    estimate = summary.get("estimate") or {}
    if estimate.get("estimate") is not None:
        values["xac_run_estimated_cost"] = float(estimate["estimate"])
    if estimate.get("estimate_high") is not None:
        values["xac_run_estimated_cost_high"] = float(estimate["estimate_high"])
        values["xac_run_over_estimate"] = 1.0 if total > float(estimate["estimate_high"]) else 0.0
    return values


def push_run_metrics(
    summary: Mapping[str, Any],
    *,
    model: str,
    config: str,
    run: str,
    duration_seconds: float,
    finished_at: datetime | None = None,
    url: str | None = None,
    job: str | None = None,
    timeout: float = 5.0,
    log: Callable[[str], None] = print,
) -> bool:
    """Push one run's metrics when a Pushgateway is configured; True when pushed.

    ``url`` and ``job`` default to ``XAC_PUSHGATEWAY_URL`` / ``XAC_PUSHGATEWAY_JOB``; without a URL
    nothing happens (False).
    """
    url = url if url is not None else os.environ.get(ENV_URL, "")
    if not url:
        return False
    job = job or os.environ.get(ENV_JOB) or DEFAULT_JOB
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    currency = str(summary.get("currency") or "")
    for name, value in run_metric_values(
        summary, duration_seconds=duration_seconds, finished_at=finished_at
    ).items():
        help_text, extra = METRICS[name]
        gauge = Gauge(name, help_text, ("model", *extra), registry=registry)
        labels = {"model": model, **({"currency": currency} if "currency" in extra else {})}
        gauge.labels(**labels).set(value)
    try:
        push_to_gateway(
            url, job=job, registry=registry, grouping_key={"config": config, "run": run}, timeout=timeout
        )
    except Exception as exc:  # urllib errors, refused connections, HTTP 4xx/5xx from the gateway
        log(f"WARNING: metrics not pushed to the Pushgateway {url}: {exc}")
        return False
    log(f"metrics pushed to the Pushgateway {url} (job {job}, config {config}, run {run})")
    return True
