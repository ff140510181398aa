"""The stages of one explainer run, as plain functions the DAG's thin tasks call.

Each step takes the typed run context (:class:`PipelineRun`) and the small results of earlier steps,
reads what it needs from the run's staging prefix in object storage and writes what later steps need
there (:mod:`include.orchestration.staging`): a step may run on any worker, in a scratch folder it
removes, and is safe to retry (it overwrites what an earlier try of the same step staged).

    start_run → provenance_step → plan_step → explain (shards) → meter_step → fidelity_step → publish_step
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
from include.orchestration.run_context import ExplainResult, PipelineRun, StagedProvenance, run_config
from include.orchestration.staging import (
    RunStaging,
    StagedObjectMissing,
    StageFailed,
    scratch_dir,
    staging_prefix_for,
)
from include.paths import REPO_ROOT

LogFn = Callable[[str], None]

__all__ = [
    "ExplainResult",
    "PipelineRun",
    "RunParams",
    "StageFailed",
    "StagedObjectMissing",
    "StagedProvenance",
]


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


CONFIG_STAGING_DIR = "config"


def start_run(
    config_path: str,
    *,
    dag_id: str,
    run_id: str,
    params: dict[str, Any],
    identity: dict[str, Any],
    s3_client: Any,
    log: LogFn = print,
) -> PipelineRun:
    """Check the config and the run's Params; stage the config, by digest, for every later stage.

    Later stages never read the DAG folder again: a git-sync swap while the run is under way changes
    neither what is explained nor what is signed.
    """
    loaded = load_config(config_path)
    spec = loaded.config.spec
    run = RunParams.from_mapping(params)
    from include.configuration import model_catalogue

    entry = model_catalogue()[spec.modelName]
    model_version = run.model_version or spec.modelVersion or str(entry["defaultVersion"])
    run_key = safe_key_part(run_id)
    settings = spec.explainerConfig
    assert settings is not None and spec.budget is not None and spec.owner is not None
    bucket = spec.storage.bucket
    from include.compliance import ensure_bucket
    from include.compliance.retention import STAGING_EXPIRY_DAYS, ensure_staging_expiry

    ensure_bucket(s3_client, bucket)
    try:  # what a failed or abandoned run leaves under _staging/ expires instead of staying forever
        ensure_staging_expiry(s3_client, bucket, "_staging/", days=STAGING_EXPIRY_DAYS)
    except Exception as exc:  # a store without lifecycle support must not stop the run
        log(f"WARNING: no expiry rule on s3://{bucket}/_staging/: {exc}")
    staging = RunStaging(s3_client, bucket, staging_prefix_for(dag_id, run_key))
    config_uri = staging.put_bytes(f"{CONFIG_STAGING_DIR}/{loaded.sha256}.yaml", loaded.text.encode())
    log(f"config {loaded.path.name} (sha256 {loaded.sha256[:12]}) staged for the run: {config_uri}")
    return PipelineRun(
        dag_id=dag_id,
        run_id=run_id,
        run_key=run_key,
        identity=identity,
        config_file=_relative_to_repo(Path(config_path)),
        config_sha256=loaded.sha256,
        config_uri=config_uri,
        config_name=loaded.name,
        defaults_applied=tuple(loaded.defaults_applied),
        model_name=spec.modelName,
        model_version=model_version,
        feature_service=spec.featureService or entry["featureService"],
        explainer_type=spec.explainerType or "",
        method=settings.method,
        params=explainer_params(loaded, run.sample_budget),
        seed=int(settings.seed),
        inference_ids=tuple(run.inference_ids or spec.inference.ids) or None,
        inference_count=spec.inference.count,
        dry_run_cost_only=run.dry_run_cost_only,
        bucket=bucket,
        bundle_prefix=bundle_prefix(loaded.config, model_version, run_key),
        listing_prefix=model_listing_prefix(loaded.config),
        started_at=datetime.now(UTC).isoformat(),
    )


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
        salt=salt or provenance_salt_from_environment(),
        previous=previous,
    )


def provenance_salt_from_environment(mode: str = "embedded") -> str:
    """Salt for hashing entity keys: ``XAC_PROVENANCE_SALT``; on the embedded default, else a secret
    generated once per installation under ``$XAC_HOME``. A shared deployment generates nothing (the
    Airflow connection ``xac_provenance_salt`` is read by :mod:`include.adapters.connections`)."""
    import os
    import secrets

    from include.orchestration.deployment import EMBEDDED, missing
    from include.paths import keys_dir

    env = os.environ.get("XAC_PROVENANCE_SALT")
    if env:
        return env
    if mode != EMBEDDED:
        raise missing(
            "provenance salt",
            "create the Airflow connection 'xac_provenance_salt' whose password is the salt (a long random "
            "secret), or set XAC_PROVENANCE_SALT on every worker",
            mode,
        )
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


def provenance_step(
    run: PipelineRun, s3_client: Any, log: LogFn = print, salt: str | None = None
) -> StagedProvenance:
    """Retrieve and validate the frames; stage them, and their provenance record, for later tasks.

    The source digests are compared with the last accepted bundle's provenance to show drift.
    """
    staging = run.staging(s3_client)
    previous = previous_bundle(run, s3_client)
    with scratch_dir("provenance") as out_dir:
        result = run_provenance_for_config(
            run_config(run, s3_client),
            out_dir=out_dir,
            inference_ids=list(run.inference_ids) if run.inference_ids else None,
            salt=salt,
            previous=_read_previous(previous, "provenance.json", s3_client),
        )
        for line in result.summary.splitlines():
            log(line)
        if not result.passed:  # the record of what failed stays for a person to read; no frame goes on
            for path in (result.validation_path, result.provenance_path):
                staging.put_file(f"provenance/{Path(path).name}", Path(path))
            raise StageFailed(
                "data validation failed: nothing will be explained on this data.\n" + result.summary
            )
        frames = json.loads(Path(result.provenance_path).read_text())["frames"]
        uris = {
            name: staging.put_file(f"provenance/{Path(path).name}", Path(path))
            for name, path in (
                ("inference", result.inference_path),
                ("background", result.background_path),
                ("validation", result.validation_path),
                ("provenance", result.provenance_path),  # last: its presence says the rest is there
            )
        }
    log(f"frames staged for the explainer: {uris['inference']}, {uris['background']}")
    return StagedProvenance(
        inference_uri=uris["inference"],
        background_uri=uris["background"],
        inference_sha256=frames["inference"]["sha256"],
        background_sha256=frames["background"]["sha256"],
        provenance_uri=uris["provenance"],
        validation_uri=uris["validation"],
        inference_ids=tuple(result.inference_ids),
        previous_bundle=previous,
    )


def _resource_request(loaded: LoadedConfig) -> Any:
    from include.finops.meter import ResourceRequest

    requests = loaded.config.spec.resourceRequirements
    return ResourceRequest(requests.cpu_cores, requests.memory_bytes, requests.gpu_count)


def plan_step(
    run: PipelineRun,
    provenance: StagedProvenance,
    s3_client: Any,
    log: LogFn = print,
    backend: str = "local",
    cost_store: Any = None,
) -> dict[str, Any]:
    """Estimate the run's cost before any explanation is computed; stop or shrink to fit the budget.

    The estimate scales the cost of earlier runs of the same model and method (the cost store) by the
    work (instances × numSamples or steps); with no history it uses a conservative prior.
    """
    from include.finops.plan import estimate_run_cost, fit_to_budget
    from include.finops.pricing import load_catalogue
    from include.finops.store import CostStore
    from include.orchestration.shards import planned_shards

    loaded = run_config(run, s3_client)
    staging = run.staging(s3_client)
    budget = loaded.config.spec.budget
    assert budget is not None
    name, default = work_knob(run.method)
    params = dict(run.params)
    samples = int(params.get(name, default)) if name else 1
    estimate = estimate_run_cost(
        method=run.method,
        num_samples_or_steps=samples,
        instances=len(provenance.inference_ids),
        shards=planned_shards(backend, len(provenance.inference_ids)),
        request=_resource_request(loaded),
        history=(cost_store or CostStore()).history(run.model_name, run.method),
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
            staging.put_json("plan.json", plan | {"decision": "refused"})
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
    staging.put_json("plan.json", plan)
    return plan


def explain_step(
    run: PipelineRun,
    provenance: StagedProvenance,
    plan: dict[str, Any] | None,
    s3_client: Any,
    log: LogFn = print,
) -> ExplainResult:
    """The local backend's shards run here one after the other, then the join (scripts, benchmarks).

    The DAG runs the same three parts as separate tasks (include/orchestration/shards.py): the shard
    plan, one mapped task per shard, the join.
    """
    from include.orchestration.shards import explain_shard_step, join_step, shard_plan_step

    shards = shard_plan_step(run, provenance, plan, backend="local", s3_client=s3_client, log=log)
    results = [explain_shard_step(run, provenance, plan, shard, s3_client, log) for shard in shards]
    return join_step(run, shards, results, backend="local", s3_client=s3_client, plan=plan, log=log)


def meter_step(
    run: PipelineRun,
    explain: ExplainResult,
    plan: dict[str, Any] | None,
    s3_client: Any,
    log: LogFn = print,
    cost_store: Any = None,
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

    loaded = run_config(run, s3_client)
    staging = run.staging(s3_client)
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
        model=run.model_name,
        model_version=run.model_version,
        config_name=run.config_name,
        run_id=run.run_id,
        team=spec.owner.team,
        cost_center=spec.owner.costCenter,
    )
    notes: list[str] = []
    usage: ResourceUsage | None = None
    runtime_seconds: float | None = None
    if explain.pods is not None:
        from include.finops.pod import pod_lifetime
        from include.orchestration.shards import price_pods

        records = [staging.get_json(name) for name in explain.pods]
        rows, notes = price_pods(records, explain.cluster_profile)
        windows = [pod_lifetime(record["pod"]) for record in records]
        if windows:
            runtime_seconds = (max(w[1] for w in windows) - min(w[0] for w in windows)).total_seconds()
    else:
        rows = []
        assert explain.usage is not None  # the local backend measures every shard's process
        for index, raw in enumerate(explain.usages or [explain.usage]):
            rows += price_usage(
                measured(raw), _resource_request(loaded), replace(labels, shard=index), catalogue
            )
        for failed in explain.failed_tries:  # crashed tries that a retry replaced
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
        usage = measured(explain.usage)
        runtime_seconds = usage.wall_seconds
    summary = summarise(
        rows,
        explanations=explain.explained,
        budget=spec.budget.maxCostPerRun,
        currency=catalogue.currency,
    )
    summary["pricing"] = {
        "currency": catalogue.currency,
        "effective_date": catalogue.effective_date,
        "source": catalogue.source,
    }
    summary["notes"] = notes
    summary["backend"] = explain.backend
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
    staging.put_json("cost.json", cost)
    with scratch_dir("cost") as scratch:
        staging.put_file("cost.focus.csv", write_focus_csv(rows, scratch / "cost.focus.csv"))
    store = cost_store or CostStore()
    store.append(rows)
    name, default = work_knob(run.method)
    store.record_run(
        config=run.config_name,
        run_id=run.run_id,
        model=run.model_name,
        method=run.method,
        samples_or_steps=int(explain.params.get(name, default)) if name else 1,
        explained=explain.explained,
        shards=explain.shards,
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
    run_key = {"model": run.model_name, "config": run.config_name, "run": run.run_id}
    push_run_metrics(summary, **run_key, duration_seconds=runtime_seconds or 0.0, log=log)
    return summary


def fidelity_figure(fidelity: dict[str, Any]) -> dict[str, Any]:
    """The gated figure of the explainer's ``fidelity.json``: its aggregate score and metric."""
    return {"score": fidelity.get("aggregate"), "metric": fidelity.get("metric"), "min": fidelity.get("min")}


def previous_bundle(run: PipelineRun, s3_client: Any) -> dict[str, Any] | None:
    """The latest complete bundle of the same model under the config's prefix, if any."""
    from include.compliance import list_bundles

    try:
        bundles = list_bundles(s3_client, run.bucket, prefix=run.listing_prefix, model=run.model_name)
    except Exception as exc:  # a missing bucket simply means no previous run
        if "NoSuchBucket" in str(exc):
            return None
        raise
    bundles = [b for b in bundles if not b.uri.rstrip("/").endswith(run.bundle_prefix.rstrip("/"))]
    if not bundles:
        return None
    latest = max(bundles, key=lambda b: str(b.created_at))
    return {"uri": latest.uri, "bundle_id": latest.bundle_id}


def fidelity_step(
    run: PipelineRun,
    explain: ExplainResult,
    provenance: StagedProvenance,
    s3_client: Any,
    log: LogFn = print,
) -> dict[str, Any]:
    """Gate on the run's fidelity score against the threshold and the last accepted run."""
    from include.fidelity.gate import evaluate_gate

    staging = run.staging(s3_client)
    monitoring = run_config(run, s3_client).config.spec.monitoring
    fidelity = fidelity_figure(staging.get_json(staging.name_of(explain.fidelity_uri)))
    previous = provenance.previous_bundle
    decision = evaluate_gate(
        fidelity,
        threshold=monitoring.fidelityThreshold,
        alert_on_drop=monitoring.alertOnFidelityDrop,
        previous_score=fidelity_figure(_read_previous(previous, "fidelity.json", s3_client) or {})["score"],
        enabled=monitoring.enabled,
    )
    gate = decision.to_json() | {"previous_bundle": previous}
    staging.put_json("fidelity_gate.json", gate)
    for line in decision.messages:
        log(line)
    if not decision.passed:
        raise StageFailed("fidelity gate failed: " + "; ".join(decision.messages))
    return gate


def assemble_bundle(
    run: PipelineRun,
    explain: ExplainResult,
    provenance: StagedProvenance,
    s3_client: Any,
    target: Path,
    loaded: LoadedConfig,
) -> Path:
    """Lay the run's staged evidence (and ``loaded``, its staged config) out as the bundle in the fresh
    folder ``target``."""
    staging = run.staging(s3_client)
    target.mkdir(parents=True)
    (target / "config.yaml").write_text(loaded.text)
    staging.get_file(staging.name_of(provenance.provenance_uri), target / "provenance.json")
    staging.get_file(staging.name_of(provenance.validation_uri), target / "validation.json")
    with scratch_dir("explain") as out_dir:
        staging.get_archive(staging.name_of(explain.explain_uri), out_dir)
        for name in ("fidelity.json", "summary.json", "run_summary.json"):
            if (out_dir / name).exists():
                shutil.copy2(out_dir / name, target / name)
        if (out_dir / "plots").is_dir():
            shutil.copytree(out_dir / "plots", target / "plots")
        explanations = target / "explanations"
        explanations.mkdir()
        for source in sorted((out_dir / "explanations").iterdir()):
            inference_id = source.stem
            target_name = explanation_file_name(loaded.config, run.model_version, inference_id)
            shutil.copy2(source, explanations / target_name)
    for name in ("cost.json", "cost.focus.csv", "fidelity_gate.json"):
        staging.get_file(name, target / name)
    if staging.exists("plan.json"):
        staging.get_file("plan.json", target / "plan.json")
    if explain.pods:  # the finished pod objects the cost was computed from (kubernetes backend)
        (target / "pods").mkdir()
        for name in explain.pods:
            shard, file_name = name.split("/")[-2:]
            staging.get_file(name, target / "pods" / f"{shard}-{file_name}")
    (target / "logs").mkdir()
    staging.get_file(staging.name_of(explain.log_uri), target / "logs" / "explain.log")
    return target


def end_dry_run(run: PipelineRun, plan: dict[str, Any], s3_client: Any, log: LogFn = print) -> str:
    """A cost-only run stops after its plan: nothing is explained or published; returns why.

    The validated frames staged for the explainer are removed; the estimate stays in the plan task's
    return value and log (and in the staged ``plan.json`` until the staging prefix expires).
    """
    run.staging(s3_client).remove_all("provenance/")
    message = (
        f"dry run (cost only): estimated {plan['estimate']:.6f} {plan['currency']} (high "
        f"{plan['estimate_high']:.6f}, from {plan['basis']}) against the budget {plan['budget']}: "
        f"{plan['decision']}; nothing explained, no bundle published"
    )
    log(message)
    return message


SIGNED_BUNDLE = "bundle.tar"  # the built, signed bundle, staged before its write-once upload begins


def publish_step(
    run: PipelineRun,
    explain: ExplainResult | None,
    provenance: StagedProvenance | None,
    gate: dict[str, Any] | None,
    *,
    s3_client: Any,
    signer: Any,
    log: LogFn = print,
    task_logs: Any = None,
) -> dict[str, Any]:
    """Sign the bundle and publish it, write-once, to the config's bucket and prefix.

    Exactly one bundle per run, even when this task is retried on another worker: a bundle this run
    finished publishing is kept; one an earlier attempt left part-way is resumed from the signed copy
    it staged; only otherwise a new one is built. ``task_logs`` (:class:`include.compliance.logs.
    TaskLogSource`, from the DAG task) finds the run's Airflow task logs and the secrets to redact.
    """
    from include.compliance import build_bundle
    from include.compliance.bundle import MANIFEST_NAME, Manifest
    from include.compliance.report import render_report
    from include.compliance.retention import (
        RetentionError,
        apply_retention,
        bundle_storage_cost,
        object_lock_settings,
    )
    from include.compliance.store import bundle_uri, publication_state
    from include.finops.pricing import load_catalogue

    staging = run.staging(s3_client)
    earlier = publication_state(s3_client, run.bucket, run.bundle_prefix)
    if earlier.complete and earlier.manifest is not None and earlier.manifest.run.get("run_id") == run.run_id:
        uri = bundle_uri(run.bucket, run.bundle_prefix)
        log(f"bundle {earlier.manifest.bundle_id} of this run was published by an earlier attempt: {uri}")
        staging.remove_all()
        return _published(uri, earlier.manifest.bundle_id, earlier.manifest.run)
    # Only now the staged config: after a complete publish, the staging prefix is gone.
    loaded = run_config(run, s3_client)
    retention = loaded.config.spec.retention
    with scratch_dir("publish") as scratch:
        signed = scratch / "signed"
        if earlier.claim is not None and staging.exists(SIGNED_BUNDLE):
            staging.get_archive(SIGNED_BUNDLE, signed)
            if earlier.owned_by(signed):
                manifest = Manifest.from_bytes((signed / MANIFEST_NAME).read_bytes())
                log(
                    f"resuming the upload of bundle {manifest.bundle_id}, left part-way by an earlier attempt"
                )
                uri = _upload_bundle(run, loaded, signed, s3_client=s3_client, signer=signer)
                staging.remove_all()
                return _published(uri, manifest.bundle_id, manifest.run)
            shutil.rmtree(signed)
        if explain is None or provenance is None or gate is None:
            raise StageFailed(f"nothing to resume at {staging.uri(SIGNED_BUNDLE)} and no run results given")
        bundle_dir = assemble_bundle(run, explain, provenance, s3_client, signed, loaded)
        from include.compliance.logs import collect_run_logs

        # All task logs of the run + the explainer's, secrets redacted (replaces the raw explain.log copy).
        process_log = scratch / "process-logs" / "explain.log"
        process_log.parent.mkdir()
        shutil.move(bundle_dir / "logs" / "explain.log", process_log)
        run_logs = collect_run_logs(
            bundle_dir / "logs",
            process_logs=[process_log],
            source=_readable_task_logs(task_logs, s3_client, scratch),
        )
        cost = json.loads((bundle_dir / "cost.json").read_text())["summary"]
        fidelity = fidelity_figure(json.loads((bundle_dir / "fidelity.json").read_text()))
        transitions = [(t.days, t.storageClass) for t in retention.transitions]
        try:
            # One lifecycle rule per config prefix (S3 allows 1,000 rules per bucket, not one per run).
            retention_result = apply_retention(
                s3_client,
                run.bucket,
                run.listing_prefix,
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
            s3_client, run.bucket, years=retention.years, mode=retention.objectLockMode
        )
        bundle_bytes = sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file())
        storage_prices = load_catalogue().storage_gib_month
        storage_cost = {
            cls: bundle_storage_cost(bundle_bytes, price_per_gb_month=float(price))
            for cls, price in storage_prices.items()
        }
        record = {
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "identity": run.identity,
            "config_name": run.config_name,
            "config_file": run.config_file,
            "config_sha256": run.config_sha256,
            "policy_defaults_applied": list(run.defaults_applied),
            "model": run.model_name,
            "model_version": run.model_version,
            "feature_service": run.feature_service,
            "method": run.method,
            "params": run.params,
            "seed": run.seed,
            "started_at": run.started_at,
            "cost_total": cost["total"],
            "currency": cost["currency"],
            "fidelity_score": fidelity.get("score"),
            "fidelity_metric": fidelity.get("metric"),
            "explained": explain.explained,
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
        render_report(bundle_dir, run=record, retention=retention_result)
        manifest = build_bundle(
            bundle_dir,
            run=record,
            signer=signer,
            previous=gate.get("previous_bundle"),
            location=bundle_uri(run.bucket, run.bundle_prefix),
        )
        # Staged before the first write-once object: a retry on any worker resumes this very bundle.
        staging.put_archive(SIGNED_BUNDLE, bundle_dir)
        uri = _upload_bundle(run, loaded, bundle_dir, s3_client=s3_client, signer=signer, lock=lock)
    log(f"published bundle {manifest.bundle_id} to {uri}")
    staging.remove_all()
    return _published(uri, manifest.bundle_id, record)


def _readable_task_logs(task_logs: Any, s3_client: Any, scratch: Path) -> Any:
    """With remote logging to S3, every finished task attempt of the run is read from there (tasks ran
    on other workers), plus this attempt's own log so far from the local folder."""
    if task_logs is None or not task_logs.remote_base:
        return task_logs
    from dataclasses import replace

    from include.compliance.logs import fetch_remote_task_logs

    folder = scratch / "task-logs"
    folder.mkdir()
    fetch_remote_task_logs(s3_client, task_logs.remote_base, task_logs.dag_id, task_logs.run_id, folder)
    if task_logs.base_log_folder is not None:  # this attempt is not uploaded until it ends
        from include.compliance.logs import find_task_logs

        for path, task_id, attempt, _ in find_task_logs(
            task_logs.base_log_folder, task_logs.dag_id, task_logs.run_id
        ):
            if task_id == task_logs.current_task_id and attempt == task_logs.current_try:
                target = folder / path.relative_to(task_logs.base_log_folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    return replace(task_logs, base_log_folder=folder)


def _upload_bundle(
    run: PipelineRun,
    loaded: LoadedConfig,
    bundle_dir: Path,
    *,
    s3_client: Any,
    signer: Any,
    lock: dict[str, Any] | None = None,
) -> str:
    """Upload a built, signed bundle write-once (safe to call again after a failure part-way)."""
    from include.compliance import public_key_pem, publish_bundle
    from include.compliance.retention import object_lock_settings

    retention = loaded.config.spec.retention
    if lock is None:
        lock = object_lock_settings(
            s3_client, run.bucket, years=retention.years, mode=retention.objectLockMode
        )
    return publish_bundle(
        bundle_dir,
        s3_client=s3_client,
        bucket=run.bucket,
        prefix=run.bundle_prefix,
        public_key_pem=public_key_pem(signer),
        object_lock=lock,
        sse_kms_key_id=loaded.config.spec.storage.kmsKeyId,
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
