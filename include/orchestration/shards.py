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
import shutil
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from include.configuration import load_config

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


def _staging_uri(ctx: dict[str, Any], s3_client: Any) -> str | None:
    from include.orchestration.pipeline import staging_prefix

    return f"s3://{ctx['bucket']}/{staging_prefix(ctx)}" if s3_client is not None else None


def shard_out(ctx: dict[str, Any], base: str | None, index: int, count: int) -> str:
    """Where shard ``index`` of ``count`` writes: an ``s3://`` prefix, or a workspace folder."""
    if base is not None:
        return f"{base}shards/{index}-of-{count}/"
    return str(Path(ctx["workspace"]) / "shards" / f"{index}-of-{count}")


def _explain_arguments(
    ctx: dict[str, Any], provenance: dict[str, Any], params: dict[str, Any], out: str, config: str
) -> list[str]:
    arguments = [
        "--config",
        config,
        "--config-sha256",
        ctx["config_sha256"],
        "--out",
        out,
        "--inference",
        provenance["inference_uri"],
        "--background",
        provenance["background_uri"],
        "--inference-sha256",
        provenance["inference_sha256"],
        "--background-sha256",
        provenance["background_sha256"],
        "--model-version",
        ctx["model_version"],
        "--seed",
        str(ctx["seed"]),
    ]
    budget = params.get("numSamples") or params.get("steps")
    if budget:
        arguments += ["--sample-budget", str(budget)]
    return arguments


def _stage_source_model(
    ctx: dict[str, Any], bucket: str, prefix: str, s3_client: Any
) -> dict[str, str] | None:
    """A user's model for the pods: a file on this worker is copied to the run's staging prefix
    (pods share no disk with it) and pinned by sha256; an ``s3://`` object or an endpoint is read
    by the pods where it is. None for a model of the model store."""
    from include.explainers.catalogue import catalogue_entries
    from include.explainers.model_store import is_source_model
    from include.orchestration.pipeline import StageFailed
    from include.paths import xac_home

    if not is_source_model(ctx["model_name"]):
        return None
    source = catalogue_entries()[ctx["model_name"]].source
    if source is None:
        raise StageFailed(
            f"model {ctx['model_name']!r}: invalid source in the model catalogue: no pod was started"
        )
    if source.type == "oip":  # an endpoint: the pods call it where it is
        return {}
    location = source.location(str(ctx["model_version"]), str(xac_home()))
    if location.startswith("s3://"):
        return {}
    from include.digests import sha256_file

    path = Path(location).expanduser()
    if not path.is_file():
        raise StageFailed(f"model {ctx['model_name']!r}: {location} not found: no pod was started")
    key = f"{prefix}model/{path.name}"
    s3_client.upload_file(str(path), bucket, key)
    return {"model": f"s3://{bucket}/{key}", "model_sha256": sha256_file(path)}


def _stage_for_pods(ctx: dict[str, Any], base: str, s3_client: Any) -> dict[str, str]:
    """Upload the config and the model the pods need (they share no files with this worker)."""
    from include.compliance import parse_s3_uri
    from include.digests import sha256_file
    from include.explainers.model_store import model_dir

    bucket, prefix = parse_s3_uri(base)
    prefix = prefix.rstrip("/") + "/"
    s3_client.upload_file(ctx["config_path"], bucket, prefix + "config.yaml")
    staged_source = _stage_source_model(ctx, bucket, prefix, s3_client)
    if staged_source is not None:
        return {"config": f"{base}config.yaml", **staged_source}
    folder = model_dir(ctx["model_name"], ctx["model_version"])
    weights = folder / "model.pt"
    if not weights.is_file() or not (folder / "model.json").is_file():
        from include.orchestration.pipeline import StageFailed

        raise StageFailed(
            f"model {ctx['model_name']!r} version {ctx['model_version']!r} is not in the model store "
            f"({folder}): no pod was started"
        )
    for name in ("model.json", "model.pt"):
        s3_client.upload_file(str(folder / name), bucket, f"{prefix}model/{name}")
    return {
        "config": f"{base}config.yaml",
        "model": f"{base}model/",
        "model_sha256": sha256_file(weights),
    }


def shard_plan_step(
    ctx: dict[str, Any],
    provenance: dict[str, Any],
    plan: dict[str, Any] | None,
    *,
    backend: str,
    s3_client: Any = None,
    profile: str | None = None,
    log: Any = print,
) -> list[dict[str, Any]]:
    """One entry per shard, the mapped explain task's arguments.

    local: ``{"index", "count", "out"}``; kubernetes: the per-shard KubernetesPodOperator kwargs
    (name, cmds, arguments, labels, annotations, env_vars), for ``.expand_kwargs()``.
    """
    from include.orchestration.pipeline import StageFailed, _write_json

    params = plan["params"] if plan is not None else ctx["params"]
    instances = len(provenance["inference_ids"])
    base = _staging_uri(ctx, s3_client)
    workspace = Path(ctx["workspace"])
    if backend == "local":
        count = shard_count(instances, None)
        shards = [{"index": i, "count": count, "out": shard_out(ctx, base, i, count)} for i in range(count)]
    elif backend == "kubernetes":
        if base is None:
            raise StageFailed("the kubernetes backend needs object storage: pods share no files with Airflow")
        shards = _pod_shards(ctx, provenance, params, base, s3_client, profile or cluster_profile_name())
    else:
        raise BackendError(f"unknown explain backend {backend!r}")
    count = len(shards)
    _write_json(workspace / "shards.json", {"backend": backend, "count": count, "shards": shards})
    log(f"explain: {instances} instances in {count} shard(s) on the {backend} backend")
    return shards


def _pod_shards(
    ctx: dict[str, Any],
    provenance: dict[str, Any],
    params: dict[str, Any],
    base: str,
    s3_client: Any,
    profile_name: str,
) -> list[dict[str, Any]]:
    from include.k8s import PodSpecError, RunContext, load_cluster_profile, plan_pod, pod_template
    from include.orchestration.pipeline import StageFailed

    loaded = load_config(ctx["config_path"])
    profile = load_cluster_profile(profile_name).profile
    count = shard_count(len(provenance["inference_ids"]), profile.spec.sharding)
    staged = _stage_for_pods(ctx, base, s3_client)
    env = {}
    endpoint = getattr(getattr(s3_client, "meta", None), "endpoint_url", None)
    if endpoint and "amazonaws.com" not in endpoint:
        env["S3_ENDPOINT_URL"] = endpoint  # an S3-compatible store; on AWS the pod uses the default
    try:
        template = pod_template(loaded.config, profile, env=env)
        run = RunContext.for_config(
            loaded.config,
            dag_id=ctx["dag_id"],
            run_id=ctx["run_id"],
            model_version=ctx["model_version"],
            config_sha256=ctx["config_sha256"],
        )
        shards = []
        for index in range(count):
            out = shard_out(ctx, base, index, count)
            argv = ["xac", "explain", *_explain_arguments(ctx, provenance, params, out, staged["config"])]
            if "model" in staged:
                argv += ["--model-uri", staged["model"], "--model-sha256", staged["model_sha256"]]
            pod = plan_pod(loaded.config, profile, run.shard(index, count), argv, template=template)
            kwargs = pod.shard_kpo_kwargs()
            kwargs["annotations"][STAGING_ANNOTATION] = base
            kwargs["env_vars"] = dict(template.env)
            shards.append(kwargs)
    except PodSpecError as exc:
        raise StageFailed(str(exc)) from None
    return shards


def local_explain_command(
    ctx: dict[str, Any], provenance: dict[str, Any], params: dict[str, Any], out: str
) -> list[str]:
    """The same ``xac explain`` a pod runs, as this worker's interpreter runs it."""
    return [
        sys.executable,
        "-m",
        "include.cli",
        "explain",
        *_explain_arguments(ctx, provenance, params, out, ctx["config_path"]),
    ]


def explain_shard_step(
    ctx: dict[str, Any],
    provenance: dict[str, Any],
    plan: dict[str, Any] | None,
    shard: dict[str, Any],
    s3_client: Any = None,
    log: Any = print,
) -> dict[str, Any]:
    """Local backend: run one shard's ``xac explain`` as a process; stream its log, measure it."""
    from include.orchestration.local_process import ProcessFailed, child_environment, run_measured
    from include.orchestration.pipeline import StageFailed, _write_json

    params = plan["params"] if plan is not None else ctx["params"]
    index, count, out = int(shard["index"]), int(shard["count"]), str(shard["out"])
    workspace = Path(ctx["workspace"])
    if not out.startswith("s3://"):
        shutil.rmtree(out, ignore_errors=True)  # an earlier try's leftovers
    command = [*local_explain_command(ctx, provenance, params, out), "--shard", f"{index}/{count}"]
    log_path = workspace / "logs" / "shards" / f"explain-{index}-of-{count}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if s3_client is not None and s3_client.meta.endpoint_url:
        # the child reads the staged frames and writes its outputs through this task's endpoint
        extra["S3_ENDPOINT_URL"] = s3_client.meta.endpoint_url
    with log_path.open("w") as log_file:

        def tee(line: str) -> None:
            log(line)
            log_file.write(line + "\n")

        try:
            usage = run_measured(command, env=child_environment(extra), on_line=tee)
        except ProcessFailed as exc:
            # The failed try used the worker too: kept for the cost stage, billed with the shard.
            earlier = len(list((workspace / "usage").glob(f"shard-{index}-failed-*.json")))
            _write_json(workspace / "usage" / f"shard-{index}-failed-{earlier + 1}.json", exc.usage.to_json())
            if exc.exit_code in REFUSED_EXIT_CODES:
                raise StageFailed(str(exc)) from None
            raise ShardProcessFailed(str(exc)) from None
    _write_json(workspace / "usage" / f"shard-{index}.json", usage.to_json())
    failed_tries = [
        json.loads(p.read_text())
        for p in sorted(
            (workspace / "usage").glob(f"shard-{index}-failed-*.json"),
            key=lambda p: int(p.stem.rsplit("-", 1)[1]),
        )
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


def _download_prefix(s3_client: Any, uri: str, target: Path) -> list[str]:
    from include.compliance import parse_s3_uri

    bucket, prefix = parse_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    for key in keys:
        path = target / key[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3_client.download_file(bucket, key, str(path))
    return [k[len(prefix) :] for k in keys]


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
    ctx: dict[str, Any],
    shards: list[dict[str, Any]],
    results: list[dict[str, Any] | None] | None = None,
    *,
    backend: str,
    s3_client: Any = None,
    plan: dict[str, Any] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Check that every shard wrote a complete output, merge them, gather what the cost stage prices.

    Fails (StageFailed) when a shard's output is missing or incomplete, or holds another number of
    explanations than its run summary says (a duplicate or a leftover of an earlier try).
    """
    from include.explainers.runtime import merge_shards
    from include.orchestration.pipeline import StageFailed, _fresh_dir

    workspace = Path(ctx["workspace"])
    count = len(shards)
    local_root = _fresh_dir(workspace / "shards-joined")
    folders: list[Path] = []
    problems: list[str] = []
    for index, shard in enumerate(shards):
        out = str(shard["out"]) if "out" in shard else _shard_out_from_arguments(shard)
        folder = local_root / f"{index}-of-{count}"
        if out.startswith("s3://"):
            names = _download_prefix(s3_client, out, folder)
        else:
            names = []
            if Path(out).is_dir():
                shutil.copytree(out, folder, dirs_exist_ok=True)
                names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        if COMPLETE_MARKER not in names:
            problems.append(f"shard {index} of {count}: no complete output at {out} (no {COMPLETE_MARKER})")
            continue
        summary = json.loads((folder / COMPLETE_MARKER).read_text())
        explanations = [n for n in names if n.startswith("explanations/")]
        if summary["shard"]["index"] != index or summary["shard"]["count"] != count:
            problems.append(f"shard {index} of {count}: {out} holds shard {summary['shard']}")
        if len(explanations) != summary["counts"]["explanations"]:
            problems.append(
                f"shard {index} of {count}: {len(explanations)} explanation objects at {out}, but its run "
                f"summary lists {summary['counts']['explanations']}"
            )
        folders.append(folder)
    if problems:
        raise StageFailed("the explain shards are not all complete:\n" + "\n".join(problems))
    out_dir = _fresh_dir(workspace / "explain")
    merged = merge_shards(folders, out_dir, overwrite=True)
    explained = int(merged["counts"]["instances"])
    log(f"join: {count} shard(s) complete, {explained} explanations merged into {out_dir}")

    result: dict[str, Any] = {
        "out_dir": str(out_dir),
        "explained": explained,
        "params": plan["params"] if plan is not None else ctx["params"],
        "backend": backend,
        "shards": count,
    }
    logs = workspace / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if backend == "kubernetes":
        pods_dir = _fresh_dir(workspace / "pods")
        staged = _staging_uri(ctx, s3_client)
        names = _download_prefix(s3_client, f"{staged}pods/", pods_dir) if staged else []
        records = sorted(n for n in names if n.endswith(".json"))
        result["pods"] = [str(pods_dir / n) for n in records]
        pod_logs = [pods_dir / n for n in sorted(names) if n.endswith(".log")]
        _concatenate(logs / "explain.log", pod_logs)
        log(f"join: {len(records)} finished pod object(s) saved for the cost stage")
    else:
        finished = sorted((r for r in results or [] if r), key=lambda r: r["index"])
        usages = [r["usage"] for r in finished]
        if len(usages) != count:
            raise StageFailed(f"join: {len(usages)} measured shard process(es) for {count} shards")
        result["usages"] = usages
        result["usage"] = _combined_usage(usages)
        result["failed_tries"] = [
            {"index": r["index"], "try": k + 1, "usage": u}
            for r in finished
            for k, u in enumerate(r.get("failed_tries") or [])
        ]
        _concatenate(logs / "explain.log", sorted((logs / "shards").glob("explain-*.log")))
    return result


def _shard_out_from_arguments(shard: dict[str, Any]) -> str:
    arguments = list(shard.get("arguments") or [])
    return arguments[arguments.index("--out") + 1]


def _concatenate(target: Path, parts: list[Path]) -> None:
    with target.open("w") as out:
        for part in parts:
            out.write(f"==> {part.name} <==\n")
            out.write(part.read_text(errors="replace"))


def price_pods(
    pod_files: list[str], profile_name: str | None = None
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
    for path in pod_files:
        record = json.loads(Path(path).read_text())
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
