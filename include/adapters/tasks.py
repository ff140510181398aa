"""The task context turned into plain values, and refused stages turned into task failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def trigger_identity(context: dict[str, Any], dag_folder: Path) -> dict[str, Any]:
    """Who or what started this run, and which version of the DAG code it ran."""
    from include.provenance.stage import git_state

    dag_run = context["dag_run"]
    bundle = getattr(context.get("ti"), "bundle_instance", None)
    logical_date = getattr(dag_run, "logical_date", None)
    return {
        "run_type": str(getattr(dag_run, "run_type", "")),
        "triggered_by": str(getattr(dag_run, "triggered_by", "") or ""),
        "triggering_user": getattr(dag_run, "triggering_user_name", None),
        "logical_date": logical_date.isoformat() if logical_date else None,
        "run_after": str(getattr(dag_run, "run_after", "") or ""),
        # The task SDK's DagRun carries no bundle fields: the task instance's bundle does.
        "bundle_name": getattr(bundle, "name", None) or getattr(dag_run, "bundle_name", None),
        "bundle_version": getattr(bundle, "version", None) or getattr(dag_run, "bundle_version", None),
        # The commit of the checkout this DAG file runs from (git-sync, or a local clone), recorded
        # beside Airflow's bundle version, which only versioned DAG bundles (GitDagBundle) set.
        "dag_folder_git": git_state(dag_folder),
        "try_number": getattr(context.get("ti"), "try_number", None),
    }


def task_log_source(context: dict[str, Any]) -> Any:
    """Where this run's task log files are, and the secrets to redact from them in the bundle."""
    from include.compliance.logs import SENSITIVE_FIELDS, TaskLogSource, secrets_from_environment

    remote_base = None
    try:
        from airflow.configuration import conf

        folder = conf.get("logging", "base_log_folder", fallback=None)
        if conf.getboolean("logging", "remote_logging", fallback=False):
            remote = conf.get("logging", "remote_base_log_folder", fallback="") or ""
            remote_base = remote if remote.startswith("s3://") else None
    except Exception:  # a worker with only the task SDK: the bundle then says no task logs were found
        folder = None
    try:  # Airflow's masker of this task process (every connection and variable it fetched)
        from airflow.sdk.log import redact
    except ImportError as exc:  # never bundle logs without it: that would silently weaken redaction
        raise RuntimeError(
            f"Airflow's public masking API (airflow.sdk.log.redact) is missing ({exc}): the task logs "
            "cannot be redacted for the bundle"
        ) from None
    fields = SENSITIVE_FIELDS | _configured_sensitive_fields()
    ti = context["ti"]
    return TaskLogSource(
        base_log_folder=Path(folder) if folder else None,
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        current_task_id=ti.task_id,
        current_try=ti.try_number,
        secrets=tuple(secrets_from_environment(os.environ, fields)),
        sensitive_fields=fields,
        mask=lambda text: str(redact(text)),
        remote_base=remote_base,
    )


def _configured_sensitive_fields() -> frozenset[str]:
    """``[core] sensitive_var_conn_names``: the names a deployment adds to Airflow's sensitive fields."""
    try:
        from airflow.configuration import conf

        raw = conf.get("core", "sensitive_var_conn_names", fallback="") or ""
    except ImportError:
        return frozenset()
    return frozenset(name.strip().lower() for name in raw.split(",") if name.strip())


def fail_on_stage_error(func: Any, *args: Any, **kwargs: Any) -> Any:
    """A refused stage (bad data, low fidelity) fails the task without retries: retrying cannot help."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.orchestration.pipeline import StageFailed

    try:
        return func(*args, **kwargs)
    except StageFailed as exc:
        raise AirflowFailException(str(exc)) from None
