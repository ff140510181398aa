"""Shared helpers of the DAG run tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def _task_result(dag_run: Any, task_id: str) -> Any:
    """What a task of the run returned (its XCom): tasks hand each other nothing else."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value"
        )
        row = session.scalars(query).first()
        assert row is not None, f"{task_id} of {dag_run.run_id} returned nothing"
        return XComModel.deserialize_value(row)


@pytest.fixture
def task_result() -> Callable[[Any, str], Any]:
    return _task_result
