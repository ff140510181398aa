"""The explain step fanned out over shards, on either backend, and the join that follows it.

    shard_plan_step ─► explain (mapped: one task per shard) ─► join_step ─► meter_step
                        local: explain_shard_step runs `xac explain --shard i/n` as a local process
                        kubernetes: KubernetesPodOperator, one pod per shard (kwargs from here)

Both backends write each shard's outputs to object storage, under the run's staging prefix
(``s3://<bucket>/_staging/<dag>/<run>/shards/<i>-of-<n>/``, ``run_summary.json`` last), and pass
only URIs on. The join checks that every shard's output is there and complete, downloads and merges
them (:func:`include.explainers.runtime.merge_shards`), and collects what the cost stage prices:
the measured usage of each local process, or the finished pod objects (with their node) that the
operator's completion callback saved beside the outputs (``pods/shard-<i>/try-<n>-<pod>.json``).

The backend is one setting per deployment (:func:`explain_backend`): ``XAC_EXPLAIN_BACKEND`` (or the
Airflow option ``[xac] explain_backend``) = ``local`` | ``kubernetes``; unset, it is ``kubernetes``
when the environment defines the cluster's Airflow connection (``AIRFLOW_CONN_<ID>``), else
``local``. It is read while the DAG file is parsed, so it looks only at the environment: a
connection kept only in the metadata DB or a secrets backend needs the explicit setting.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from include.orchestration.run_context import ExplainResult, PipelineRun, StagedProvenance, run_config
from include.orchestration.staging import RunStaging, StageFailed, scratch_dir

BACKENDS = ("local", "kubernetes")
DEFAULT_KUBERNETES_CONN_ID = "kubernetes_default"  # the provider's default connection
STAGING_ANNOTATION = "xac.dev/staging"
COMPLETE_MARKER = "run_summary.json"


# Exit codes of `xac explain` that a retry would only repeat: 1 the input was refused (bad config,
# data, model or parameters), 2 a usage error. Anything else (3: could not run, e.g. storage out of
# reach; a signal such as the OOM killer's SIGKILL) fails the try and Airflow retries it, as it
# retries a failed pod.
REFUSED_EXIT_CODES = (1, 2)


class BackendError(ValueError):
    """An unknown backend or cluster profile setting."""


class ShardProcessFailed(RuntimeError):
    """A local shard's explainer process crashed or could not run: the task's retries apply."""


def cluster_profile_name(env: Mapping[str, str] | None = None, configured: str | None = None) -> str:
    """``XAC_CLUSTER_PROFILE`` (a name in include/configs/clusters/ or a path), else ``default``."""
    env = os.environ if env is None else env
    return env.get("XAC_CLUSTER_PROFILE") or configured or "default"


def explain_backend(
    env: Mapping[str, str] | None = None,
    configured: str | None = None,
    kubernetes_conn_id: str | None = None,
) -> str:
    """The deployment's explainer backend (see the module docstring); ``configured`` is the Airflow
    option ``[xac] explain_backend`` when the caller read it."""
    env = os.environ if env is None else env
    value = (env.get("XAC_EXPLAIN_BACKEND") or configured or "").strip().lower()
    if value:
        if value not in BACKENDS:
            raise BackendError(f"XAC_EXPLAIN_BACKEND={value!r}: choose one of {', '.join(BACKENDS)}")
        return value
    conn_id = kubernetes_conn_id or DEFAULT_KUBERNETES_CONN_ID
    return "kubernetes" if env.get(f"AIRFLOW_CONN_{conn_id.upper()}") else "local"


def shard_count(instances: int, sharding: Any | None) -> int:
    """Pods for ``instances`` rows: ceil(instances / instancesPerShard), at most maxShards, never
    more than the rows (an empty shard would be a pod with nothing to do). Local runs: one."""
    if sharding is None or instances <= 1:
        return 1
    wanted = math.ceil(instances / sharding.instancesPerShard)
    return max(1, min(wanted, sharding.maxShards, instances))


def planned_shards(backend: str, instances: int, profile: str | None = None) -> int:
    """The shard count a run of ``instances`` rows will use on ``backend`` (for the plan's estimate)."""
    if backend != "kubernetes":
        return shard_count(instances, None)
    from include.k8s import load_cluster_profile

    return shard_count(
        instances, load_cluster_profile(profile or cluster_profile_name()).profile.spec.sharding
    )


def shard_out(staging: RunStaging, index: int, count: int) -> str:
    """Where shard ``index`` of ``count`` writes: an ``s3://`` prefix under the run's staging prefix."""
    return staging.uri(f"shards/{index}-of-{count}/")


def _explain_arguments(
    run: PipelineRun, provenance: StagedProvenance, params: dict[str, Any], out: str
) -> list[str]:
    arguments = [
        "--config",
        run.config_uri,
        "--config-sha256",
        run.config_sha256,
        "--out",
        out,
        "--inference",
        provenance.inference_uri,
        "--background",
        provenance.background_uri,
        "--inference-sha256",
        provenance.inference_sha256,
        "--background-sha256",
        provenance.background_sha256,
        "--model-version",
        run.model_version,
        "--seed",
        str(run.seed),
    ]
    budget = params.get("numSamples") or params.get("steps")
    if budget:
        arguments += ["--sample-budget", str(budget)]
    return arguments


def _stage_source_model(run: PipelineRun, staging: RunStaging) -> dict[str, str] | None:
    """A user's model for the shards: a file on this worker is copied to the run's staging prefix
    (other workers and pods share no disk with it) and pinned by sha256; an object in a store, a
    registry model or an endpoint is read where it is. None for a model of the model store."""
    from include.explainers.catalogue import catalogue_entries
    from include.explainers.model_store import is_source_model
    from include.paths import xac_home

    if not is_source_model(run.model_name):
        return None
    source = catalogue_entries()[run.model_name].source
    if source is None:
        raise StageFailed(
            f"model {run.model_name!r}: invalid source in the model catalogue: no pod was started"
        )
    if source.type in ("oip", "mlflow"):  # an endpoint or a registry: read where it is
        return {}
    location = source.location(str(run.model_version), str(xac_home()))
    if "://" in location:  # s3:// and other object stores: read where it is
        return {}
    from include.digests import sha256_file

    path = Path(location).expanduser()
    if not path.is_file():
        raise StageFailed(f"model {run.model_name!r}: {location} not found: no pod was started")
    uri = staging.put_file(f"model/{path.name}", path)
    return {"model": uri, "model_sha256": sha256_file(path)}


def _stage_model(run: PipelineRun, staging: RunStaging) -> dict[str, str]:
    """The model every shard's explainer reads, pinned by sha256 (shards may run on other workers or
    in pods, which share no disk with this task): a source's artifact, the remote model store's copy
    (``XAC_MODEL_STORE``) as it is, or the local store's copy staged to the run's prefix."""
    from include.digests import sha256_file
    from include.explainers.model_store import (
        model_dir,
        remote_model_sha256,
        remote_model_store,
        remote_model_uri,
    )

    staged_source = _stage_source_model(run, staging)
    if staged_source is not None:
        return staged_source
    if remote_model_store() is not None:
        sha256 = remote_model_sha256(run.model_name, run.model_version, staging.s3)
        return {"model": remote_model_uri(run.model_name, run.model_version), "model_sha256": sha256}
    folder = model_dir(run.model_name, run.model_version)
    weights = folder / "model.pt"
    if not weights.is_file() or not (folder / "model.json").is_file():
        raise StageFailed(
            f"model {run.model_name!r} version {run.model_version!r} is not in the model store "
            f"({folder}): no explainer was started"
        )
    for name in ("model.json", "model.pt"):
        staging.put_file(f"model/{name}", folder / name)
    return {"model": staging.uri("model/"), "model_sha256": sha256_file(weights)}


def shard_plan_step(
    run: PipelineRun,
    provenance: StagedProvenance,
    plan: dict[str, Any] | None,
    *,
    backend: str,
    s3_client: Any,
    profile: str | None = None,
    log: Any = print,
) -> list[dict[str, Any]]:
    """One entry per shard, the mapped explain task's arguments.

    local: ``{"index", "count", "out", "model", "model_sha256"}``; kubernetes: the per-shard
    KubernetesPodOperator kwargs (name, cmds, arguments, labels, annotations, env_vars), for
    ``.expand_kwargs()``.
    """
    params = plan["params"] if plan is not None else run.params
    instances = len(provenance.inference_ids)
    staging = run.staging(s3_client)
    if backend == "local":
        count = shard_count(instances, None)
        model = _stage_model(run, staging)
        shards = [
            {"index": i, "count": count, "out": shard_out(staging, i, count), **model} for i in range(count)
        ]
    elif backend == "kubernetes":
        shards = _pod_shards(run, provenance, params, staging, profile or cluster_profile_name())
    else:
        raise BackendError(f"unknown explain backend {backend!r}")
    count = len(shards)
    staging.put_json("shards.json", {"backend": backend, "count": count, "shards": shards})
    log(f"explain: {instances} instances in {count} shard(s) on the {backend} backend")
    return shards


def _pod_shards(
    run: PipelineRun,
    provenance: StagedProvenance,
    params: dict[str, Any],
    staging: RunStaging,
    profile_name: str,
) -> list[dict[str, Any]]:
    from include.k8s import PodSpecError, RunContext, load_cluster_profile, plan_pod, pod_template

    loaded = run_config(run, staging.s3)
    profile = load_cluster_profile(profile_name).profile
    count = shard_count(len(provenance.inference_ids), profile.spec.sharding)
    staged = _stage_model(run, staging)
    env = {}
    endpoint = getattr(getattr(staging.s3, "meta", None), "endpoint_url", None)
    if endpoint and "amazonaws.com" not in endpoint:
        env["S3_ENDPOINT_URL"] = endpoint  # an S3-compatible store; on AWS the pod uses the default
    try:
        template = pod_template(loaded.config, profile, env=env)
        context = RunContext.for_config(
            loaded.config,
            dag_id=run.dag_id,
            run_id=run.run_id,
            model_version=run.model_version,
            config_sha256=run.config_sha256,
        )
        shards = []
        for index in range(count):
            out = shard_out(staging, index, count)
            argv = ["xac", "explain", *_explain_arguments(run, provenance, params, out)]
            if "model" in staged:
                argv += ["--model-uri", staged["model"], "--model-sha256", staged["model_sha256"]]
            pod = plan_pod(loaded.config, profile, context.shard(index, count), argv, template=template)
            kwargs = pod.shard_kpo_kwargs()
            kwargs["annotations"][STAGING_ANNOTATION] = staging.uri()
            kwargs["env_vars"] = dict(template.env)
            shards.append(kwargs)
    except PodSpecError as exc:
        raise StageFailed(str(exc)) from None
    return shards


def local_explain_command(
    run: PipelineRun, provenance: StagedProvenance, params: dict[str, Any], out: str
) -> list[str]:
    """The same ``xac explain`` a pod runs, as this worker's interpreter runs it."""
    return [sys.executable, "-m", "include.cli", "explain", *_explain_arguments(run, provenance, params, out)]


def explain_shard_step(
    run: PipelineRun,
    provenance: StagedProvenance,
    plan: dict[str, Any] | None,
    shard: dict[str, Any],
    s3_client: Any,
    log: Any = print,
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Local backend: run one shard's ``xac explain`` as a process; stream its log, measure it.

    ``environment`` is added to the process's (e.g. the ``AIRFLOW_CONN_<ID>`` of the model
    endpoint's connection, which the task resolved through Airflow).

    The process reads the staged config and frames and writes its outputs under the run's staging
    prefix; its log and the usage of a failed try are staged too (the join and the cost stage may run
    on another worker).
    """
    from include.orchestration.local_process import ProcessFailed, child_environment, run_measured

    staging = run.staging(s3_client)
    params = plan["params"] if plan is not None else run.params
    index, count, out = int(shard["index"]), int(shard["count"]), str(shard["out"])
    command = [*local_explain_command(run, provenance, params, out), "--shard", f"{index}/{count}"]
    if shard.get("model"):  # the staged or remote copy, pinned: this worker's model store is not read
        command += ["--model-uri", str(shard["model"]), "--model-sha256", str(shard["model_sha256"])]
    extra = dict(environment or {})
    if s3_client.meta.endpoint_url:
        # the child reads the staged frames and writes its outputs through this task's endpoint
        extra["S3_ENDPOINT_URL"] = s3_client.meta.endpoint_url
    failed_prefix = f"usage/shard-{index}-failed-"
    with scratch_dir(f"shard-{index}") as scratch:
        log_path = scratch / f"explain-{index}-of-{count}.log"
        with log_path.open("w") as log_file:

            def tee(line: str) -> None:
                log(line)
                log_file.write(line + "\n")

            try:
                usage = run_measured(command, env=child_environment(extra), on_line=tee)
            except ProcessFailed as exc:
                # The failed try used the worker too: kept for the cost stage, billed with the shard.
                earlier = len(staging.list(failed_prefix))
                staging.put_json(f"{failed_prefix}{earlier + 1}.json", exc.usage.to_json())
                if exc.exit_code in REFUSED_EXIT_CODES:
                    raise StageFailed(str(exc)) from None
                raise ShardProcessFailed(str(exc)) from None
        staging.put_file(f"logs/shards/{log_path.name}", log_path)
    failed_tries = [
        staging.get_json(failed_prefix + name)
        for name in sorted(staging.list(failed_prefix), key=lambda n: int(n.split(".")[0]))
    ]
    return {
        "index": index,
        "count": count,
        "out": out,
        "usage": usage.to_json(),
        "failed_tries": failed_tries,
    }


# --------------------------------------------------------------------------- the finished pods


def record_finished_pod(
    pod: dict[str, Any],
    node: dict[str, Any] | None,
    log_text: str | None,
    *,
    try_number: int,
    s3_client: Any,
    vanished: bool = False,
) -> str | None:
    """Save a finished explainer pod (and its node, and its log) beside the run's outputs.

    Called by the KubernetesPodOperator's completion callback before the pod is deleted (or, with
    ``vanished``, with the object :func:`vanished_pod_record` rebuilt for a pod deleted under the
    operator); the join collects these for the cost stage. Returns the object key, or None for a pod
    that is not ours.
    """
    from include.compliance import parse_s3_uri

    meta = pod.get("metadata") or {}
    base = (meta.get("annotations") or {}).get(STAGING_ANNOTATION)
    shard = (meta.get("labels") or {}).get("xac.dev/shard")
    if not base or shard is None:
        return None
    bucket, prefix = parse_s3_uri(base)
    key = f"{prefix.rstrip('/')}/pods/shard-{shard}/try-{try_number}-{meta.get('name', 'pod')}"
    record = {"pod": pod, "node": node, "try_number": try_number} | ({"vanished": True} if vanished else {})
    body = json.dumps(record, indent=2, default=str)
    s3_client.put_object(Bucket=bucket, Key=key + ".json", Body=body.encode())
    if log_text is not None:
        s3_client.put_object(Bucket=bucket, Key=key + ".log", Body=log_text.encode())
    return key + ".json"


def _event_time(event: dict[str, Any]) -> datetime | None:
    from include.compliance.bundle import parse_timestamp

    for value in (
        event.get("eventTime"),
        event.get("firstTimestamp"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    ):
        if value:
            try:
                return parse_timestamp(str(value))
            except ValueError:
                continue
    return None


def vanished_pod_record(
    pod_request: dict[str, Any],
    events: list[dict[str, Any]],
    *,
    observed_gone_at: datetime,
    container: str = "base",
) -> dict[str, Any] | None:
    """The billable object of a pod that was deleted before its completion could be recorded.

    A pod removed by someone else (``kubectl delete pod``, a node drain, an eviction) is gone before the
    operator's completion callback runs, yet it held its node until then. Its lifetime is rebuilt from
    the pod's events, which outlive the pod (an hour by default): ``Scheduled`` gives the node and the
    start, ``Killing`` the end; without a ``Killing`` event the end is when the operator found the pod
    gone (``observed_gone_at``), an upper bound. ``pod_request`` is the pod as the operator built it
    (requests, limits, labels, annotations, affinity). Returns None when the events show the pod never
    ran on a node (nothing to bill).
    """
    timed = sorted(((at, e) for e in events if (at := _event_time(e)) is not None), key=lambda pair: pair[0])

    def first(reason: str) -> tuple[datetime, dict[str, Any]] | None:
        return next(((at, e) for at, e in timed if e.get("reason") == reason), None)

    scheduled, killing, started = first("Scheduled"), first("Killing"), first("Started")
    if scheduled is None:
        return None
    start = scheduled[0]
    message = str(scheduled[1].get("message") or "")
    node_name = message.rsplit(" to ", 1)[1].strip() if " to " in message else None
    end = max(killing[0] if killing is not None else observed_gone_at, start)
    container_start = min(started[0] if started is not None else start, end)

    def stamp(value: datetime) -> str:
        return value.isoformat().replace("+00:00", "Z")

    pod = json.loads(json.dumps(pod_request, default=str))
    spec = pod.setdefault("spec", {})
    if node_name:
        spec["nodeName"] = node_name
    reason = "Deleted" if killing is not None else "Vanished"
    pod["status"] = {
        "phase": "Failed",
        "reason": reason,
        "message": (
            f"deleted before its completion was recorded; lifetime from its events "
            f"(Scheduled {stamp(start)} -> {'Killing' if killing is not None else 'found gone'} {stamp(end)})"
        ),
        "startTime": stamp(start),
        "containerStatuses": [
            {
                "name": container,
                "ready": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "reason": reason,
                        "startedAt": stamp(container_start),
                        "finishedAt": stamp(end),
                    }
                },
            }
        ],
    }
    return pod


# --------------------------------------------------------------------------- the join


def _combined_usage(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """All shards' processes as one (earliest start to latest finish, CPU summed, peak the largest)."""
    started = min(datetime.fromisoformat(u["started_at"]) for u in usages)
    finished = max(datetime.fromisoformat(u["finished_at"]) for u in usages)
    return {
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "wall_seconds": (finished - started).total_seconds(),
        "cpu_seconds": sum(float(u["cpu_seconds"]) for u in usages),
        "peak_memory_bytes": max(int(u["peak_memory_bytes"]) for u in usages),
        "exit_code": max(int(u["exit_code"]) for u in usages),
        "gpu_count": max(float(u.get("gpu_count", 0.0)) for u in usages),
    }


def join_step(
    run: PipelineRun,
    shards: list[dict[str, Any]],
    results: list[dict[str, Any] | None] | None = None,
    *,
    backend: str,
    s3_client: Any,
    plan: dict[str, Any] | None = None,
    log: Any = print,
) -> ExplainResult:
    """Check that every shard wrote a complete output, merge them, gather what the cost stage prices.

    Fails (StageFailed) when a shard's output is missing or incomplete, or holds another number of
    explanations than its run summary says (a duplicate or a leftover of an earlier try). The merged
    explanations go to the run's staging prefix as one archive (``explain.tar``), and the gate's
    ``fidelity.json`` beside it.
    """
    from include.explainers.runtime import merge_shards

    staging = run.staging(s3_client)
    count = len(shards)
    with scratch_dir("join") as scratch:
        folders: list[Path] = []
        problems: list[str] = []
        for index, shard in enumerate(shards):
            out = str(shard["out"]) if "out" in shard else _shard_out_from_arguments(shard)
            folder = scratch / "shards" / f"{index}-of-{count}"
            names = staging.get_tree(staging.name_of(out), folder)
            if COMPLETE_MARKER not in names:
                problems.append(
                    f"shard {index} of {count}: no complete output at {out} (no {COMPLETE_MARKER})"
                )
                continue
            summary = json.loads((folder / COMPLETE_MARKER).read_text())
            explanations = [n for n in names if n.startswith("explanations/")]
            if summary["shard"]["index"] != index or summary["shard"]["count"] != count:
                problems.append(f"shard {index} of {count}: {out} holds shard {summary['shard']}")
            if len(explanations) != summary["counts"]["explanations"]:
                problems.append(
                    f"shard {index} of {count}: {len(explanations)} explanation objects at {out}, but "
                    f"its run summary lists {summary['counts']['explanations']}"
                )
            folders.append(folder)
        if problems:
            raise StageFailed("the explain shards are not all complete:\n" + "\n".join(problems))
        out_dir = scratch / "explain"
        merged = merge_shards(folders, out_dir, overwrite=True)
        explained = int(merged["counts"]["instances"])
        fidelity_uri = staging.put_file("fidelity.json", out_dir / "fidelity.json")
        explain_uri = staging.put_archive("explain.tar", out_dir)
        log(f"join: {count} shard(s) complete, {explained} explanations merged into {explain_uri}")
        log_path = scratch / "explain.log"
        if backend == "kubernetes":
            names = staging.list("pods/")
            records = tuple(f"pods/{n}" for n in names if n.endswith(".json"))
            pod_logs = [
                staging.get_file(f"pods/{n}", scratch / "pod-logs" / n) for n in names if n.endswith(".log")
            ]
            _concatenate(log_path, pod_logs)
            log(f"join: {len(records)} finished pod object(s) saved for the cost stage")
            priced: dict[str, Any] = {"pods": records, "cluster_profile": cluster_profile_name()}
        else:
            finished = sorted((r for r in results or [] if r), key=lambda r: r["index"])
            usages = [r["usage"] for r in finished]
            if len(usages) != count:
                raise StageFailed(f"join: {len(usages)} measured shard process(es) for {count} shards")
            shard_logs = [
                staging.get_file(f"logs/shards/{n}", scratch / "shard-logs" / n)
                for n in staging.list("logs/shards/")
            ]
            _concatenate(log_path, shard_logs)
            priced = {
                "usages": tuple(usages),
                "usage": _combined_usage(usages),
                "failed_tries": tuple(
                    {"index": r["index"], "try": k + 1, "usage": u}
                    for r in finished
                    for k, u in enumerate(r.get("failed_tries") or [])
                ),
            }
        return ExplainResult(
            explain_uri=explain_uri,
            fidelity_uri=fidelity_uri,
            explained=explained,
            params=plan["params"] if plan is not None else run.params,
            backend=backend,
            shards=count,
            log_uri=staging.put_file("logs/explain.log", log_path),
            **priced,
        )


def _shard_out_from_arguments(shard: dict[str, Any]) -> str:
    arguments = list(shard.get("arguments") or [])
    return arguments[arguments.index("--out") + 1]


def _concatenate(target: Path, parts: list[Path]) -> None:
    with target.open("w") as out:
        for part in parts:
            out.write(f"==> {part.name} <==\n")
            out.write(part.read_text(errors="replace"))


def price_pods(
    pod_records: list[dict[str, Any]], profile_name: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """FOCUS rows of the saved pods (every try is billed: a failed pod used its node too).

    Usage comes from the sources the deployment configures (``XAC_PROMETHEUS_URL``: cAdvisor and DCGM
    series over each pod's exact lifetime); without one, or for a pod it has no data for, the pod's
    requests are billed and the rows say so.
    """
    import yaml

    from include.finops.pod import price_pod
    from include.finops.pricing import load_catalogue
    from include.finops.usage_sources import collect_usage, sources_from_environment
    from include.k8s import load_cluster_profile

    catalogue = load_catalogue()
    profile = load_cluster_profile(profile_name or cluster_profile_name())
    rules = yaml.safe_load(profile.path.read_text())
    sources = sources_from_environment()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for record in pod_records:
        collected = collect_usage(record["pod"], sources) if sources else None
        cost = price_pod(
            record["pod"],
            catalogue,
            usage=collected.usage if collected else None,
            node=record.get("node"),
            cluster_profile=rules,
        )
        rows += cost.rows
        notes += [f"{cost.pod}: {n}" for n in (*(collected.notes if collected else ()), *cost.notes)]
        if record.get("vanished"):
            notes.append(f"{cost.pod}: {record['pod']['status']['message']}")
    return rows, notes
