"""run_explain end to end on both sample models: outputs, sharding, determinism, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.explainers.errors import (
    ExplainError,
    InputValidationError,
    MethodNotApplicableError,
    ModelLoadError,
    ModelNotFoundError,
    OutputExistsError,
    ParameterError,
    UnknownMethodError,
)
from include.explainers.runtime import ExplainRequest, merge_shards, read_explanation, run_explain

from .conftest import write_parquet

TAB = "diagnosis-risk-tabular"
MM = "multimodal-image-classifier-v3"


def _request(tmp: Path, model: str, method: str, inference: pd.DataFrame, background: pd.DataFrame, **kw):
    inf = write_parquet(inference, tmp / "inputs" / "inference.parquet")
    bg = write_parquet(background, tmp / "inputs" / "background.parquet")
    fields = {"params": {}, "seed": 42, "out_dir": tmp / "out", **kw}
    return ExplainRequest(model, "1", method, inference_path=inf, background_path=bg, **fields)


def _attributions(out_dir: Path) -> dict[str, list[float]]:
    return {
        path.stem: [p["attribution"] for p in read_explanation(path)["attributions"]["players"]]
        for path in sorted((out_dir / "explanations").iterdir())
    }


def test_tabular_kernel_shap_end_to_end(
    sample_models: dict, tabular_frame: pd.DataFrame, tmp_path: Path
) -> None:
    # Rows given out of order: the runtime sorts by id.
    inference = tabular_frame.iloc[[5, 3, 9, 0, 7, 1, 4, 8]]
    request = _request(tmp_path, TAB, "KernelSHAP", inference, tabular_frame.iloc[200:260])
    summary = run_explain(request)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "explanations",
        "fidelity.json",
        "plots",
        "run_summary.json",
        "summary.json",
    ]
    assert summary == json.loads((out / "run_summary.json").read_text())
    assert summary["counts"]["instances"] == 8 and summary["shard"]["first_id"] == "P100000"
    assert summary["peak_rss_mb"] > 0 and summary["libraries"]["torch"]
    files = sorted(p.name for p in (out / "explanations").iterdir())
    assert files == sorted(f"{i}.json" for i in inference["patient_id"])

    doc = read_explanation(out / "explanations" / "P100003.json")
    assert doc["model"]["sha256"] == summary["model"]["sha256"]
    assert doc["parameters"] == {
        "numSamples": 500,
        "backgroundDataStrategy": "random_subset",
        "backgroundDataSubsetSize": 100,
    }
    assert set(doc["attributions"]["features"]) == set(inference.columns[2:12])
    prob = doc["prediction"]["probabilities"]["malignant"]
    assert doc["prediction"]["explained_output"]["value"] == pytest.approx(prob)
    # Efficiency: attributions add up to f(x) - E_bg[f].
    total = sum(doc["attributions"]["features"].values())
    assert total == pytest.approx(
        doc["prediction"]["explained_output"]["value"] - doc["baseline"]["value"], abs=1e-9
    )
    assert doc["fidelity"]["local_accuracy"] == pytest.approx(1.0)

    fidelity = json.loads((out / "fidelity.json").read_text())
    assert fidelity["metric"] == "min(local_accuracy, stability)" and len(fidelity["per_instance"]) == 8
    assert fidelity["min"] <= fidelity["aggregate"] <= 1.0
    assert fidelity["aggregate"] >= 0.85  # the sample configs' default threshold
    importance = json.loads((out / "summary.json").read_text())["global_importance"]["players"]
    assert (
        len(importance) == 10
        and importance[0]["mean_abs_attribution"] >= importance[-1]["mean_abs_attribution"]
    )
    assert (out / "plots" / "global_importance.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".xac-tmp-*"))


def test_multimodal_integrated_gradients_parquet(
    sample_models: dict, multimodal_frame: pd.DataFrame, tmp_path: Path
) -> None:
    request = _request(
        tmp_path,
        MM,
        "IntegratedGradients",
        multimodal_frame.iloc[:4],
        multimodal_frame.iloc[300:400],
        output_format="parquet",
    )
    summary = run_explain(request)
    out = tmp_path / "out"
    assert summary["fidelity"]["min"] >= 0.99
    ids = list(multimodal_frame["image_id"].iloc[:4])
    assert sorted(p.name for p in (out / "explanations").iterdir()) == [f"{i}.parquet" for i in ids]
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        [f"{i}_saliency.png" for i in ids] + ["global_importance.png"]
    )
    table = pd.read_parquet(out / "explanations" / f"{ids[0]}.parquet")
    assert len(table) == 64 + 4 and set(table["modality"]) == {"image", "tabular"}
    assert list(table["feature"].iloc[[0, 9, 64]]) == ["px_r0c0", "px_r1c1", "ink_mean"]
    pixels = multimodal_frame.loc[multimodal_frame["image_id"] == ids[0], "px_r1c1"].item()
    assert table["input_value"].iloc[9] == pixels
    doc = read_explanation(out / "explanations" / f"{ids[0]}.parquet")
    shares = doc["attributions"]["modalities"]
    assert shares["image"]["share"] + shares["tabular"]["share"] == pytest.approx(1.0)
    assert shares["image"]["abs_share"] + shares["tabular"]["abs_share"] == pytest.approx(1.0)
    assert np.asarray(doc["attributions"]["image"]["attributions"]).shape == (8, 8)
    assert doc["parameters"]["baseline"] == {"image": "zeros", "tabular": "background_mean"}
    assert table["attribution"].sum() == pytest.approx(doc["attributions"]["total"], abs=1e-6)
    predicted = doc["prediction"]["class"]
    assert predicted == str(multimodal_frame["digit"].iloc[0])
    assert doc["prediction"]["explained_output"]["value"] == pytest.approx(
        np.log(doc["prediction"]["probability"]), abs=1e-5
    )


def test_multimodal_kernel_shap_players(
    sample_models: dict, multimodal_frame: pd.DataFrame, tmp_path: Path
) -> None:
    request = _request(
        tmp_path,
        MM,
        "KernelSHAP",
        multimodal_frame.iloc[:2],
        multimodal_frame.iloc[300:340],
        params={"numSamples": 200, "backgroundDataSubsetSize": 20},
    )
    summary = run_explain(request)
    doc = read_explanation(tmp_path / "out" / "explanations" / "IMG10000.json")
    players = doc["attributions"]["players"]
    assert len(players) == 20 and players[0]["name"] == "image[r0:2,c0:2]"
    grid = np.asarray(doc["attributions"]["image"]["attributions"])
    assert grid[0:2, 0:2].sum() == pytest.approx(players[0]["attribution"])  # spread evenly, sum kept
    assert summary["parameters"]["imageSuperpixel"] == 2
    assert (tmp_path / "out" / "plots" / "IMG10000_saliency.png").is_file()


@pytest.mark.parametrize(
    ("model", "method", "params", "rows"),
    [
        (TAB, "KernelSHAP", {"numSamples": 200, "backgroundDataSubsetSize": 30}, 7),
        (MM, "IntegratedGradients", {"steps": 20}, 5),
        (MM, "KernelSHAP", {"numSamples": 100, "backgroundDataSubsetSize": 10}, 5),
    ],
)
def test_shards_union_equals_single_run(
    sample_models: dict,
    tabular_frame: pd.DataFrame,
    multimodal_frame: pd.DataFrame,
    tmp_path: Path,
    model: str,
    method: str,
    params: dict,
    rows: int,
) -> None:
    frame = tabular_frame if model == TAB else multimodal_frame
    inference, background = frame.iloc[10 : 10 + rows], frame.iloc[400:460]
    single = _request(tmp_path / "single", model, method, inference, background, params=params)
    run_explain(single)
    expected = _attributions(tmp_path / "single" / "out")
    shard_dirs, union = [], {}
    for index in range(3):
        request = _request(
            tmp_path / f"s{index}",
            model,
            method,
            inference,
            background,
            params=params,
            shard_index=index,
            shard_count=3,
        )
        summary = run_explain(request)
        assert summary["shard"]["index"] == index
        part = _attributions(tmp_path / f"s{index}" / "out")
        assert not set(part) & set(union)  # disjoint
        union.update(part)
        shard_dirs.append(tmp_path / f"s{index}" / "out")
    assert union == expected  # bit-identical floats
    merged = merge_shards(shard_dirs, tmp_path / "merged")
    assert merged["shards_complete"] and merged["counts"]["instances"] == rows
    single_summary = json.loads((tmp_path / "single" / "out" / "summary.json").read_text())
    merged_summary = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert merged_summary["global_importance"] == single_summary["global_importance"]
    single_fid = json.loads((tmp_path / "single" / "out" / "fidelity.json").read_text())
    merged_fid = json.loads((tmp_path / "merged" / "fidelity.json").read_text())
    assert merged_fid["per_instance"] == single_fid["per_instance"]


def test_same_seed_same_bits_and_outputs_are_not_overwritten(
    sample_models: dict, tabular_frame: pd.DataFrame, tmp_path: Path
) -> None:
    params = {"numSamples": 100, "backgroundDataStrategy": "kmeans", "backgroundDataSubsetSize": 8}
    inference, background = tabular_frame.iloc[:3], tabular_frame.iloc[100:200]
    first = _request(tmp_path / "a", TAB, "KernelSHAP", inference, background, params=params)
    run_explain(first)
    run_explain(_request(tmp_path / "b", TAB, "KernelSHAP", inference, background, params=params))
    assert _attributions(tmp_path / "a" / "out") == _attributions(tmp_path / "b" / "out")
    with pytest.raises(OutputExistsError):
        run_explain(first)
    other_seed = _request(tmp_path / "a", TAB, "KernelSHAP", inference, background, params=params, seed=43)
    other_seed.overwrite = True
    run_explain(other_seed)
    assert _attributions(tmp_path / "a" / "out") != _attributions(tmp_path / "b" / "out")
    assert json.loads((tmp_path / "a" / "out" / "run_summary.json").read_text())["seed"] == 43


def _nondifferentiable_model(sample_models: dict, home: Path) -> None:
    """A copy of the tabular model whose metadata says it is not differentiable."""
    import shutil

    target = home / "models" / TAB / "1"
    shutil.copytree(sample_models[TAB].parent, target)
    meta = json.loads((target / "model.json").read_text())
    meta["differentiable"] = False
    (target / "model.json").write_text(json.dumps(meta))


def _bad_cases():
    def nan(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[frame.index[1], "mean_area"] = np.nan
        return frame

    def missing(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.drop(columns=["mean_symmetry"])

    def seven_by_seven(frame: pd.DataFrame) -> pd.DataFrame:
        drop = [
            c for c in frame.columns if c.startswith("px_r7") or (c.startswith("px_") and c.endswith("c7"))
        ]
        return frame.drop(columns=drop)

    def duplicate(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([frame, frame.iloc[:1]])

    return [
        ("unknown method", TAB, "NoSuchMethod", {}, None, UnknownMethodError, "NoSuchMethod"),
        (
            "superpixel on tabular",
            TAB,
            "KernelSHAP",
            {"imageSuperpixel": 2},
            None,
            MethodNotApplicableError,
            "image",
        ),
        (
            "not differentiable",
            TAB,
            "IntegratedGradients",
            {},
            "nondiff",
            MethodNotApplicableError,
            "differentiable",
        ),
        ("typo in a parameter", TAB, "KernelSHAP", {"numSample": 9}, None, ParameterError, "numSample"),
        ("superpixel too large", MM, "KernelSHAP", {"imageSuperpixel": 9}, None, ParameterError, "larger"),
        ("NaN input", TAB, "KernelSHAP", {}, nan, InputValidationError, "NaN"),
        ("missing column", TAB, "KernelSHAP", {}, missing, InputValidationError, "mean_symmetry"),
        ("wrong image shape", MM, "IntegratedGradients", {}, seven_by_seven, InputValidationError, "7x7"),
        ("duplicate ids", TAB, "KernelSHAP", {}, duplicate, InputValidationError, "duplicate"),
        ("model not found", "no-such-model", "KernelSHAP", {}, None, ModelNotFoundError, "no-such-model"),
        ("model not loading", TAB, "KernelSHAP", {}, "corrupt", ModelLoadError, "sha256"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_fails_before_any_output(
    case: tuple,
    sample_models: dict,
    tabular_frame: pd.DataFrame,
    multimodal_frame: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, model, method, params, transform, error, message = case
    frame = multimodal_frame if model == MM else tabular_frame
    inference, background = frame.iloc[:4], frame.iloc[100:140]
    if callable(transform):
        inference = transform(inference)
    elif transform in ("nondiff", "corrupt"):
        home = tmp_path / "home"
        monkeypatch.setenv("XAC_HOME", str(home))
        _nondifferentiable_model(sample_models, home)
        if transform == "corrupt":
            with (home / "models" / TAB / "1" / "model.pt").open("ab") as handle:
                handle.write(b"tampered")
    request = _request(tmp_path, model, method, inference, background, params=params)
    with pytest.raises(error, match=message) as raised:
        run_explain(request)
    assert isinstance(raised.value, ExplainError)
    assert not (tmp_path / "out").exists()


def test_failure_while_computing_leaves_nothing(
    sample_models: dict, tabular_frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import include.explainers.plots as plots

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(plots, "global_importance_png", broken)
    request = _request(tmp_path, TAB, "KernelSHAP", tabular_frame.iloc[:2], tabular_frame.iloc[100:120])
    request.out_dir.mkdir(parents=True)  # a folder the caller made: kept, but left empty
    with pytest.raises(OSError, match="disk full"):
        run_explain(request)
    assert list(request.out_dir.iterdir()) == []
