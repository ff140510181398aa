"""DAG factory: one DAG per ExplainerConfiguration in ``include/configs/explainers/``.

Thin wiring only. Each task calls one function of ``include.orchestration.pipeline``; heavy
libraries (torch, shap, captum, feast, great_expectations, pandas) are imported inside those
functions when a task runs, never while the DAG processor parses this file.

A config that does not validate does not hide the others: it becomes a DAG named
``xac-invalid-<file name>`` whose description lists every problem (``PATH:LINE: field: message``)
and whose only task fails with the same text, so the error is visible in the UI and in the log.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Container
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

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


def _trigger_identity(context: dict[str, Any]) -> dict[str, Any]:
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


def _task_log_source(context: dict[str, Any]) -> Any:
    """Where this run's task log files are, and the secrets to redact from them in the bundle."""
    from include.compliance.logs import SENSITIVE_FIELDS, TaskLogSource, secrets_from_environment

    try:
        from airflow.configuration import conf

        folder = conf.get("logging", "base_log_folder", fallback=None)
    except Exception:  # a worker with only the task SDK: the bundle then says no task logs were found
        folder = None
    regexes: tuple[str, ...] = ()
    fields = SENSITIVE_FIELDS
    try:  # what Airflow's masker of this task process holds (connections and variables it fetched)
        from airflow.sdk._shared.secrets_masker import _secrets_masker

        regexes = tuple(_secrets_masker().patterns)
        fields = frozenset(_secrets_masker().sensitive_variables_fields) or SENSITIVE_FIELDS
    except Exception:
        pass
    ti = context["ti"]
    return TaskLogSource(
        base_log_folder=Path(folder) if folder else None,
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        current_task_id=ti.task_id,
        current_try=ti.try_number,
        secrets=tuple(secrets_from_environment(os.environ, fields)),
        secret_regexes=regexes,
        sensitive_fields=fields,
    )


def _fail_on_stage_error(func: Any, *args: Any, **kwargs: Any) -> Any:
    """A refused stage (bad data, low fidelity) fails the task without retries: retrying cannot help."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.orchestration.pipeline import StageFailed

    try:
        return func(*args, **kwargs)
    except StageFailed as exc:
        raise AirflowFailException(str(exc)) from None


def _explain_backend() -> str:
    """``XAC_EXPLAIN_BACKEND`` or Airflow's ``[xac] explain_backend`` (local | kubernetes); unset:
    kubernetes when the environment defines the cluster's connection. Environment only: cheap at parse."""
    from include.orchestration.shards import explain_backend

    configured = None
    try:
        from airflow.configuration import conf

        configured = conf.get("xac", "explain_backend", fallback=None)
    except Exception:  # a component with only the task SDK: the environment decides
        pass
    if os.environ.get("XAC_EXPLAIN_BACKEND") or configured:
        return explain_backend(configured=configured)
    return explain_backend(kubernetes_conn_id=_cluster_profile().spec.kubernetesConnId)


def _cluster_profile() -> Any:
    """The cluster profile of this deployment (``XAC_CLUSTER_PROFILE``, default ``default``)."""
    from include.k8s import load_cluster_profile
    from include.orchestration.shards import cluster_profile_name

    return load_cluster_profile(cluster_profile_name()).profile


def _kpo_partial_kwargs(loaded: LoadedConfig) -> dict[str, Any]:
    """The run-independent KubernetesPodOperator kwargs; a config the cluster cannot run (namespace,
    GPU request, image) raises PodSpecError here, at parse time, before any run or pod."""
    from include.k8s import pod_template

    kwargs = pod_template(loaded.config, _cluster_profile()).kpo_kwargs()
    kwargs.pop("env_vars")  # per shard (the S3 endpoint is known at run time): expand_kwargs has it
    return kwargs


@functools.cache
def _explainer_pod_operator() -> type:
    """KubernetesPodOperator without Jinja rendering of its fields.

    The DAGs render templates as native objects (for the trigger form's Params), which turns a
    string like "7" (``--seed 7``) or an env value "1" into an int: a pod the API server refuses.
    The shard plan's arguments carry no templates, so the explainer pods render nothing.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class ExplainerPodOperator(KubernetesPodOperator):
        template_fields: tuple[str, ...] = ()

        def execute(self, context: Any) -> Any:
            # Deferrable mode leaves here by TaskDeferred (a BaseException) and resumes in
            # trigger_reentry; sync mode runs the pod to its end here.
            try:
                result = super().execute(context)
            except Exception:
                self._record_if_vanished(context)
                raise
            self._record_if_vanished(context)
            return result

        def _record_if_vanished(self, context: Any) -> None:
            pod = getattr(self, "pod", None)
            if pod is not None and pod.metadata is not None:
                _record_vanished_pod(self, context, pod.metadata.name, pod.metadata.namespace)

        def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
            try:
                result = super().trigger_reentry(context, event)
            except Exception:
                _record_vanished_pod(self, context, event.get("name"), event.get("namespace"))
                raise
            # A pod garbage-collected before re-entry ends the try as a success, unrecorded.
            _record_vanished_pod(self, context, event.get("name"), event.get("namespace"))
            return result

    return ExplainerPodOperator


def _record_vanished_pod(operator: Any, context: Any, name: str | None, namespace: str | None) -> None:
    """Bill a pod that was deleted before the completion callback could save it (see
    ``include.orchestration.shards.vanished_pod_record``). Never raises: the try's own outcome stands."""
    if getattr(operator, "_xac_pod_recorded", False) or not name or not namespace:
        return
    try:
        from datetime import UTC

        from kubernetes.client.exceptions import ApiException

        from include.orchestration.shards import record_finished_pod, vanished_pod_record

        client = operator.client
        try:
            client.read_namespaced_pod(name, namespace)
            return  # still there: not deleted under us (a finished pod is recorded by the callback)
        except ApiException as exc:
            if exc.status != 404:
                raise
        gone_at = datetime.now(UTC)
        serialize = client.api_client.sanitize_for_serialization
        events = serialize(
            client.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        ).get("items", [])
        request = serialize(
            getattr(operator, "pod_request_obj", None) or operator.build_pod_request_obj(context)
        )
        request.setdefault("metadata", {}).update({"name": name, "namespace": namespace})
        pod = vanished_pod_record(
            request, events, observed_gone_at=gone_at, container=operator.base_container_name
        )
        if pod is None:
            operator.log.info("pod %s was deleted before it was scheduled: nothing to bill", name)
            return
        node = None
        if pod["spec"].get("nodeName"):
            try:
                node = serialize(client.read_node(pod["spec"]["nodeName"]))
            except ApiException as exc:
                operator.log.warning("node %s not readable: %s", pod["spec"]["nodeName"], exc.reason)
        key = record_finished_pod(
            pod, node, None, try_number=context["ti"].try_number, s3_client=_s3_client(), vanished=True
        )
        operator._xac_pod_recorded = True
        operator.log.warning(
            "pod %s is gone without a completion record, billed from its events: %s (%s)",
            name,
            pod["status"]["message"],
            key,
        )
    except Exception as exc:  # billing must not hide why the try ended
        operator.log.warning("could not record deleted pod %s for the cost stage: %r", name, exc)


@functools.cache
def _pod_recorder() -> type:
    """The operator callback that saves each finished pod (with its node and log) for the cost stage,
    before ``on_finish_action`` deletes it."""
    from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback

    class RecordFinishedPod(KubernetesPodOperatorCallback):
        @staticmethod
        def on_pod_completion(
            *, pod: Any, client: Any, mode: str, operator: Any, context: Any, **kwargs: Any
        ) -> None:
            from kubernetes.client.exceptions import ApiException

            from include.orchestration.shards import record_finished_pod

            if pod is None:
                return
            node = log_text = None
            try:  # cluster-scoped: the worker's service account may not read nodes (then no labels)
                if pod.spec.node_name:
                    node = client.api_client.sanitize_for_serialization(client.read_node(pod.spec.node_name))
            except ApiException as exc:
                operator.log.warning(
                    "node %s of pod %s not readable: %s", pod.spec.node_name, pod.metadata.name, exc.reason
                )
            try:
                log_text = client.read_namespaced_pod_log(
                    pod.metadata.name, pod.metadata.namespace, container="base", _preload_content=False
                ).data.decode("utf-8", errors="replace")
            except ApiException as exc:
                operator.log.warning("log of pod %s not readable: %s", pod.metadata.name, exc.reason)
            key = record_finished_pod(
                client.api_client.sanitize_for_serialization(pod),
                node,
                log_text,
                try_number=context["ti"].try_number,
                s3_client=_s3_client(),
            )
            operator.log.info("finished pod %s saved for the cost stage: %s", pod.metadata.name, key)
            operator._xac_pod_recorded = True

    return RecordFinishedPod


def build_dag(loaded: LoadedConfig) -> DAG:
    config = loaded.config
    spec = config.spec
    name = config.metadata.name
    config_path = str(loaded.path)
    owner = spec.owner.team if spec.owner else "unowned"
    settings = spec.explainerConfig
    assert settings is not None and spec.budget is not None
    backend = _explain_backend()
    kpo_kwargs = _kpo_partial_kwargs(loaded) if backend == "kubernetes" else None
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
                identity=_trigger_identity(context),
            )

        @task
        def provenance(ctx: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import provenance_step

            return _fail_on_stage_error(provenance_step, ctx, _s3_client())

        @task(retries=0)
        def plan(ctx: dict[str, Any], prov: dict[str, Any]) -> dict[str, Any]:
            from include.orchestration.pipeline import plan_step

            return _fail_on_stage_error(plan_step, ctx, prov, backend=backend)

        @task(task_id="shards", retries=0)
        def shard_plan(
            ctx: dict[str, Any], prov: dict[str, Any], budget: dict[str, Any]
        ) -> list[dict[str, Any]]:
            from include.orchestration.shards import shard_plan_step

            if ctx.get("dry_run_cost_only"):  # every later task is skipped: nothing runs, nothing is billed
                from airflow.sdk.exceptions import AirflowSkipException

                from include.orchestration.pipeline import end_dry_run

                raise AirflowSkipException(end_dry_run(ctx, budget, _s3_client()))

            return _fail_on_stage_error(
                shard_plan_step, ctx, prov, budget, backend=backend, s3_client=_s3_client()
            )

        @task(task_id="explain")
        def explain_shard(
            shard: dict[str, Any], ctx: dict[str, Any], prov: dict[str, Any], budget: dict[str, Any]
        ) -> dict[str, Any]:
            from include.orchestration.shards import explain_shard_step

            return _fail_on_stage_error(explain_shard_step, ctx, prov, budget, shard, _s3_client())

        @task(task_id="join_shards")
        def join(
            ctx: dict[str, Any], shards: list[dict[str, Any]], results: Any, budget: dict[str, Any]
        ) -> dict[str, Any]:
            from include.orchestration.shards import join_step

            return _fail_on_stage_error(
                join_step,
                ctx,
                list(shards),
                # a slice is one request; iterating asks past the end and logs "[error] XCom not found"
                list(results[:]) if results is not None else None,
                backend=backend,
                s3_client=_s3_client(),
                plan=budget,
            )

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

            client, signer = _s3_client(), _signer()  # first: fetching connections arms the masker
            published = publish_step(
                ctx, result, prov, gate, s3_client=client, signer=signer, task_logs=_task_log_source(context)
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
                _explainer_pod_operator()
                .partial(task_id="explain", callbacks=[_pod_recorder()], **kpo_kwargs)
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
