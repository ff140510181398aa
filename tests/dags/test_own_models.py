"""A team's own model, features and expectations, end to end to a verified compliance bundle, with
nothing from the samples: the README's "Explain your own model" paths, each run by Airflow
(`dag.test()`), against S3 on 127.0.0.1.

The team has a Parquet file of features. `xac feast init` makes its Feast repository,
`xac expectations init` drafts its suite, its models.yaml declares three models by their source:

(a) an XGBoost booster trained on that file (a UBJ file);
(b) a PyTorch network registered in MLflow (a real local registry);
(c) a scikit-learn model served by a real MLServer (Open Inference Protocol V2) on 127.0.0.1;
(d) the same network and trees as LightGBM, skops, TorchScript, torch.export and ONNX files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

from include.cli.main import main as xac
from tests.explainers.mlserver import grpc_url, mlserver_executable, served_sklearn_model

REPO_ROOT = Path(__file__).resolve().parents[2]
ENDPOINT_TOKEN = "churn-endpoint-token-5f3a"
FEATURES = ["tenure_months", "monthly_spend", "support_calls", "discount_rate", "late_payments"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
apiVersion: ai.apexlogic.com/v1alpha1
kind: ExplainerConfiguration
metadata:
  name: {name}
  namespace: churn
spec:
  modelName: {model}
  featureService: churn_features
  explainerType: {explainer_type}
  explainerConfig:
    method: {method}
{extra}    backgroundDataStrategy: random_subset
    backgroundDataSubsetSize: 30
    seed: 3
  outputFormat: json
  storage:
    type: s3
    bucket: churn-explanations
    path: "churn/{name}/{{model_version}}/{{inference_id}}.json"
  monitoring:
    enabled: true
    fidelityThreshold: 0.8
  owner:
    team: churn-ml
    email: churn-ml@example.com
    costCenter: cc-2001
  budget:
    maxCostPerRun: 0.5
    currency: USD
  inference:
    count: 6
  airflow:
    retries: 0
"""


def _team_data(folder: Path) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(21)
    n = 400
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{10000 + i}" for i in range(n)],
            "event_timestamp": pd.Timestamp.now(tz="UTC").floor("s")
            - pd.to_timedelta(rng.integers(3600, 86400 * 30, n), unit="s"),
            "tenure_months": rng.integers(1, 72, n).astype("float64"),
            "monthly_spend": rng.gamma(3.0, 20.0, n),
            "support_calls": rng.poisson(1.5, n).astype("float64"),
            "discount_rate": rng.uniform(0, 0.3, n),
            "late_payments": rng.poisson(0.5, n).astype("float64"),
        }
    )
    logit = (
        -0.04 * frame["tenure_months"]
        + 0.6 * frame["support_calls"]
        + 0.9 * frame["late_payments"]
        - 3 * frame["discount_rate"]
    )
    label = (logit + rng.normal(0, 0.5, n) > 0).to_numpy().astype(int)
    frame.to_parquet(folder / "churn_features.parquet", index=False)
    return frame, label


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import mlflow
    import mlflow.pytorch
    import torch
    import xgboost as xgb
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from include.embedded import s3_server

    if mlserver_executable() is None:
        pytest.skip("MLServer venv missing (make test creates .venv/mlserver)")
    folder = tmp_path_factory.mktemp("team")
    patch = pytest.MonkeyPatch()
    frame, label = _team_data(folder)
    x = frame[FEATURES]

    # Features: a Feast repository for the Parquet file, and a suite drafted from it.
    assert (
        xac(
            [
                "feast",
                "init",
                "--from",
                str(folder / "churn_features.parquet"),
                "--entity",
                "customer_id",
                "--timestamp",
                "event_timestamp",
                "--out",
                str(folder / "feature_repo"),
            ]
        )
        == 0
    )
    patch.setenv("XAC_FEATURE_REPO", str(folder / "feature_repo"))
    patch.setenv("XAC_EXPECTATIONS_DIR", str(folder / "expectations"))
    assert xac(["expectations", "init", "--feature-service", "churn_features"]) == 0

    # (a) an XGBoost booster trained on the team's file
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "seed": 1}, xgb.DMatrix(x, label), 40
    )
    (folder / "models" / "churn-xgb" / "4").mkdir(parents=True)
    booster.save_model(folder / "models" / "churn-xgb" / "4" / "model.ubj")
    # (b) a PyTorch network in a real MLflow registry
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    MlflowClient().create_experiment("churn", artifact_location=(folder / "mlartifacts").as_uri())
    mlflow.set_experiment("churn")
    torch.manual_seed(0)
    mean, std = (
        torch.tensor(x.mean().to_numpy(), dtype=torch.float32),
        torch.tensor(x.std().to_numpy(), dtype=torch.float32),
    )
    body = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            self.body = body

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return self.body((rows - self.mean) / self.std)

    net = Net()
    inputs, targets = (
        torch.tensor(x.to_numpy(), dtype=torch.float32),
        torch.tensor(label, dtype=torch.float32),
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(inputs).squeeze(1), targets).backward()
        optimiser.step()
    with mlflow.start_run():
        mlflow.pytorch.log_model(
            net.eval(),
            name="net",
            registered_model_name="churn-net",
            input_example=np.zeros((2, 5), dtype=np.float32),
        )
    MlflowClient().set_registered_model_alias("churn-net", "champion", "1")

    # (d) the same team's other formats: every file source through a DAG run
    import lightgbm as lgb
    import skops.io as sio
    from sklearn.ensemble import GradientBoostingClassifier

    files = folder / "files"
    files.mkdir()
    lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7}, lgb.Dataset(x, label), 30).save_model(
        files / "churn.txt"
    )
    sio.dump(
        GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0).fit(x, label),
        files / "churn.skops",
    )
    example = torch.zeros(2, 5)
    torch.jit.save(torch.jit.trace(net.eval(), example), files / "churn.torchscript")
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(net.eval(), (example,), dynamic_shapes={"rows": {0: batch}}), files / "churn.pt2"
    )
    torch.onnx.export(
        net.eval(),
        (example,),
        str(files / "churn.onnx"),
        input_names=["features"],
        dynamic_axes={"features": {0: "batch"}},
        dynamo=False,
    )

    # (c) a scikit-learn model behind a real MLServer
    served = LogisticRegression(max_iter=1000).fit(x.to_numpy(), label)
    server = served_sklearn_model(served, folder / "mlserver", "churn", len(FEATURES))
    endpoint = server.__enter__()

    (folder / "models.yaml").write_text(
        "models:\n"
        "  churn-xgb:\n"
        "    source: {type: xgboost, uri: '" + str(folder) + "/models/churn-xgb/{version}/model.ubj'}\n"
        "    defaultVersion: '4'\n"
        "    featureService: churn_features\n"
        "    entity: customer_id\n"
        "    classNames: [stays, churns]\n"
        "  churn-net:\n"
        "    source: {type: mlflow, uri: 'models:/churn-net@champion'}\n"
        "    defaultVersion: '1'\n"
        "    featureService: churn_features\n"
        "    entity: customer_id\n"
        "    task: binary\n"
        "  churn-served:\n"
        f"    source: {{type: oip, uri: '{endpoint}', output: predict_proba}}\n"
        "    defaultVersion: '1'\n"
        "    featureService: churn_features\n"
        "    entity: customer_id\n"
        # the same server over gRPC, its address and token in an Airflow connection (URI form here,
        # as a secrets backend may hold it): the explain task hands its shard the JSON form
        "  churn-served-grpc:\n"
        "    source: {type: oip, connection: churn_endpoint, output: predict_proba}\n"
        "    defaultVersion: '1'\n"
        "    featureService: churn_features\n"
        "    entity: customer_id\n"
    )
    grpc_port = urlsplit(grpc_url(endpoint, folder / "mlserver")).port
    patch.setenv("AIRFLOW_CONN_CHURN_ENDPOINT", f"grpc://:{ENDPOINT_TOKEN}@127.0.0.1:{grpc_port}?model=churn")
    with (folder / "models.yaml").open("a") as catalogue:
        for name, kind, path, extra in [
            ("churn-lgb", "lightgbm", "churn.txt", ""),
            ("churn-gbt", "skops", "churn.skops", ", trustedTypes: [sklearn.tree._tree.Tree]"),
            ("churn-ts", "torchscript", "churn.torchscript", ""),
            ("churn-exported", "torch-export", "churn.pt2", ""),
            ("churn-onnx", "onnx", "churn.onnx", ""),
        ]:
            catalogue.write(
                f"  {name}:\n    source: {{type: {kind}, uri: '{files / path}'{extra}}}\n"
                "    defaultVersion: '1'\n    featureService: churn_features\n    entity: customer_id\n"
                "    task: binary\n"
            )
    patch.setenv("XAC_MODEL_CATALOGUE", str(folder / "models.yaml"))
    configs = folder / "configs"
    configs.mkdir()
    for name, model, kind, method, extra in [
        ("churn-xgb-treeshap", "churn-xgb", "SHAP", "TreeSHAP", ""),
        ("churn-net-ig", "churn-net", "Captum", "IntegratedGradients", "    steps: 32\n"),
        ("churn-served-kernelshap", "churn-served", "SHAP", "KernelSHAP", "    numSamples: 62\n"),
        ("churn-served-grpc-kernelshap", "churn-served-grpc", "SHAP", "KernelSHAP", "    numSamples: 62\n"),
        ("churn-lgb-treeshap", "churn-lgb", "SHAP", "TreeSHAP", ""),
        ("churn-gbt-treeshap", "churn-gbt", "SHAP", "TreeSHAP", ""),
        ("churn-ts-ig", "churn-ts", "Captum", "IntegratedGradients", "    steps: 32\n"),
        ("churn-exported-ig", "churn-exported", "Captum", "IntegratedGradients", "    steps: 32\n"),
        ("churn-onnx-kernelshap", "churn-onnx", "SHAP", "KernelSHAP", "    numSamples: 62\n"),
    ]:
        (configs / f"{name}.yaml").write_text(
            CONFIG.format(name=name, model=model, explainer_type=kind, method=method, extra=extra)
        )
    patch.setenv("XAC_CONFIGS_DIR", str(configs))
    assert xac(["config", "validate", str(configs)]) == 0

    with s3_server.environment():
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True
        )
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        assert bag.import_errors == {}
        yield {
            "dags": bag.dags,
            "folder": folder,
            "booster": folder / "models" / "churn-xgb" / "4" / "model.ubj",
        }
    server.__exit__(None, None, None)
    patch.undo()


@pytest.mark.parametrize(
    ("dag_id", "source"),
    [
        ("churn-xgb-treeshap", "xgboost"),
        ("churn-net-ig", "mlflow"),
        ("churn-served-kernelshap", "oip"),
        ("churn-served-grpc-kernelshap", "oip"),
        ("churn-lgb-treeshap", "lightgbm"),
        ("churn-gbt-treeshap", "skops"),
        ("churn-ts-ig", "torchscript"),
        ("churn-exported-ig", "torch-export"),
        ("churn-onnx-kernelshap", "onnx"),
    ],
)
def test_a_teams_own_model_reaches_a_verified_bundle(
    task_result: Any, team: dict[str, Any], dag_id: str, source: str, tmp_path: Path
) -> None:
    from include.compliance import download_bundle, list_bundles, verify_bundle
    from include.digests import sha256_file
    from include.storage import default_public_key_path, s3_client

    dag_run = team["dags"][dag_id].test(run_conf={"sample_budget": None})
    assert "success" in str(dag_run.state)
    ctx = task_result(dag_run, "load_config")
    client = s3_client()
    listed = list_bundles(client, ctx["bucket"], prefix=ctx["bundle_prefix"])
    assert len(listed) == 1 and listed[0].complete
    uri = f"s3://{ctx['bucket']}/{ctx['bundle_prefix']}"
    assert verify_bundle(uri, public_key_pem=default_public_key_path().read_bytes(), s3_client=client).ok
    local = download_bundle(client, uri, tmp_path / "bundle")
    provenance = json.loads((local / "provenance.json").read_text())
    assert provenance["feature_service"]["name"] == "churn_features"
    assert provenance["feature_repo"]["path"] == str(team["folder"] / "feature_repo")
    validation = json.loads((local / "validation.json").read_text())
    assert validation["passed"] is True
    docs = [json.loads(p.read_text()) for p in sorted((local / "explanations").iterdir())]
    assert len(docs) == 6
    recorded = docs[0]["model"]["source"]
    assert recorded["source"] == source and docs[0]["model"]["task"] == "binary"
    if source == "xgboost":
        assert recorded["sha256"] == sha256_file(team["booster"]) and recorded["version"] == "4"
        assert docs[0]["prediction"]["class"] in ("stays", "churns")
    if source == "mlflow":
        assert recorded["details"]["alias"] == "champion" and recorded["details"]["flavor"] == "torch-export"
    if source == "oip":
        assert recorded["details"]["output"] == "predict_proba"
        assert recorded["uri"].startswith("grpc://" if "grpc" in dag_id else "http://")
        assert not [p for p in local.rglob("*") if p.is_file() and ENDPOINT_TOKEN.encode() in p.read_bytes()]
    for doc in docs:
        gap = doc["prediction"]["explained_output"]["value"] - doc["baseline"]["value"]
        assert sum(doc["attributions"]["features"].values()) == pytest.approx(gap, abs=1e-3)
