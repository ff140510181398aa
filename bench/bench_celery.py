"""20 runs at once through the two-worker Celery stack against one LocalExecutor stack (issue 17).

Target: 0 failed runs, 0 lost or duplicated bundles; the figure reported is runs per minute, Celery
(two workers, each with its own XAC_HOME and TMPDIR, the stages of a run routed alternately) against
the LocalExecutor (one machine), on the same machine, with the same DAG, conf and S3 (moto on loopback).
Both stacks use a fresh PostgreSQL metadata DB; the Celery one uses Redis as its broker. Each stack gets
the shared feature store and model store of ``shared_services_environment`` so the two differ only in
the executor. Figures go to bench/results/celery.json.

    .venv/bin/python bench/bench_celery.py [--runs 20] [--dag diagnosis-risk-kernelshap]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT = REPO_ROOT / "bench" / "results" / "celery.json"
FINAL = ("success", "failed")


def _stack_module() -> Any:
    path = REPO_ROOT / "scripts" / "airflow_stack.py"
    spec = importlib.util.spec_from_file_location("xac_airflow_stack", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _measure(stack: Any, dag_id: str, runs: int, conf: dict[str, Any]) -> dict[str, Any]:
    from include.compliance import list_bundles, verify_bundle
    from include.storage import default_public_key_path, s3_client

    response = stack.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    assert response.status_code == 200, response.text
    stack.token()
    started = time.perf_counter()

    def trigger(_: int) -> str:
        answer = stack.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["dag_run_id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        run_ids = list(pool.map(trigger, range(runs)))
    states: dict[str, str] = {}
    deadline = time.monotonic() + 3600
    while len(states) < runs and time.monotonic() < deadline:
        time.sleep(2.0)
        for run_id in run_ids:
            if run_id not in states:
                state = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
                if state in FINAL:
                    states[run_id] = state
    seconds = time.perf_counter() - started
    client = s3_client()
    bundles = [b for b in list_bundles(client, "xac-explanations") if b.run_id in set(run_ids)]
    per_run = {run_id: sum(1 for b in bundles if b.run_id == run_id) for run_id in run_ids}
    key = default_public_key_path().read_bytes()
    verified = sum(verify_bundle(b.uri, public_key_pem=key, s3_client=client).ok for b in bundles)
    return {
        "runs": runs,
        "succeeded": sum(1 for s in states.values() if s == "success"),
        "failed": sum(1 for s in states.values() if s == "failed"),
        "unfinished": runs - len(states),
        "lost_bundles": sum(
            1 for run_id in run_ids if states.get(run_id) == "success" and per_run[run_id] == 0
        ),
        "duplicated_bundles": sum(1 for n in per_run.values() if n > 1),
        "verified_bundles": verified,
        "seconds": round(seconds, 1),
        "runs_per_minute": round(60 * len(states) / seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dag", default="diagnosis-risk-kernelshap")
    parser.add_argument("--sample-budget", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="xac-bench-celery-"))
    os.environ["XAC_HOME"] = str(home)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.path.insert(0, str(REPO_ROOT))
    from examples.prepare import prepare_samples
    from include.embedded import s3_server

    for _ in prepare_samples():
        pass
    stacks = _stack_module()
    conf = {"sample_budget": args.sample_budget}
    results: dict[str, Any] = {}
    with s3_server.environment():
        shared = stacks.shared_services_environment(home / "shared-services")
        for executor in ("local", "celery"):
            database = f"xac_bench_{executor}_{os.getpid()}"
            url = stacks.create_postgres_database(database, fresh=True)
            try:
                stack = stacks.start(
                    db_url=url,
                    home=home / f"stack-{executor}",
                    executor=executor,
                    workers=2,
                    extra_env=shared,
                )
                try:
                    results[executor] = _measure(stack, args.dag, args.runs, conf)
                finally:
                    stacks.stop(stack)
            finally:
                stacks.drop_postgres_database(database)
            print(executor, json.dumps(results[executor]), flush=True)
    celery, local = results["celery"], results["local"]
    result = {
        "benchmark": "celery_two_workers_vs_local_executor",
        "target": "0 failed runs, 0 lost or duplicated bundles; runs/minute against the LocalExecutor",
        "dag": args.dag,
        "conf": conf,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "local_executor": local,
        "celery_two_workers": celery,
        "runs_per_minute_ratio": round(celery["runs_per_minute"] / local["runs_per_minute"], 3),
        "meets_target": all(
            r["failed"] == r["unfinished"] == r["lost_bundles"] == r["duplicated_bundles"] == 0
            for r in (celery, local)
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("runs_per_minute_ratio", "meets_target")}, indent=2))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
