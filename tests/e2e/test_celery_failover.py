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


def _attempt(runs: Any, run_id: str, task_id: str) -> dict[str, Any] | None:
    """The run's task instance of ``task_id`` (its latest try), if the scheduler made one yet."""
    return next((ti for ti in runs.task_instances(run_id) if ti["task_id"] == task_id), None)


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
    while (attempt := _attempt(runs, run_id, "explain")) is None or attempt["state"] != "running":
        assert time.monotonic() < deadline, f"explain never ran: {runs.failure_report(run_id)}"
        time.sleep(0.5)
    first_host = attempt["hostname"]
    assert first_host.startswith("xac-worker-a.")
    time.sleep(2.0)  # well inside the explainer's work: a shard of 4 rows x 1500 samples
    replacement = failover_stack.replace_worker("worker-a")

    final = runs.wait(run_id, RUN_TIMEOUT_S)
    assert final["state"] == "success", runs.failure_report(run_id)
    explain = _attempt(runs, run_id, "explain")
    assert explain is not None and explain["try_number"] >= 2, explain
    assert explain["hostname"] == replacement.hostname != first_host

    client = s3_client()
    bundles = [b for b in list_bundles(client, "xac-explanations") if b.run_id == run_id]
    assert len(bundles) == 1 and bundles[0].complete, [b.to_dict() for b in bundles]
    report = verify_bundle(
        bundles[0].uri, public_key_pem=default_public_key_path().read_bytes(), s3_client=client
    )
    assert report.ok, report.problems


def test_a_worker_killed_mid_publish_leaves_no_visible_half_bundle_and_the_retry_publishes_once(
    failover_stack: Any, dag_runs: Any
) -> None:
    """Worker A reaches S3 over a slow link, so that ``publish_bundle`` (routed to A) is still
    uploading when A's machine dies: the bundle's claim and some files are written, its signed
    statement is not. Until the retry finishes, ``xac bundle list`` shows nothing of the run; the
    retry on A's replacement resumes the bundle it staged, and the run has exactly one verified
    bundle."""
    from urllib.parse import urlsplit

    from examples.datasets import tabular_frame
    from include.compliance import list_bundles, verify_bundle
    from include.configuration.layout import safe_key_part
    from include.storage import default_public_key_path, s3_client
    from tests.e2e.slow_proxy import slow_proxy

    runs = dag_runs(failover_stack, DAG_ID)
    runs.unpause()
    client = s3_client()
    current_a = next(w for w in failover_stack.workers if (w.queue_letter or w.letter) == "a")
    upstream = urlsplit(failover_stack.env["S3_ENDPOINT_URL"]).port
    with slow_proxy(int(upstream), delay=0.15) as port:
        slow_a = failover_stack.replace_worker(
            current_a.name, extra_env={"S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        )
        ids = [str(i) for i in tabular_frame()["patient_id"].tolist()[4:7]]
        response = runs.trigger({"inference_ids": ids, "sample_budget": 200})
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        suffix = f"/runs/{safe_key_part(run_id)}/"

        def ours(include_incomplete: bool) -> list[Any]:
            listed = list_bundles(client, "xac-explanations", include_incomplete=include_incomplete)
            return [b for b in listed if b.uri.endswith(suffix)]

        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not ours(include_incomplete=True):  # the publish has claimed its prefix
            assert time.monotonic() < deadline, f"publish never started: {runs.failure_report(run_id)}"
            time.sleep(0.2)
        publish = _attempt(runs, run_id, "publish_bundle")
        assert (
            publish is not None and publish["state"] == "running" and publish["hostname"] == slow_a.hostname
        ), publish
        [partial] = ours(include_incomplete=True)
        assert not partial.complete, "the publish finished before the worker could be killed"
        replacement = failover_stack.replace_worker(slow_a.name)
    assert ours(include_incomplete=False) == []  # a half-written bundle is never listed

    final = runs.wait(run_id, RUN_TIMEOUT_S)
    assert final["state"] == "success", runs.failure_report(run_id)
    publish = _attempt(runs, run_id, "publish_bundle")
    assert (
        publish is not None and publish["try_number"] >= 2 and publish["hostname"] == replacement.hostname
    ), publish
    [bundle] = ours(include_incomplete=True)
    assert bundle.complete
    report = verify_bundle(
        bundle.uri, public_key_pem=default_public_key_path().read_bytes(), s3_client=client, chain=True
    )
    assert report.ok, report.problems
