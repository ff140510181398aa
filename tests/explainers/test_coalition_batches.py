"""The batched (GPU) coalition sampler and solver against their definitions and the CPU route.

The CUDA kernels themselves run only on a GPU (bench/bench_gpu.py there); here the same torch
code runs on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from include.explainers import kernel_shap
from include.explainers.base import ExplainedModel, Modality
from include.explainers.coalition_batches import draw_batch, solve_batch, splitmix64
from include.explainers.coalitions import coalition_design, sample_coalitions, solve_constrained
from include.explainers.kernel_shap import EXPLAINER
from include.explainers.params import normalise_params

MASK64 = (1 << 64) - 1


def _splitmix_reference(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def test_splitmix64_wraps_like_unsigned_64_bit_arithmetic() -> None:
    states = [0, 1, 12345, (1 << 63) + 5, MASK64, 0x9E3779B97F4A7C15]
    signed = torch.tensor([s - (1 << 64) if s >= 1 << 63 else s for s in states], dtype=torch.int64)
    got = [int(v) & MASK64 for v in splitmix64(signed)]
    assert got == [_splitmix_reference(s) for s in states]


def test_batched_draws_follow_the_design_per_instance() -> None:
    seeds = torch.arange(1000, 1200, dtype=torch.int64)
    masks, weights, exact = draw_batch(20, 500, seeds)
    reference, reference_weights, _ = sample_coalitions(20, 500, np.random.default_rng(0))
    assert not exact and masks.shape == (200, *reference.shape)
    np.testing.assert_allclose(np.sort(weights.numpy()), np.sort(reference_weights), rtol=1e-12)
    sizes = np.bincount(reference.sum(1), minlength=21)
    for row in masks.numpy():
        assert len({m.tobytes() for m in row}) == row.shape[0]  # distinct
        assert np.array_equal(row[0::2], ~row[1::2])  # complementary pairs
        assert np.array_equal(np.bincount(row.sum(1), minlength=21), sizes)  # stratified like the design
        assert row.any(1).all() and not row.all(1).any()  # never empty, never full
    assert not torch.equal(masks[0], masks[1])


def test_an_instance_draws_the_same_coalitions_in_any_batch() -> None:
    """Draws depend on the instance's seed only: shards and batch sizes do not change them."""
    seeds = torch.tensor([7, -3, 2**62, 11, 5, 123456789], dtype=torch.int64)
    whole, _, _ = draw_batch(12, 300, seeds)
    for lo, hi in ((0, 1), (1, 4), (4, 6)):
        part, _, _ = draw_batch(12, 300, seeds[lo:hi])
        assert torch.equal(part, whole[lo:hi])
    again, _, _ = draw_batch(12, 300, seeds.flip(0))
    assert torch.equal(again, whole.flip(0))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_each_class_is_sampled_uniformly_without_replacement(size: int) -> None:
    """6 players, numSamples 20: size 1 draws 5 of 6 pairs, size 2 3 of 15, the middle class 2
    of its 10 pairs (canonical member: the one holding player 0). Every pair of a class must
    be equally likely: 4000 instances, chi-square against uniform."""
    m = 6
    klass = next(c for c in coalition_design(m, 20).sampled if c[0] == size)
    _, pairs, drawn, _ = klass
    masks, _, _ = draw_batch(m, 20, torch.arange(4000, dtype=torch.int64))
    canonical = masks[:, 0::2].numpy()
    picked = canonical[canonical.sum(2) == size].reshape(4000, drawn, m)
    if 2 * size == m:
        assert picked[..., 0].all()
    codes = (picked.astype(np.int64) << np.arange(m)).sum(2)
    assert all(len(set(row)) == drawn for row in codes)  # without replacement
    _, counts = np.unique(codes, return_counts=True)
    assert counts.size == pairs
    expected = 4000 * drawn / pairs
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < pairs - 1 + 6 * np.sqrt(2 * (pairs - 1)), (counts, chi2)  # ~6 sigma


def test_batched_solve_matches_the_cpu_solver() -> None:
    masks, weights, _ = draw_batch(20, 500, torch.arange(8, dtype=torch.int64))
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.normal(size=masks.shape[:2]))
    delta = torch.from_numpy(rng.normal(size=8))
    phi = solve_batch(masks, weights, values, delta)
    for row in range(8):
        expected = solve_constrained(
            masks[row].numpy(), weights.numpy(), values[row].numpy(), float(delta[row])
        )
        np.testing.assert_allclose(phi[row].numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(phi.sum(1).numpy(), delta.numpy(), atol=1e-12)


def test_rank_deficient_designs_fall_back_to_the_minimum_norm_solution() -> None:
    masks, weights, _ = draw_batch(40, 30, torch.arange(3, dtype=torch.int64))  # 15 pairs, 39 unknowns
    values = torch.from_numpy(np.random.default_rng(1).normal(size=masks.shape[:2]))
    delta = torch.tensor([1.5, -0.5, 0.0], dtype=torch.float64)
    phi = solve_batch(masks, weights, values, delta)
    for row in range(3):
        expected = solve_constrained(
            masks[row].numpy(), weights.numpy(), values[row].numpy(), float(delta[row])
        )
        np.testing.assert_allclose(phi[row].numpy(), expected, atol=1e-9)


def test_batched_route_groups_instances_by_their_players(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instances with different dummy players (so different games) in one job, and shards of it."""
    monkeypatch.setattr(kernel_shap, "batched_route", lambda model, active: True)
    torch.manual_seed(4)
    d = 9
    net = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    model = ExplainedModel(
        net, [Modality("tabular", "tabular", tuple(f"f{i}" for i in range(d)), (d,))], "regression", []
    )
    bg = torch.randn(12, d, dtype=torch.float64)
    bg[:, 2] = 1.0
    x = torch.randn(6, d, dtype=torch.float64)
    x[:3, 2] = 1.0  # a dummy for the first three instances only
    params = normalise_params(
        "KernelSHAP", {"backgroundDataStrategy": "all", "numSamples": 200}, has_image=False
    )
    seeds = [101, 102, 103, 104, 105, 106]
    whole = EXPLAINER.explain(model, (x,), (bg,), params, seed=0, instance_seeds=seeds)
    assert (whole.players[:3, 2] == 0.0).all() and (whole.players[3:, 2] != 0.0).all()
    assert list(whole.per_instance["active_players"]) == [8, 8, 8, 9, 9, 9]
    with torch.no_grad():
        delta = net(x).reshape(-1).numpy() - net(bg).reshape(-1).numpy().mean()
    np.testing.assert_allclose(whole.players.sum(1), delta, atol=1e-12)
    halves = [
        EXPLAINER.explain(model, (x[lo:hi],), (bg,), params, seed=0, instance_seeds=seeds[lo:hi], n_global=6)
        for lo, hi in ((0, 4), (4, 6))
    ]
    np.testing.assert_allclose(np.concatenate([h.players for h in halves]), whole.players, atol=1e-12)
