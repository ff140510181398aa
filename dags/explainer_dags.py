"""DAG factory: one DAG per ExplainerConfiguration in ``include/configs/explainers/``.

Thin wiring only. Each task calls one function of ``include.orchestration.pipeline``; heavy
libraries (torch, shap, captum, feast, great_expectations, pandas) are imported inside those
functions when a task runs, never while the DAG processor parses this file.

A config that does not validate does not hide the others: it becomes a DAG named
``xac-invalid-<file name>`` whose description lists every problem (``PATH:LINE: field: message``)
and whose only task fails with the same text, so the error is visible in the UI and in the log.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from include.configuration import ConfigError, LoadedConfig, discover_config_files, load_config
from include.configuration.layout import model_listing_prefix, safe_key_part

CONFIGS_DIR = Path(
    os.environ.get("XAC_CONFIGS_DIR", Path(__file__).resolve().parent.parent / "include/configs/explainers")
)
START_DATE = datetime(2026, 1, 1)

DOC_TEMPLATE = """\
# Explainer run: `{name}`

Explains **{model}** with **{explainer_type} / {method}** and publishes a signed compliance bundle.

| | |
|---|---|
| Config | `{config_file}` (sha256 `{sha_short}`) |
| Feature service | `{feature_service}` |
| Owner | {owner} |
| Budget per run | {budget} |
| Fidelity threshold | {threshold} (alert on drop: {alert}) |
| Bundles | `s3://{bucket}/{prefix}` |

**Stages**: `load_config` → `provenance` (Feast point-in-time retrieval + Great Expectations; a
failed expectation stops the run before anything is explained) → `plan` (pre-flight cost estimate
against the budget: stop, or lower numSamples/steps when the budget allows) → `explain` (`xac explain`, the
explainer pod's command; a local process on the embedded default) → `meter_cost` (price of what the
process reserved and used) → `fidelity_gate` → `publish_bundle` (signed, write-once, in S3).

**Trigger form**: `model_version`, `inference_ids` (empty: the {count} most recent entities),
`sample_budget` (overrides numSamples for SHAP or steps for Integrated Gradients).
"""


def _trigger_identity(context: dict[str, Any]) -> dict[str, Any]:
    """Who or what started this run, and which version of the DAG code it ran."""
    from include.provenance.stage import git_state

    dag_run = context["dag_run"]
    logical_date = getattr(dag_run, "logical_date", None)
    return {
        "run_type": str(getattr(dag_run, "run_type", "")),
        "triggered_by": str(getattr(dag_run, "triggered_by", "") or ""),
        "triggering_user": getattr(dag_run, "triggering_user_name", None),
        "logical_date": logical_date.isoformat() if logical_date else None,
        "run_after": str(getattr(dag_run, "run_after", "") or ""),
        "bundle_name": getattr(dag_run, "bundle_name", None) if hasattr(dag_run, "bundle_name") else None,
        "bundle_version": getattr(dag_run, "bundle_version", None),
        # The commit of the checkout this DAG file runs from (git-sync, or a local clone), recorded
        # beside Airflow's bundle version, which only versioned DAG bundles (GitDagBundle) set.
        "dag_folder_git": git_state(Path(__file__).resolve().parent),
        "try_number": getattr(context.get("ti"), "try_number", None),
    }


def _s3_client() -> Any:
    """The ``aws_default`` connection's client when one is configured, else the environment's."""
    from include.storage import s3_client

    if os.environ.get("S3_ENDPOINT_URL"):
        return s3_client()
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.sdk import BaseHook

        BaseHook.get_connection("aws_default")
    except Exception:
        return s3_client()
    return S3Hook(aws_conn_id="aws_default").get_conn()


def _signer() -> Any:
    """Signing key from the ``xac_signing`` connection (password = PEM) or the demo key file."""
    from include.compliance import load_or_create_signing_key, load_signing_key_pem
    from include.storage import default_signing_key_path

    try:
        from airflow.sdk import BaseHook

        pem = BaseHook.get_connection("xac_signing").password
    except Exception:
        pem = None
    if pem:
        return load_signing_key_pem(pem.encode())
    return load_or_create_signing_key(default_signing_key_path())


def _fail_on_stage_error(func: Any, *args: Any, **kwargs: Any) -> Any:
    """A refused stage (bad data, low fidelity) fails the task without retries: retrying cannot help."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.orchestration.pipeline import StageFailed

    try:
        return func(*args, **kwargs)
    except StageFailed as exc:
        raise AirflowFailException(str(exc)) from None


def build_dag(loaded: LoadedConfig) -> DAG:
    config = loaded.config
    spec = config.spec
    name = config.metadata.name
    config_path = str(loaded.path)
    owner = spec.owner.team if spec.owner else "unowned"
    settings = spec.explainerConfig
    assert settings is not None and spec.budget is not None
    bundles_asset = Asset(
        name=f"xac-bundles-{name}",
        uri=f"s3://{spec.storage.bucket}/{model_listing_prefix(config)}",
    )
    from include.configuration import model_catalogue

    default_version = spec.modelVersion or str(model_catalogue()[spec.modelName]["defaultVersion"])
    doc_md = DOC_TEMPLATE.format(
        name=name,
        model=spec.modelName,
        explainer_type=spec.explainerType,
        method=settings.method,
        config_file=loaded.path.name,
        sha_short=loaded.sha256[:12],
        feature_service=spec.featureService or model_catalogue()[spec.modelName]["featureService"],
        owner=f"{spec.owner.team} <{spec.owner.email}>" if spec.owner else "-",
        budget=f"{spec.budget.maxCostPerRun} {spec.budget.currency}",
        threshold=spec.monitoring.fidelityThreshold,
        alert=spec.monitoring.alertOnFidelityDrop,
        bucket=spec.storage.bucket,
        prefix=model_listing_prefix(config),
        count=spec.inference.count,
    )
    if loaded.defaults_applied:
        doc_md += f"\nPolicy defaults applied: {', '.join(loaded.defaults_applied)}.\n"
    tags = sorted({"explainability", spec.explainerType or "", settings.method, *spec.airflow.tags} - {""})
    with DAG(
        dag_id=name,
        description=f"Explain {spec.modelName} with {settings.method}; publish a signed bundle",
        doc_md=doc_md,
        schedule=spec.airflow.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=4,
        tags=tags,
        default_args={
            "owner": owner,
            "retries": spec.airflow.retries,
            "retry_delay": timedelta(seconds=spec.airflow.retryDelaySeconds),
            "retry_exponential_backoff": True,
        },
        params={
            "model_version": Param(
                default_version,
                type="string",
                minLength=1,
                title="Model version",
                description="Version of the model to explain (from the model store).",
            ),
            "inference_ids": Param(
                list(spec.inference.ids),
                type="array",
                items={"type": "string", "minLength": 1},
                title="Inference ids",
                description=f"Entity keys to explain. Empty: the {spec.inference.count} most recent.",
            ),
            "sample_budget": Param(
                None,
                type=["null", "integer"],
                minimum=1,
                maximum=1_000_000,
                title="Sample budget",
                description="Overrides numSamples (SHAP) or steps (Integrated Gradients) for this run.",
            ),
        },
        render_template_as_native_obj=True,
    ) as dag:

        @task(task_id="load_config", retries=0)
        def start(**context: Any) -> dict[str, Any]:
            from include.orchestration.pipeline import start_run

            return start_run(
                config_path,
                dag_id=context["dag"].dag_id,
                run_id=context["run_id"],
                params=dict(context["params"]),
                identity=_trigger_identity(context),
            )

        @task
        def provenance(ctx: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import provenance_step

            return _fail_on_stage_error(provenance_step, ctx, _s3_client())

        @task(retries=0)
        def plan(ctx: dict[str, Any], prov: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import plan_step

            return _fail_on_stage_error(plan_step, ctx, prov)

        @task
        def explain(ctx: dict[str, Any], prov: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import explain_step

            return _fail_on_stage_error(explain_step, ctx, prov, budget, _s3_client())

        @task
        def meter_cost(ctx: dict[str, Any], result: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import meter_step

            return meter_step(ctx, result, budget)

        @task
        def fidelity_gate(
            ctx: dict[str, Any], result: dict[str, Any], prov: dict[str, Any]
        ) -> dict[str, Any]:
            from include.orchestration.pipeline import fidelity_step

            return _fail_on_stage_error(fidelity_step, ctx, result, prov, _s3_client())

        @task(outlets=[bundles_asset])
        def publish_bundle(
            ctx: dict[str, Any],
            result: dict[str, Any],
            prov: dict[str, Any],
            gate: dict[str, Any],
            cost: dict[str, Any],
            **context: Any,
        ) -> dict[str, Any]:
            from include.orchestration.pipeline import publish_step

            published = publish_step(ctx, result, prov, gate, s3_client=_s3_client(), signer=_signer())
            context["outlet_events"][bundles_asset].extra = {
                "uri": published["uri"],
                "bundle_id": published["bundle_id"],
                "model": spec.modelName,
            }
            return published

        ctx = start()
        prov = provenance(ctx)
        budget = plan(ctx, prov)
        result = explain(ctx, prov, budget)
        cost = meter_cost(ctx, result, budget)
        gate = fidelity_gate(ctx, result, prov)
        cost >> gate
        publish_bundle(ctx, result, prov, gate, cost)
    return dag


def build_invalid_config_dag(path: Path, problems: list[str]) -> DAG:
    """A visible, failing placeholder for a config that does not validate."""
    report = "\n".join(problems)
    with DAG(
        dag_id=f"xac-invalid-{safe_key_part(path.stem)}",
        description=f"INVALID CONFIG {path.name}: {problems[0] if problems else ''}"[:200],
        doc_md=f"# Invalid ExplainerConfiguration `{path.name}`\n\n```\n{report}\n```\n\n"
        "Fix the file and commit: this DAG is replaced by the model's DAG once the config validates.",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        tags=["explainability", "invalid-config"],
        default_args={"owner": "ml-platform", "retries": 0},
    ) as dag:

        @task(task_id="config_is_invalid")
        def config_is_invalid() -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{path} does not validate:\n{report}")

        config_is_invalid()
    return dag


def build_all(directory: Path = CONFIGS_DIR) -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    seen: dict[str, Path] = {}
    for path in discover_config_files(directory):
        try:
            loaded = load_config(path)
        except ConfigError as exc:
            dag = build_invalid_config_dag(path, [str(p) for p in exc.problems])
        else:
            if loaded.name in seen:
                dag = build_invalid_config_dag(
                    path, [f"{path}:1: metadata.name: {loaded.name!r} is already used by {seen[loaded.name]}"]
                )
            else:
                seen[loaded.name] = path
                dag = build_dag(loaded)
        dags[dag.dag_id] = dag
    return dags


for _dag_id, _dag in build_all().items():
    globals()[_dag_id] = _dag
