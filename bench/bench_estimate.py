"""Pre-flight estimate vs actual cost after one earlier run of the same model (target: within ±25 %).

For every sample config, on the local backend (the explainer as a measured local process), in a
fresh ``XAC_HOME`` with an empty cost store:

1. run A: ``plan_step`` (no history: the prior), ``explain_step``, ``meter_step`` (cost recorded);
2. run B, same parameters: ``plan_step`` now estimates from run A alone; the actual cost of B is
   compared with that estimate: ``error = actual / estimate - 1`` (the figure the target is about);
3. run C, half the samples/steps: estimated from runs A and B (both did the same work, so the fit
   can only scale by work); recorded for information, since the target is about equal work.

The runs go through the same pipeline functions the DAG's tasks call (start_run, provenance_step,
plan_step, explain_step, meter_step), with the run's artifacts staged on a loopback S3 (moto) as
in a DAG run.
Figures go to bench/results/estimate.json; tests/finops/test_estimate_history.py replays the
recorded history through the estimator.

    .venv/bin/python bench/bench_estimate.py [--configs NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT = REPO_ROOT / "bench" / "results" / "estimate.json"
TARGET = 0.25


def _quiet(_: str) -> None:
    pass


def _one_run(config: Path, run_id: str, params: dict[str, Any], s3: Any) -> dict[str, Any]:
    from include.orchestration.pipeline import (
        explain_step,
        meter_step,
        plan_step,
        provenance_step,
        start_run,
    )

    run = start_run(
        str(config),
        dag_id=config.stem,
        run_id=run_id,
        params=params,
        identity={"bench": "estimate"},
        s3_client=s3,
        log=_quiet,
    )
    started = time.perf_counter()
    provenance = provenance_step(run, s3, log=_quiet)
    plan = plan_step(run, provenance, s3, log=_quiet)
    explain = explain_step(run, provenance, plan, s3, log=_quiet)
    summary = meter_step(run, explain, plan, s3, log=_quiet)
    usage = explain.usage
    assert usage is not None
    error = summary["total"] / plan["estimate"] - 1 if plan["estimate"] else None
    return {
        "run_id": run_id,
        "sample_budget": params.get("sample_budget"),
        "samples_or_steps": int(next(v for k, v in plan["params"].items() if k in ("numSamples", "steps"))),
        "explained": explain.explained,
        "basis": plan["basis"],
        "estimate": plan["estimate"],
        "estimate_high": plan["estimate_high"],
        "actual": summary["total"],
        "error": error,
        "within_target": error is not None and abs(error) <= TARGET,
        "per_resource": summary["per_resource"],
        "wall_seconds": usage["wall_seconds"],
        "cpu_seconds": usage["cpu_seconds"],
        "peak_memory_bytes": usage["peak_memory_bytes"],
        "pipeline_seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", help="config names (default: every sample config)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="xac-bench-estimate-"))
    os.environ["XAC_HOME"] = str(home)  # before any include.* import that reads it
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    subprocess.run(
        [sys.executable, "-m", "include.cli", "samples", "prepare"],
        check=True,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
    )
    from include.configuration import discover_config_files, load_config
    from include.embedded import s3_server
    from include.storage import s3_client

    with s3_server.environment() as server:
        return _measure(args, s3_client(server.endpoint_url), discover_config_files, load_config)


def _measure(args: argparse.Namespace, s3: Any, discover_config_files: Any, load_config: Any) -> int:

    configs = sorted(discover_config_files(REPO_ROOT / "include" / "configs" / "explainers"))
    if args.configs:
        configs = [c for c in configs if c.stem in args.configs or load_config(c).name in args.configs]
    results = []
    for config in configs:
        loaded = load_config(config)
        settings = loaded.config.spec.explainerConfig
        assert settings is not None
        full = settings.numSamples if settings.method == "KernelSHAP" else settings.steps
        runs = []
        for label, budget in (("A", None), ("B", None), ("C", max(int(full) // 2, 1))):
            params: dict[str, Any] = {} if budget is None else {"sample_budget": budget}
            run_id = f"bench__estimate_{label}_{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
            run = _one_run(config, run_id, params, s3)
            run["label"] = label
            runs.append(run)
            print(
                f"{loaded.name} run {label}: estimate {run['estimate']:.8f} ({run['basis']}), "
                f"actual {run['actual']:.8f}, error {run['error']:+.1%}",
                flush=True,
            )
        results.append(
            {
                "config": loaded.name,
                "model": loaded.config.spec.modelName,
                "method": settings.method,
                "runs": runs,
            }
        )
    after_one = [r["runs"][1] for r in results]
    result = {
        "benchmark": "preflight_estimate_vs_actual",
        "target": f"|actual / estimate - 1| <= {TARGET:.0%} after one earlier run of the same model",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "configs": results,
        "after_one_run": {r["config"]: round(b["error"], 4) for r, b in zip(results, after_one, strict=True)},
        "meets_target": all(b["within_target"] for b in after_one),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("after_one_run", "meets_target")}, indent=2))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
