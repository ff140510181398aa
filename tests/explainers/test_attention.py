"""AttentionRollout against ground truth: attention weights recomputed by hand from the layers' weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from examples.models import ATTENTION_MODEL, TABULAR_MODEL, FeatureTokenTransformer
from include.explainers.attention import EXPLAINER, captured_attention, rollout
from include.explainers.base import ExplainedModel, Modality
from include.explainers.errors import MethodNotApplicableError
from include.explainers.fidelity import evaluate_fidelity
from include.explainers.runtime import ExplainRequest, read_explanation, run_explain

from .conftest import write_parquet

N_FEATURES = 5


class TwoLayerAttention(nn.Module):
    """Feature tokens + [CLS] through two bare attention layers (no MLP, no norm)."""

    def __init__(self, d: int = 6, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Parameter(torch.randn(N_FEATURES, d))
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.att1 = nn.MultiheadAttention(d, heads, batch_first=True)
        self.att2 = nn.MultiheadAttention(d, heads, batch_first=True)
        self.head = nn.Linear(d, 1)

    def attention_tokens(self) -> list[list[int]]:
        return [[]] + [[j] for j in range(N_FEATURES)]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x.unsqueeze(-1) * self.embed], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x)
        h = h + self.att1(h, h, h, need_weights=False)[0]
        h = h + self.att2(h, h, h, need_weights=False)[0]
        return self.head(h[:, 0])


def _explained(module: nn.Module, n_features: int = N_FEATURES) -> ExplainedModel:
    columns = tuple(f"f{j}" for j in range(n_features))
    return ExplainedModel(
        module, [Modality("tabular", "tabular", columns, (n_features,))], "regression", ["y"]
    )


def _weights_by_hand(layer: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_head)) per head, from the layer's projection weights: (B, H, T, T)."""
    d = layer.embed_dim
    heads = layer.num_heads
    w, b = layer.in_proj_weight, layer.in_proj_bias
    q = h @ w[:d].T + b[:d]
    k = h @ w[d : 2 * d].T + b[d : 2 * d]
    batch, tokens, _ = h.shape
    q = q.reshape(batch, tokens, heads, d // heads).transpose(1, 2)
    k = k.reshape(batch, tokens, heads, d // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)


def test_rollout_equals_the_hand_computed_product() -> None:
    module = TwoLayerAttention().eval()
    x = torch.randn(7, N_FEATURES, dtype=torch.float32)
    with torch.no_grad():
        h0 = module.tokens(x)
        a1 = _weights_by_hand(module.att1, h0)
        h1 = h0 + module.att1(h0, h0, h0, need_weights=False)[0]
        a2 = _weights_by_hand(module.att2, h1)
    expected = []
    for i in range(x.shape[0]):
        mixed = []
        for a in (a1, a2):
            m = a[i].double().mean(0).numpy() + np.eye(N_FEATURES + 1)
            mixed.append(m / m.sum(axis=1, keepdims=True))
        expected.append((mixed[1] @ mixed[0])[0])
    expected = np.array(expected)

    attributions = EXPLAINER.explain(_explained(module), (x,), (x,), {"headFusion": "mean"}, seed=0)
    assert attributions.details["attention_layers"] == 2
    np.testing.assert_allclose(attributions.players, expected[:, 1:], atol=1e-6)
    np.testing.assert_allclose(attributions.per_instance["special_token_share"], expected[:, 0], atol=1e-6)
    np.testing.assert_allclose(attributions.players.sum(1) + expected[:, 0], 1.0, atol=1e-9)


def test_uniform_attention_gives_the_closed_form() -> None:
    """Zero query/key projections -> uniform attention: R[0, j] = 1/(2T) (+1/2 on the readout)."""
    module = TwoLayerAttention().eval()
    with torch.no_grad():
        for layer in (module.att1, module.att2):
            layer.in_proj_weight[: 2 * layer.embed_dim].zero_()
            layer.in_proj_bias[: 2 * layer.embed_dim].zero_()
    tokens = N_FEATURES + 1
    one = (np.full((tokens, tokens), 1 / tokens) + np.eye(tokens)) / 2
    closed = (one @ one)[0]
    attributions = EXPLAINER.explain(_explained(module), (torch.randn(3, N_FEATURES),), (), {}, seed=0)
    np.testing.assert_allclose(attributions.players, np.tile(closed[1:], (3, 1)), atol=1e-12)


def test_head_fusions_differ_and_are_recorded() -> None:
    module = TwoLayerAttention().eval()
    x = torch.randn(4, N_FEATURES)
    results = {
        fusion: EXPLAINER.explain(_explained(module), (x,), (x,), {"headFusion": fusion}, seed=0)
        for fusion in ("mean", "max", "min")
    }
    assert results["max"].resolved_params == {"headFusion": "max"}
    assert not np.allclose(results["mean"].players, results["max"].players)


def test_the_transformer_fast_path_is_bypassed_and_restored(sample_models: dict) -> None:
    from include.explainers.model_store import load_model

    loaded = load_model(ATTENTION_MODEL, "1")
    module = loaded.module
    assert isinstance(module, FeatureTokenTransformer)
    before = torch.backends.mha.get_fastpath_enabled()
    with torch.inference_mode(), captured_attention(module) as captured:
        module(torch.zeros(2, 10))
    assert len(captured) == 2 and captured[0].shape == (2, 2, 11, 11)  # (B, heads, tokens, tokens)
    assert torch.backends.mha.get_fastpath_enabled() == before
    np.testing.assert_allclose(rollout(captured, "mean").sum(-1).numpy(), 1.0, atol=1e-9)


def test_models_without_attention_or_token_map_are_refused() -> None:
    mlp = nn.Sequential(nn.Linear(N_FEATURES, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(MethodNotApplicableError, match="has none"):
        EXPLAINER.check_model(_explained(mlp))

    class Unmapped(TwoLayerAttention):
        attention_tokens = None  # type: ignore[assignment]

    with pytest.raises(MethodNotApplicableError, match="attention_tokens"):
        EXPLAINER.check_model(_explained(Unmapped()))

    class Partial(TwoLayerAttention):
        def attention_tokens(self) -> list[list[int]]:
            return [[], [0], [1]]

    with pytest.raises(MethodNotApplicableError, match="every one of the 5"):
        EXPLAINER.check_model(_explained(Partial()))


def test_fidelity_is_rank_agreement_with_gradient_x_input() -> None:
    module = TwoLayerAttention().eval()
    x = torch.randn(6, N_FEATURES)
    attributions = EXPLAINER.explain(_explained(module), (x,), (x,), {}, seed=0)
    fidelity = evaluate_fidelity(attributions)
    assert fidelity["metric"] == "gradient_agreement"
    per = fidelity["per_instance"]["score"]
    assert per.shape == (6,) and np.all((per >= 0) & (per <= 1))
    # agreement is 1 exactly when the reference ranks like the relevance
    attributions.per_instance["gradient_x_input_per_token"] = attributions.players * 3.0
    assert evaluate_fidelity(attributions)["aggregate"] == pytest.approx(1.0, abs=1e-12)


def test_end_to_end_on_the_sample_transformer(
    sample_models: dict, tabular_frame: pd.DataFrame, tmp_path: Path
) -> None:
    inference = write_parquet(tabular_frame.head(12), tmp_path / "inference.parquet")
    background = write_parquet(tabular_frame.tail(50), tmp_path / "background.parquet")
    runs = []
    for name in ("a", "b"):
        summary = run_explain(
            ExplainRequest(
                ATTENTION_MODEL, "1", "AttentionRollout", {}, 0, inference, background, tmp_path / name
            )
        )
        assert summary["counts"]["explanations"] == 12
        assert summary["fidelity"]["metric"] == "gradient_agreement"
        runs.append(sorted((tmp_path / name / "explanations").rglob("*.json")))
    first = read_explanation(runs[0][0])
    values = list(first["attributions"]["features"].values())
    assert len(values) == 10 and all(v >= 0 for v in values) and 0 < sum(values) < 1
    assert [read_explanation(p)["attributions"] for p in runs[0]] == [
        read_explanation(p)["attributions"] for p in runs[1]
    ]


def test_the_sample_mlp_is_refused_before_any_output(
    sample_models: dict, tabular_frame: pd.DataFrame, tmp_path: Path
) -> None:
    from include.explainers.errors import ExplainError

    inference = write_parquet(tabular_frame.head(4), tmp_path / "inference.parquet")
    background = write_parquet(tabular_frame.tail(20), tmp_path / "background.parquet")
    out = tmp_path / "out"
    with pytest.raises(ExplainError, match=r"no nn\.MultiheadAttention"):
        run_explain(ExplainRequest(TABULAR_MODEL, "1", "AttentionRollout", {}, 0, inference, background, out))
    assert not out.exists()
