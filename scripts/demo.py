"""`make demo`: run every sample model's DAG with Airflow and verify the bundles it published.

1. prepares the sample feature data, the Feast registry, the trained models and a signing key;
2. starts an S3-compatible server on 127.0.0.1 (moto), unless ``S3_ENDPOINT_URL`` names one;
3. migrates Airflow's metadata DB (SQLite under ``$XAC_HOME/airflow``) and runs each DAG with
   ``dag.test()`` (the scheduler-less runner: real task instances, XCom and task logs);
4. lists, downloads and verifies each published bundle as the compliance team would.

Idempotent: a second run reuses the venv, data, models and key, and creates fresh runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _set_airflow_environment() -> None:
    from include.paths import xac_home

    home = xac_home()
    os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__LOGGING__COLORED_CONSOLE_LOG", "False")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # Only the local DAG folder: dag.test() syncs every configured bundle.
    os.environ.setdefault(
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
        '[{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",'
        ' "kwargs": {}}]',
    )
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)


def _migrate() -> None:
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dag", action="append", help="run only this DAG id (repeatable)")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    _set_airflow_environment()
    from examples.prepare import prepare_samples

    print("== set-up")
    for line in prepare_samples():
        print("  " + line)

    from include.embedded import s3_server

    server = None
    if os.environ.get("AIRFLOW_CONN_AWS_DEFAULT") and not os.environ.get("S3_ENDPOINT_URL"):
        print("== S3: the aws_default connection (AIRFLOW_CONN_AWS_DEFAULT)")
    elif not os.environ.get("S3_ENDPOINT_URL"):
        server = s3_server.start()
        os.environ["S3_ENDPOINT_URL"] = server.endpoint_url
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        print(f"== S3: moto server on {server.endpoint_url}")
    else:
        print(f"== S3: {os.environ['S3_ENDPOINT_URL']}")
    try:
        return _run_demo(args.dag, args.json_out)
    finally:
        if server is not None:
            server.stop()


def _run_demo(only: list[str] | None, json_out: Path | None = None) -> int:
    print("== Airflow metadata DB (SQLite): migrate")
    _migrate()
    from airflow.dag_processing.dagbag import DagBag

    from include.compliance import download_bundle, list_bundles, verify_bundle
    from include.paths import xac_home
    from include.storage import default_public_key_path, s3_client

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"import error in {path}:\n{error}")
        return 1
    dag_ids = sorted(d for d in bag.dag_ids if not d.startswith("xac-invalid-"))
    invalid = sorted(d for d in bag.dag_ids if d.startswith("xac-invalid-"))
    if invalid:
        print(f"!! configs that do not validate (their DAGs fail): {', '.join(invalid)}")
    if only:
        dag_ids = [d for d in dag_ids if d in only]
    client = _s3_client(s3_client)
    public_key = default_public_key_path().read_bytes()
    downloads = xac_home() / "demo" / "bundles"
    results = []
    for dag_id in dag_ids:
        dag = bag.dags[dag_id]
        print(f"== {dag_id}: dag.test()")
        started = time.perf_counter()
        dag_run = dag.test()
        state = str(getattr(dag_run, "state", "unknown"))
        if "success" not in state:
            print(f"!! {dag_id}: run {dag_run.run_id} ended {state}")
            results.append((dag_id, None, None, None, time.perf_counter() - started, "FAILED"))
            continue
        published = _published(dag_id, dag_run.run_id)
        bucket = published["bucket"]
        listed = [b for b in list_bundles(client, bucket, prefix=published["prefix"])]
        if not listed:
            results.append(
                (dag_id, published["uri"], None, None, time.perf_counter() - started, "NOT LISTED")
            )
            continue
        # The demo keeps the latest verified bundle of each DAG on disk (a rerun replaces it).
        shutil.rmtree(downloads / dag_id, ignore_errors=True)
        target = download_bundle(client, published["uri"], downloads / dag_id)
        report = verify_bundle(str(target), public_key_pem=public_key)
        status = "verified" if report.ok else "NOT VERIFIED: " + "; ".join(report.problems)
        elapsed = time.perf_counter() - started
        results.append((dag_id, published["uri"], published["cost"], published["fidelity"], elapsed, status))

    print("\n== Results")
    failures = 0
    for dag_id, uri, cost, fidelity, elapsed, status in results:
        print(f"{dag_id}")
        print(f"  bundle:   {uri}")
        print(f"  cost:     {cost}")
        print(f"  fidelity: {fidelity}")
        print(f"  time:     {elapsed:.1f}s from trigger to verified bundle")
        print(f"  {status}")
        failures += status != "verified"
    print(f"\nDownloaded bundles: {downloads}")
    if json_out is not None:
        import json

        keys = ("dag_id", "bundle", "cost", "fidelity", "seconds_trigger_to_verified", "status")
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([dict(zip(keys, r, strict=True)) for r in results], indent=2) + "\n")
    return 1 if failures else 0


def _s3_client(default_factory: object) -> object:
    """The same client the tasks use: the aws_default connection when only it is configured."""
    if os.environ.get("AIRFLOW_CONN_AWS_DEFAULT") and not os.environ.get("S3_ENDPOINT_URL"):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id="aws_default").get_conn()
    return default_factory()  # type: ignore[operator]


def _task_result(dag_id: str, run_id: str, task_id: str) -> dict:
    """What a task of the run returned (XCom): the run's tasks share nothing else."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, key="return_value")
        row = session.scalars(query).first()
        return XComModel.deserialize_value(row) if row is not None else {}


def _published(dag_id: str, run_id: str) -> dict:
    """What the run's publish and gate tasks returned."""
    run = _task_result(dag_id, run_id, "load_config")
    published = _task_result(dag_id, run_id, "publish_bundle")
    gate = _task_result(dag_id, run_id, "fidelity_gate")
    cost = _task_result(dag_id, run_id, "meter_cost")
    return {
        "bucket": run["bucket"],
        "prefix": run["bundle_prefix"],
        "uri": published["uri"],
        "cost": f"{cost['total']:.6f} {cost['currency']} "
        f"({cost['cost_per_1000_explanations']} per 1,000 explanations)",
        "fidelity": f"{gate['metric']} = {gate['score']:.4f} (threshold {gate['threshold']})",
    }


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
