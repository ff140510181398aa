"""TreeSHAP on the gradient-boosted sample model: conversion, exactness, refusal on networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from examples.datasets import TABULAR_FEATURES
from include.explainers.base import ExplainedModel, get_explainer
from include.explainers.errors import MethodNotApplicableError
from include.explainers.runtime import ExplainRequest, read_explanation, run_explain

from .conftest import write_parquet

GBT = "diagnosis-risk-gbt"
PARAMS = {"backgroundDataStrategy": "all", "backgroundDataSubsetSize": 100}


def _rows(frame: pd.DataFrame, sl: slice) -> torch.Tensor:
    return torch.from_numpy(frame[TABULAR_FEATURES].to_numpy(np.float32)[sl])


def test_tree_model_reproduces_sklearn_and_loads_verified(sample_models: dict, tabular_frame) -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    from examples.models import tree_ensemble_from_sklearn
    from include.explainers.model_store import load_model

    loaded = load_model(GBT, "1")  # sha256 of model.pt checked against model.json
    assert loaded.metadata["architecture"] == "TreeEnsemble" and loaded.metadata["differentiable"] is False
    assert loaded.metadata["metrics"]["heldout_accuracy"] > 0.9
    x = tabular_frame[TABULAR_FEATURES].to_numpy(np.float32)
    y = tabular_frame["malignant"].to_numpy()
    gbt = GradientBoostingClassifier(n_estimators=20, max_depth=4, random_state=0).fit(x, y)
    with torch.inference_mode():
        ours = tree_ensemble_from_sklearn(gbt)(torch.from_numpy(x)).squeeze(1).numpy()
    assert np.abs(ours - gbt.decision_function(x)).max() < 1e-9


def test_tree_shap_raw_output_equals_exact_shapley(sample_models: dict, tabular_frame) -> None:
    from include.explainers.model_store import load_model

    loaded = load_model(GBT, "1")
    raw = ExplainedModel(loaded.module, loaded.modalities, "regression", ["log-odds"], differentiable=False)
    x, bg = _rows(tabular_frame, slice(0, 6)), _rows(tabular_frame, slice(200, 230))
    tree = get_explainer("TreeSHAP").explain(raw, (x,), (bg,), PARAMS, seed=0)
    exact = get_explainer("ExactShapley").explain(raw, (x,), (bg,), PARAMS, seed=0)
    assert np.abs(tree.players - exact.players).max() < 1e-6
    assert np.allclose(tree.baselines, exact.baselines, atol=1e-9)


def test_tree_shap_probability_is_additive(sample_models: dict, tabular_frame) -> None:
    from include.explainers.model_store import load_model

    model = load_model(GBT, "1").explained()
    x, bg = _rows(tabular_frame, slice(0, 6)), _rows(tabular_frame, slice(200, 240))
    out = get_explainer("TreeSHAP").explain(model, (x,), (bg,), PARAMS, seed=0)
    assert np.allclose(out.players.sum(1), out.outputs - out.baselines, atol=1e-6)
    exact = get_explainer("ExactShapley").explain(model, (x,), (bg,), PARAMS, seed=0)
    # shap rescales per-reference log-odds values (module docstring): close to, not equal to, exact.
    assert np.abs(out.players - exact.players).max() < 0.15
    assert np.allclose(out.baselines, exact.baselines, atol=1e-6)


def test_tree_shap_refuses_neural_networks_before_any_work(
    sample_models: dict, multimodal_frame: pd.DataFrame, tmp_path: Path
) -> None:
    inference = write_parquet(multimodal_frame.iloc[:3], tmp_path / "in" / "inference.parquet")
    background = write_parquet(multimodal_frame.iloc[50:80], tmp_path / "in" / "background.parquet")
    request = ExplainRequest(
        "multimodal-image-classifier-v3", "1", "TreeSHAP", {}, 0, inference, background, tmp_path / "out"
    )
    with pytest.raises(
        MethodNotApplicableError, match=r"TreeSHAP explains tree ensembles only.*MultimodalDigitNet"
    ):
        run_explain(request)
    assert not (tmp_path / "out").exists()


def test_tree_shap_end_to_end(sample_models: dict, tabular_frame: pd.DataFrame, tmp_path: Path) -> None:
    inference = write_parquet(tabular_frame.iloc[[3, 1, 2]], tmp_path / "in" / "inference.parquet")
    background = write_parquet(tabular_frame.iloc[100:160], tmp_path / "in" / "background.parquet")
    request = ExplainRequest(GBT, "1", "TreeSHAP", {}, 5, inference, background, tmp_path / "out")
    summary = run_explain(request)
    assert summary["method"] == "TreeSHAP" and summary["fidelity"]["metric"] == "local_accuracy"
    assert summary["fidelity"]["min"] > 0.9999
    doc = read_explanation(tmp_path / "out" / "explanations" / "P100001.json")
    assert doc["model"]["architecture"] == "TreeEnsemble"
    total = sum(doc["attributions"]["features"].values())
    assert total == pytest.approx(
        doc["prediction"]["explained_output"]["value"] - doc["baseline"]["value"], abs=1e-6
    )
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["details"]["trees"] == 100
