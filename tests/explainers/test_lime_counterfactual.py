"""LIME, Counterfactual and ExactShapley against ground truth (analytic values, brute force)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from include.explainers.base import METHOD_MODULES, ExplainedModel, Modality, get_explainer
from include.explainers.counterfactual import CounterfactualExplainer
from include.explainers.errors import ExplainError, MethodNotApplicableError
from include.explainers.exact_shapley import MAX_PLAYERS
from include.explainers.params import PARAMETERS, normalise_params
from include.explainers.runtime import ExplainRequest, read_explanation, run_explain
from include.provenance.suites import declared_feature_ranges

from .conftest import write_parquet

TAB = "diagnosis-risk-tabular"
MM = "multimodal-image-classifier-v3"


# ----------------------------------------------------------------------------- toy models


class Linear(nn.Module):
    def __init__(self, weights: list[float], bias: float) -> None:
        super().__init__()
        self.layer = nn.Linear(len(weights), 1).double()
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([weights], dtype=torch.float64))
            self.layer.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class Interacting(nn.Module):
    """f(x) = x0 * x1 + sin(x2) + 0.5 * x3^2 - x0 (float64; a parameter sets the dtype)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x[:, 0] * x[:, 1] + torch.sin(x[:, 2]) + 0.5 * x[:, 3] ** 2 - x[:, 0]
        return (self.scale * out)[:, None]


class Ring(nn.Module):
    """A 2-3 feature classifier with a curved boundary: logit = c - sum(((x - centre) / width)^2)."""

    def __init__(self, centre: list[float], width: list[float], level: float) -> None:
        super().__init__()
        self.centre = nn.Parameter(torch.tensor(centre, dtype=torch.float64))
        self.register_buffer("width", torch.tensor(width, dtype=torch.float64))
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.level - (((x - self.centre) / self.width) ** 2).sum(dim=1))[:, None]


def _tabular(module: nn.Module, columns: list[str], task: str = "regression") -> ExplainedModel:
    classes = ["y"] if task == "regression" else ["no", "yes"]
    return ExplainedModel(
        module, [Modality("tabular", "tabular", tuple(columns), (len(columns),))], task, classes
    )


def _params(method: str, **overrides: object) -> dict:
    return normalise_params(method, {"backgroundDataStrategy": "all", **overrides}, has_image=False)


# ----------------------------------------------------------------------------- LIME


def test_lime_recovers_a_linear_model() -> None:
    weights = [2.0, -1.0, 0.5, 0.0, 3.0]
    model = _tabular(Linear(weights, 0.3), [f"f{i}" for i in range(5)])
    rng = np.random.default_rng(0)
    bg = torch.from_numpy(rng.normal([1, 2, 3, 4, 5], [1.0, 0.5, 2.0, 1.0, 0.2], size=(200, 5)))
    x = torch.from_numpy(rng.normal(size=(6, 5)))
    out = get_explainer("LIME").explain(model, (x,), (bg,), _params("LIME"), seed=3)

    coef = out.per_instance["coefficients"]
    assert np.all(out.per_instance["r2"] > 0.9999)
    # Ridge (alpha 1) shrinks a little; signs and ratios are those of the model.
    assert np.allclose(coef, np.array(weights)[None], atol=2e-3)
    assert np.allclose(coef[:, 0] / coef[:, 1], -2.0, rtol=1e-3)
    assert np.all(np.sign(coef[:, [0, 1, 2, 4]]) == np.sign(np.array(weights)[[0, 1, 2, 4]]))
    # The contributions are w * (x - mean), the linear model's exact Shapley values (to shrinkage).
    expected = np.array(weights)[None] * (x.numpy() - bg.numpy().mean(0))
    assert np.allclose(out.players, expected, atol=5e-3 * np.abs(expected).max())
    assert out.resolved_params["kernelWidth"] == pytest.approx(0.75 * math.sqrt(5))
    assert np.allclose(out.players.sum(1), out.per_instance["surrogate_prediction"] - out.baselines)


def test_lime_is_deterministic_and_seeded() -> None:
    model = _tabular(Interacting(), ["a", "b", "c", "d"])
    rng = np.random.default_rng(1)
    bg, x = torch.from_numpy(rng.normal(size=(50, 4))), torch.from_numpy(rng.normal(size=(4, 4)))
    params = _params("LIME", numSamples=500)
    first = get_explainer("LIME").explain(model, (x,), (bg,), params, seed=0, instance_seeds=[1, 2, 3, 4])
    again = get_explainer("LIME").explain(model, (x,), (bg,), params, seed=0, instance_seeds=[1, 2, 3, 4])
    other = get_explainer("LIME").explain(model, (x,), (bg,), params, seed=0, instance_seeds=[5, 6, 7, 8])
    assert np.array_equal(first.players, again.players) and np.array_equal(
        first.per_instance["r2"], again.per_instance["r2"]
    )
    assert not np.array_equal(first.players, other.players)
    # A non-linear model is not explained perfectly: R^2 is a real measurement, in (0, 1).
    assert np.all(first.per_instance["r2"] < 0.9999) and np.all(first.per_instance["r2"] > 0.0)


def test_lime_refuses_image_models(sample_models: dict) -> None:
    from include.explainers.model_store import load_model

    with pytest.raises(MethodNotApplicableError, match="tabular"):
        get_explainer("LIME").check_model(load_model(MM, "1").explained())


# ----------------------------------------------------------------------------- ExactShapley


def test_exact_shapley_on_a_linear_model_is_analytic() -> None:
    weights = [1.5, -2.0, 0.25, 4.0]
    model = _tabular(Linear(weights, -1.0), ["a", "b", "c", "d"])
    rng = np.random.default_rng(2)
    bg, x = torch.from_numpy(rng.normal(size=(40, 4))), torch.from_numpy(rng.normal(size=(5, 4)))
    out = get_explainer("ExactShapley").explain(model, (x,), (bg,), _params("ExactShapley"), seed=0)
    expected = np.array(weights)[None] * (x.numpy() - bg.numpy().mean(0))
    assert np.abs(out.players - expected).max() < 1e-6
    assert np.allclose(out.players.sum(1), out.outputs - out.baselines, atol=1e-12)


def _brute_force_shapley(f, x: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """phi_j = sum_S |S|!(M-|S|-1)!/M! (v(S+j) - v(S)), v(S) = mean_b f(x_S, bg_b): the textbook formula."""
    m = x.shape[0]

    def v(subset: tuple[int, ...]) -> float:
        rows = bg.copy()
        rows[:, list(subset)] = x[list(subset)]
        return float(f(rows).mean())

    phi = np.zeros(m)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        for size in range(m):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                phi[j] += weight * (v(tuple(sorted((*subset, j)))) - v(subset))
    return phi


def test_exact_shapley_on_a_nonlinear_model_equals_the_formula() -> None:
    model = _tabular(Interacting(), ["a", "b", "c", "d"])
    rng = np.random.default_rng(3)
    bg, x = rng.normal(size=(30, 4)), rng.normal(size=(3, 4))

    def f(rows: np.ndarray) -> np.ndarray:
        return rows[:, 0] * rows[:, 1] + np.sin(rows[:, 2]) + 0.5 * rows[:, 3] ** 2 - rows[:, 0]

    out = get_explainer("ExactShapley").explain(
        model, (torch.from_numpy(x),), (torch.from_numpy(bg),), _params("ExactShapley"), seed=0
    )
    for i in range(3):
        assert np.abs(out.players[i] - _brute_force_shapley(f, x[i], bg)).max() < 1e-9


def test_exact_shapley_refuses_too_many_players(sample_models: dict) -> None:
    from include.explainers.model_store import load_model

    model = load_model(MM, "1").explained()  # 16 image tiles of 2x2 + 4 tabular features = 20
    explainer = get_explainer("ExactShapley")
    with pytest.raises(MethodNotApplicableError, match=f"at most {MAX_PLAYERS} players; this model has 20"):
        explainer.check_params(model, normalise_params("ExactShapley", {}, has_image=True))
    explainer.check_params(model, normalise_params("ExactShapley", {"imageSuperpixel": 4}, has_image=True))


# ----------------------------------------------------------------------------- Counterfactual


def _brute_force_counterfactual(f, x: np.ndarray, scale: np.ndarray, lo, hi, points: int) -> float:
    """The smallest scaled-L1 distance to a grid point of the box whose class differs from x's."""
    axes = [np.linspace(a, b, points) for a, b in zip(lo, hi, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(lo))
    flipped = (f(grid) > 0) != (f(x[None])[0] > 0)
    return float((np.abs(grid[flipped] - x) / scale).sum(axis=1).min())


@pytest.mark.parametrize("n_features", [2, 3])
def test_counterfactual_is_no_larger_than_brute_force(n_features: int) -> None:
    ranges = declared_feature_ranges()  # the sample suite files' declared ranges
    from examples.datasets import TABULAR_FEATURES

    columns = TABULAR_FEATURES[:n_features]  # real features, with their declared ranges
    lo = np.array([ranges[c][0] for c in columns])
    hi = np.array([ranges[c][1] for c in columns])
    centre = list(0.4 * hi)
    width = list(0.15 * hi)
    module = Ring(centre, width, level=1.0)
    model = _tabular(module, columns, task="binary")
    rng = np.random.default_rng(4)
    bg = rng.uniform(lo, hi, size=(200, n_features))
    # Instances inside the ring (positive) and outside it (negative).
    x = np.array([centre, list(np.array(centre) + 0.5 * np.array(width)), list(0.8 * hi), list(0.1 * hi)])

    def logit(rows: np.ndarray) -> np.ndarray:
        return 1.0 - (((rows - np.array(centre)) / np.array(width)) ** 2).sum(axis=1)

    out = get_explainer("Counterfactual").explain(
        model, (torch.from_numpy(x),), (torch.from_numpy(bg),), _params("Counterfactual"), seed=0
    )
    scale = bg.std(axis=0)
    points = 401 if n_features == 2 else 81
    step = ((hi - lo) / (points - 1) / scale).sum()
    assert out.per_instance["found"].all()
    for i in range(len(x)):
        doc = out.per_instance["counterfactual"][i]
        row = np.array([doc["row"][c] for c in columns])
        assert np.all(row >= lo) and np.all(row <= hi)
        assert (logit(row[None])[0] > 0) != (logit(x[i : i + 1])[0] > 0)  # the prediction flips
        assert out.per_instance["l1_distance"][i] == pytest.approx((np.abs(row - x[i]) / scale).sum())
        brute = _brute_force_counterfactual(logit, x[i], scale, lo, hi, points)
        # The grid's optimum is itself up to one grid step above the true optimum.
        assert out.per_instance["l1_distance"][i] <= brute + 1e-9, (
            i,
            out.per_instance["l1_distance"][i],
            brute,
        )
        assert out.per_instance["l1_distance"][i] >= brute - step
    assert out.per_instance["counterfactual"][0]["prediction"]["class"] == "no"


def test_counterfactual_reports_when_no_flip_exists_in_range() -> None:
    columns = ["mean_radius", "mean_texture"]
    # Positive everywhere inside the declared ranges (the boundary lies at mean_radius = -10).
    model = _tabular(Linear([1.0, 0.0], 10.0), columns, task="binary")
    bg = torch.from_numpy(np.random.default_rng(5).uniform([5, 10], [25, 30], size=(50, 2)))
    x = torch.tensor([[12.0, 20.0], [3.0, 100.0]], dtype=torch.float64)
    out = get_explainer("Counterfactual").explain(model, (x,), (bg,), _params("Counterfactual"), seed=0)
    assert not out.per_instance["found"].any()
    assert list(out.per_instance["counterfactual"]) == [None, None]
    assert np.all(out.players == 0.0) and np.array_equal(out.baselines, out.outputs)


def test_counterfactual_respects_ranges_and_is_deterministic(sample_models: dict, tabular_frame) -> None:
    from examples.datasets import TABULAR_FEATURES
    from include.explainers.model_store import load_model

    model = load_model(TAB, "1").explained()
    x = torch.from_numpy(tabular_frame[TABULAR_FEATURES].to_numpy(np.float32)[:6])
    bg = torch.from_numpy(tabular_frame[TABULAR_FEATURES].to_numpy(np.float32)[100:200])
    params = normalise_params("Counterfactual", {}, has_image=False)
    seeds = [11, 12, 13, 14, 15, 16]
    first = get_explainer("Counterfactual").explain(model, (x,), (bg,), params, 0, seeds)
    again = get_explainer("Counterfactual").explain(model, (x,), (bg,), params, 0, seeds)
    assert np.array_equal(first.players, again.players)
    assert [json.dumps(d) for d in first.per_instance["counterfactual"]] == [
        json.dumps(d) for d in again.per_instance["counterfactual"]
    ]
    ranges = declared_feature_ranges()
    predicted = model.class_probabilities(model.evaluate(x)).argmax(1).numpy()
    assert first.per_instance["found"].all()
    for i, doc in enumerate(first.per_instance["counterfactual"]):
        row = torch.tensor([[doc["row"][c] for c in TABULAR_FEATURES]], dtype=torch.float32)
        assert all(ranges[c][0] <= doc["row"][c] <= ranges[c][1] for c in TABULAR_FEATURES)
        new = int(model.class_probabilities(model.evaluate(row)).argmax(1))
        assert new != predicted[i] and new == doc["prediction"]["class_index"]
        assert set(doc["changes"]) == {
            c for c in TABULAR_FEATURES if doc["row"][c] != float(x[i, TABULAR_FEATURES.index(c)])
        }


def test_counterfactual_needs_declared_ranges_and_a_classifier() -> None:
    model = _tabular(Linear([1.0, 1.0], 0.0), ["mean_radius", "no_such_feature"], task="binary")
    with pytest.raises(MethodNotApplicableError, match="no range is declared for no_such_feature"):
        get_explainer("Counterfactual").check_model(model)
    regression = _tabular(Linear([1.0, 1.0], 0.0), ["mean_radius", "mean_texture"])
    with pytest.raises(MethodNotApplicableError, match="classifier"):
        get_explainer("Counterfactual").check_model(regression)
    # Explicit ranges may be given (the declared ones are the default).
    CounterfactualExplainer({"mean_radius": (0, 1), "no_such_feature": (0, 1)}).check_model(model)


# ----------------------------------------------------------------------------- schema & runtime


def test_schema_methods_equal_the_runtimes() -> None:
    from include.configuration.schema import ALL_METHODS, METHOD_SETTINGS

    assert sorted(ALL_METHODS) == sorted(METHOD_MODULES) == sorted(PARAMETERS)
    assert sorted(METHOD_SETTINGS) == sorted(ALL_METHODS)
    background = {"backgroundDataStrategy", "backgroundDataSubsetSize"}
    for method in ALL_METHODS:
        assert set(PARAMETERS[method]) - background == METHOD_SETTINGS[method], method


def test_config_accepts_new_methods_and_refuses_foreign_settings() -> None:
    from include.configuration import ConfigError, parse_config_text

    base = """\
apiVersion: ai.apexlogic.com/v1alpha1
kind: ExplainerConfiguration
metadata: {{name: lime-test, namespace: ai-prod}}
spec:
  modelName: diagnosis-risk-tabular
  explainerType: {kind}
  explainerConfig:
    method: {method}
{extra}  storage: {{bucket: apexlogic-ai-explanations, path: "x/{{inference_id}}.json"}}
  monitoring: {{fidelityThreshold: 0.5}}
"""
    loaded = parse_config_text(
        base.format(kind="LIME", method="LIME", extra="    kernelWidth: 2.5\n"), "a.yaml"
    )
    assert loaded.config.spec.explainerConfig.kernelWidth == 2.5
    parse_config_text(base.format(kind="Counterfactual", method="Counterfactual", extra=""), "b.yaml")
    parse_config_text(base.format(kind="SHAP", method="ExactShapley", extra=""), "c.yaml")
    with pytest.raises(ConfigError, match="kernelWidth: does not apply to method Counterfactual"):
        parse_config_text(
            base.format(kind="Counterfactual", method="Counterfactual", extra="    kernelWidth: 1.0\n"),
            "d.yaml",
        )
    with pytest.raises(ConfigError, match="'LIME' is not a SHAP method"):
        parse_config_text(base.format(kind="SHAP", method="LIME", extra=""), "e.yaml")


def _request(tmp: Path, model: str, method: str, inference: pd.DataFrame, background: pd.DataFrame, **kw):
    inf = write_parquet(inference, tmp / "inputs" / "inference.parquet")
    bg = write_parquet(background, tmp / "inputs" / "background.parquet")
    fields = {"params": {}, "seed": 7, "out_dir": tmp / "out", **kw}
    return ExplainRequest(model, "1", method, inference_path=inf, background_path=bg, **fields)


@pytest.mark.parametrize(
    ("method", "metric"),
    [("LIME", "local_r2"), ("Counterfactual", "validity"), ("ExactShapley", "local_accuracy")],
)
def test_end_to_end(method: str, metric: str, sample_models: dict, tabular_frame, tmp_path: Path) -> None:
    inference, background = tabular_frame.iloc[[4, 1, 7, 2]], tabular_frame.iloc[300:340]
    params = {"backgroundDataSubsetSize": 20} if method == "ExactShapley" else {}
    summary = run_explain(_request(tmp_path, TAB, method, inference, background, params=params))
    out = tmp_path / "out"
    assert summary["method"] == method and summary["counts"]["explanations"] == 4
    assert summary["fidelity"]["metric"] == metric
    fidelity = json.loads((out / "fidelity.json").read_text())
    assert 0.0 <= fidelity["aggregate"] <= 1.0
    doc = read_explanation(out / "explanations" / "P100001.json")
    assert doc["method"] == method and doc["fidelity"]["metric"] == metric
    if method == "LIME":
        assert doc["parameters"]["numSamples"] == 5000
        assert doc["fidelity"]["score"] == pytest.approx(max(0.0, doc["method_details"]["r2"]))
        assert len(doc["method_details"]["coefficients"]) == 10
    elif method == "Counterfactual":
        cf = doc["method_details"]["counterfactual"]
        assert doc["method_details"]["found"] is True and fidelity["aggregate"] == 1.0
        assert cf["prediction"]["class"] != doc["prediction"]["class"]
        assert all(c in cf["row"] for c in doc["inputs"])
    else:
        assert doc["fidelity"]["score"] == pytest.approx(1.0, abs=1e-6)
        total = sum(doc["attributions"]["features"].values())
        assert total == pytest.approx(
            doc["prediction"]["explained_output"]["value"] - doc["baseline"]["value"]
        )

    # Same seed, fresh folder: bit-identical documents (but for timings).
    again = run_explain(_request(tmp_path / "again", TAB, method, inference, background, params=params))
    assert again["fidelity"] == summary["fidelity"]
    doc2 = read_explanation(tmp_path / "again" / "out" / "explanations" / "P100001.json")
    assert doc2["attributions"] == doc["attributions"] and doc2["method_details"] == doc["method_details"]


@pytest.mark.parametrize(
    ("model", "method", "params", "error", "message"),
    [
        (MM, "ExactShapley", {}, MethodNotApplicableError, "at most 16 players"),
        (MM, "LIME", {}, MethodNotApplicableError, "tabular models only"),
        (MM, "Counterfactual", {}, MethodNotApplicableError, "tabular models only"),
        (TAB, "LIME", {"kernelWidth": 0}, ExplainError, "kernelWidth"),
        (TAB, "Counterfactual", {"kernelWidth": 1.0}, ExplainError, "kernelWidth"),
    ],
)
def test_bad_input_fails_before_any_output(
    model: str,
    method: str,
    params: dict,
    error: type,
    message: str,
    sample_models: dict,
    tabular_frame,
    multimodal_frame,
    tmp_path: Path,
) -> None:
    frame = multimodal_frame if model == MM else tabular_frame
    request = _request(tmp_path, model, method, frame.iloc[:3], frame.iloc[100:130], params=params)
    with pytest.raises(error, match=message):
        run_explain(request)
    assert not (tmp_path / "out").exists()
