"""Models in an MLflow registry (a real local MLflow store, SQLite, created once for the module):
``xac explain --model mlflow:models:/NAME/VERSION`` (and ``@ALIAS``, ``runs:/``). The flavor picks
the loader; nothing MLflow stored is unpickled; the explanation records the registry facts and the
digest of every artifact file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.cli.main import main as xac

COLUMNS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    import mlflow
    import mlflow.pytorch
    import mlflow.sklearn
    import torch
    from mlflow import MlflowClient
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    # artifacts under the test folder (the default is ./mlruns in the current directory)
    MlflowClient().create_experiment("xac-tests", artifact_location=(folder / "artifacts").as_uri())
    mlflow.set_experiment(experiment_name="xac-tests")
    rng = np.random.default_rng(2)
    x = pd.DataFrame(rng.normal(size=(300, 4)), columns=COLUMNS)
    y = (x["a"] - x["b"] * x["c"] > 0).astype(int)
    out: dict[str, str] = {}
    with mlflow.start_run() as run:
        gbc = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x.to_numpy(), y)
        mlflow.sklearn.log_model(
            gbc,
            name="model",
            registered_model_name="risk-gbt",
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
        out["run_id"] = run.info.run_id
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            LogisticRegression().fit(x.to_numpy(), y), name="model", registered_model_name="risk-gbt"
        )  # version 2
        mlflow.sklearn.log_model(
            LogisticRegression().fit(x.to_numpy(), y),
            name="pickled",
            registered_model_name="risk-pickled",
            serialization_format="cloudpickle",
        )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).eval()
    with mlflow.start_run():
        mlflow.pytorch.log_model(
            net,
            name="net",
            registered_model_name="risk-net",
            input_example=np.zeros((3, 4), dtype=np.float32),
        )
    MlflowClient().set_registered_model_alias("risk-gbt", "champion", "1")
    rows = folder / "rows.parquet"
    x.iloc[:6].to_parquet(rows, index=False)
    out["rows"] = str(rows)
    out["uri"] = uri
    yield out
    patch.undo()


def _explain(model: str, rows: str, out: Path, method: str, *extra: str) -> int:
    return xac(["explain", "--model", model, "--data", rows, "--method", method, "--out", str(out), *extra])


def _docs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "explanations").glob("*.json"))]


def test_a_registered_scikit_learn_model_by_version_alias_and_run(
    registry: dict[str, str], tmp_path: Path
) -> None:
    trust = ["--skops-trust", "sklearn.tree._tree.Tree"]
    by_version, by_alias, by_run = tmp_path / "v", tmp_path / "a", tmp_path / "r"
    assert _explain("mlflow:models:/risk-gbt/1", registry["rows"], by_version, "TreeSHAP", *trust) == 0
    assert _explain("mlflow:models:/risk-gbt@champion", registry["rows"], by_alias, "TreeSHAP", *trust) == 0
    run = f"mlflow:runs:/{registry['run_id']}/model"
    assert _explain(run, registry["rows"], by_run, "TreeSHAP", *trust) == 0
    first, alias, by_run_doc = _docs(by_version)[0], _docs(by_alias)[0], _docs(by_run)[0]
    source = first["model"]["source"]
    assert source["source"] == "mlflow" and source["version"] == "1"
    assert source["details"]["model"] == "risk-gbt" and source["details"]["run_id"] == registry["run_id"]
    assert source["details"]["flavor"] == "skops" and source["details"]["registry_uri"] == registry["uri"]
    assert {"MLmodel", "model.skops"} <= {a["path"] for a in source["artifacts"]}
    assert alias["model"]["source"]["details"]["alias"] == "champion"
    # the same bytes whichever way they were named
    assert first["attributions"] == alias["attributions"] == by_run_doc["attributions"]
    gap = first["prediction"]["explained_output"]["value"] - first["baseline"]["value"]
    assert sum(first["attributions"]["features"].values()) == pytest.approx(gap, abs=1e-6)


def test_a_registered_pytorch_model_takes_gradient_methods(registry: dict[str, str], tmp_path: Path) -> None:
    code = _explain("mlflow:models:/risk-net/1", registry["rows"], tmp_path / "ig", "IntegratedGradients")
    assert code == 0
    doc = _docs(tmp_path / "ig")[0]
    assert doc["model"]["source"]["details"]["flavor"] == "torch-export"
    assert doc["model"]["task"] == "regression"


@pytest.mark.parametrize(
    ("model", "code", "message"),
    [
        ("mlflow:models:/risk-gbt/7", 3, "not found in the registry"),
        ("mlflow:models:/risk-gbt@retired", 3, "not found in the registry"),
        ("mlflow:models:/nobody/1", 3, "not found in the registry"),
        ("mlflow:models:/risk-pickled/1", 1, "(a pickle) is never loaded"),
        ("mlflow:models:/risk-gbt/1", 1, "not trusted: sklearn.tree._tree.Tree"),
        ("mlflow:s3://bucket/model", 1, "expected models:/NAME/VERSION"),
    ],
)
def test_registry_problems_are_clear_errors_before_any_work(
    model: str,
    code: int,
    message: str,
    registry: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    assert _explain(model, registry["rows"], tmp_path / "o", "KernelSHAP") == code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
