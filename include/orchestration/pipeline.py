"""The stages of one explainer run, as plain functions the DAG's thin tasks call.

Each step takes and returns JSON-serialisable dicts (they travel between tasks as XCom), reads and
writes files in the run's workspace, and is safe to retry: a step first clears what an earlier
try of the same step left behind. The workspace is ``$XAC_HOME/runs/<dag id>/<run key>/``.

    start_run → provenance_step → explain_step → meter_step → fidelity_step → publish_step
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.configuration import LoadedConfig, load_config
from include.configuration.layout import (
    bundle_prefix,
    explanation_file_name,
    model_listing_prefix,
    safe_key_part,
)
from include.identifiers import model_version_problem
from include.paths import REPO_ROOT, runs_dir

LogFn = Callable[[str], None]


class StageFailed(RuntimeError):
    """A stage refused to continue (failed expectation, fidelity below threshold, over budget)."""


@dataclass(frozen=True)
class RunParams:
    """Run-time overrides from the trigger form (DAG Params)."""

    model_version: str | None = None
    inference_ids: list[str] | None = None
    sample_budget: int | None = None
    dry_run_cost_only: bool = False  # stop after the plan: estimate the cost, explain nothing

    @classmethod
    def from_mapping(cls, params: dict[str, Any]) -> RunParams:
        ids = params.get("inference_ids") or None
        if isinstance(ids, str):
            ids = [i.strip() for i in ids.replace("\n", ",").split(",") if i.strip()]
        budget = params.get("sample_budget")
        version = str(params["model_version"]) if params.get("model_version") else None
        problem = model_version_problem(version) if version is not None else None
        if problem:  # the form's pattern refuses it first; a run conf set elsewhere is checked here
            raise ValueError(f"run parameter model_version: {problem}")
        return cls(
            model_version=version,
            inference_ids=list(ids) if ids else None,
            sample_budget=int(budget) if budget not in (None, "", 0) else None,
            dry_run_cost_only=bool(params.get("dry_run_cost_only") or False),
        )


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _relative_to_repo(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def work_knob(method: str) -> tuple[str | None, int]:
    """The parameter a run's sample budget overrides (numSamples or steps) and its default.

    ``(None, 1)`` for methods that do a fixed amount of work per instance (Saliency, TreeSHAP...):
    their cost scales with the instances alone and a budget cannot lower it.
    """
    from include.explainers.params import work_parameter

    spec = work_parameter(method)
    return (spec.name, int(spec.default)) if spec is not None else (None, 1)


def explainer_params(loaded: LoadedConfig, sample_budget: int | None) -> dict[str, Any]:
    """The method's own parameters, with the run's sample budget applied (numSamples or steps).

    The config model carries every method's fields; only those the configured method takes are passed
    on (the background settings, for instance, choose the rows provenance retrieves for every method,
    but only the methods that summarise a background take them as parameters).
    """
    from include.explainers.params import method_parameters

    settings = loaded.config.spec.explainerConfig
    assert settings is not None  # guaranteed by the policy gate
    accepted = method_parameters(settings.method)
    params = {
        key: value
        for key, value in settings.model_dump(exclude_none=True, exclude={"method", "seed"}).items()
        if key in accepted
    }
    if sample_budget is not None:
        knob, _ = work_knob(settings.method)
        if knob is None:
            raise ValueError(
                f"sample_budget does not apply to {settings.method}: the method has no numSamples or steps "
                "(its work is fixed per instance); leave it empty"
            )
        params[knob] = sample_budget
    return params


def start_run(
    config_path: str,
    *,
    dag_id: str,
    run_id: str,
    params: dict[str, Any],
    identity: dict[str, Any],
) -> dict[str, Any]:
    """Load and check the config, apply the run's Params, open the run's workspace."""
    loaded = load_config(config_path)
    spec = loaded.config.spec
    run = RunParams.from_mapping(params)
    from include.configuration import model_catalogue

    entry = model_catalogue()[spec.modelName]
    model_version = run.model_version or spec.modelVersion or str(entry["defaultVersion"])
    run_key = safe_key_part(run_id)
    workspace = runs_dir() / dag_id / run_key
    workspace.mkdir(parents=True, exist_ok=True)
    settings = spec.explainerConfig
    assert settings is not None and spec.budget is not None and spec.owner is not None
    ctx = {
        "dag_id": dag_id,
        "run_id": run_id,
        "run_key": run_key,
        "identity": identity,
        "config_path": str(Path(config_path).resolve()),
        "config_file": _relative_to_repo(Path(config_path)),
        "config_sha256": loaded.sha256,
        "config_name": loaded.name,
        "defaults_applied": list(loaded.defaults_applied),
        "model_name": spec.modelName,
        "model_version": model_version,
        "feature_service": spec.featureService or entry["featureService"],
        "explainer_type": spec.explainerType,
        "method": settings.method,
        "params": explainer_params(loaded, run.sample_budget),
        "seed": settings.seed,
        "inference_ids": run.inference_ids or (list(spec.inference.ids) or None),
        "inference_count": spec.inference.count,
        "dry_run_cost_only": run.dry_run_cost_only,
        "bucket": spec.storage.bucket,
        "bundle_prefix": bundle_prefix(loaded.config, model_version, run_key),
        "listing_prefix": model_listing_prefix(loaded.config),
        "workspace": str(workspace),
        "started_at": datetime.now(UTC).isoformat(),
    }
    _write_json(workspace / "run.json", ctx)
    return ctx


def run_provenance_for_config(
    loaded: LoadedConfig,
    *,
    out_dir: Path,
    inference_ids: list[str] | None = None,
    salt: str | None = None,
    previous: dict[str, Any] | None = None,
) -> Any:
    """The provenance stage for one config (used by the DAG and by ``xac provenance check``)."""
    from include.provenance.stage import run_provenance

    spec = loaded.config.spec
    settings = spec.explainerConfig
    assert settings is not None
    from include.configuration import model_catalogue

    return run_provenance(
        feature_service=spec.featureService or model_catalogue()[spec.modelName]["featureService"],
        out_dir=out_dir,
        inference_ids=inference_ids or (list(spec.inference.ids) or None),
        inference_count=spec.inference.count,
        background_strategy=settings.backgroundDataStrategy,
        background_size=settings.backgroundDataSubsetSize,
        seed=settings.seed,
        salt=salt or _provenance_salt(),
        previous=previous,
    )


def _provenance_salt() -> str:
    """Salt for hashing entity keys: ``XAC_PROVENANCE_SALT`` or a per-installation secret file."""
    import os
    import secrets

    from include.paths import keys_dir

    env = os.environ.get("XAC_PROVENANCE_SALT")
    if env:
        return env
    path = keys_dir() / "provenance-salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _read_previous(previous: dict[str, Any] | None, name: str, s3_client: Any) -> dict[str, Any] | None:
    """One JSON file of the previous accepted bundle (None when there is none or it lacks the file)."""
    if previous is None:
        return None
    from include.compliance import parse_s3_uri

    bucket, prefix = parse_s3_uri(previous["uri"])
    try:
        body = s3_client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read()
    except Exception:
        return None
    return json.loads(body)


def staging_prefix(ctx: dict[str, Any]) -> str:
    """Where a run's input frames wait in object storage for the explainer (removed after publish)."""
    return f"_staging/{safe_key_part(ctx['dag_id'])}/{ctx['run_key']}/"


def provenance_step(ctx: dict[str, Any], s3_client: Any = None, log: LogFn = print) -> dict[str, Any]:
    """Retrieve and validate the frames; hand them to the explainer through object storage.

    With an S3 client, the frames are uploaded under the run's staging prefix and the explainer
    reads them from there (as a pod would), and the source digests are compared with the last
    accepted bundle's provenance to show drift.
    """
    out_dir = _fresh_dir(Path(ctx["workspace"]) / "provenance")
    previous = previous_bundle(ctx, s3_client) if s3_client is not None else None
    result = run_provenance_for_config(
        load_config(ctx["config_path"]),
        out_dir=out_dir,
        inference_ids=ctx["inference_ids"],
        previous=_read_previous(previous, "provenance.json", s3_client),
    )
    for line in result.summary.splitlines():
        log(line)
    if not result.passed:
        raise StageFailed(
            "data validation failed: nothing will be explained on this data.\n" + result.summary
        )
    frames = json.loads(Path(result.provenance_path).read_text())["frames"]
    inference_uri, background_uri = str(result.inference_path), str(result.background_path)
    if s3_client is not None:
        from include.compliance import ensure_bucket
        from include.compliance.retention import STAGING_EXPIRY_DAYS, ensure_staging_expiry

        ensure_bucket(s3_client, ctx["bucket"])
        try:  # what a failed or abandoned run leaves under _staging/ expires instead of staying forever
            ensure_staging_expiry(s3_client, ctx["bucket"], "_staging/", days=STAGING_EXPIRY_DAYS)
        except Exception as exc:  # a store without lifecycle support must not stop the run
            log(f"WARNING: no expiry rule on s3://{ctx['bucket']}/_staging/: {exc}")
        uris = []
        for path in (Path(result.inference_path), Path(result.background_path)):
            key = staging_prefix(ctx) + path.name
            s3_client.upload_file(str(path), ctx["bucket"], key)
            uris.append(f"s3://{ctx['bucket']}/{key}")
        inference_uri, background_uri = uris
        log(f"frames staged for the explainer: {inference_uri}, {background_uri}")
    return {
        "inference_path": str(result.inference_path),
        "background_path": str(result.background_path),
        "inference_uri": inference_uri,
        "background_uri": background_uri,
        "inference_sha256": frames["inference"]["sha256"],
        "background_sha256": frames["background"]["sha256"],
        "provenance_path": str(result.provenance_path),
        "validation_path": str(result.validation_path),
        "inference_ids": list(result.inference_ids),
        "previous_bundle": previous,
    }


def _resource_request(loaded: LoadedConfig) -> Any:
    from include.finops.meter import ResourceRequest

    requests = loaded.config.spec.resourceRequirements
    return ResourceRequest(requests.cpu_cores, requests.memory_bytes, requests.gpu_count)


def plan_step(
    ctx: dict[str, Any], provenance: dict[str, Any], log: LogFn = print, backend: str = "local"
) -> dict[str, Any]:
    """Estimate the run's cost before any explanation is computed; stop or shrink to fit the budget.

    The estimate scales the cost of earlier runs of the same model and method (the cost store) by the
    work (instances × numSamples or steps); with no history it uses a conservative prior.
    """
    from include.finops.plan import estimate_run_cost, fit_to_budget
    from include.finops.pricing import load_catalogue
    from include.finops.store import CostStore
    from include.orchestration.shards import planned_shards

    loaded = load_config(ctx["config_path"])
    budget = loaded.config.spec.budget
    assert budget is not None
    name, default = work_knob(ctx["method"])
    params = dict(ctx["params"])
    samples = int(params.get(name, default)) if name else 1
    estimate = estimate_run_cost(
        method=ctx["method"],
        num_samples_or_steps=samples,
        instances=len(provenance["inference_ids"]),
        shards=planned_shards(backend, len(provenance["inference_ids"])),
        request=_resource_request(loaded),
        history=CostStore().history(ctx["model_name"], ctx["method"]),
        catalogue=load_catalogue(),
    )
    plan = {
        "basis": estimate.basis,
        "estimate": estimate.cost,
        "estimate_high": estimate.cost_high,
        "currency": estimate.currency,
        "budget": budget.maxCostPerRun,
        "on_exceed": budget.onExceed,
        name or "work_per_instance": samples,
        "shrunk_from": None,
        "params": params,
    }
    log(
        f"plan: {estimate.method} on {estimate.instances} instances × {name or 'work per instance'} "
        f"{samples}: estimated {estimate.cost:.6f} (high {estimate.cost_high:.6f}) {estimate.currency} "
        f"from {estimate.basis}; budget {budget.maxCostPerRun}"
    )
    if estimate.cost_high > budget.maxCostPerRun:
        fitted = fit_to_budget(estimate, budget.maxCostPerRun) if budget.onExceed == "shrink" else None
        if fitted is None:
            _write_json(Path(ctx["workspace"]) / "plan.json", plan | {"decision": "refused"})
            raise StageFailed(
                f"estimated cost {estimate.cost_high:.6f} {estimate.currency} exceeds the budget "
                f"{budget.maxCostPerRun} (onExceed: {budget.onExceed}); nothing was explained"
            )
        assert name is not None  # fit_to_budget returns None for methods without a work knob
        log(f"plan: lowering {name} from {samples} to {fitted} to fit the budget")
        params[name] = fitted
        plan |= {
            "shrunk_from": samples,
            name: fitted,
            "params": params,
            "estimate": estimate.cost_for(fitted),
            "estimate_high": estimate.cost_for(fitted) * estimate.high_factor,
        }
    plan["decision"] = "shrunk" if plan["shrunk_from"] else "within budget"
    _write_json(Path(ctx["workspace"]) / "plan.json", plan)
    return plan


def explain_step(
    ctx: dict[str, Any],
    provenance: dict[str, Any],
    plan: dict[str, Any] | None = None,
    s3_client: Any = None,
    log: LogFn = print,
) -> dict[str, Any]:
    """The local backend's shards run here one after the other, then the join (scripts, benchmarks).

    The DAG runs the same three parts as separate tasks (include/orchestration/shards.py): the shard
    plan, one mapped task per shard, the join.
    """
    from include.orchestration.shards import explain_shard_step, join_step, shard_plan_step

    shards = shard_plan_step(ctx, provenance, plan, backend="local", s3_client=s3_client, log=log)
    results = [explain_shard_step(ctx, provenance, plan, shard, s3_client, log) for shard in shards]
    return join_step(ctx, shards, results, backend="local", s3_client=s3_client, plan=plan, log=log)


def meter_step(
    ctx: dict[str, Any], explain: dict[str, Any], plan: dict[str, Any] | None = None, log: LogFn = print
) -> dict[str, Any]:
    """Price the explain step; compare with the plan and the budget.

    Local backend: each shard's process from its measured usage. Kubernetes backend: each finished
    pod that the join collected (every try, failed ones too), from its requests, node and times.
    The rows also go to the cost store (cost per model per month; history for the next plan) and,
    as a FOCUS 1.0 CSV, into the bundle.
    """
    from dataclasses import replace

    from include.finops.focus import write_focus_csv
    from include.finops.meter import ResourceUsage, RunLabels, price_usage, summarise
    from include.finops.pricing import load_catalogue
    from include.finops.store import CostStore

    loaded = load_config(ctx["config_path"])
    spec = loaded.config.spec
    assert spec.owner is not None and spec.budget is not None

    def measured(raw: dict[str, Any]) -> ResourceUsage:
        return ResourceUsage(
            started_at=datetime.fromisoformat(raw["started_at"]),
            finished_at=datetime.fromisoformat(raw["finished_at"]),
            cpu_seconds=raw["cpu_seconds"],
            peak_memory_bytes=raw["peak_memory_bytes"],
            exit_code=raw["exit_code"],
            gpu_count=raw.get("gpu_count", 0.0),
        )

    requests = spec.resourceRequirements
    catalogue = load_catalogue()
    labels = RunLabels(
        model=ctx["model_name"],
        model_version=ctx["model_version"],
        config_name=ctx["config_name"],
        run_id=ctx["run_id"],
        team=spec.owner.team,
        cost_center=spec.owner.costCenter,
    )
    notes: list[str] = []
    usage: ResourceUsage | None = None
    runtime_seconds: float | None = None
    if explain.get("pods") is not None:
        from include.finops.pod import pod_lifetime
        from include.orchestration.shards import price_pods

        rows, notes = price_pods(explain["pods"], explain.get("cluster_profile"))
        windows = [pod_lifetime(json.loads(Path(p).read_text())["pod"]) for p in explain["pods"]]
        if windows:
            runtime_seconds = (max(w[1] for w in windows) - min(w[0] for w in windows)).total_seconds()
    else:
        rows = []
        for index, raw in enumerate(explain.get("usages") or [explain["usage"]]):
            rows += price_usage(
                measured(raw), _resource_request(loaded), replace(labels, shard=index), catalogue
            )
        for failed in explain.get("failed_tries") or []:  # crashed tries that a retry replaced
            rows += price_usage(
                measured(failed["usage"]),
                _resource_request(loaded),
                replace(labels, shard=int(failed["index"]), failed_try=int(failed["try"])),
                catalogue,
            )
            notes.append(
                f"shard {failed['index']}: failed try {failed['try']} (exit code "
                f"{failed['usage']['exit_code']}) billed beside the try that succeeded"
            )
        usage = measured(explain["usage"])
        runtime_seconds = usage.wall_seconds
    summary = summarise(
        rows,
        explanations=int(explain["explained"]),
        budget=spec.budget.maxCostPerRun,
        currency=catalogue.currency,
    )
    summary["pricing"] = {
        "currency": catalogue.currency,
        "effective_date": catalogue.effective_date,
        "source": catalogue.source,
    }
    summary["notes"] = notes
    summary["backend"] = explain.get("backend", "local")
    if usage is not None and requests.gpu_count > 0 and usage.gpu_count == 0:
        summary["notes"].append(
            f"the config requests {requests.gpu} GPU; the local backend allocates none, so no GPU is billed"
        )
    if plan is not None:
        summary["estimate"] = {k: plan[k] for k in ("estimate", "estimate_high", "basis", "decision")}
        summary["actual_vs_estimate"] = summary["total"] / plan["estimate"] if plan["estimate"] else None
        if summary["total"] > plan["estimate_high"]:
            alert = f"ALERT: run cost {summary['total']:.6f} overran its estimate {plan['estimate_high']:.6f}"
            summary["notes"].append(alert)
            log(alert)
    cost = {"rows": rows, "summary": summary}
    workspace = Path(ctx["workspace"])
    _write_json(workspace / "cost.json", cost)
    write_focus_csv(rows, workspace / "cost.focus.csv")
    store = CostStore()
    store.append(rows)
    name, default = work_knob(ctx["method"])
    store.record_run(
        config=ctx["config_name"],
        run_id=ctx["run_id"],
        model=ctx["model_name"],
        method=ctx["method"],
        samples_or_steps=int(explain.get("params", ctx["params"]).get(name, default)) if name else 1,
        explained=int(explain["explained"]),
        shards=int(explain.get("shards", 1)),
        runtime_seconds=runtime_seconds,
    )
    log(
        f"cost: {summary['total']:.6f} {catalogue.currency} "
        f"(budget {spec.budget.maxCostPerRun} {spec.budget.currency}); per 1,000 explanations: "
        f"{summary['cost_per_1000_explanations']}"
    )
    if summary["within_budget"] is False:
        # The spend already happened; the alert makes it visible and the bundle records it.
        log(f"ALERT: run cost {summary['total']} exceeds the budget {spec.budget.maxCostPerRun}")
    from include.finops.pushgateway import push_run_metrics

    # To Prometheus/Grafana when XAC_PUSHGATEWAY_URL is set; a failed push is logged, never raised.
    run_key = {"model": ctx["model_name"], "config": ctx["config_name"], "run": ctx["run_id"]}
    push_run_metrics(summary, **run_key, duration_seconds=runtime_seconds or 0.0, log=log)
    return summary


def fidelity_figure(fidelity: dict[str, Any]) -> dict[str, Any]:
    """The gated figure of the explainer's ``fidelity.json``: its aggregate score and metric."""
    return {"score": fidelity.get("aggregate"), "metric": fidelity.get("metric"), "min": fidelity.get("min")}


def previous_bundle(ctx: dict[str, Any], s3_client: Any) -> dict[str, Any] | None:
    """The latest complete bundle of the same model under the config's prefix, if any."""
    from include.compliance import list_bundles

    try:
        bundles = list_bundles(
            s3_client, ctx["bucket"], prefix=ctx["listing_prefix"], model=ctx["model_name"]
        )
    except Exception as exc:  # a missing bucket simply means no previous run
        if "NoSuchBucket" in str(exc):
            return None
        raise
    bundles = [b for b in bundles if not b.uri.rstrip("/").endswith(ctx["bundle_prefix"].rstrip("/"))]
    if not bundles:
        return None
    latest = max(bundles, key=lambda b: str(b.created_at))
    return {"uri": latest.uri, "bundle_id": latest.bundle_id}


def fidelity_step(
    ctx: dict[str, Any],
    explain: dict[str, Any],
    provenance: dict[str, Any],
    s3_client: Any,
    log: LogFn = print,
) -> dict[str, Any]:
    """Gate on the run's fidelity score against the threshold and the last accepted run."""
    from include.fidelity.gate import evaluate_gate

    loaded = load_config(ctx["config_path"])
    monitoring = loaded.config.spec.monitoring
    fidelity = fidelity_figure(json.loads((Path(explain["out_dir"]) / "fidelity.json").read_text()))
    previous = provenance.get("previous_bundle")
    decision = evaluate_gate(
        fidelity,
        threshold=monitoring.fidelityThreshold,
        alert_on_drop=monitoring.alertOnFidelityDrop,
        previous_score=fidelity_figure(_read_previous(previous, "fidelity.json", s3_client) or {})["score"],
        enabled=monitoring.enabled,
    )
    gate = decision.to_json() | {"previous_bundle": previous}
    _write_json(Path(ctx["workspace"]) / "fidelity_gate.json", gate)
    for line in decision.messages:
        log(line)
    if not decision.passed:
        raise StageFailed("fidelity gate failed: " + "; ".join(decision.messages))
    return gate


def assemble_bundle(ctx: dict[str, Any], explain: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Copy the run's evidence into a fresh staging folder laid out as the bundle."""
    workspace = Path(ctx["workspace"])
    staging = _fresh_dir(workspace / "bundle")
    out_dir = Path(explain["out_dir"])
    shutil.copy2(ctx["config_path"], staging / "config.yaml")
    shutil.copy2(provenance["provenance_path"], staging / "provenance.json")
    shutil.copy2(provenance["validation_path"], staging / "validation.json")
    for name in ("fidelity.json", "summary.json", "run_summary.json"):
        if (out_dir / name).exists():
            shutil.copy2(out_dir / name, staging / name)
    if (out_dir / "plots").is_dir():
        shutil.copytree(out_dir / "plots", staging / "plots")
    explanations = staging / "explanations"
    explanations.mkdir()
    loaded = load_config(ctx["config_path"])
    for source in sorted((out_dir / "explanations").iterdir()):
        inference_id = source.stem
        target_name = explanation_file_name(loaded.config, ctx["model_version"], inference_id)
        shutil.copy2(source, explanations / target_name)
    shutil.copy2(workspace / "cost.json", staging / "cost.json")
    shutil.copy2(workspace / "cost.focus.csv", staging / "cost.focus.csv")
    if (workspace / "plan.json").exists():
        shutil.copy2(workspace / "plan.json", staging / "plan.json")
    shutil.copy2(workspace / "fidelity_gate.json", staging / "fidelity_gate.json")
    if explain.get("pods"):  # the finished pod objects the cost was computed from (kubernetes backend)
        (staging / "pods").mkdir()
        for path in explain["pods"]:
            record = Path(path)
            shutil.copy2(record, staging / "pods" / f"{record.parent.name}-{record.name}")
    (staging / "logs").mkdir()
    shutil.copy2(workspace / "logs" / "explain.log", staging / "logs" / "explain.log")
    return staging


def end_dry_run(ctx: dict[str, Any], plan: dict[str, Any], s3_client: Any, log: LogFn = print) -> str:
    """A cost-only run stops after its plan: nothing is explained or published; returns why.

    The validated frames staged for the explainer are removed; the estimate stays in the run's
    ``plan.json`` (and in the task log).
    """
    _remove_staged_frames(ctx, s3_client)
    message = (
        f"dry run (cost only): estimated {plan['estimate']:.6f} {plan['currency']} (high "
        f"{plan['estimate_high']:.6f}, from {plan['basis']}) against the budget {plan['budget']}: "
        f"{plan['decision']}; nothing explained, no bundle published"
    )
    log(message)
    return message


def _remove_staged_frames(ctx: dict[str, Any], s3_client: Any) -> None:
    listed = s3_client.list_objects_v2(Bucket=ctx["bucket"], Prefix=staging_prefix(ctx))
    for item in listed.get("Contents", []):
        s3_client.delete_object(Bucket=ctx["bucket"], Key=item["Key"])


def publish_step(
    ctx: dict[str, Any],
    explain: dict[str, Any],
    provenance: dict[str, Any],
    gate: dict[str, Any],
    *,
    s3_client: Any,
    signer: Any,
    log: LogFn = print,
    task_logs: Any = None,
) -> dict[str, Any]:
    """Sign the bundle and publish it, write-once, to the config's bucket and prefix.

    ``task_logs`` (:class:`include.compliance.logs.TaskLogSource`, from the DAG task) locates the run's
    Airflow task logs and the secrets to redact; without it only the explainer's log is bundled.
    """
    from include.compliance import build_bundle, ensure_bucket
    from include.compliance.bundle import Manifest
    from include.compliance.report import render_report
    from include.compliance.retention import (
        RetentionError,
        apply_retention,
        bundle_storage_cost,
        object_lock_settings,
    )
    from include.compliance.store import bundle_uri, publication_state
    from include.finops.pricing import load_catalogue

    retention = load_config(ctx["config_path"]).config.spec.retention
    # Exactly one bundle per run, even when this task retries: keep what an earlier attempt finished,
    # resume what it left part-way (same staged bundle), and only otherwise build a new one.
    earlier = publication_state(s3_client, ctx["bucket"], ctx["bundle_prefix"])
    if (
        earlier.complete
        and earlier.manifest is not None
        and earlier.manifest.run.get("run_id") == ctx["run_id"]
    ):
        uri = bundle_uri(ctx["bucket"], ctx["bundle_prefix"])
        log(f"bundle {earlier.manifest.bundle_id} of this run was published by an earlier attempt: {uri}")
        _remove_staged_frames(ctx, s3_client)
        return _published(uri, earlier.manifest.bundle_id, earlier.manifest.run)
    resumable = Path(ctx["workspace"]) / "bundle"
    if earlier.owned_by(resumable):
        manifest = Manifest.from_bytes((resumable / "manifest.json").read_bytes())
        log(f"resuming the upload of bundle {manifest.bundle_id}, left part-way by an earlier attempt")
        uri = _upload_bundle(ctx, resumable, s3_client=s3_client, signer=signer, retention=retention)
        _remove_staged_frames(ctx, s3_client)
        return _published(uri, manifest.bundle_id, manifest.run)
    staging = assemble_bundle(ctx, explain, provenance)
    from include.compliance.logs import collect_run_logs

    # All task logs of the run + the explainer's, secrets redacted (replaces the raw explain.log copy).
    run_logs = collect_run_logs(
        staging / "logs", process_logs=(Path(ctx["workspace"]) / "logs").glob("*.log"), source=task_logs
    )
    cost = json.loads((staging / "cost.json").read_text())["summary"]
    fidelity = fidelity_figure(json.loads((staging / "fidelity.json").read_text()))
    ensure_bucket(s3_client, ctx["bucket"])
    transitions = [(t.days, t.storageClass) for t in retention.transitions]
    try:
        # One lifecycle rule per config prefix (S3 allows 1,000 rules per bucket, not one per run).
        retention_result = apply_retention(
            s3_client,
            ctx["bucket"],
            ctx["listing_prefix"],
            years=retention.years,
            mode=retention.objectLockMode,
            transitions=transitions,
        )
    except RetentionError as exc:
        if retention.objectLockMode:
            raise StageFailed(f"retention cannot be applied: {exc}") from None
        log(f"WARNING: no lifecycle rule applied: {exc}")
        retention_result = {"applied": False, "reason": str(exc)}
    lock = object_lock_settings(
        s3_client, ctx["bucket"], years=retention.years, mode=retention.objectLockMode
    )
    bundle_bytes = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    storage_prices = load_catalogue().storage_gib_month
    storage_cost = {
        cls: bundle_storage_cost(bundle_bytes, price_per_gb_month=float(price))
        for cls, price in storage_prices.items()
    }
    run = {
        "dag_id": ctx["dag_id"],
        "run_id": ctx["run_id"],
        "identity": ctx["identity"],
        "config_name": ctx["config_name"],
        "config_file": ctx["config_file"],
        "config_sha256": ctx["config_sha256"],
        "policy_defaults_applied": ctx["defaults_applied"],
        "model": ctx["model_name"],
        "model_version": ctx["model_version"],
        "feature_service": ctx["feature_service"],
        "method": ctx["method"],
        "params": ctx["params"],
        "seed": ctx["seed"],
        "started_at": ctx["started_at"],
        "cost_total": cost["total"],
        "currency": cost["currency"],
        "fidelity_score": fidelity.get("score"),
        "fidelity_metric": fidelity.get("metric"),
        "explained": explain["explained"],
        "bundle_bytes_before_signing": bundle_bytes,
        "logs": run_logs.to_run_record(),
        "bundle_storage_cost_per_month": storage_cost,
        "retention": {
            "years": retention.years,
            "object_lock_mode": retention.objectLockMode,
            "object_lock_retain_until": str(lock.get("ObjectLockRetainUntilDate") or "") or None,
            "transitions": transitions,
        },
    }
    render_report(staging, run=run, retention=retention_result)
    manifest = build_bundle(staging, run=run, signer=signer, previous=gate.get("previous_bundle"))
    uri = _upload_bundle(ctx, staging, s3_client=s3_client, signer=signer, retention=retention, lock=lock)
    log(f"published bundle {manifest.bundle_id} to {uri}")
    _remove_staged_frames(ctx, s3_client)
    return _published(uri, manifest.bundle_id, run)


def _upload_bundle(
    ctx: dict[str, Any],
    staging: Path,
    *,
    s3_client: Any,
    signer: Any,
    retention: Any,
    lock: dict[str, Any] | None = None,
) -> str:
    """Upload a built, signed bundle write-once (safe to call again after a failure part-way)."""
    from include.compliance import public_key_pem, publish_bundle
    from include.compliance.retention import object_lock_settings

    if lock is None:
        lock = object_lock_settings(
            s3_client, ctx["bucket"], years=retention.years, mode=retention.objectLockMode
        )
    return publish_bundle(
        staging,
        s3_client=s3_client,
        bucket=ctx["bucket"],
        prefix=ctx["bundle_prefix"],
        public_key_pem=public_key_pem(signer),
        object_lock=lock,
        sse_kms_key_id=load_config(ctx["config_path"]).config.spec.storage.kmsKeyId,
    )


def _published(uri: str, bundle_id: str, run: dict[str, Any]) -> dict[str, Any]:
    """What the publish task returns (and the DAG's Asset event carries), from the bundle's run record."""
    return {
        "uri": uri,
        "bundle_id": bundle_id,
        "cost_total": run.get("cost_total"),
        "currency": run.get("currency"),
        "fidelity_score": run.get("fidelity_score"),
        "fidelity_metric": run.get("fidelity_metric"),
        "bundle_storage_cost_per_month": run.get("bundle_storage_cost_per_month"),
    }
