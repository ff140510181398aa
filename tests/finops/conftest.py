"""Pod objects shaped like ``kubectl get pod -o json`` for the cost tests (fixtures: helpers of
this folder cannot be imported with pytest's importlib import mode)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

START = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def container(
    name: str = "explain",
    *,
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    restart_policy: str | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    out: dict[str, Any] = {"name": name, "image": "xac/explainer:1", "resources": resources}
    if restart_policy:
        out["restartPolicy"] = restart_policy
    return out


def make_pod(
    containers: list[dict[str, Any]],
    *,
    seconds: float = 3600,
    phase: str = "Succeeded",
    exit_code: int = 0,
    start_time: bool = True,
    finished: bool = True,
    name: str = "explain-0",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    affinity_terms: list[list[dict[str, Any]]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    overhead: dict[str, str] | None = None,
    start: datetime = START,
) -> dict[str, Any]:
    """A finished pod whose containers ran from ``start`` for ``seconds``."""
    end = start + timedelta(seconds=seconds)
    spec: dict[str, Any] = {"nodeName": "node-a", "containers": containers, "restartPolicy": "Never"}
    if init_containers:
        spec["initContainers"] = init_containers
    if node_selector:
        spec["nodeSelector"] = node_selector
    if affinity_terms is not None:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": t} for t in affinity_terms]
                }
            }
        }
    if overhead:
        spec["overhead"] = overhead
    state: dict[str, Any]
    if finished:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": iso(start),
                "finishedAt": iso(end),
            }
        }
    else:
        state = {"running": {"startedAt": iso(start)}}
    status: dict[str, Any] = {
        "phase": phase,
        "containerStatuses": [{"name": c["name"], "state": state} for c in containers],
    }
    if start_time:
        status["startTime"] = iso(start)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ai-prod",
            "uid": f"uid-{name}",
            "labels": labels
            if labels is not None
            else {
                "xac.dev/model": "diagnosis-risk-tabular",
                "xac.dev/model-version": "3",
                "xac.dev/team": "risk-ml",
                "xac.dev/cost-center": "cc-4711",
                "xac.dev/config": "diagnosis-risk-kernelshap",
                "xac.dev/shard": "0",
            },
            "annotations": annotations
            if annotations is not None
            else {"xac.dev/run-id": "scheduled__2026-11-27T08:00:00+00:00"},
        },
        "spec": spec,
        "status": status,
    }


@pytest.fixture
def pod_factory() -> Callable[..., dict[str, Any]]:
    return make_pod


@pytest.fixture
def container_factory() -> Callable[..., dict[str, Any]]:
    return container
