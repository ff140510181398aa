"""DAG factory: one DAG per ExplainerConfiguration in ``include/configs/explainers/``.

Thin wiring only. Each task calls one function of ``include.orchestration.pipeline``; heavy
libraries (torch, shap, captum, feast, great_expectations, pandas) are imported inside those
functions when a task runs, never while the DAG processor parses this file.

A config that does not validate does not hide the others: it becomes a DAG named
``xac-invalid-<file name>`` whose description lists every problem (``PATH:LINE: field: message``)
and whose only task fails with the same text, so the error is visible in the UI and in the log.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Container
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from include.adapters import connections, kubernetes
from include.adapters.tasks import fail_on_stage_error, task_log_source, trigger_identity
from include.configuration import ConfigError, LoadedConfig, discover_config_files, load_config
from include.configuration.layout import model_listing_prefix, safe_key_part
from include.configuration.schema import INVALID_DAG_PREFIX
from include.identifiers import MODEL_VERSION_PATTERN
from include.k8s import ClusterProfileError, PodSpecError
from include.orchestration.shards import BackendError

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
against the budget: stop, or lower numSamples/steps when the budget allows) → `shards` (split the rows) →
`explain` (`xac explain --shard i/n`, one mapped task per shard: a KubernetesPodOperator pod on the
kubernetes backend, a local process on the embedded default; outputs to object storage) → `join_shards`
(every shard complete, merged) → `meter_cost` (price of what the pods or processes reserved and used) →
`fidelity_gate` → `publish_bundle` (signed, write-once, in S3). Explain backend: **{backend}**.

**Trigger form**: `model_version`, `inference_ids` (empty: the {count} most recent entities),
`sample_budget` (overrides the method's numSamples or steps; methods without one refuse it),
`dry_run_cost_only` (validate the data and estimate the cost, then stop).
"""


def build_dag(loaded: LoadedConfig) -> DAG:
    config = loaded.config
    spec = config.spec
    name = config.metadata.name
    config_path = str(loaded.path)
    owner = spec.owner.team if spec.owner else "unowned"
    settings = spec.explainerConfig
    assert settings is not None and spec.budget is not None
    backend = kubernetes.explain_backend()
    kpo_kwargs = kubernetes.kpo_partial_kwargs(loaded) if backend == "kubernetes" else None
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
        backend=backend,
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
                maxLength=64,
                pattern=MODEL_VERSION_PATTERN,  # joined into paths: ../other-model/1 is refused here
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
                description="Overrides the method's numSamples or steps for this run (if it has one).",
            ),
            "dry_run_cost_only": Param(
                False,
                type="boolean",
                title="Dry run: cost only",
                description="Validate the data and estimate the run's cost, then stop: nothing is explained "
                "or published (the estimate is in the plan task's log).",
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
                identity=trigger_identity(context, Path(__file__).resolve().parent),
                s3_client=connections.s3_client(),
            ).to_json()

        @task
        def provenance(ctx: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import PipelineRun, provenance_step

            run = PipelineRun.from_json(ctx)
            client, salt = connections.s3_client(), connections.provenance_salt()
            return fail_on_stage_error(provenance_step, run, client, salt=salt).to_json()

        @task(retries=0)
        def plan(ctx: dict[str, Any], prov: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import PipelineRun, StagedProvenance, plan_step

            run, staged = PipelineRun.from_json(ctx), StagedProvenance.from_json(prov)
            return fail_on_stage_error(
                plan_step,
                run,
                staged,
                connections.s3_client(),
                backend=backend,
                cost_store=connections.cost_store(),
            )

        @task(task_id="shards", retries=0)
        def shard_plan(
            ctx: dict[str, Any], prov: dict[str, Any], budget: dict[str, Any]
        ) -> list[dict[str, Any]]:
            from include.orchestration.pipeline import PipelineRun, StagedProvenance
            from include.orchestration.shards import shard_plan_step

            run = PipelineRun.from_json(ctx)
            if run.dry_run_cost_only:  # every later task is skipped: nothing runs, nothing is billed
                from airflow.sdk.exceptions import AirflowSkipException

                from include.orchestration.pipeline import end_dry_run

                raise AirflowSkipException(end_dry_run(run, budget, connections.s3_client()))

            return fail_on_stage_error(
                shard_plan_step,
                run,
                StagedProvenance.from_json(prov),
                budget,
                backend=backend,
                s3_client=connections.s3_client(),
            )

        @task(task_id="explain")
        def explain_shard(
            shard: dict[str, Any], ctx: dict[str, Any], prov: dict[str, Any], budget: dict[str, Any]
        ) -> dict[str, Any]:
            from include.orchestration.pipeline import PipelineRun, StagedProvenance
            from include.orchestration.shards import explain_shard_step

            run, staged = PipelineRun.from_json(ctx), StagedProvenance.from_json(prov)
            return fail_on_stage_error(
                explain_shard_step,
                run,
                staged,
                budget,
                shard,
                connections.s3_client(),
                environment=connections.model_connection_environment(run.model_name),
            )

        @task(task_id="join_shards")
        def join(
            ctx: dict[str, Any], shards: list[dict[str, Any]], results: Any, budget: dict[str, Any]
        ) -> dict[str, Any]:
            from include.orchestration.pipeline import PipelineRun
            from include.orchestration.shards import join_step

            return fail_on_stage_error(
                join_step,
                PipelineRun.from_json(ctx),
                list(shards),
                # a slice is one request; iterating asks past the end and logs "[error] XCom not found"
                list(results[:]) if results is not None else None,
                backend=backend,
                s3_client=connections.s3_client(),
                plan=budget,
            ).to_json()

        @task
        def meter_cost(ctx: dict[str, Any], result: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import ExplainResult, PipelineRun, meter_step

            run, explained = PipelineRun.from_json(ctx), ExplainResult.from_json(result)
            return fail_on_stage_error(
                meter_step,
                run,
                explained,
                budget,
                connections.s3_client(),
                cost_store=connections.cost_store(),
            )

        @task
        def fidelity_gate(
            ctx: dict[str, Any], result: dict[str, Any], prov: dict[str, Any]
        ) -> dict[str, Any]:
            from include.orchestration.pipeline import (
                ExplainResult,
                PipelineRun,
                StagedProvenance,
                fidelity_step,
            )

            return fail_on_stage_error(
                fidelity_step,
                PipelineRun.from_json(ctx),
                ExplainResult.from_json(result),
                StagedProvenance.from_json(prov),
                connections.s3_client(),
            )

        @task(outlets=[bundles_asset])
        def publish_bundle(
            ctx: dict[str, Any],
            result: dict[str, Any],
            prov: dict[str, Any],
            gate: dict[str, Any],
            cost: dict[str, Any],
            **context: Any,
        ) -> dict[str, Any]:
            from include.orchestration.pipeline import (
                ExplainResult,
                PipelineRun,
                StagedProvenance,
                publish_step,
            )

            # first: fetching the connections arms the log masker the bundled logs are redacted with
            client, signer = connections.s3_client(), connections.signer()
            published = fail_on_stage_error(
                publish_step,
                PipelineRun.from_json(ctx),
                ExplainResult.from_json(result),
                StagedProvenance.from_json(prov),
                gate,
                s3_client=client,
                signer=signer,
                task_logs=task_log_source(context),
            )
            context["outlet_events"][bundles_asset].extra = {
                "uri": published["uri"],
                "bundle_id": published["bundle_id"],
                "model": spec.modelName,
            }
            return published

        ctx = start()
        prov = provenance(ctx)
        budget = plan(ctx, prov)
        shards = shard_plan(ctx, prov, budget)
        if kpo_kwargs is not None:
            # one pod per shard: the template's settings (resources, scheduling, reliability) for all,
            # the name, arguments, labels and env of each from the shard plan
            pods = (
                kubernetes.explainer_pod_operator()
                .partial(task_id="explain", callbacks=[kubernetes.pod_recorder()], **kpo_kwargs)
                .expand_kwargs(shards)
            )
            result = join(ctx, shards, None, budget)
            pods >> result
        else:
            result = join(
                ctx,
                shards,
                explain_shard.partial(ctx=ctx, prov=prov, budget=budget).expand(shard=shards),
                budget,
            )
        cost = meter_cost(ctx, result, budget)
        gate = fidelity_gate(ctx, result, prov)
        cost >> gate
        publish_bundle(ctx, result, prov, gate, cost)
    return dag


def invalid_dag_id(path: Path, taken: Container[str] = ()) -> str:
    """``xac-invalid-<file stem>``, or with the file's suffix and a digest of its name when another
    file (broken.yaml beside broken.yml) already holds that id: no error hides another."""
    dag_id = f"{INVALID_DAG_PREFIX}{safe_key_part(path.stem)}"
    if dag_id in taken:
        digest = hashlib.sha256(path.name.encode()).hexdigest()[:8]
        dag_id = f"{dag_id}-{safe_key_part(path.suffix.lstrip('.'))}-{digest}"
    return dag_id


def build_invalid_config_dag(path: Path, problems: list[str], taken: Container[str] = ()) -> DAG:
    """A visible, failing placeholder for a config that does not validate."""
    report = "\n".join(problems)
    with DAG(
        dag_id=invalid_dag_id(path, taken),
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
            dag = build_invalid_config_dag(path, [str(p) for p in exc.problems], dags)
        else:
            if loaded.name in seen:
                dag = build_invalid_config_dag(
                    path,
                    [f"{path}:1: metadata.name: {loaded.name!r} is already used by {seen[loaded.name]}"],
                    dags,
                )
            else:
                seen[loaded.name] = path
                try:
                    dag = build_dag(loaded)
                except (PodSpecError, ClusterProfileError, BackendError) as exc:
                    # the kubernetes backend cannot run this config (namespace, GPUs, image, profile)
                    problems = [str(p) for p in getattr(exc, "problems", [])] or [str(exc)]
                    dag = build_invalid_config_dag(path, [str(exc).splitlines()[0], *problems], dags)
                except Exception as exc:  # whatever Airflow refuses: one config never hides the others
                    dag = build_invalid_config_dag(
                        path, [f"{path}: Airflow cannot build its DAG: {type(exc).__name__}: {exc}"]
                    )
        dags[dag.dag_id] = dag
    return dags


for _dag_id, _dag in build_all().items():
    globals()[_dag_id] = _dag
