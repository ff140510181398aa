"""KernelSHAP against ground truth: closed forms (linear models) and brute-force Shapley values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from include.explainers import kernel_shap
from include.explainers.base import ExplainedModel, Modality
from include.explainers.coalitions import sample_coalitions
from include.explainers.kernel_shap import (
    EXPLAINER,
    build_players,
    summarise_background,
)
from include.explainers.params import normalise_params


def _tabular(d: int) -> list[Modality]:
    return [Modality("tabular", "tabular", tuple(f"f{i}" for i in range(d)), (d,))]


def exact_shapley(value: callable, x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Brute-force interventional Shapley values: every coalition, the Shapley formula."""
    d = x.shape[0]
    codes = np.arange(1 << d)
    masks = ((codes[:, None] >> np.arange(d)) & 1).astype(bool)
    rows = np.where(masks[:, None, :], x, background[None]).reshape(-1, d)
    v = value(rows).reshape(1 << d, -1).mean(axis=1)  # uniform background weights
    sizes = masks.sum(axis=1)
    weight = np.array([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)])
    phi = np.zeros(d)
    for j in range(d):
        without = codes[~masks[:, j]]
        phi[j] = np.sum(weight[sizes[without]] * (v[without | (1 << j)] - v[without]))
    return phi


def _value_fn(net: nn.Module):
    def value(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(rows)).reshape(-1).double().numpy()

    return value


@pytest.fixture(params=["per_instance", "batched"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both routes: per instance in numpy (CPUs) and batched in torch (GPUs; forced here on the
    CPU, the same code with the device's kernels swapped for the CPU's)."""
    if request.param == "batched":
        monkeypatch.setattr(kernel_shap, "batched_route", lambda model, active: True)
    return request.param


def _params(**overrides: object) -> dict:
    return normalise_params("KernelSHAP", {"backgroundDataStrategy": "all", **overrides}, has_image=False)


@pytest.mark.parametrize("num_samples", [60, 500, 2000])  # sampled, sampled, every coalition
def test_linear_model_equals_closed_form(num_samples: int, route: str) -> None:
    torch.manual_seed(0)
    d = 10
    net = nn.Linear(d, 1).double()
    model = ExplainedModel(net, _tabular(d), "regression", [])
    x = torch.randn(6, d, dtype=torch.float64) * 2
    bg = torch.randn(25, d, dtype=torch.float64)
    out = EXPLAINER.explain(model, (x,), (bg,), _params(numSamples=num_samples), seed=3)
    w = net.weight.detach().numpy()[0]
    truth = w * (x.numpy() - bg.numpy().mean(axis=0))
    assert np.abs(out.players - truth).max() < 1e-6
    assert out.per_instance["exact"].all() == (num_samples >= 2**d - 2)


def test_full_enumeration_is_exact_on_a_nonlinear_model(route: str) -> None:
    torch.manual_seed(1)
    d = 6  # 62 coalitions <= 500: every coalition is enumerated
    net = nn.Sequential(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, 1)).double()
    model = ExplainedModel(net, _tabular(d), "regression", [])
    x = torch.randn(4, d, dtype=torch.float64) * 1.5
    bg = torch.randn(15, d, dtype=torch.float64)
    out = EXPLAINER.explain(model, (x,), (bg,), _params(), seed=0)
    assert out.per_instance["exact"].all()
    for i in range(4):
        truth = exact_shapley(_value_fn(net), x[i].numpy(), bg.numpy())
        assert np.abs(out.players[i] - truth).max() < 1e-10


def test_sampled_estimate_is_close_to_exact_shapley_values(route: str) -> None:
    """10 features, numSamples 500 (of 1022 coalitions): within 0.01 normalised L1."""
    torch.manual_seed(0)
    d = 10
    net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    model = ExplainedModel(net, _tabular(d), "regression", [])
    x = torch.randn(6, d, dtype=torch.float64)
    bg = torch.randn(20, d, dtype=torch.float64)
    out = EXPLAINER.explain(model, (x,), (bg,), _params(numSamples=500), seed=11)
    assert not out.per_instance["exact"].any()
    truth = np.stack([exact_shapley(_value_fn(net), x[i].numpy(), bg.numpy()) for i in range(6)])
    error = np.abs(out.players - truth).sum() / np.abs(truth).sum()
    assert error <= 0.01, f"normalised L1 error {error:.4f}"


def test_trained_tabular_model_exact_with_enough_samples(sample_models: dict, tabular_frame) -> None:
    """The trained sample model (sigmoid output): numSamples >= 1022 gives its exact values."""
    from examples.datasets import TABULAR_FEATURES
    from include.explainers.model_store import load_model

    model = load_model("diagnosis-risk-tabular", "1").explained()
    data = torch.from_numpy(tabular_frame[TABULAR_FEATURES].to_numpy(np.float32))
    x, bg = data[:3], data[300:316]
    out = EXPLAINER.explain(model, (x,), (bg,), _params(numSamples=1022), seed=0)

    def value(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.scores(torch.from_numpy(rows).float()).reshape(-1).double().numpy()

    for i in range(3):
        truth = exact_shapley(value, x[i].numpy(), bg.numpy())
        assert np.abs(out.players[i] - truth).max() < 1e-5  # float32 model outputs


def test_efficiency_is_exact_and_dummies_get_zero(route: str) -> None:
    torch.manual_seed(2)
    d = 12
    net = nn.Sequential(nn.Linear(d, 8), nn.SiLU(), nn.Linear(8, 1)).double()
    model = ExplainedModel(net, _tabular(d), "regression", [])
    x = torch.randn(3, d, dtype=torch.float64)
    bg = torch.randn(10, d, dtype=torch.float64)
    bg[:, 4] = 0.5
    x[:, 4] = 0.5  # feature 4 equals every background row: a dummy player
    out = EXPLAINER.explain(model, (x,), (bg,), _params(numSamples=300), seed=5)
    with torch.no_grad():
        fx = net(x).reshape(-1).numpy()
        expected = net(bg).reshape(-1).numpy().mean()
    np.testing.assert_allclose(out.players.sum(axis=1), fx - expected, rtol=0, atol=1e-12)
    assert (out.players[:, 4] == 0.0).all()
    assert (out.per_instance["active_players"] == d - 1).all()


def test_same_seed_is_bit_identical_and_seeds_matter(route: str) -> None:
    torch.manual_seed(4)
    d = 10
    net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 1))
    model = ExplainedModel(net, _tabular(d), "regression", [])
    x, bg = torch.randn(4, d), torch.randn(30, d)
    params = normalise_params("KernelSHAP", {"numSamples": 200, "backgroundDataSubsetSize": 10})
    first = EXPLAINER.explain(model, (x,), (bg,), params, seed=7)
    second = EXPLAINER.explain(model, (x,), (bg,), params, seed=7)
    other = EXPLAINER.explain(model, (x,), (bg,), params, seed=8)
    assert np.array_equal(first.players, second.players)
    assert not np.array_equal(first.players, other.players)


def test_coalition_sampler_pairs_and_weights() -> None:
    rng = np.random.default_rng(0)
    masks, weights, exact = sample_coalitions(10, 500, rng)
    assert not exact
    assert masks.shape == (500, 10)
    assert len({m.tobytes() for m in masks}) == 500  # drawn without replacement
    assert np.isclose(weights.sum(), 1.0) and (weights > 0).all()
    assert np.array_equal(masks[0::2], ~masks[1::2])  # complementary (antithetic) pairs
    sizes = masks.sum(axis=1)
    assert (sizes == 1).sum() == 10 and (sizes == 9).sum() == 10  # outer sizes enumerated
    assert ((sizes > 0) & (sizes < 10)).all()

    masks, weights, exact = sample_coalitions(5, 500, rng)
    assert exact and masks.shape == (30, 5)

    masks, _, _ = sample_coalitions(20, 500, rng)
    assert masks.shape[0] == 500 and len({m.tobytes() for m in masks}) == 500


def test_players_of_the_multimodal_layout() -> None:
    modalities = [
        Modality("image", "image", tuple(f"px{i}" for i in range(64)), (1, 8, 8)),
        Modality("tabular", "tabular", ("a", "b", "c", "d"), (4,)),
    ]
    names, feature_player = build_players(modalities, 2)
    assert len(names) == 20 and names[0] == "image[r0:2,c0:2]" and names[-1] == "d"
    grid = feature_player[:64].reshape(8, 8)
    assert grid[0, 0] == grid[1, 1] == 0 and grid[0, 2] == 1 and grid[7, 7] == 15
    names3, fp3 = build_players(modalities, 3)  # 8 = 3 + 3 + 2: edge tiles cut short
    assert len(names3) == 9 + 4 and names3[2] == "image[r0:3,c6:8]"
    assert np.bincount(fp3[:64]).tolist() == [9, 9, 6, 9, 9, 6, 6, 6, 4]


def test_background_strategies() -> None:
    torch.manual_seed(0)
    bg = torch.randn(50, 4)
    rows, weights, info = summarise_background(bg, "random_subset", 10, seed=1)
    assert rows.shape == (10, 4) and np.allclose(weights, 0.1) and info["rows_used"] == 10
    again, _, _ = summarise_background(bg, "random_subset", 10, seed=1)
    assert torch.equal(rows, again)
    rows, weights, _ = summarise_background(bg, "kmeans", 5, seed=1)
    assert rows.shape == (5, 4) and np.isclose(weights.sum(), 1.0)
    # Cluster-size weights preserve the background mean exactly.
    np.testing.assert_allclose(weights @ rows.double().numpy(), bg.double().mean(0).numpy(), atol=1e-5)
    rows, weights, _ = summarise_background(bg, "all", 10, seed=1)
    assert rows.shape == (50, 4)


# ----------------------------------------------------------------------------- fast paths


def _explain_parts(model, x, bg, params, seeds, parts, n_global):
    return np.concatenate(
        [
            EXPLAINER.explain(model, (x[lo:hi],), (bg,), params, 0, seeds[lo:hi], n_global=n_global).players
            for lo, hi in parts
        ]
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_any_partition_of_the_rows_gives_the_same_bits(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Coalitions of several instances share a pass; where a row falls must not change its bits
    (nor must the number of workers: every pass computes on one thread)."""
    from include.explainers import kernel_shap

    monkeypatch.setattr(kernel_shap, "PASS_BYTES", 1 << 18)  # ~1024-row passes: many of them
    torch.manual_seed(6)
    d = 12
    net = nn.Sequential(nn.Linear(d, 16), nn.SiLU(), nn.Linear(16, 1))
    model = ExplainedModel(net, _tabular(d), "binary", ["n", "p"])
    x, bg = torch.randn(9, d), torch.randn(37, d)
    params = _params(numSamples=150)
    seeds = [1000 + i for i in range(9)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = EXPLAINER.explain(model, (x,), (bg,), params, 0, seeds, n_global=9)
        parts = _explain_parts(model, x, bg, params, seeds, [(0, 4), (4, 5), (5, 9)], 9)
    finally:
        torch.set_num_threads(before)
    assert whole.details["forward_passes"] > 1  # the pairs really spread over several passes
    assert np.array_equal(whole.players, parts)


def test_thread_count_does_not_change_the_bits() -> None:
    torch.manual_seed(7)
    d = 10
    net = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 1))
    model = ExplainedModel(net, _tabular(d), "regression", [])
    x, bg = torch.randn(5, d), torch.randn(20, d)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(EXPLAINER.explain(model, (x,), (bg,), _params(numSamples=200), seed=1).players)
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(results[0], results[1])


def test_background_larger_than_a_pass_is_cut_into_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny passes (a forced 4 KiB working set) cut 300 background rows into segments; the
    values must equal the one-segment run up to float64 summation order."""
    from include.explainers import kernel_shap

    torch.manual_seed(8)
    d = 6
    net = nn.Sequential(nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, 1)).double()
    model = ExplainedModel(net, _tabular(d), "regression", [])
    x, bg = torch.randn(3, d, dtype=torch.float64), torch.randn(300, d, dtype=torch.float64)
    full = EXPLAINER.explain(model, (x,), (bg,), _params(), seed=0)
    monkeypatch.setattr(kernel_shap, "PASS_BYTES", 4096)
    cut = EXPLAINER.explain(model, (x,), (bg,), _params(), seed=0)
    assert cut.details["chunk_rows"] < 300 < full.details["chunk_rows"]
    np.testing.assert_allclose(cut.players, full.players, rtol=0, atol=1e-12)
    for i in range(3):  # and both are the exact values (6 players: every coalition)
        truth = exact_shapley(_value_fn(net), x[i].numpy(), bg.numpy())
        assert np.abs(cut.players[i] - truth).max() < 1e-10


def test_non_finite_background_values_fall_back_to_exact_selection() -> None:
    """lerp would turn x's value into NaN where the background is infinite; the explainer then
    mixes rows with torch.where, which keeps x's value exactly."""

    class Saturating(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0] + 2 * x[:, 1] + torch.tanh(x[:, 2])  # tanh(inf) = 1, tanh(nan) = nan

    model = ExplainedModel(Saturating(), _tabular(3), "regression", [])
    x = torch.tensor([[1.0, 1.0, 0.5]], dtype=torch.float64)
    bg = torch.zeros(5, 3, dtype=torch.float64)
    bg[:, 2] = float("inf")
    out = EXPLAINER.explain(model, (x,), (bg,), _params(), seed=0)
    np.testing.assert_allclose(out.players[0], [1.0, 2.0, np.tanh(0.5) - 1.0], atol=1e-12)


def test_normal_equations_match_least_squares() -> None:
    from include.explainers.coalitions import solve_constrained

    rng = np.random.default_rng(3)
    for m, budget in ((10, 500), (20, 500), (12, 60), (64, 300)):
        masks, weights, _ = sample_coalitions(m, budget, rng)
        values = rng.normal(size=masks.shape[0])
        phi = solve_constrained(masks, weights, values, 0.7)
        # Reference: SVD least squares on the same eliminated system.
        z = masks.astype(float)
        design, target = z[:, :-1] - z[:, -1:], values - z[:, -1] * 0.7
        root = np.sqrt(weights)
        rest, *_ = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)
        np.testing.assert_allclose(phi, np.append(rest, 0.7 - rest.sum()), rtol=0, atol=1e-9)
        assert abs(phi.sum() - 0.7) < 1e-12


def test_fewer_coalition_pairs_than_players_gets_the_minimum_norm_solution() -> None:
    from include.explainers.coalitions import solve_constrained

    rng = np.random.default_rng(4)
    masks, weights, _ = sample_coalitions(40, 30, rng)  # 15 pairs, 39 unknowns: rank deficient
    values = rng.normal(size=masks.shape[0])
    phi = solve_constrained(masks, weights, values, 1.5)
    assert np.isfinite(phi).all() and abs(phi.sum() - 1.5) < 1e-12
    z = masks.astype(float)
    design, target = z[:, :-1] - z[:, -1:], values - z[:, -1] * 1.5
    root = np.sqrt(weights)
    rest, *_ = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)
    np.testing.assert_allclose(phi[:-1], rest, atol=1e-9)


def test_large_classes_are_drawn_uniformly_without_repeats() -> None:
    """Classes too large to list (C(30, 15) pairs) use rejection draws: distinct, canonical in
    the middle class, and every player equally likely."""
    from include.explainers.coalitions import _draw_rejecting

    rng = np.random.default_rng(5)
    blocks = _draw_rejecting(30, [(15, 400), (9, 300)], rng)
    middle, nine = blocks
    assert middle.shape == (400, 30) and nine.shape == (300, 30)
    assert (middle.sum(1) == 15).all() and middle[:, 0].all()  # the member holding player 0
    assert (nine.sum(1) == 9).all()
    assert len({r.tobytes() for r in middle}) == 400 and len({r.tobytes() for r in nine}) == 300
    frequency = nine.mean(0)  # each player is in a size-9 coalition with probability 9/30
    assert np.abs(frequency - 0.3).max() < 0.1


def test_sampled_classes_are_stratified_like_the_design() -> None:
    """Every instance gets the same enumerated part and the same number of draws per size."""
    a, wa, _ = sample_coalitions(20, 500, np.random.default_rng(1))
    b, wb, _ = sample_coalitions(20, 500, np.random.default_rng(2))
    assert np.array_equal(np.bincount(a.sum(1), minlength=21), np.bincount(b.sum(1), minlength=21))
    assert np.array_equal(np.sort(wa), np.sort(wb))
    assert not np.array_equal(a, b)


def test_sampling_on_worker_processes_draws_the_same_coalitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each instance's draws depend only on its seed: a pool of processes returns the same arrays."""
    from include.explainers.coalitions import sample_many, sampling_workers

    counts = [20, 19, 20, 7, 0, 1, 20, 12] * 3
    seeds = list(range(1000, 1000 + len(counts)))
    alone = sample_many(counts, 500, seeds, workers=1)
    pooled = sample_many(counts, 500, seeds, workers=2)
    assert len(pooled) == len(alone)
    for (m1, w1, e1), (m2, w2, e2) in zip(alone, pooled, strict=True):
        assert np.array_equal(m1, m2) and np.array_equal(w1, w2) and e1 == e2
    monkeypatch.delenv("XAC_SAMPLING_WORKERS", raising=False)
    assert sampling_workers(100_000) == 1  # opt-in: no pool unless asked for
    monkeypatch.setenv("XAC_SAMPLING_WORKERS", "auto")
    assert sampling_workers(10) == 1  # small jobs never start a pool
    monkeypatch.setattr("include.explainers.coalitions.usable_cpus", lambda: 8)
    assert sampling_workers(100_000) == 8 and sampling_workers(600) == 4
    monkeypatch.setattr("include.explainers.coalitions.usable_cpus", lambda: 2)
    assert sampling_workers(100_000) == 1  # below 4 CPUs a pool costs more than it saves
    monkeypatch.setenv("XAC_SAMPLING_WORKERS", "3")
    assert sampling_workers(10) == 3


def test_kernel_shap_with_a_sampling_pool_is_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 8), nn.SiLU(), nn.Linear(8, 1)).double()
    model = ExplainedModel(net, _tabular(6), "regression", [])
    x, bg = torch.randn(5, 6, dtype=torch.float64), torch.randn(30, 6, dtype=torch.float64)
    params = _params(numSamples=40)
    single = EXPLAINER.explain(model, (x,), (bg,), params, seed=4)
    monkeypatch.setenv("XAC_SAMPLING_WORKERS", "2")
    pooled = EXPLAINER.explain(model, (x,), (bg,), params, seed=4)
    assert pooled.details["sampling_workers"] == 2
    assert np.array_equal(single.players, pooled.players)
