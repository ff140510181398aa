"""A pod deleted before its completion was recorded is billed from its events.

``include.orchestration.shards.vanished_pod_record`` rebuilds the billable object from the pod as the
operator built it and the pod's events (which outlive the pod); the DAG-level behaviour (a real
KubernetesPodOperator against the API double, ``kubectl delete pod`` mid-run) is in
``tests/dags/test_kpo_runs.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.finops.pod import pod_lifetime
from include.orchestration.shards import price_pods, vanished_pod_record

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _event(reason: str, at: datetime, message: str = "") -> dict[str, Any]:
    return {
        "reason": reason,
        "message": message,
        "firstTimestamp": _stamp(at),
        "involvedObject": {"kind": "Pod", "name": "explain-0-abc"},
        "metadata": {"creationTimestamp": _stamp(at)},
    }


def _request() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "explain-0-abc",
            "namespace": "ai-prod",
            "labels": {
                "xac.dev/model": "diagnosis-risk-tabular",
                "xac.dev/model-version": "1",
                "xac.dev/team": "risk",
                "xac.dev/cost-center": "cc-1",
                "xac.dev/shard": "0",
                "xac.dev/run-id": "manual__1",
                "xac.dev/dag-id": "xac__diagnosis",
                "xac.dev/gpu-mode": "none",
            },
            "annotations": {"xac.dev/staging": "s3://bucket/_staging/d/r/"},
        },
        "spec": {
            "containers": [
                {
                    "name": "base",
                    "image": "xac:1",
                    "resources": {
                        "requests": {"cpu": "2", "memory": "4Gi"},
                        "limits": {"cpu": "2", "memory": "4Gi"},
                    },
                }
            ]
        },
    }


def test_the_lifetime_runs_from_scheduled_to_killing_on_the_node_the_scheduler_chose() -> None:
    events = [
        _event("Killing", T0 + timedelta(seconds=95), "Stopping container base"),
        _event(
            "Scheduled",
            T0 + timedelta(seconds=2),
            "Successfully assigned ai-prod/explain-0-abc to cpu-node-1",
        ),
        _event("Started", T0 + timedelta(seconds=7), "Started container base"),
    ]
    pod = vanished_pod_record(_request(), events, observed_gone_at=T0 + timedelta(minutes=10))
    assert pod is not None
    assert pod["spec"]["nodeName"] == "cpu-node-1"
    assert pod["metadata"]["labels"] == _request()["metadata"]["labels"]
    assert pod["status"]["phase"] == "Failed" and pod["status"]["reason"] == "Deleted"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["startedAt"] == _stamp(T0 + timedelta(seconds=7))
    assert pod_lifetime(pod) == (T0 + timedelta(seconds=2), T0 + timedelta(seconds=95))
    assert "Scheduled" in pod["status"]["message"] and "Killing" in pod["status"]["message"]


def test_without_a_killing_event_the_pod_is_billed_until_it_was_found_gone() -> None:
    gone = T0 + timedelta(minutes=3)
    events = [_event("Scheduled", T0, "Successfully assigned ai-prod/explain-0-abc to gpu-node-1")]
    pod = vanished_pod_record(_request(), events, observed_gone_at=gone)
    assert pod is not None and pod["status"]["reason"] == "Vanished"
    assert pod_lifetime(pod) == (T0, gone)
    assert "found gone" in pod["status"]["message"]


def test_a_pod_that_never_reached_a_node_is_not_billed() -> None:
    events = [_event("FailedScheduling", T0, "0/2 nodes are available")]
    assert vanished_pod_record(_request(), events, observed_gone_at=T0 + timedelta(seconds=30)) is None
    assert vanished_pod_record(_request(), [], observed_gone_at=T0) is None


def test_the_rebuilt_pod_is_priced_and_says_how_its_lifetime_was_found(tmp_path: Path) -> None:
    events = [
        _event("Scheduled", T0, "Successfully assigned ai-prod/explain-0-abc to cpu-node-1"),
        _event("Killing", T0 + timedelta(hours=1), "Stopping container base"),
    ]
    pod = vanished_pod_record(_request(), events, observed_gone_at=T0 + timedelta(hours=2))
    node = {
        "metadata": {
            "name": "cpu-node-1",
            "labels": {
                "node.kubernetes.io/instance-type": "m6i.xlarge",
                "karpenter.sh/capacity-type": "on-demand",
            },
        }
    }
    record = {"pod": pod, "node": node, "try_number": 1, "vanished": True}
    rows, notes = price_pods([record], "default")
    assert rows and all(row["ResourceName"] == "explain-0-abc" for row in rows)
    assert sum(row["BilledCost"] for row in rows) > 0
    assert {row["x_CapacityType"] for row in rows} == {"on-demand"}
    assert any("explain-0-abc" in note and "Killing" in note for note in notes)
    # the same pod recorded by the completion callback carries no such note
    callback_record = {"pod": pod, "node": node, "try_number": 1}
    assert not any("Killing" in note for note in price_pods([callback_record], "default")[1])


@pytest.mark.parametrize("message", ["", "assigned somewhere"])
def test_a_scheduled_event_without_a_node_name_still_bills_the_lifetime(message: str) -> None:
    events = [_event("Scheduled", T0, message), _event("Killing", T0 + timedelta(seconds=60))]
    pod = vanished_pod_record(_request(), events, observed_gone_at=T0 + timedelta(seconds=90))
    assert pod is not None and "nodeName" not in pod["spec"]
    assert pod_lifetime(pod) == (T0, T0 + timedelta(seconds=60))
