"""A worker dies mid-task: the task is retried on the machine that replaces it, and the run publishes
exactly one bundle.

On the two-worker Celery stack (see test_celery_workers.py), ``explain`` runs on worker A. While it runs,
worker A's machine dies: SIGKILL to its whole process group (the Celery worker, its pool, the task
process and the explainer process). A new worker with an empty disk takes over A's queue, as an
autoscaled node would. The scheduler notices the dead task by its missed heartbeats (the stack lowers
the timeout to 20 s), fails the try, and the retry runs on the replacement: it reads everything it
needs from the run's staging prefix, the join, cost and gate stages follow on worker B and A's
replacement, and the run publishes one verified bundle.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "diagnosis-risk-kernelshap"
RUN_TIMEOUT_S = 600.0


def _explain_attempt(runs: Any, run_id: str) -> dict[str, Any] | None:
    return next((ti for ti in runs.task_instances(run_id) if ti["task_id"] == "explain"), None)


def test_a_task_of_a_killed_worker_is_retried_on_its_replacement(failover_stack: Any, dag_runs: Any) -> None:
    from examples.datasets import tabular_frame
    from include.compliance import list_bundles, verify_bundle
    from include.storage import default_public_key_path, s3_client

    runs = dag_runs(failover_stack, DAG_ID)
    runs.unpause()
    ids = [str(i) for i in tabular_frame()["patient_id"].tolist()[:4]]
    response = runs.trigger({"inference_ids": ids, "sample_budget": 1500})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (attempt := _explain_attempt(runs, run_id)) is None or attempt["state"] != "running":
        assert time.monotonic() < deadline, f"explain never ran: {runs.failure_report(run_id)}"
        time.sleep(0.5)
    first_host = attempt["hostname"]
    assert first_host.startswith("xac-worker-a.")
    time.sleep(2.0)  # well inside the explainer's work: a shard of 4 rows x 1500 samples
    replacement = failover_stack.replace_worker("worker-a")

    final = runs.wait(run_id, RUN_TIMEOUT_S)
    assert final["state"] == "success", runs.failure_report(run_id)
    explain = _explain_attempt(runs, run_id)
    assert explain is not None and explain["try_number"] >= 2, explain
    assert explain["hostname"] == replacement.hostname != first_host

    client = s3_client()
    bundles = [b for b in list_bundles(client, "xac-explanations") if b.run_id == run_id]
    assert len(bundles) == 1 and bundles[0].complete, [b.to_dict() for b in bundles]
    report = verify_bundle(
        bundles[0].uri, public_key_pem=default_public_key_path().read_bytes(), s3_client=client
    )
    assert report.ok, report.problems
