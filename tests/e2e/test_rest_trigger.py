"""End to end through Airflow's REST API: a real stack triggers a sample DAG with a conf.

The stack (api-server, scheduler, dag-processor, triggerer; LocalExecutor) runs on 127.0.0.1 with its
metadata DB on the local PostgreSQL (SQLite when none answers). The test logs in as the UI does, unpauses
and triggers ``diagnosis-risk-kernelshap`` with two inference ids and a sample budget, waits for the run,
then checks the bundle in S3 the way the compliance team would: listed once, verified, exactly the two
explanations, and the run's numSamples. Timings go to bench/results/e2e_rest.json (recorded, not asserted).
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "diagnosis-risk-kernelshap"
SAMPLE_BUDGET = 300
RUN_TIMEOUT_S = 240.0
# Recorded into bench/results/ only when asked (XAC_RECORD_BENCH=1): `make test` must not modify
# tracked files; otherwise the figures go to the test's XAC_HOME.
RESULTS = (
    REPO_ROOT / "bench" / "results" / "e2e_rest.json"
    if os.environ.get("XAC_RECORD_BENCH") == "1"
    else Path(os.environ.get("XAC_HOME", "/tmp")) / "e2e_rest.json"
)


def _two_patient_ids() -> list[str]:
    from examples.datasets import tabular_frame

    ids = tabular_frame()["patient_id"].tolist()
    # Not the first rows: ids a default run (the config's most recent entities) would not pick anyway.
    return [str(ids[3]), str(ids[42])]


# A component (root, own session) with: a child; an orphan whose parent exited (re-parented to init) and
# whose environment lacks the marker (found only by its session); an orphan that started its own session
# (found only by the marker).
_TREE = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
child = subprocess.Popen(sleeper)
spawn = (
    "import os, subprocess, sys; s = sys.argv[1:]; "
    "env = {k: v for k, v in os.environ.items() if k != 'XAC_AIRFLOW_STACK_ID'}; "
    "print(subprocess.Popen(s, env=env).pid, subprocess.Popen(s, start_new_session=True).pid)"
)
middle = subprocess.Popen([sys.executable, "-c", spawn, *sleeper], stdout=subprocess.PIPE, text=True)
orphans = middle.stdout.readline().split()
middle.wait()
print(child.pid, *orphans, flush=True)
time.sleep(120)
"""


def test_stop_finds_task_processes_by_their_ids(stack_module: Any) -> None:
    import subprocess
    import sys

    stack_id = "test-" + os.urandom(4).hex()
    env = {**os.environ, stack_module.MARKER_ENV: stack_id}
    root = subprocess.Popen(
        [sys.executable, "-c", _TREE], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    # Not part of the stack: no marker, its own session, not a descendant. It must survive.
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    tree: set[int] = set()
    try:
        assert root.stdout is not None
        tree = {root.pid, *(int(pid) for pid in root.stdout.readline().split())}
        assert len(tree) == 4
        found = stack_module.stack_processes(stack_id, {root.pid})
        assert tree <= set(found) and bystander.pid not in found
        killed = stack_module.kill_stack_processes(stack_id, {root.pid}, grace=5.0)
        assert tree <= set(killed)
        root.wait(timeout=10)
        assert not any(stack_module._alive(pid) for pid in tree)
        assert bystander.poll() is None
    finally:
        for pid in tree - {root.pid}:
            if stack_module._alive(pid):  # only when the code under test left them behind
                os.kill(pid, 9)
        for process in (root, bystander):
            process.kill()
            process.wait(timeout=10)


def test_rest_api_needs_a_login(airflow_stack: Any) -> None:
    import httpx

    url = f"{airflow_stack.base_url}/api/v2/dags"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = httpx.post(
        f"{airflow_stack.base_url}/auth/token",
        json={"username": airflow_stack.username, "password": airflow_stack.password + "-wrong"},
        timeout=10,
    )
    assert wrong.status_code == 401
    listed = httpx.get(url, headers={"Authorization": f"Bearer {airflow_stack.token()}"}, timeout=10)
    assert listed.status_code == 200
    assert DAG_ID in {dag["dag_id"] for dag in listed.json()["dags"]}


@pytest.mark.parametrize(
    "conf",
    [
        {"sample_budget": 0},  # below the Param's minimum of 1
        {"sample_budget": "many"},  # not an integer
        {"dry_run_cost_only": "yes"},  # not a boolean
        {"inference_ids": "P100003"},  # not an array
        {"inference_ids": [""]},  # an empty id (items minLength 1)
        {"model_version": "../diagnosis-risk-gbt/1"},  # joined into paths: another model's folder
    ],
    ids=[
        "budget-zero",
        "budget-string",
        "dry-run-string",
        "ids-not-a-list",
        "ids-empty-string",
        "version-path",
    ],
)
def test_invalid_conf_is_refused_by_the_rest_api(
    airflow_stack: Any, dag_runs: Any, conf: dict[str, Any]
) -> None:
    runs = dag_runs(airflow_stack, DAG_ID)
    before = runs.count()
    response = runs.trigger(conf)
    assert 400 <= response.status_code < 500, response.text
    assert runs.count() == before, "a refused conf must not create a run"


def test_rest_triggered_run_publishes_one_verified_bundle(
    airflow_stack: Any, dag_runs: Any, tmp_path: Path
) -> None:
    from include.compliance import download_bundle, list_bundles, verify_bundle
    from include.configuration import load_config
    from include.configuration.layout import explanation_file_name, model_listing_prefix
    from include.storage import default_public_key_path, s3_client

    ids = _two_patient_ids()
    runs = dag_runs(airflow_stack, DAG_ID)
    runs.unpause()

    triggered_at = time.perf_counter()
    response = runs.trigger({"inference_ids": ids, "sample_budget": SAMPLE_BUDGET})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    assert response.json()["conf"] == {"inference_ids": ids, "sample_budget": SAMPLE_BUDGET}

    run = runs.wait(run_id, RUN_TIMEOUT_S)
    run_seconds = time.perf_counter() - triggered_at
    _record_timings(airflow_stack, run, run_seconds)
    assert run["state"] == "success", runs.failure_report(run_id)

    loaded = load_config(REPO_ROOT / "include" / "configs" / "explainers" / f"{DAG_ID}.yaml")
    config = loaded.config
    client = s3_client()
    bucket = config.spec.storage.bucket
    bundles = list_bundles(client, bucket, prefix=model_listing_prefix(config))
    mine = [b for b in bundles if b.run_id == run_id]
    assert len(mine) == 1, [b.to_dict() for b in bundles]
    bundle = mine[0]
    assert bundle.complete and bundle.dag_id == DAG_ID

    public_key = default_public_key_path().read_bytes()
    report = verify_bundle(bundle.uri, public_key_pem=public_key, s3_client=client)
    assert report.ok, report.problems

    local = download_bundle(client, bundle.uri, tmp_path / "bundle")
    version = bundle.version or str(config.spec.modelVersion)
    expected_files = {explanation_file_name(config, version, i) for i in ids}
    assert {p.name for p in (local / "explanations").iterdir()} == expected_files
    explained = {json.loads(p.read_text())["inference_id"] for p in (local / "explanations").iterdir()}
    assert explained == set(ids)

    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["run"]["run_id"] == run_id
    assert manifest["run"]["params"]["numSamples"] == SAMPLE_BUDGET
    assert manifest["run"]["explained"] == len(ids)
    identity = manifest["run"]["identity"]
    # Triggered through the REST API by the logged-in user, not by the scheduler or dag.test().
    assert "manual" in identity["run_type"].lower()
    assert identity["triggering_user"] == airflow_stack.username


def _record_timings(stack: Any, run: dict[str, Any], run_seconds: float) -> None:
    """bench/results/e2e_rest.json: how long the stack took to start and the run to finish."""
    import airflow

    def _parse(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    started, ended = _parse(run.get("start_date")), _parse(run.get("end_date"))
    airflow_seconds = round((ended - started).total_seconds(), 2) if started and ended else None
    record = {
        "what": "REST-triggered run of diagnosis-risk-kernelshap on a local Airflow stack (LocalExecutor)",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "airflow": airflow.__version__,
        "metadata_db": stack.db_url.split(":", 1)[0],
        "stack_start_s": stack.timings,
        "targets_s": {"stack_start": 60, "run": 120},
        "run": {
            "state": run["state"],
            "trigger_to_final_state_s": round(run_seconds, 2),
            "airflow_start_to_end_s": airflow_seconds,
            "conf": run.get("conf"),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
