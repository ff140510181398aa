"""Users' own models, loaded from their own files (include/explainers/sources) and explained with
``xac explain --model SOURCE:LOCATION`` — real XGBoost, LightGBM, scikit-learn (skops), TorchScript,
torch.export and ONNX artifacts, trained here on a real data set."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.cli.main import main as xac

FEATURES = [
    "mean radius",
    "mean texture",
    "mean smoothness",
    "mean concavity",
    "worst area",
    "worst symmetry",
]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    out = data.frame[FEATURES].copy()
    out.columns = [c.replace(" ", "_") for c in out.columns]
    out["label"] = data.target
    return out


@pytest.fixture(scope="module")
def columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "label"]


@pytest.fixture(scope="module")
def models(
    frame: pd.DataFrame, columns: list[str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """One model per source, trained on the same rows; values are SOURCE:LOCATION."""
    import lightgbm as lgb
    import skops.io as sio
    import torch
    import xgboost as xgb
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    folder = tmp_path_factory.mktemp("models")
    x, y = frame[columns], frame["label"].to_numpy()
    out: dict[str, str] = {}

    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "seed": 0}, xgb.DMatrix(x, y), 30)
    booster.save_model(folder / "risk.json")
    booster.save_model(folder / "risk.ubj")
    out["xgboost"], out["xgboost-ubj"] = f"xgboost:{folder / 'risk.json'}", f"xgboost:{folder / 'risk.ubj'}"

    regressor = xgb.train(
        {"objective": "reg:squarederror", "max_depth": 3}, xgb.DMatrix(x, x["worst_area"]), 20
    )
    regressor.save_model(folder / "area.json")
    out["xgboost-regression"] = f"xgboost:{folder / 'area.json'}"

    light = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": 0},
        lgb.Dataset(x, y),
        num_boost_round=30,
    )
    light.save_model(folder / "risk.txt")
    out["lightgbm"] = f"lightgbm:{folder / 'risk.txt'}"

    gbc = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x, y)
    sio.dump(gbc, folder / "risk.skops")
    out["skops"] = f"skops:{folder / 'risk.skops'}"
    gbr = GradientBoostingRegressor(n_estimators=20, max_depth=2, random_state=0).fit(x.to_numpy(), y)
    sio.dump(gbr, folder / "regressor.skops")
    out["skops-regression"] = f"skops:{folder / 'regressor.skops'}"

    torch.manual_seed(0)
    mean, std = torch.tensor(x.mean().to_numpy()), torch.tensor(x.std().to_numpy())

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean.float())
            self.register_buffer("std", std.float())
            self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return self.body((rows - self.mean) / self.std)

    net = Net().eval()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    inputs, targets = torch.tensor(x.to_numpy(), dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    for _ in range(100):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(inputs).squeeze(1), targets).backward()
        optimiser.step()
    net.eval()
    torch.jit.save(torch.jit.script(net), folder / "net.torchscript.pt")
    out["torchscript"] = f"torchscript:{folder / 'net.torchscript.pt'}"
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (inputs[:2],), dynamic_shapes={"rows": {0: batch}})
    torch.export.save(program, folder / "net.pt2")
    out["torch-export"] = f"torch-export:{folder / 'net.pt2'}"
    torch.onnx.export(
        net,
        (inputs[:2],),
        str(folder / "net.onnx"),
        input_names=["features"],
        output_names=["logit"],
        dynamic_axes={"features": {0: "batch"}, "logit": {0: "batch"}},
        dynamo=False,
    )
    out["onnx"] = f"onnx:{folder / 'net.onnx'}"
    torch.save(net.state_dict(), folder / "net.pth")
    out["torch-save"] = str(folder / "net.pth")
    with (folder / "model.pkl").open("wb") as handle:
        pickle.dump(gbc, handle)
    out["pickle"] = str(folder / "model.pkl")
    return out


@pytest.fixture(scope="module")
def data_files(
    frame: pd.DataFrame, columns: list[str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    rows = frame[columns].iloc[::57].reset_index(drop=True)  # 10 rows to explain
    background = frame[columns].iloc[1::9].reset_index(drop=True)
    paths = {
        "data": folder / "rows.parquet",
        "background": folder / "background.parquet",
        "csv": folder / "rows.csv",
    }
    rows.to_parquet(paths["data"], index=False)
    background.to_parquet(paths["background"], index=False)
    rows.assign(patient=[f"p{k:02d}" for k in range(len(rows))]).to_csv(paths["csv"], index=False)
    return paths


def _explain(
    model: str, data: Path, out: Path, method: str, *extra: str, background: Path | None = None
) -> int:
    argv = ["explain", "--model", model, "--data", str(data), "--method", method, "--out", str(out), *extra]
    if background is not None:
        argv += ["--background", str(background)]
    return xac(argv)


def _docs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "explanations").glob("*.json"))]


@pytest.mark.parametrize(
    "name", ["xgboost", "xgboost-ubj", "lightgbm", "skops", "torchscript", "torch-export", "onnx"]
)
def test_kernel_shap_on_every_source_is_exact_and_records_what_was_loaded(
    name: str, models: dict[str, str], data_files: dict[str, Path], tmp_path: Path
) -> None:
    """6 features: 62 coalitions enumerate every one, so KernelSHAP's values are exact and add up."""
    extra = ["--skops-trust", "sklearn.tree._tree.Tree"] if name == "skops" else []
    if name in ("torchscript", "torch-export", "onnx"):
        extra += ["--task", "binary"]
    code = _explain(
        models[name],
        data_files["data"],
        tmp_path / "out",
        "KernelSHAP",
        "--num-samples",
        "62",
        *extra,
        background=data_files["background"],
    )
    assert code == 0
    docs = _docs(tmp_path / "out")
    assert len(docs) == 10
    location = models[name].split(":", 1)[1]
    for doc in docs:
        source = doc["model"]["source"]
        assert source["source"] == name.split("-ubj")[0] and source["uri"] == location
        assert source["artifacts"][0]["sha256"] == doc["model"]["sha256"]
        import hashlib

        assert source["artifacts"][0]["sha256"] == hashlib.sha256(Path(location).read_bytes()).hexdigest()
        assert doc["model"]["task"] == "binary"
        total = sum(doc["attributions"]["features"].values())
        explained = doc["prediction"]["explained_output"]["value"]
        assert abs(total - (explained - doc["baseline"]["value"])) < 1e-6
        assert 0.0 <= explained <= 1.0


def test_tree_shap_on_real_boosters_equals_shap_and_is_locally_accurate(
    models: dict[str, str], data_files: dict[str, Path], columns: list[str], tmp_path: Path
) -> None:
    import lightgbm as lgb
    import shap
    import skops.io as sio
    import xgboost as xgb

    rows = pd.read_parquet(data_files["data"])
    background = pd.read_parquet(data_files["background"])
    natives = {
        "xgboost": xgb.Booster(model_file=models["xgboost"].split(":", 1)[1]),
        "lightgbm": lgb.Booster(model_file=models["lightgbm"].split(":", 1)[1]),
        "skops": sio.load(models["skops"].split(":", 1)[1], trusted=["sklearn.tree._tree.Tree"]),
    }
    for name, native in natives.items():
        out = tmp_path / name
        extra = ["--skops-trust", "sklearn.tree._tree.Tree"] if name == "skops" else []
        code = _explain(
            models[name],
            data_files["data"],
            out,
            "TreeSHAP",
            "--param",
            "backgroundDataStrategy=all",
            *extra,
            background=data_files["background"],
        )
        assert code == 0, name
        reference = shap.TreeExplainer(
            native,
            data=background.to_numpy(np.float64),
            feature_perturbation="interventional",
            model_output="probability",
        )
        expected = np.asarray(reference.shap_values(rows.to_numpy(np.float64)), dtype=np.float64)
        docs = _docs(out)
        ours = np.array([[doc["attributions"]["features"][c] for c in columns] for doc in docs])
        order = [int(doc["inference_id"]) for doc in docs]
        np.testing.assert_allclose(ours, expected[order], atol=1e-9, rtol=0)
        for doc in docs:
            total = sum(doc["attributions"]["features"].values())
            gap = doc["prediction"]["explained_output"]["value"] - doc["baseline"]["value"]
            assert abs(total - gap) < 1e-6, (name, total, gap)


def test_regression_models_explain_their_raw_prediction(
    models: dict[str, str], data_files: dict[str, Path], tmp_path: Path
) -> None:
    import xgboost as xgb

    rows = pd.read_parquet(data_files["data"])
    booster = xgb.Booster(model_file=models["xgboost-regression"].split(":", 1)[1])
    predicted = booster.inplace_predict(rows.to_numpy(np.float64))
    assert _explain(models["xgboost-regression"], data_files["data"], tmp_path / "x", "TreeSHAP") == 0
    for doc in _docs(tmp_path / "x"):
        assert doc["model"]["task"] == "regression"
        value = doc["prediction"]["explained_output"]["value"]
        assert value == pytest.approx(float(predicted[int(doc["inference_id"])]), rel=1e-6)
        assert sum(doc["attributions"]["features"].values()) == pytest.approx(
            value - doc["baseline"]["value"], abs=1e-4
        )
    extra = ["--skops-trust", "sklearn.tree._tree.Tree", "--num-samples", "62"]
    assert _explain(models["skops-regression"], data_files["data"], tmp_path / "s", "KernelSHAP", *extra) == 0
    assert _docs(tmp_path / "s")[0]["model"]["task"] == "regression"


def test_gradient_methods_run_on_torch_artifacts_and_are_refused_for_onnx(
    models: dict[str, str], data_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("torchscript", "torch-export"):
        out = tmp_path / name
        assert _explain(models[name], data_files["data"], out, "IntegratedGradients", "--task", "binary") == 0
        for doc in _docs(out):
            gap = doc["prediction"]["explained_output"]["value"] - doc["baseline"]["value"]
            assert sum(doc["attributions"]["features"].values()) == pytest.approx(gap, abs=1e-4)
    capsys.readouterr()
    out = tmp_path / "onnx-ig"
    assert _explain(models["onnx"], data_files["data"], out, "IntegratedGradients") == 1
    assert "not differentiable" in capsys.readouterr().err
    assert not out.exists()


def test_csv_with_an_id_column_and_other_methods(
    models: dict[str, str], data_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "lime"
    code = _explain(
        models["xgboost"], data_files["csv"], out, "LIME", "--id-column", "patient", "--seed", "3"
    )
    assert code == 0
    docs = _docs(out)
    assert [d["inference_id"] for d in docs] == [f"p{k:02d}" for k in range(10)]
    assert docs[0]["entity"] == {"column": "patient", "value": "p00"} and docs[0]["seed"] == 3
    assert _explain(models["lightgbm"], data_files["data"], tmp_path / "occ", "Occlusion") == 0


@pytest.mark.parametrize(
    ("model_key", "method", "expected"),
    [
        ("pickle", "KernelSHAP", "pickle"),
        ("torch-save", "KernelSHAP", "not a TorchScript archive"),
        ("skops-untrusted", "KernelSHAP", "not trusted: sklearn.tree._tree.Tree"),
        ("xgboost", "AttentionRollout", "AttentionRollout"),
        ("torchscript", "TreeSHAP", "tree ensembles only"),
    ],
)
def test_bad_models_are_refused_before_any_work(
    model_key: str,
    method: str,
    expected: str,
    models: dict[str, str],
    data_files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = {
        "pickle": f"skops:{models['pickle']}",
        "torch-save": f"torchscript:{models['torch-save']}",
        "skops-untrusted": models["skops"],
    }.get(model_key, models.get(model_key))
    capsys.readouterr()
    out = tmp_path / "out"
    assert _explain(model, data_files["data"], out, method) == 1
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_pickles_are_refused_whatever_the_source_says(models: dict[str, str], tmp_path: Path) -> None:
    from include.explainers.errors import ModelLoadError
    from include.explainers.sources import ModelRef, model_from_source

    renamed = tmp_path / "model.json"
    renamed.write_bytes(Path(models["pickle"]).read_bytes())  # a pickle behind a harmless name
    for source in ("xgboost", "lightgbm", "onnx", "torchscript", "torch-export", "skops"):
        with pytest.raises(ModelLoadError, match="pickle"):
            model_from_source(ModelRef(source, str(renamed)), ["a"])


def test_inputs_that_do_not_match_name_both_column_lists(
    models: dict[str, str],
    data_files: dict[str, Path],
    frame: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    swapped = pd.read_parquet(data_files["data"])
    cols = list(swapped.columns)
    swapped = swapped[[cols[1], cols[0], *cols[2:]]]
    swapped.to_parquet(tmp_path / "swapped.parquet", index=False)
    capsys.readouterr()
    assert _explain(models["xgboost"], tmp_path / "swapped.parquet", tmp_path / "o1", "KernelSHAP") == 1
    err = capsys.readouterr().err
    assert (
        "model inputs (6): mean_radius, mean_texture" in err
        and "feature columns (6): mean_texture, mean_radius" in err
    )
    pd.read_parquet(data_files["data"]).iloc[:, :5].to_parquet(tmp_path / "narrow.parquet", index=False)
    assert _explain(models["onnx"], tmp_path / "narrow.parquet", tmp_path / "o2", "KernelSHAP") == 1
    assert "takes 6 input features, the data has 5" in capsys.readouterr().err


def test_usage_errors(models: dict[str, str], data_files: dict[str, Path], tmp_path: Path) -> None:
    assert (
        xac(["explain", "--model", models["xgboost"], "--out", str(tmp_path / "o")]) == 2
    )  # no --data/--method
    assert (
        xac(
            [
                "explain",
                "--model",
                "pickle:/x",
                "--data",
                str(data_files["data"]),
                "--method",
                "LIME",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert (
        _explain(models["xgboost"], data_files["data"], tmp_path / "o", "KernelSHAP", "--config-sha256", "ab")
        == 2
    )
    assert _explain("xgboost:/nonexistent/model.json", data_files["data"], tmp_path / "o", "KernelSHAP") == 3
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_models_and_frames_from_object_storage(
    models: dict[str, str], data_files: dict[str, Path], tmp_path: Path
) -> None:
    from include.embedded import s3_server
    from include.storage import s3_client

    with s3_server.environment():
        client = s3_client()
        client.create_bucket(Bucket="team-models")
        client.upload_file(models["lightgbm"].split(":", 1)[1], "team-models", "risk/3/model.txt")
        client.upload_file(str(data_files["csv"]), "team-models", "frames/rows.csv")
        code = _explain(
            "lightgbm:s3://team-models/risk/3/model.txt",
            data_files["data"],
            tmp_path / "a",
            "TreeSHAP",
        )
        assert code == 0
        doc = _docs(tmp_path / "a")[0]
        assert doc["model"]["source"]["uri"] == "s3://team-models/risk/3/model.txt"
        code = xac(
            [
                "explain",
                "--model",
                "lightgbm:s3://team-models/risk/3/model.txt",
                "--data",
                "s3://team-models/frames/rows.csv",
                "--id-column",
                "patient",
                "--method",
                "Occlusion",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        assert code == 0 and len(_docs(tmp_path / "b")) == 10
        assert (
            _explain(
                "lightgbm:s3://team-models/risk/9/model.txt", data_files["data"], tmp_path / "c", "TreeSHAP"
            )
            == 3
        )
