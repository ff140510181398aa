"""Two Celery workers standing in for two machines: a run's stages must not share a local disk.

The ``celery_stack`` fixture runs Airflow with the CeleryExecutor (Redis broker, PostgreSQL metadata DB and
result backend) and two workers, ``worker-a`` and ``worker-b``, each with its own XAC_HOME (empty: nothing
is copied there), working directory, TMPDIR, host name and queue; the feature store, the model store and
the sources of models declared by a ``source`` are shared services (``shared_services_environment`` in
scripts/airflow_stack.py). The stack's cluster policy routes the stages of every sample DAG alternately
(``CELERY_ROUTES``), so a stage that reads what the previous one left on its local disk fails here. The
test triggers three runs of each sample DAG at once over the REST API and checks: where every task ran,
that every run succeeded, that each published one bundle that verifies (``--chain`` too), that each run's
cost is in the shared PostgreSQL cost store, and that neither worker keeps local state another task needed.
Timings go to ``$XAC_HOME/e2e_celery.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "diagnosis-risk-kernelshap"
CONCURRENT_RUNS = 3
SAMPLE_BUDGET = 100
RUN_TIMEOUT_S = 900.0
RESULTS = Path(os.environ.get("XAC_HOME", "/tmp")) / "e2e_celery.json"


def _patient_ids() -> list[str]:
    from examples.datasets import tabular_frame

    ids = tabular_frame()["patient_id"].tolist()
    return [str(ids[5]), str(ids[17])]


def _expected_hosts(stack_module: Any, stack: Any) -> dict[str, str]:
    """{task_id: host name of the worker the stack's policy routes it to}."""
    host_of_queue = {worker.queue: worker.hostname for worker in stack.workers}
    return {task_id: host_of_queue[queue] for task_id, queue in stack_module.celery_routes().items()}


def test_both_workers_are_registered(celery_stack: Any) -> None:
    workers = celery_stack.workers
    assert [w.name for w in workers] == ["worker-a", "worker-b"]
    # Each answers under its own node name and consumes its own queue only.
    assert celery_stack.celery_active_queues() == {w.celery_hostname: [w.queue] for w in workers}
    # Two machines: nothing of their local state is shared, with each other or with the other components.
    session_home = Path(os.environ["XAC_HOME"]).resolve()
    homes = {w.xac_home.resolve() for w in workers}
    assert len(homes) == 2 and session_home not in homes
    assert len({w.tmpdir for w in workers}) == 2 and len({w.hostname for w in workers}) == 2
    for worker in workers:
        env = worker.environment(celery_stack.env)
        assert env["XAC_HOME"] == str(worker.xac_home) and env["TMPDIR"] == str(worker.tmpdir)


def _confs() -> dict[str, dict[str, Any]]:
    """Every sample DAG with a trigger conf that keeps its run short (TreeSHAP takes no sample budget)."""
    return {
        DAG_ID: {"inference_ids": _patient_ids(), "sample_budget": SAMPLE_BUDGET},
        "diagnosis-risk-treeshap": {"inference_ids": _patient_ids()},
        "image-classifier-shap-explainer": {"sample_budget": SAMPLE_BUDGET},
        "multimodal-digits-ig": {"sample_budget": 8},
    }


def test_concurrent_runs_alternate_between_workers(
    celery_stack: Any, stack_module: Any, dag_runs: Any
) -> None:
    from include.compliance import list_bundles, parse_s3_uri, verify_bundle
    from include.configuration import load_config
    from include.configuration.layout import model_listing_prefix
    from include.finops.store import CostStore
    from include.storage import default_public_key_path, s3_client

    confs = _confs()
    dags = {dag_id: dag_runs(celery_stack, dag_id) for dag_id in confs}
    for runs in dags.values():
        runs.unpause()
    celery_stack.token()  # log in once, before the threads share the token

    triggered_at = time.perf_counter()
    wanted = [dag_id for dag_id in confs for _ in range(CONCURRENT_RUNS)]
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        responses = list(pool.map(lambda dag_id: dags[dag_id].trigger(confs[dag_id]), wanted))
    for response in responses:
        assert response.status_code == 200, response.text
    keys = [
        (dag_id, response.json()["dag_run_id"]) for dag_id, response in zip(wanted, responses, strict=True)
    ]
    assert len(set(keys)) == len(wanted)

    finished = {key: dags[key[0]].wait(key[1], RUN_TIMEOUT_S) for key in keys}
    wall_seconds = time.perf_counter() - triggered_at
    task_instances = {key: dags[key[0]].task_instances(key[1]) for key in keys}
    _record_timings(celery_stack, finished, task_instances, wall_seconds)

    # 1. Every task instance that started ran on the worker the policy routes it to, failed runs included:
    #    this says whether the stack itself routes to both queues even when the runs fail.
    expected = _expected_hosts(stack_module, celery_stack)
    misrouted = [
        f"{key} {ti['task_id']}[{ti['map_index']}]: ran on {ti['hostname']}, "
        f"routed to {expected.get(ti['task_id'])}"
        for key, tis in task_instances.items()
        for ti in tis
        if ti.get("hostname") and ti["hostname"] != expected.get(ti["task_id"])
    ]
    assert not misrouted, "\n".join(misrouted)

    # 2. Every run succeeded.
    failed = {key: run["state"] for key, run in finished.items() if run["state"] != "success"}
    assert not failed, "\n\n".join(
        f"=== {key}: {state}\n{dags[key[0]].failure_report(key[1])}" for key, state in failed.items()
    )

    # 3. In every run, every stage ran, each on its own worker, alternating along the pipeline.
    order = [task_id for task_id, _ in stack_module.CELERY_ROUTES]
    for key, tis in task_instances.items():
        hosts: dict[str, set[str]] = {}
        for ti in tis:
            hosts.setdefault(ti["task_id"], set()).add(ti["hostname"])
        assert set(hosts) == set(order), (key, sorted(hosts))
        chain = [hosts[task_id] for task_id in order]
        assert all(len(h) == 1 for h in chain), (key, chain)
        assert all(a != b for a, b in pairwise(chain)), (key, chain)
        assert {host for h in chain for host in h} == {w.hostname for w in celery_stack.workers}

    # 4. Every run published exactly one bundle; it verifies against the demo key, its chain included;
    #    its cost is in the one shared cost store (PostgreSQL), whichever worker metered it.
    client = s3_client()
    public_key = default_public_key_path().read_bytes()
    store = CostStore(celery_stack.env["XAC_COST_STORE_URL"])
    assert store.url.startswith("postgresql")
    for dag_id in confs:
        config = load_config(REPO_ROOT / "include" / "configs" / "explainers" / f"{dag_id}.yaml").config
        bundles = list_bundles(client, config.spec.storage.bucket, prefix=model_listing_prefix(config))
        for run_id in [run_id for d, run_id in keys if d == dag_id]:
            mine = [b for b in bundles if b.run_id == run_id]
            assert len(mine) == 1, (dag_id, run_id, [b.to_dict() for b in bundles])
            assert mine[0].complete and mine[0].dag_id == dag_id
            report = verify_bundle(mine[0].uri, public_key_pem=public_key, s3_client=client)
            assert report.ok, (dag_id, run_id, report.problems)
            chained = subprocess.run(
                [sys.executable, "-m", "include.cli", "bundle", "verify", mine[0].uri, "--chain"],
                capture_output=True,
                text=True,
            )
            assert chained.returncode == 0, (dag_id, run_id, chained.stdout + chained.stderr)
            rows = store.rows(config=dag_id, run_id=run_id)
            assert rows and sum(r["BilledCost"] for r in rows) > 0, (dag_id, run_id)
            # Every stage's task log is in the bundle, read back from remote logging (each worker keeps
            # its own log folder): the publish task on worker A holds B's logs too.
            bucket, prefix = parse_s3_uri(mine[0].uri)
            index_key = f"{prefix.rstrip('/')}/logs/index.json"
            index = json.loads(client.get_object(Bucket=bucket, Key=index_key)["Body"].read())
            assert index["airflow_log_folder"].startswith("s3://xac-airflow-logs/airflow-logs/dag_id="), index
            logged = {f["task_id"] for f in index["files"] if f["kind"] == "airflow_task"}
            assert logged == set(order), (dag_id, run_id, sorted(logged))

    # 5. No stage handed files to another through a worker's disk: each task's scratch folder is gone,
    #    and a worker's XAC_HOME holds at most the explainer's cache of the pinned model (fetched from
    #    the shared model store): no run workspace, feature store, key, salt or cost store.
    for worker in celery_stack.workers:
        left = sorted(  # pymp-*: the running worker's own multiprocessing folder, not a task's
            str(p.relative_to(worker.tmpdir))
            for p in worker.tmpdir.rglob("*")
            if not p.relative_to(worker.tmpdir).parts[0].startswith("pymp-")
        )
        assert not left, f"{worker.name} leaves files in its TMPDIR: {left[:20]}"
        kept = sorted(p.name for p in worker.xac_home.iterdir()) if worker.xac_home.exists() else []
        assert set(kept) <= {"models"}, f"{worker.name} keeps local state in {worker.xac_home}: {kept}"


def _record_timings(
    stack: Any,
    finished: dict[tuple[str, str], dict[str, Any]],
    task_instances: dict[tuple[str, str], list[dict[str, Any]]],
    wall_seconds: float,
) -> None:
    """$XAC_HOME/e2e_celery.json: the stack's start-up, the three runs' wall time, where each task ran."""

    def _seconds(run: dict[str, Any]) -> float | None:
        if not (run.get("start_date") and run.get("end_date")):
            return None
        started = datetime.fromisoformat(run["start_date"])
        return round((datetime.fromisoformat(run["end_date"]) - started).total_seconds(), 2)

    record = {
        "what": f"{CONCURRENT_RUNS} concurrent REST-triggered runs of each sample DAG, Celery, 2 workers",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "stack_start_s": stack.timings,
        "trigger_to_all_final_s": round(wall_seconds, 2),
        "runs": {
            f"{key[0]} {key[1]}": {
                "state": run["state"],
                "airflow_start_to_end_s": _seconds(run),
                "tasks": {
                    f"{ti['task_id']}[{ti['map_index']}]": [ti["state"], ti.get("hostname")]
                    for ti in task_instances[key]
                },
            }
            for key, run in finished.items()
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
