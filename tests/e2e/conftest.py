"""Fixtures for the end-to-end tests: S3 on loopback, the sample data, a metadata DB and a real Airflow.

The stack (scripts/airflow_stack.py) runs the api-server, scheduler, dag-processor and triggerer as
child processes with their own AIRFLOW_HOME under the session's XAC_HOME and their own metadata DB, so
they never share state with the Airflow that other tests use in-process.
"""

from __future__ import annotations

import importlib.util
import os
import sys
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
