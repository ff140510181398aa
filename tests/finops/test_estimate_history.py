"""The pre-flight estimator on recorded history: within ±25 % of the actual cost after one earlier run.

bench/bench_estimate.py ran every sample config through the pipeline functions on the local backend
(run A, then run B with the same parameters) and recorded both runs' work and measured cost in
bench/results/estimate.json. Here run A is the history and the estimator must predict run B.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from include.finops.meter import ResourceRequest
from include.finops.plan import estimate_run_cost
from include.finops.pricing import load_catalogue
from include.paths import REPO_ROOT

RECORDED = REPO_ROOT / "bench" / "results" / "estimate.json"
TARGET = 0.25


def _recorded() -> list[dict[str, Any]]:
    return json.loads(RECORDED.read_text(encoding="utf-8"))["configs"]


def _history_row(run: dict[str, Any], method: str) -> dict[str, Any]:
    return {
        "method": method,
        "explained": run["explained"],
        "samples_or_steps": run["samples_or_steps"],
        "shards": 1,
        "cost": run["actual"],
        "runtime_seconds": run["wall_seconds"],
    }


@pytest.mark.parametrize("config", _recorded(), ids=lambda c: c["config"])
def test_estimate_after_one_earlier_run_is_within_25_percent(config: dict[str, Any]) -> None:
    first, second = config["runs"][0], config["runs"][1]
    assert first["basis"] == "prior" and second["basis"] == "history (1 run)"
    estimate = estimate_run_cost(
        method=config["method"],
        num_samples_or_steps=second["samples_or_steps"],
        instances=second["explained"],
        shards=1,
        # the request only matters for the prior, which history replaces
        request=ResourceRequest(0.2, 512 * 2**20),
        history=[_history_row(first, config["method"])],
        catalogue=load_catalogue(),
    )
    assert estimate.basis == "history (1 run)"
    # the same estimator produced the plan's figure in the recorded run
    assert estimate.cost == pytest.approx(second["estimate"], rel=1e-6)
    assert abs(second["actual"] / estimate.cost - 1) <= TARGET


def test_the_prior_alone_is_not_what_meets_the_target() -> None:
    """Without history the conservative prior is far above these small runs: the ±25 % comes from
    the history (this is what makes the test above able to fail)."""
    for config in _recorded():
        first = config["runs"][0]
        assert first["actual"] / first["estimate"] < 1 - TARGET
