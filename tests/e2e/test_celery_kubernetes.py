"""The two-worker Celery stack with the kubernetes backend: each explain shard is a pod.

The stack of test_celery_workers.py, with the explainer backend pointed at the Kubernetes API double on
loopback (include/embedded/kube_api.py; the ``loopback`` cluster profile). The mapped ``explain`` tasks
(KubernetesPodOperator, deferrable: the stack's triggerer watches the pods) run on worker A, the join on
worker B: the finished pods their completion callback saved, the shard outputs and the model the pods
read all go through the run's staging prefix. Two runs at once; each publishes one verified bundle whose
cost was computed from its pods.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "diagnosis-risk-kernelshap"
RUN_TIMEOUT_S = 480.0


def test_pod_shards_on_a_celery_stack_publish_verified_bundles(
    celery_kpo_stack: Any, kube_api: tuple[Any, dict[str, str]], dag_runs: Any, tmp_path: Path
) -> None:
    from examples.datasets import tabular_frame
    from include.compliance import download_bundle, list_bundles, verify_bundle
    from include.k8s.names import label_safe
    from include.storage import default_public_key_path, s3_client

    api, _ = kube_api
    runs = dag_runs(celery_kpo_stack, DAG_ID)
    runs.unpause()
    ids = [str(i) for i in tabular_frame()["patient_id"].tolist()[:3]]
    celery_kpo_stack.token()
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(
            pool.map(lambda _: runs.trigger({"inference_ids": ids, "sample_budget": 100}), range(2))
        )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    run_ids = [r.json()["dag_run_id"] for r in responses]
    for run_id in run_ids:
        final = runs.wait(run_id, RUN_TIMEOUT_S)
        assert final["state"] == "success", runs.failure_report(run_id)

    client = s3_client()
    key = default_public_key_path().read_bytes()
    for run_id in run_ids:
        hosts = {ti["task_id"]: ti["hostname"] for ti in runs.task_instances(run_id)}
        assert hosts["explain"] != hosts["join_shards"], hosts  # the pods' records crossed machines
        pods = [
            p
            for p in api.history
            if (p["metadata"].get("labels") or {}).get("xac.dev/run-id") == label_safe(run_id)
        ]
        assert pods and all(p["status"]["phase"] == "Succeeded" for p in pods)
        (bundle,) = [b for b in list_bundles(client, "xac-explanations") if b.run_id == run_id]
        assert verify_bundle(bundle.uri, public_key_pem=key, s3_client=client).ok
        local = download_bundle(client, bundle.uri, tmp_path / run_id.replace(":", "_"))
        cost = json.loads((local / "cost.json").read_text())
        assert {row["ResourceName"] for row in cost["rows"]} == {p["metadata"]["name"] for p in pods}
        assert all(row["ResourceType"] == "Kubernetes Pod" for row in cost["rows"])
