"""Run-cost estimates and budget fitting against hand-computed figures."""

from __future__ import annotations

import pytest

from include.finops.meter import ResourceRequest
from include.finops.plan import CEILING, FLOOR, PRIOR, estimate_run_cost, fit_to_budget, hourly_rate
from include.finops.pricing import load_catalogue

CATALOGUE = load_catalogue()
REQUEST = ResourceRequest(1.0, 2 * 2**30)


def run(explained: int, samples: int, cost: float, shards: int = 1, method: str = "KernelSHAP") -> dict:
    return {
        "explained": explained,
        "samples_or_steps": samples,
        "runtime_seconds": 10.0,
        "cost": cost,
        "shards": shards,
        "method": method,
    }


def test_history_with_fixed_and_per_unit_cost() -> None:
    # run A: 10 x 100 = 1,000 units for 0.11 ; run B: 10 x 300 = 3,000 units for 0.31
    # -> per unit U = (0.31 - 0.11) / 2,000 = 0.0001 ; fixed per shard F = 0.11 - 0.1 = 0.01
    history = [run(10, 100, 0.11), run(10, 300, 0.31)]
    estimate = estimate_run_cost(
        method="KernelSHAP",
        num_samples_or_steps=500,
        instances=20,
        shards=2,
        request=REQUEST,
        history=history,
        catalogue=CATALOGUE,
    )
    assert estimate.basis == "history (2 runs)"
    assert estimate.fixed_cost_per_shard == pytest.approx(0.01)
    assert estimate.cost_per_unit == pytest.approx(0.0001)
    # 2 shards x 0.01 + 20 x 500 x 0.0001 = 0.02 + 1.00 = 1.02 ; both runs fit exactly -> high = cost
    assert estimate.cost == pytest.approx(1.02)
    assert estimate.cost_high == pytest.approx(1.02)
    # budget 0.52: (0.52 - 0.02) / (0.0001 x 20) = 250 samples
    assert fit_to_budget(estimate, 0.52) == 250
    # budget for 99 samples only (0.02 + 0.198 = 0.218): under the KernelSHAP floor of 100 -> None
    assert fit_to_budget(estimate, 0.218) is None
    assert fit_to_budget(estimate, 0.218, floor=50) == 99


def test_single_run_scales_by_work() -> None:
    # one run: 8 instances x 500 samples = 4,000 units for 0.2 -> 0.00005 per unit, no fixed part
    estimate = estimate_run_cost(
        method="KernelSHAP",
        num_samples_or_steps=1000,
        instances=10,
        shards=1,
        request=REQUEST,
        history=[run(8, 500, 0.2)],
        catalogue=CATALOGUE,
    )
    # 10 x 1,000 x 0.00005 = 0.5
    assert estimate.cost == pytest.approx(0.5)
    assert estimate.fixed_cost_per_shard == 0.0


def test_under_predicted_runs_widen_the_margin() -> None:
    # two runs of the same work (1,000 units) that cost 0.1 and 0.3: fitted 0.2 each (U = 0.0002);
    # the worst actual/fitted ratio is 0.3 / 0.2 = 1.5
    history = [run(10, 100, 0.1), run(10, 100, 0.3), run(10, 100, 9.9, method="IntegratedGradients")]
    estimate = estimate_run_cost(
        method="KernelSHAP",
        num_samples_or_steps=200,
        instances=10,
        shards=1,
        request=REQUEST,
        history=history,
        catalogue=CATALOGUE,
    )
    # 10 x 200 x 0.0002 = 0.4 ; high 0.4 x 1.5 = 0.6 (the IG run is another method: ignored)
    assert estimate.cost == pytest.approx(0.4)
    assert estimate.cost_high == pytest.approx(0.6)
    # budget 0.6 -> 0.6 / 1.5 / (0.0002 x 10) = 200 samples
    assert fit_to_budget(estimate, 0.6) == 200


def test_prior_without_history() -> None:
    # on-demand rate of 1 CPU + 2 GiB: 0.031611 + 2 x 0.004237 = 0.040085 per hour
    assert hourly_rate(REQUEST, CATALOGUE) == pytest.approx(0.040085)
    estimate = estimate_run_cost(
        method="KernelSHAP",
        num_samples_or_steps=1000,
        instances=10,
        shards=1,
        request=REQUEST,
        history=[],
        catalogue=CATALOGUE,
    )
    # prior: 60 s fixed + 10 x 1,000 x 0.010 s = 160 s ; 160 / 3600 x 0.040085 = 0.00178155...
    assert estimate.basis == "prior"
    assert estimate.runtime_seconds == pytest.approx(160.0)
    assert estimate.cost == pytest.approx(160 / 3600 * 0.040085)
    # IG prior with a GPU: rate 0.031611 + 0.008474 + 2.5 = 2.540085 ; 4 shards x 60 s + 10 x 50 x 0.005 s
    # = 242.5 s -> 242.5 / 3600 x 2.540085
    ig = estimate_run_cost(
        method="IntegratedGradients",
        num_samples_or_steps=50,
        instances=10,
        shards=4,
        request=ResourceRequest(1.0, 2 * 2**30, 1.0),
        history=[],
        catalogue=CATALOGUE,
    )
    assert ig.cost == pytest.approx(242.5 / 3600 * 2.540085)


def test_budget_bounds() -> None:
    estimate = estimate_run_cost(
        method="IntegratedGradients",
        num_samples_or_steps=50,
        instances=1,
        shards=1,
        request=REQUEST,
        history=[run(1, 50, 0.0, method="IntegratedGradients")],
        catalogue=CATALOGUE,
    )
    # free history (cost 0): anything fits, capped at the schema's maximum
    assert fit_to_budget(estimate, 0.0) == CEILING["IntegratedGradients"]
    prior = estimate_run_cost(
        method="IntegratedGradients",
        num_samples_or_steps=50,
        instances=1000,
        shards=1,
        request=REQUEST,
        history=[],
        catalogue=CATALOGUE,
    )
    assert fit_to_budget(prior, 0.0) is None  # not even the fixed part fits
    n = fit_to_budget(prior, 0.01)
    assert n is not None and n >= FLOOR["IntegratedGradients"]
    assert prior.cost_for(n) <= 0.01 < prior.cost_for(n + 1)
    with pytest.raises(ValueError, match="unknown method"):
        estimate_run_cost(
            method="NoSuchMethod",
            num_samples_or_steps=1,
            instances=1,
            shards=1,
            request=REQUEST,
            history=[],
            catalogue=CATALOGUE,
        )


def test_every_explainer_method_has_a_prior_and_knobless_methods_cannot_shrink() -> None:
    from include.explainers.params import known_methods, work_parameter

    assert set(PRIOR) == set(known_methods())
    for method in known_methods():
        estimate = estimate_run_cost(
            method=method,
            num_samples_or_steps=1 if work_parameter(method) is None else 1000,
            instances=10,
            shards=1,
            request=REQUEST,
            history=[],
            catalogue=CATALOGUE,
        )
        if work_parameter(method) is None:
            assert fit_to_budget(estimate, estimate.cost_high * 0.9) is None  # nothing to lower: refused
        else:
            # a budget halfway between the floor's cost and the full run's
            fitted = fit_to_budget(estimate, (estimate.cost_for(FLOOR[method]) + estimate.cost) / 2)
            assert fitted is not None and FLOOR[method] <= fitted < 1000
