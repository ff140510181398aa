"""A scikit-learn model served by a real MLServer (Open Inference Protocol V2) on 127.0.0.1 explains
exactly as the same model in-process: same seed, same attributions to 1e-6 (KernelSHAP, LIME)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.cli.main import main as xac
from tests.explainers.mlserver import grpc_url, mlserver_executable, served_sklearn_model

COLUMNS = ["age", "bmi", "glucose", "pressure", "insulin"]

if mlserver_executable() is None:
    pytestmark = pytest.mark.skipif(
        not os.environ.get("CI"), reason="MLServer venv missing (make test creates .venv/mlserver)"
    )


@pytest.fixture(scope="module")
def model_and_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str, Path]:
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(8)
    x = pd.DataFrame(rng.normal(size=(400, 5)), columns=COLUMNS)
    y = (x["age"] - x["bmi"] * x["glucose"] + 0.3 * x["insulin"] > 0).astype(int)
    model = RandomForestClassifier(n_estimators=25, max_depth=5, random_state=0).fit(x.to_numpy(), y)
    folder = tmp_path_factory.mktemp("mlserver-model")
    sio.dump(model, folder / "rf.skops")
    rows = folder / "rows.parquet"
    x.iloc[:8].to_parquet(rows, index=False)
    return model, f"skops:{folder / 'rf.skops'}", rows


@pytest.fixture(scope="module")
def served(model_and_rows: tuple, tmp_path_factory: pytest.TempPathFactory):
    """The model's REST and gRPC URLs on one MLServer."""
    model, _, _ = model_and_rows
    folder = tmp_path_factory.mktemp("mlserver")
    with served_sklearn_model(model, folder, "risk", len(COLUMNS)) as url:
        yield {"rest": url, "grpc": grpc_url(url, folder)}


def _attributions(out: Path) -> np.ndarray:
    docs = [json.loads(p.read_text()) for p in sorted((out / "explanations").glob("*.json"))]
    return np.array([[d["attributions"]["features"][c] for c in COLUMNS] for d in docs])


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["rest", "grpc"])
@pytest.mark.parametrize("method", ["KernelSHAP", "LIME"])
def test_mlserver_and_in_process_give_the_same_attributions(
    method: str, transport: str, model_and_rows: tuple, served: dict[str, str], tmp_path: Path
) -> None:
    server_url = served[transport]
    _, local, rows = model_and_rows
    common = ["--data", str(rows), "--method", method, "--seed", "5"]
    trust = ["--skops-trust", "sklearn.tree._tree.Tree"]
    assert xac(["explain", "--model", local, *common, *trust, "--out", str(tmp_path / "local")]) == 0
    assert xac(["explain", "--model", f"oip:{server_url}", *common, "--out", str(tmp_path / "remote")]) == 0
    np.testing.assert_allclose(
        _attributions(tmp_path / "remote"), _attributions(tmp_path / "local"), atol=1e-6, rtol=0
    )
    doc = json.loads(next((tmp_path / "remote" / "explanations").glob("*.json")).read_text())
    source = doc["model"]["source"]
    assert source["source"] == "oip" and source["details"]["output"] == "predict_proba"
    assert source["uri"] == server_url and f"({transport.upper() if transport == 'rest' else 'gRPC'})" in str(
        source
    )
    assert doc["model"]["task"] == "binary"


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_mlserver_declared_inputs_are_checked(
    transport: str, model_and_rows: tuple, served: dict[str, str], tmp_path: Path, capsys
) -> None:
    server_url = served[transport]
    _, _, rows = model_and_rows
    narrow = tmp_path / "narrow.parquet"
    pd.read_parquet(rows).iloc[:, :4].to_parquet(narrow, index=False)
    capsys.readouterr()
    code = xac(
        [
            "explain",
            "--model",
            f"oip:{server_url}",
            "--data",
            str(narrow),
            "--method",
            "LIME",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    assert "takes 5 input features, the data has 4" in capsys.readouterr().err
