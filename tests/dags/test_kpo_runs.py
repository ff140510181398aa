"""The sample DAGs on the kubernetes backend: the real KubernetesPodOperator against the API double.

Real parts: Airflow (``dag.test()``, which runs the operator's trigger in line, so the shipped
deferrable mode is what runs), the cncf-kubernetes provider and both Kubernetes clients, the
``xac explain`` processes the double starts as pods, moto S3 on loopback, the cost stage. The double
(include/embedded/kube_api.py) stands in for the cluster: see its docstring for what it does not cover.

The cluster profile is ``loopback`` (include/configs/clusters/loopback.yaml: poll every second, retry
after at most 2 s) or an edited copy of it where a test needs another shard count or sync mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = REPO_ROOT / "include" / "configs" / "clusters" / "loopback.yaml"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _set_env(values: dict[str, str | None]) -> dict[str, str | None]:
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return saved


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
def kube(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The API double; the explainer's service account gets the S3 credentials (as IRSA would)."""
    from include.embedded import kube_api

    with kube_api.start(
        service_account_env={"xac-explainer": kube_api.explainer_credentials(os.environ)}
    ) as api:
        kubeconfig = api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config", namespace="ai-prod")
        saved = _set_env(dict(kube_api.backend_environment(kubeconfig, LOOPBACK)))
        yield api
        _set_env(saved)


@pytest.fixture(scope="module")
def dagbag(prepared: None, kube: Any) -> Any:
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True
    )
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


def _profile_copy(tmp_path: Path, edit: dict[str, Any]) -> Path:
    data = yaml.safe_load(LOOPBACK.read_text())
    for section, values in edit.items():
        data["spec"][section].update(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "loopback.yaml"  # the file name must equal metadata.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _states(dag_run: Any) -> dict[tuple[str, int], str | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {(ti.task_id, ti.map_index): (str(ti.state) if ti.state else None) for ti in tis}


def _run_pods(api: Any, dag_run: Any) -> list[dict[str, Any]]:
    """Every pod the double saw for this run (its last state; deleted pods included)."""
    from include.k8s.names import label_safe

    run_label = label_safe(dag_run.run_id)
    return [p for p in api.history if (p["metadata"].get("labels") or {}).get("xac.dev/run-id") == run_label]


def _exit_code(pod: dict[str, Any]) -> int | None:
    statuses = pod["status"].get("containerStatuses") or [{}]
    return ((statuses[0].get("state") or {}).get("terminated") or {}).get("exitCode")


def _bundle(ctx: dict[str, Any], tmp_path: Path) -> Path:
    """The run's bundle (``ctx``: the run context its load_config task returned), verified."""
    from include.compliance import download_bundle, verify_bundle
    from include.storage import default_public_key_path, s3_client

    uri = f"s3://{ctx['bucket']}/{ctx['bundle_prefix']}"
    client = s3_client()
    assert verify_bundle(uri, public_key_pem=default_public_key_path().read_bytes(), s3_client=client).ok
    return download_bundle(client, uri, tmp_path / "bundle")


@pytest.mark.parametrize(
    "dag_id",
    [
        "diagnosis-risk-kernelshap",
        "multimodal-digits-ig",
        "image-classifier-shap-explainer",
        "diagnosis-risk-treeshap",  # a team's own booster: staged to S3 for the pods, pinned by sha256
    ],
)
def test_sample_dag_runs_its_shards_as_pods_and_prices_them(
    task_result: Any, dagbag: Any, kube: Any, dag_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dag = dagbag.dags[dag_id]
    assert "Explain backend: **kubernetes**" in dag.doc_md
    caplog.set_level("INFO", logger="airflow.sdk.definitions.dag")
    dag_run = dag.test(run_conf={"sample_budget": None})
    assert "success" in str(dag_run.state), _states(dag_run)

    pods = _run_pods(kube, dag_run)
    shards = task_result(dag_run, "shards")
    assert len(pods) == len(shards) >= 1
    assert all(p["status"]["phase"] == "Succeeded" and _exit_code(p) == 0 for p in pods)
    assert not any(key[1] == p["metadata"]["name"] for p in pods for key in kube.pods), "succeeded pods stay"
    # deferrable mode: each operator deferred and dag.test() ran its trigger (kubernetes_asyncio)
    assert caplog.text.count("running trigger in line") >= len(pods)
    assert {p["spec"]["containers"][0]["command"][0] for p in pods} == {"xac"}
    if dag_id == "diagnosis-risk-treeshap":
        from examples.xgboost_model import model_file
        from include.digests import sha256_file

        for pod in pods:
            args = pod["spec"]["containers"][0]["args"]
            staged = args[args.index("--model-uri") + 1]
            assert staged.startswith("s3://") and staged.endswith("/model/model.ubj")
            assert args[args.index("--model-sha256") + 1] == sha256_file(model_file())

    bundle = _bundle(task_result(dag_run, "load_config"), tmp_path)
    explanations = sorted((bundle / "explanations").iterdir())
    assert len(explanations) == json.loads((bundle / "run_summary.json").read_text())["counts"]["instances"]
    records = [json.loads(p.read_text()) for p in sorted((bundle / "pods").glob("*.json"))]
    assert len(records) == len(pods)
    cost = json.loads((bundle / "cost.json").read_text())
    assert cost["summary"]["backend"] == "kubernetes" and cost["summary"]["total"] > 0
    billed_pods = {row["ResourceName"] for row in cost["rows"]}
    assert billed_pods == {r["pod"]["metadata"]["name"] for r in records}
    assert all(row["ResourceType"] == "Kubernetes Pod" for row in cost["rows"])
    node = records[0]["node"]["metadata"]["labels"]
    assert records[0]["pod"]["spec"]["nodeName"] == records[0]["node"]["metadata"]["name"]
    if records[0]["pod"]["metadata"]["labels"]["xac.dev/gpu-mode"] != "none":  # gpu "0.1": a T4 share
        assert node["nvidia.com/gpu.product"] == "Tesla-T4"
        gpu_rows = [r for r in cost["rows"] if r["x_Resource"] == "GPU"]
        # one nvidia.com/gpu.shared of a T4 time-sliced in 10 is a tenth of a GPU
        assert gpu_rows and all(abs(r["x_RequestQuantity"] - 0.1) < 1e-9 for r in gpu_rows)
        assert all("time-sliced 1/10" in r["x_QuantityDetail"] for r in gpu_rows)
        assert {r["x_CapacityType"] for r in cost["rows"]} == {"spot"}  # the GPU node is spot capacity
    else:
        assert node["node.kubernetes.io/instance-type"] == "m6i.xlarge"
        assert {r["x_CapacityType"] for r in cost["rows"]} == {"on-demand"}


def _explanations(bundle: Path) -> dict[str, Any]:
    out = {}
    for path in sorted((bundle / "explanations").iterdir()):
        record = json.loads(path.read_text())
        out[path.name] = {"attributions": record["attributions"], "prediction": record["prediction"]}
    return out


def test_eight_shards_merge_to_the_one_shard_result(
    task_result: Any, dagbag: Any, kube: Any, tmp_path: Path
) -> None:
    dag = dagbag.dags["diagnosis-risk-kernelshap"]
    results = {}
    for per_shard, label in ((1, "eight"), (1000, "one")):
        profile = _profile_copy(
            tmp_path / label, {"sharding": {"instancesPerShard": per_shard, "maxShards": 8}}
        )
        saved = _set_env({"XAC_CLUSTER_PROFILE": str(profile)})
        try:
            started = time.monotonic()
            dag_run = dag.test(run_conf={"sample_budget": 300})
            elapsed = time.monotonic() - started
        finally:
            _set_env(saved)
        assert "success" in str(dag_run.state), _states(dag_run)
        pods = _run_pods(kube, dag_run)
        bundle = _bundle(task_result(dag_run, "load_config"), tmp_path / label)
        results[label] = (pods, _explanations(bundle), elapsed)
    eight_pods, eight, seconds = results["eight"]
    one_pods, one, _ = results["one"]
    assert len(eight_pods) == 8 and all(p["status"]["phase"] == "Succeeded" for p in eight_pods)
    assert sorted(p["metadata"]["labels"]["xac.dev/shard"] for p in eight_pods) == [str(i) for i in range(8)]
    assert len(one_pods) == 1 and len(eight) == 8
    assert eight == one  # sharding changes nothing in the explanations, bit for bit
    print(f"8-shard run through the KPO: {seconds:.1f} s")


def test_a_failing_pod_fails_the_task_after_its_retries(dagbag: Any, kube: Any) -> None:
    """No credentials for the explainer's service account: the pod cannot read its inputs, exits 3."""
    dag = dagbag.dags["diagnosis-risk-kernelshap"]
    kept = kube.service_account_env
    kube.service_account_env = {}
    try:
        dag_run = dag.test(run_conf={"sample_budget": 100})
    finally:
        kube.service_account_env = kept
    states = _states(dag_run)
    assert "failed" in str(dag_run.state)
    assert states[("explain", 0)] == "failed"
    assert states[("join_shards", -1)] in ("upstream_failed", None)
    assert states.get(("publish_bundle", -1)) in ("upstream_failed", None)
    pods = _run_pods(kube, dag_run)
    assert len(pods) == 1 + 2  # the first try and the config's two retries, each a fresh pod
    assert {p["status"]["phase"] for p in pods} == {"Failed"} and {_exit_code(p) for p in pods} == {3}
    # failed pods are kept for `kubectl logs`, marked so a retry never reattaches to them
    assert all(p["metadata"]["labels"].get("already_checked") == "True" for p in pods)
    # the CLI names what failed in words (botocore's NoCredentialsError), never by exception type
    assert all(
        "Unable to locate credentials"
        in p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
        for p in pods
    )


def test_a_pod_deleted_mid_run_is_retried_without_duplicate_output(
    task_result: Any, dagbag: Any, kube: Any, tmp_path: Path
) -> None:
    from kubernetes import client, config

    dag = dagbag.dags["multimodal-digits-ig"]
    known = {id(p) for p in kube.history}
    core = client.CoreV1Api(config.new_client_from_config(config_file=_kubeconfig_path()))
    deleted: list[str] = []

    def delete_the_first_running_pod() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not deleted:
            for pod in list(kube.history):
                run = kube.runs.get((pod["metadata"]["namespace"], pod["metadata"]["name"]))
                if id(pod) in known or run is None or not run.log:
                    continue
                # the process runs and has logged: delete it as `kubectl delete pod` would
                core.delete_namespaced_pod(pod["metadata"]["name"], pod["metadata"]["namespace"])
                deleted.append(pod["metadata"]["name"])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=delete_the_first_running_pod, daemon=True)
    killer.start()
    dag_run = dag.test(run_conf={"sample_budget": None})
    killer.join(timeout=5)
    assert deleted, "no pod was deleted"
    assert "success" in str(dag_run.state), _states(dag_run)
    pods = _run_pods(kube, dag_run)
    victim = next(p for p in pods if p["metadata"]["name"] == deleted[0])
    assert victim["metadata"].get("deletionTimestamp")
    assert victim["status"]["phase"] == "Failed" and _exit_code(victim) != 0  # its process was killed
    retried = [
        p
        for p in pods
        if p["metadata"]["labels"]["xac.dev/shard"] == victim["metadata"]["labels"]["xac.dev/shard"]
    ]
    assert len(retried) == 2 and retried[-1]["status"]["phase"] == "Succeeded"

    bundle = _bundle(task_result(dag_run, "load_config"), tmp_path)
    instances = json.loads((bundle / "run_summary.json").read_text())["counts"]["instances"]
    assert len(list((bundle / "explanations").iterdir())) == instances
    # every shard's output held exactly its explanations (the join refuses leftovers of a killed try)
    joined = task_result(dag_run, "join_shards")
    assert joined["explained"] == instances and joined["shards"] == len(task_result(dag_run, "shards"))
    # the deleted pod had no completion callback, yet it held its node: it is billed from its events
    records = {
        r["pod"]["metadata"]["name"]: r
        for r in (json.loads(p.read_text()) for p in (bundle / "pods").glob("*.json"))
    }
    assert set(records) == {p["metadata"]["name"] for p in pods}
    rebuilt = records[deleted[0]]
    assert rebuilt["vanished"] is True and rebuilt["pod"]["status"]["reason"] == "Deleted"
    assert rebuilt["pod"]["spec"]["nodeName"] == victim["spec"]["nodeName"]
    assert rebuilt["node"]["metadata"]["name"] == victim["spec"]["nodeName"]
    assert rebuilt["pod"]["metadata"]["annotations"] == victim["metadata"]["annotations"]
    events = {
        e["reason"]: e["firstTimestamp"] for e in kube.events if e["involvedObject"]["name"] == deleted[0]
    }
    terminated = rebuilt["pod"]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert rebuilt["pod"]["status"]["startTime"] == events["Scheduled"]
    assert terminated["finishedAt"] == events["Killing"]
    cost = json.loads((bundle / "cost.json").read_text())
    victim_rows = [row for row in cost["rows"] if row["ResourceName"] == deleted[0]]
    assert victim_rows and all(row["BilledCost"] > 0 for row in victim_rows)
    assert {row["ResourceName"] for row in cost["rows"]} == set(records)
    assert any(deleted[0] in note and "Killing" in note for note in cost["summary"]["notes"])


def _kubeconfig_path() -> str:
    return json.loads(os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"])["extra"]["kube_config_path"]


def test_sync_mode_runs_the_same_dag(
    dagbag: Any, kube: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``deferrable: false`` in the profile: the operator waits in the worker (sync client only)."""
    import importlib.util

    profile = _profile_copy(tmp_path, {"reliability": {"deferrable": False}})
    saved = _set_env({"XAC_CLUSTER_PROFILE": str(profile)})
    try:
        spec = importlib.util.spec_from_file_location(
            "xac_dags_sync", REPO_ROOT / "dags" / "explainer_dags.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dag = module.build_all()["diagnosis-risk-kernelshap"]
        assert dag.get_task("explain").partial_kwargs["deferrable"] is False
        caplog.set_level("INFO", logger="airflow.sdk.definitions.dag")
        dag_run = dag.test(run_conf={"sample_budget": 100})
    finally:
        _set_env(saved)
    assert "success" in str(dag_run.state), _states(dag_run)
    assert "running trigger in line" not in caplog.text  # the operator waited in the worker
    assert all(p["status"]["phase"] == "Succeeded" for p in _run_pods(kube, dag_run))
