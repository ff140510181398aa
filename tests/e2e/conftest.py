"""Fixtures for the end-to-end tests: S3 on loopback, the sample data, a metadata DB and a real Airflow.

The stack (scripts/airflow_stack.py) runs the api-server, scheduler, dag-processor and triggerer as
child processes with their own AIRFLOW_HOME under the session's XAC_HOME and their own metadata DB, so
they never share state with the Airflow that other tests use in-process. ``celery_stack`` adds two
Celery workers (CeleryExecutor, Redis broker, PostgreSQL only), each standing in for a machine of its own.
``dag_runs`` triggers and follows a DAG's runs over the REST API.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_stack_module() -> ModuleType:
    # scripts/ is not a package; load the file itself so the test drives exactly what `make airflow` runs.
    path = REPO_ROOT / "scripts" / "airflow_stack.py"
    spec = importlib.util.spec_from_file_location("xac_airflow_stack", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stack_module() -> ModuleType:
    return _load_stack_module()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto server; the stack's tasks inherit S3_ENDPOINT_URL and the AWS_* variables from here."""
    from include.embedded import s3_server

    with s3_server.environment() as server:
        yield server.endpoint_url


@pytest.fixture(scope="module")
def prepared() -> None:
    from examples.prepare import prepare_samples

    for _ in prepare_samples():
        pass


@pytest.fixture(scope="module")
def metadata_db(stack_module: ModuleType) -> Iterator[tuple[str, str]]:
    """(backend, URL): a fresh PostgreSQL database when one answers on 127.0.0.1:5432, else SQLite.

    XAC_TEST_METADATA_DB=sqlite forces SQLite, as in tests/conftest.py.
    """
    wants_postgres = os.environ.get("XAC_TEST_METADATA_DB", "postgres") == "postgres"
    if not (wants_postgres and stack_module.postgres_answers()):
        from include.paths import xac_home

        home = xac_home() / "airflow-stack"
        home.mkdir(parents=True, exist_ok=True)
        (home / "airflow.db").unlink(missing_ok=True)
        yield "sqlite", stack_module.sqlite_url(home)
        return
    name = f"xac_e2e_{os.getpid()}"
    url = stack_module.create_postgres_database(name, fresh=True)
    try:
        yield "postgresql", url
    finally:
        stack_module.drop_postgres_database(name)


def _celery_stack(stack_module: ModuleType, extra_env: dict[str, str] | None = None) -> Iterator[Any]:
    """Start a two-worker Celery stack on a fresh PostgreSQL database; stop it and check nothing is left."""
    if os.environ.get("XAC_TEST_METADATA_DB", "postgres") != "postgres":
        pytest.skip("XAC_TEST_METADATA_DB forces SQLite; the Celery stack needs PostgreSQL")
    if not stack_module.postgres_answers():
        pytest.skip(
            f"no PostgreSQL answers on {stack_module.PG_HOST}:{stack_module.PG_PORT}: the Celery stack "
            "needs it (metadata DB and Celery result backend)"
        )
    if not stack_module.redis_answers(stack_module.DEFAULT_BROKER_URL):
        pytest.skip(f"no Redis answers at {stack_module.DEFAULT_BROKER_URL}: the Celery stack's broker")
    from include.paths import xac_home

    name = f"xac_e2e_celery_{os.getpid()}"
    url = stack_module.create_postgres_database(name, fresh=True)
    try:
        stack = stack_module.start(
            db_url=url,
            home=xac_home() / "airflow-stack-celery",
            executor="celery",
            workers=2,
            timeout=240.0,
            extra_env={
                **stack_module.shared_services_environment(xac_home() / "shared-services"),
                **(extra_env or {}),
            },
        )
        roots = {process.pid for process in stack.processes.values()}
        try:
            yield stack
        finally:
            stack_module.stop(stack)
        # Nothing left behind: no component, Celery worker, pool process or task process.
        assert stack_module.stack_processes(stack.stack_id, roots) == {}
        assert stack.health() is None
    finally:
        stack_module.drop_postgres_database(name)


@pytest.fixture(scope="module")
def failover_stack(stack_module: ModuleType, s3_endpoint: str, prepared: None) -> Iterator[Any]:
    """A Celery stack whose scheduler notices a dead worker's task within seconds (the heartbeat
    timeout is 300 s by default), so that the task is retried by the machine that replaces it."""
    yield from _celery_stack(
        stack_module,
        {
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        },
    )


@pytest.fixture(scope="module")
def kube_api(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, dict[str, str]]]:
    """The Kubernetes API double on loopback (include/embedded/kube_api.py) and the environment that
    points the explainer backend at it: the explainer's service account gets the S3 credentials (as
    IRSA would)."""
    from include.embedded import kube_api as double

    with double.start(service_account_env={"xac-explainer": double.explainer_credentials(os.environ)}) as api:
        kubeconfig = api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config", namespace="ai-prod")
        yield (
            api,
            double.backend_environment(
                kubeconfig, REPO_ROOT / "include" / "configs" / "clusters" / "loopback.yaml"
            ),
        )


@pytest.fixture(scope="module")
def celery_kpo_stack(
    stack_module: ModuleType, s3_endpoint: str, prepared: None, kube_api: tuple[Any, dict[str, str]]
) -> Iterator[Any]:
    """The two-worker Celery stack whose explain shards are KubernetesPodOperator pods on the double."""
    yield from _celery_stack(stack_module, kube_api[1])


@pytest.fixture(scope="module")
def celery_stack(stack_module: ModuleType, s3_endpoint: str, prepared: None) -> Iterator[Any]:
    """A stack with the CeleryExecutor and two workers (``worker-a``, ``worker-b``), its own metadata DB.

    Each worker has its own XAC_HOME (empty: the sample data, models and key are only in the session's
    XAC_HOME, which the other components use), working directory, TMPDIR, host name and queue; the
    stack's cluster policy routes the stages of the explainability DAGs to them alternately.
    """
    yield from _celery_stack(stack_module)


class DagRuns:
    """One DAG's runs on a stack, over the REST API as a client would: trigger, follow, explain failures."""

    def __init__(self, stack: Any, dag_id: str) -> None:
        self.stack = stack
        self.dag_id = dag_id

    def unpause(self) -> None:
        response = self.stack.api("PATCH", f"/api/v2/dags/{self.dag_id}", json={"is_paused": False})
        assert response.status_code == 200 and response.json()["is_paused"] is False, response.text

    def trigger(self, conf: dict[str, Any]) -> Any:
        """POST a new run with ``conf``; the httpx response (the caller checks it)."""
        return self.stack.api(
            "POST", f"/api/v2/dags/{self.dag_id}/dagRuns", json={"logical_date": None, "conf": conf}
        )

    def count(self) -> int:
        response = self.stack.api("GET", f"/api/v2/dags/{self.dag_id}/dagRuns", params={"limit": 1})
        assert response.status_code == 200, response.text
        return int(response.json()["total_entries"])

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run, mapped ones included (one per map index)."""
        response = self.stack.api(
            "GET", f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )
        assert response.status_code == 200, response.text
        return list(response.json()["task_instances"])

    def failure_report(self, run_id: str) -> str:
        """Task states and the tail of each failed task's log, so a red run says why."""
        base = f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances"
        tis = self.task_instances(run_id)
        lines = [
            f"{ti['task_id']}{_map_suffix(ti)}: {ti['state']}"
            + (f" on {ti['hostname']}" if ti.get("hostname") else "")
            for ti in tis
        ]
        for ti in tis:
            if ti["state"] in ("failed", "upstream_failed", "up_for_retry"):
                params: dict[str, Any] = {"full_content": True}
                if ti.get("map_index", -1) >= 0:
                    params["map_index"] = ti["map_index"]
                log = self.stack.api(
                    "GET", f"{base}/{ti['task_id']}/logs/{max(ti['try_number'], 1)}", params=params
                )
                lines.append(f"--- log of {ti['task_id']}{_map_suffix(ti)}:\n{log.text[-4000:]}")
        for component in ("scheduler", *(w.name for w in getattr(self.stack, "workers", ()))):
            lines.append(f"--- {component} log:\n{self.stack.log_tail(component, 30)}")
        return "\n".join(lines)

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        """The run once it is in a final state (success or failed); fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.stack.api("GET", f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}")
            assert response.status_code == 200, response.text
            run = response.json()
            if run["state"] in ("success", "failed"):
                return dict(run)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"run {run_id} still {run['state']} after {timeout:.0f}s\n{self.failure_report(run_id)}"
                )
            if self.stack.dead_components():
                pytest.fail(f"components died: {self.stack.dead_components()}\n{self.failure_report(run_id)}")
            time.sleep(1.0)


def _map_suffix(ti: dict[str, Any]) -> str:
    return f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""


@pytest.fixture
def dag_runs() -> type[DagRuns]:
    """``dag_runs(stack, dag_id)``: the e2e tests' REST helpers (a test module cannot import conftest)."""
    return DagRuns


@pytest.fixture(scope="module")
def airflow_stack(
    stack_module: ModuleType, s3_endpoint: str, prepared: None, metadata_db: tuple[str, str]
) -> Iterator[Any]:
    stack = stack_module.start(db_url=metadata_db[1], timeout=240.0)
    roots = {process.pid for process in stack.processes.values()}
    try:
        yield stack
    finally:
        stack_module.stop(stack)
    # stop() must leave nothing behind: no component, worker or task process, and no listener.
    assert stack_module.stack_processes(stack.stack_id, roots) == {}
    assert stack.health() is None
