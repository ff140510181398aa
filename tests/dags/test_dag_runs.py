"""End to end: each sample DAG runs with Airflow (`dag.test()`) against S3 on 127.0.0.1.

Real parts: Airflow's metadata DB (PostgreSQL when one answers on 127.0.0.1:5432, else SQLite),
the Feast repo, Great Expectations, trained torch models, the `xac explain` process, and a moto
S3 server on loopback. The bundle each run publishes is listed, downloaded and verified as the
compliance team would, and a tampered copy must fail verification.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def prepared() -> None:
    from examples.prepare import prepare_samples

    for _ in prepare_samples():
        pass


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from include.embedded import s3_server

    with s3_server.environment() as server:
        yield server.endpoint_url


@pytest.fixture(scope="module")
def dagbag(prepared: None, s3_endpoint: str):
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True
    )
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


def _task_states(dag_run: Any) -> dict[str, str | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {ti.task_id: (str(ti.state) if ti.state else None) for ti in tis}


@pytest.mark.parametrize(
    "dag_id",
    [
        "diagnosis-risk-kernelshap",
        "multimodal-digits-ig",
        "image-classifier-shap-explainer",
        "diagnosis-risk-treeshap",  # a team's own XGBoost booster, declared by its source
    ],
)
def test_sample_dag_publishes_a_bundle_that_verifies(
    task_result, dagbag, dag_id: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from include.compliance import download_bundle, list_bundles, verify_bundle
    from include.storage import default_public_key_path, s3_client

    dag = dagbag.dags[dag_id]
    dag_run = dag.test(run_conf={"sample_budget": None})
    assert "success" in str(dag_run.state), _task_states(dag_run)
    # the join read the mapped results by iterating, which asked past the end: an error line per run
    assert "XCom not found" not in capfd.readouterr().out

    ctx = task_result(dag_run, "load_config")
    client = s3_client()
    # the run's staging prefix, the only channel between its tasks, is gone once the bundle is out
    assert (
        client.list_objects_v2(Bucket=ctx["bucket"], Prefix=f"_staging/{dag_id}/{ctx['run_key']}/")[
            "KeyCount"
        ]
        == 0
    )
    listed = list_bundles(client, ctx["bucket"], prefix=ctx["bundle_prefix"])
    assert len(listed) == 1 and listed[0].complete
    assert listed[0].run_id == dag_run.run_id and listed[0].model == ctx["model_name"]

    public_key = default_public_key_path().read_bytes()
    uri = f"s3://{ctx['bucket']}/{ctx['bundle_prefix']}"
    assert verify_bundle(uri, public_key_pem=public_key, s3_client=client).ok
    rules = client.get_bucket_lifecycle_configuration(Bucket=ctx["bucket"])["Rules"]
    assert {"Prefix": "_staging/"} in [r.get("Filter") for r in rules]  # failed runs' staging expires

    local = download_bundle(client, uri, tmp_path / "bundle")
    explanations = sorted((local / "explanations").iterdir())
    assert explanations, "a bundle without explanations"
    for name in (
        "manifest.json",
        "statement.dsse.json",
        "provenance.json",
        "validation.json",
        "fidelity.json",
        "cost.json",
        "config.yaml",
    ):
        assert (local / name).is_file(), name
    manifest = json.loads((local / "manifest.json").read_text())
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # the bundle names the commit of the DAG code that ran
        assert manifest["run"]["identity"]["dag_folder_git"]["commit"] == head.stdout.strip()
    assert manifest["run"]["config_sha256"] == ctx["config_sha256"]
    assert (local / "report.html").is_file()
    cost = json.loads((local / "cost.json").read_text())["summary"]
    assert cost["total"] > 0 and cost["explanations"] == len(explanations)
    fidelity = json.loads((local / "fidelity.json").read_text())
    assert fidelity["aggregate"] >= json.loads((local / "fidelity_gate.json").read_text())["threshold"]

    document = json.loads(explanations[0].read_text())
    if (
        dag_id == "diagnosis-risk-treeshap"
    ):  # the signed bundle pins the booster that was loaded, byte for byte
        from examples.xgboost_model import model_file
        from include.digests import sha256_file

        source = document["model"]["source"]
        assert source["source"] == "xgboost" and source["uri"] == str(model_file())
        assert source["artifacts"][0]["sha256"] == sha256_file(model_file()) == document["model"]["sha256"]
        assert "model.ubj" in (local / "report.html").read_text()

    tampered = tmp_path / "tampered"
    shutil.copytree(local, tampered)
    victim = sorted((tampered / "explanations").iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    report = verify_bundle(str(tampered), public_key_pem=public_key)
    assert not report.ok
    assert any(victim.name in p and "sha256" in p for p in report.problems), report.problems


def test_a_retried_publish_keeps_or_finishes_the_runs_one_bundle(task_result, dagbag, tmp_path: Path) -> None:
    """One bundle per run: a publish retry after success keeps it; after a partial upload, resumes it."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from include.compliance import download_bundle, list_bundles, load_or_create_signing_key, verify_bundle
    from include.compliance.store import bundle_uri
    from include.orchestration.pipeline import SIGNED_BUNDLE, PipelineRun, publish_step
    from include.storage import default_public_key_path, default_signing_key_path, s3_client

    client = s3_client()
    dag_id = "diagnosis-risk-kernelshap"
    runs = [b for b in list_bundles(client, "xac-explanations") if b.dag_id == dag_id]
    assert runs, "run the publishing tests first (module order)"
    with create_session() as session:
        dag_run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=runs[0].run_id).one()
    run = PipelineRun.from_json(task_result(dag_run, "load_config"))
    signer = load_or_create_signing_key(default_signing_key_path())
    public_key = default_public_key_path().read_bytes()
    uri = bundle_uri(run.bucket, run.bundle_prefix)
    logged: list[str] = []

    again = publish_step(run, None, None, None, s3_client=client, signer=signer, log=logged.append)
    assert again["bundle_id"] == runs[0].bundle_id and again["uri"] == uri
    assert "published by an earlier attempt" in logged[-1]

    # An attempt that died after the payload: manifest and statement never arrived. What it had
    # staged before its first write-once object (the signed bundle) is all a retry elsewhere has.
    staging = run.staging(client)
    signed = download_bundle(client, uri, tmp_path / "signed")
    staging.put_bytes(staging.name_of(run.config_uri), (signed / "config.yaml").read_bytes())
    staging.put_archive(SIGNED_BUNDLE, signed)
    for name in ("statement.dsse.json", "manifest.json"):
        client.delete_object(Bucket=run.bucket, Key=f"{run.bundle_prefix.rstrip('/')}/{name}")
    assert not [b for b in list_bundles(client, run.bucket, prefix=run.bundle_prefix) if b.complete]
    resumed = publish_step(run, None, None, None, s3_client=client, signer=signer, log=logged.append)
    assert resumed["bundle_id"] == runs[0].bundle_id and "resuming" in logged[-1]
    listed = list_bundles(client, run.bucket, prefix=run.bundle_prefix)
    assert [b.bundle_id for b in listed if b.complete] == [runs[0].bundle_id]
    assert verify_bundle(uri, public_key_pem=public_key, s3_client=client).ok
    assert staging.list() == []


def test_cli_verifies_and_lists_a_published_bundle(dagbag) -> None:
    env = dict(os.environ)
    xac = [sys.executable, "-m", "include.cli"]
    listing = subprocess.run([*xac, "bundle", "list", "--json"], capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    bundles = json.loads(listing.stdout)
    assert bundles, "run the publishing tests first (module order)"
    uri = bundles[0]["uri"]
    verified = subprocess.run([*xac, "bundle", "verify", uri], capture_output=True, text=True, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verified" in verified.stdout


def test_failed_expectation_stops_the_run_before_explain(task_result, dagbag, tmp_path: Path) -> None:
    """An out-of-range feature value: provenance fails, explain never runs, nothing is published."""
    import pandas as pd

    from examples.feature_repo.data import prepare_feature_data
    from include.compliance import list_bundles
    from include.storage import s3_client

    source = prepare_feature_data()["patient_measurements"]
    original = source.read_bytes()
    frame = pd.read_parquet(source)
    victim = frame["patient_id"].iloc[3]
    frame.loc[frame["patient_id"] == victim, "mean_radius"] = 9999.0
    frame.to_parquet(source, index=False)
    try:
        dag = dagbag.dags["diagnosis-risk-kernelshap"]
        dag_run = dag.test(run_conf={"inference_ids": [victim]})
    finally:
        source.write_bytes(original)
    states = _task_states(dag_run)
    assert "failed" in str(dag_run.state)
    assert states["provenance"] == "failed"
    assert states["explain"] in (None, "upstream_failed"), states
    ctx = task_result(dag_run, "load_config")
    client = s3_client()
    assert list_bundles(client, ctx["bucket"], prefix=ctx["bundle_prefix"]) == []
    staged = client.list_objects_v2(Bucket=ctx["bucket"], Prefix=f"_staging/{dag.dag_id}/{ctx['run_key']}/")
    names = {o["Key"].split(f"{ctx['run_key']}/", 1)[1] for o in staged.get("Contents", [])}
    # the failed validation's record is kept for a person to read; no frame reached the explainer
    assert {"provenance/provenance.json", "provenance/validation.json"} <= names, names
    assert not [n for n in names if n.endswith(".parquet") or n.startswith(("explain", "shards"))], names


def test_a_cost_only_dry_run_estimates_and_stops_before_explain(task_result, dagbag) -> None:
    """The trigger form's dry-run switch: data validated, cost estimated, nothing explained or published."""
    from include.compliance import list_bundles
    from include.storage import s3_client

    dag = dagbag.dags["diagnosis-risk-kernelshap"]
    dag_run = dag.test(run_conf={"dry_run_cost_only": True})
    states = _task_states(dag_run)
    assert "success" in str(dag_run.state), states
    assert states["provenance"] == "success" and states["plan"] == "success"
    assert states["shards"] == "skipped", states
    for task_id in ("explain", "join_shards", "meter_cost", "fidelity_gate", "publish_bundle"):
        assert states[task_id] in (None, "skipped"), states
    plan = task_result(dag_run, "plan")
    assert plan["estimate"] > 0 and plan["decision"] == "within budget"
    ctx = task_result(dag_run, "load_config")
    assert ctx["dry_run_cost_only"] is True
    client = s3_client()
    assert list_bundles(client, ctx["bucket"], prefix=ctx["bundle_prefix"]) == []
    staged = client.list_objects_v2(Bucket=ctx["bucket"], Prefix=f"_staging/{dag.dag_id}/{ctx['run_key']}/")
    names = {o["Key"].split(f"{ctx['run_key']}/", 1)[1] for o in staged.get("Contents", [])}
    assert "plan.json" in names and "cost.json" not in names  # estimated, never explained or billed
    assert not [n for n in names if n.startswith("provenance/")], names  # the staged frames are removed
