"""The stages of one explainer run, as plain functions the DAG's thin tasks call.

Each step takes and returns JSON-serialisable dicts (they travel between tasks as XCom), reads and
writes files in the run's workspace, and is safe to retry: a step first clears what an earlier
try of the same step left behind. The workspace is ``$XAC_HOME/runs/<dag id>/<run key>/``.

    start_run → provenance_step → explain_step → meter_step → fidelity_step → publish_step
"""

from __future__ import annotations

import json
import shutil
import sys
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

    @classmethod
    def from_mapping(cls, params: dict[str, Any]) -> RunParams:
        ids = params.get("inference_ids") or None
        if isinstance(ids, str):
            ids = [i.strip() for i in ids.replace("\n", ",").split(",") if i.strip()]
        budget = params.get("sample_budget")
        return cls(
            model_version=(str(params["model_version"]) if params.get("model_version") else None),
            inference_ids=list(ids) if ids else None,
            sample_budget=int(budget) if budget not in (None, "", 0) else None,
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


def explainer_params(loaded: LoadedConfig, sample_budget: int | None) -> dict[str, Any]:
    """The method's parameters with the run's sample budget applied (numSamples or steps)."""
    settings = loaded.config.spec.explainerConfig
    assert settings is not None  # guaranteed by the policy gate
    params = settings.model_dump(exclude_none=True, exclude={"method", "seed"})
    if settings.method == "IntegratedGradients":
        # The background strategy chooses the rows the provenance stage retrieves (IG's
        # background-mean baseline); it is not a parameter of the attribution method itself.
        params.pop("backgroundDataStrategy", None)
        params.pop("backgroundDataSubsetSize", None)
    if sample_budget is not None:
        params["steps" if settings.method == "IntegratedGradients" else "numSamples"] = sample_budget
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

        ensure_bucket(s3_client, ctx["bucket"])
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


DEFAULT_BUDGET_PARAM = {"KernelSHAP": ("numSamples", 500), "IntegratedGradients": ("steps", 50)}


def _resource_request(loaded: LoadedConfig) -> Any:
    from include.finops.meter import ResourceRequest

    requests = loaded.config.spec.resourceRequirements
    return ResourceRequest(requests.cpu_cores, requests.memory_bytes, requests.gpu_count)


def plan_step(ctx: dict[str, Any], provenance: dict[str, Any], log: LogFn = print) -> dict[str, Any]:
    """Estimate the run's cost before any explanation is computed; stop or shrink to fit the budget.

    The estimate scales the cost of earlier runs of the same model and method (the cost store) by the
    work (instances × numSamples or steps); with no history it uses a conservative prior.
    """
    from include.finops.plan import estimate_run_cost, fit_to_budget
    from include.finops.pricing import load_catalogue
    from include.finops.store import CostStore

    loaded = load_config(ctx["config_path"])
    budget = loaded.config.spec.budget
    assert budget is not None
    name, default = DEFAULT_BUDGET_PARAM[ctx["method"]]
    params = dict(ctx["params"])
    samples = int(params.get(name, default))
    estimate = estimate_run_cost(
        method=ctx["method"],
        num_samples_or_steps=samples,
        instances=len(provenance["inference_ids"]),
        shards=1,
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
        name: samples,
        "shrunk_from": None,
        "params": params,
    }
    log(
        f"plan: {estimate.method} on {estimate.instances} instances × {name} {samples}: estimated "
        f"{estimate.cost:.6f} (high {estimate.cost_high:.6f}) {estimate.currency} from {estimate.basis}; "
        f"budget {budget.maxCostPerRun}"
    )
    if estimate.cost_high > budget.maxCostPerRun:
        fitted = fit_to_budget(estimate, budget.maxCostPerRun) if budget.onExceed == "shrink" else None
        if fitted is None:
            _write_json(Path(ctx["workspace"]) / "plan.json", plan | {"decision": "refused"})
            raise StageFailed(
                f"estimated cost {estimate.cost_high:.6f} {estimate.currency} exceeds the budget "
                f"{budget.maxCostPerRun} (onExceed: {budget.onExceed}); nothing was explained"
            )
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


def explain_command(ctx: dict[str, Any], provenance: dict[str, Any], out_dir: Path) -> list[str]:
    """The explainer entrypoint, the same command a Kubernetes pod runs."""
    command = [
        sys.executable,
        "-m",
        "include.cli",
        "explain",
        "--config",
        ctx["config_path"],
        "--out",
        str(out_dir),
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
    budget = ctx["params"].get("numSamples") or ctx["params"].get("steps")
    if budget:
        command += ["--sample-budget", str(budget)]
    return command


def explain_step(
    ctx: dict[str, Any],
    provenance: dict[str, Any],
    plan: dict[str, Any] | None = None,
    s3_client: Any = None,
    log: LogFn = print,
) -> dict[str, Any]:
    """Run ``xac explain`` as a local process, stream its log, measure what it used."""
    if plan is not None:  # the plan may have lowered numSamples/steps to fit the budget
        ctx = ctx | {"params": plan["params"]}
    from include.orchestration.local_process import ProcessFailed, child_environment, run_measured

    workspace = Path(ctx["workspace"])
    out_dir = workspace / "explain"
    shutil.rmtree(out_dir, ignore_errors=True)
    log_path = workspace / "logs" / "explain.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:

        def tee(line: str) -> None:
            log(line)
            log_file.write(line + "\n")

        try:
            extra = {}
            if s3_client is not None and s3_client.meta.endpoint_url:
                # the child reads the staged frames through the same endpoint as this task
                extra["S3_ENDPOINT_URL"] = s3_client.meta.endpoint_url
            usage = run_measured(
                explain_command(ctx, provenance, out_dir), env=child_environment(extra), on_line=tee
            )
        except ProcessFailed as exc:
            _write_json(workspace / "usage.json", exc.usage.to_json())
            raise StageFailed(str(exc)) from None
    _write_json(workspace / "usage.json", usage.to_json())
    summary = json.loads((out_dir / "run_summary.json").read_text())
    return {
        "out_dir": str(out_dir),
        "usage": usage.to_json(),
        "explained": summary["counts"]["explanations"],
        "params": ctx["params"],
    }


def meter_step(
    ctx: dict[str, Any], explain: dict[str, Any], plan: dict[str, Any] | None = None, log: LogFn = print
) -> dict[str, Any]:
    """Price the explainer process from its measured usage; compare with the plan and the budget.

    The rows also go to the cost store (cost per model per month; history for the next plan) and,
    as a FOCUS 1.0 CSV, into the bundle.
    """
    from include.finops.focus import write_focus_csv
    from include.finops.meter import ResourceUsage, RunLabels, price_usage, summarise
    from include.finops.pricing import load_catalogue
    from include.finops.store import CostStore

    loaded = load_config(ctx["config_path"])
    spec = loaded.config.spec
    assert spec.owner is not None and spec.budget is not None
    raw = explain["usage"]
    usage = ResourceUsage(
        started_at=datetime.fromisoformat(raw["started_at"]),
        finished_at=datetime.fromisoformat(raw["finished_at"]),
        cpu_seconds=raw["cpu_seconds"],
        peak_memory_bytes=raw["peak_memory_bytes"],
        exit_code=raw["exit_code"],
        gpu_count=raw.get("gpu_count", 0.0),
    )
    requests = spec.resourceRequirements
    catalogue = load_catalogue()
    rows = price_usage(
        usage,
        _resource_request(loaded),
        RunLabels(
            model=ctx["model_name"],
            model_version=ctx["model_version"],
            config_name=ctx["config_name"],
            run_id=ctx["run_id"],
            team=spec.owner.team,
            cost_center=spec.owner.costCenter,
        ),
        catalogue,
    )
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
    summary["notes"] = []
    if requests.gpu_count > 0 and usage.gpu_count == 0:
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
    name, default = DEFAULT_BUDGET_PARAM[ctx["method"]]
    store.record_run(
        config=ctx["config_name"],
        run_id=ctx["run_id"],
        model=ctx["model_name"],
        method=ctx["method"],
        samples_or_steps=int(explain.get("params", ctx["params"]).get(name, default)),
        explained=int(explain["explained"]),
        runtime_seconds=usage.wall_seconds,
    )
    log(
        f"cost: {summary['total']:.6f} {catalogue.currency} "
        f"(budget {spec.budget.maxCostPerRun} {spec.budget.currency}); per 1,000 explanations: "
        f"{summary['cost_per_1000_explanations']}"
    )
    if summary["within_budget"] is False:
        # The spend already happened; the alert makes it visible and the bundle records it.
        log(f"ALERT: run cost {summary['total']} exceeds the budget {spec.budget.maxCostPerRun}")
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
    (staging / "logs").mkdir()
    shutil.copy2(workspace / "logs" / "explain.log", staging / "logs" / "explain.log")
    return staging


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
) -> dict[str, Any]:
    """Sign the bundle and publish it, write-once, to the config's bucket and prefix."""
    from include.compliance import build_bundle, ensure_bucket, public_key_pem, publish_bundle
    from include.compliance.report import render_report
    from include.compliance.retention import (
        RetentionError,
        apply_retention,
        bundle_storage_cost,
        object_lock_settings,
    )
    from include.finops.pricing import load_catalogue

    retention = load_config(ctx["config_path"]).config.spec.retention
    staging = assemble_bundle(ctx, explain, provenance)
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
    uri = publish_bundle(
        staging,
        s3_client=s3_client,
        bucket=ctx["bucket"],
        prefix=ctx["bundle_prefix"],
        public_key_pem=public_key_pem(signer),
        object_lock=lock,
        sse_kms_key_id=load_config(ctx["config_path"]).config.spec.storage.kmsKeyId,
    )
    log(f"published bundle {manifest.bundle_id} to {uri}")
    _remove_staged_frames(ctx, s3_client)
    return {
        "uri": uri,
        "bundle_id": manifest.bundle_id,
        "cost_total": cost["total"],
        "currency": cost["currency"],
        "fidelity_score": fidelity.get("score"),
        "fidelity_metric": fidelity.get("metric"),
        "bundle_storage_cost_per_month": storage_cost,
    }
