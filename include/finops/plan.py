"""What will an explainer run cost, and how many samples/steps does a budget allow?

The cost of a run is modelled as ``F x shards + U x work``, where work = instances x numSamples
(KernelSHAP: coalitions evaluated per instance) or instances x steps (Integrated Gradients:
gradient evaluations per instance), F is the fixed cost of one shard (pod start, imports, model
and data loading) and U the cost of one unit of work.

* With history (earlier runs of the same model and method): F and U are fitted to the runs'
  costs by non-negative least squares; with one run, or runs that all did the same work, the
  cost is scaled by work alone (F = 0, U = cost / work). The history's costs already include
  the requests those runs had; a changed request is not rescaled.
* Without history: a documented conservative prior (``PRIOR``) in seconds, priced at the
  request's on-demand hourly rate from the catalogue.

``cost_high`` is what a budget is checked against: the estimate times the worst ratio of actual
to fitted cost seen in the history (never below 1), so a run that was under-predicted before
widens the margin for the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from include.finops.meter import GIB, ResourceRequest
from include.finops.pricing import PriceCatalogue

# Seconds of one shard's fixed work and of one unit of work, per method, when a model has no
# history. What they rest on (the three demo runs on a 2-core CPU machine, Nov 2026): a shard's
# process start + imports + model/data load took 4.8-5.6 s; KernelSHAP on the multimodal sample
# (8x8 image in 2x2 superpixels + 4 features, 100 background rows) took 16.2 s for 8 instances x
# 500 coalitions, i.e. about 2.8 ms per unit beyond the fixed part; the Integrated Gradients run
# (6 instances x 50 steps) disappeared in its fixed time, so its per-unit figure is a margin,
# not a measurement. The prior takes ~10x the fixed time (a pod also pulls its image inside the
# billed window) and ~3.5x the KernelSHAP unit: a first run of a small model lands under its
# estimate; a large model can exceed it, and after its first run the history takes over.
PRIOR: dict[str, dict[str, float]] = {
    "KernelSHAP": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 0.010},
    "IntegratedGradients": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 0.005},
    # The other methods, from their first measurements on the sample models (2 shared CPU cores,
    # 64 instances, 100 background rows, defaults, Nov 2026), with a ~10x margin like the above.
    # A unit is one perturbation (LIME), one search direction (Counterfactual) or one draw
    # (GradientSHAP, whose figure includes its fidelity probes: 25-62 s for 64 x 64 draws).
    "LIME": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 2e-5},  # 108 rows/s at 5,000
    "Counterfactual": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 1e-3},  # 47 rows/s at 256
    "GradientSHAP": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 0.1},
    # Methods with no work knob: a unit is one instance.
    "ExactShapley": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 0.5},  # 32 rows/s, <= 16 players
    "TreeSHAP": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 0.1},  # 158 rows/s, 100 trees
    "Saliency": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 0.25},  # 64 rows in 1.7 s
    "Occlusion": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 0.1},  # 64 rows in 0.6 s
    "DeepSHAP": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 1.0},  # one DeepLift per bg row
    "AttentionRollout": {"fixed_seconds_per_shard": 60.0, "seconds_per_unit": 0.01},  # 16 rows in 0.03 s
}
# The fewest samples/steps ``fit_to_budget`` proposes (a judgement, not a measurement): under
# ~100 coalitions the KernelSHAP regression of a model with a few dozen players is badly
# underdetermined (shap's own default budget is 2M + 2048); under 16 steps the path integral of
# Integrated Gradients is coarsely approximated (Captum's default is 50); LIME's surrogate fit is
# noisy under ~500 perturbations (lime's default is 5,000); GradientSHAP's expectation under 16
# draws. A run that cannot afford the floor should be refused, not degraded further. Methods
# without a work knob (ExactShapley, TreeSHAP, Saliency, Occlusion, DeepSHAP, AttentionRollout)
# cannot shrink.
FLOOR = {"KernelSHAP": 100, "IntegratedGradients": 16, "LIME": 500, "Counterfactual": 32, "GradientSHAP": 16}
# The maxima are the config schema's (IG's is lower: beyond 10,000 steps the error is float noise).
CEILING = {"KernelSHAP": 1_000_000, "IntegratedGradients": 10_000, "LIME": 1_000_000}


@dataclass(frozen=True)
class Estimate:
    method: str
    instances: int
    samples_or_steps: int
    shards: int
    currency: str
    fixed_cost_per_shard: float
    cost_per_unit: float
    high_factor: float  # >= 1: worst actual/fitted ratio in the history
    basis: str  # "history (N runs)" or "prior"
    runtime_seconds: float | None = None  # per shard, prior only

    @property
    def work_units(self) -> int:
        return self.instances * self.samples_or_steps

    def cost_for(self, samples_or_steps: int) -> float:
        return (
            self.fixed_cost_per_shard * self.shards + self.cost_per_unit * self.instances * samples_or_steps
        )

    @property
    def cost(self) -> float:
        return self.cost_for(self.samples_or_steps)

    @property
    def cost_high(self) -> float:
        return self.cost * self.high_factor


def hourly_rate(request: ResourceRequest, catalogue: PriceCatalogue) -> float:
    """On-demand price of one hour of the request (CPU + RAM + GPU)."""
    rate = Decimal(repr(float(request.cpu_cores))) * catalogue.price("CPU") + Decimal(
        repr(request.memory_bytes / GIB)
    ) * catalogue.price("RAM")
    if request.gpu_count > 0:
        rate += Decimal(repr(float(request.gpu_count))) * catalogue.price("GPU")
    return float(rate)


def _fit(points: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Non-negative least squares of cost ~ F*shards + U*work over (shards, work, cost) points."""
    sss = sum(s * s for s, _, _ in points)
    sww = sum(w * w for _, w, _ in points)
    ssw = sum(s * w for s, w, _ in points)
    ssc = sum(s * c for s, _, c in points)
    swc = sum(w * c for _, w, c in points)

    def sse(f: float, u: float) -> float:
        return sum((c - f * s - u * w) ** 2 for s, w, c in points)

    candidates = []
    det = sss * sww - ssw * ssw
    # The two-variable fit needs runs that differ in work relative to shards (a full-rank system).
    if len({(w / s) for s, w, _ in points}) > 1 and det > 0:
        f = (ssc * sww - swc * ssw) / det
        u = (sss * swc - ssw * ssc) / det
        if f >= 0 and u >= 0:
            candidates.append((f, u))
    if sww > 0:
        candidates.append((0.0, max(swc / sww, 0.0)))  # proportional to work
    if not candidates:
        return 0.0, 0.0
    return min(candidates, key=lambda fu: sse(*fu))


def estimate_run_cost(
    *,
    method: str,
    num_samples_or_steps: int,
    instances: int,
    shards: int,
    request: ResourceRequest,
    history: list[dict],
    catalogue: PriceCatalogue,
) -> Estimate:
    """Expected cost of a run; ``history`` rows: explained, samples_or_steps, cost, shards, method.

    Rows may also carry ``samples`` for samples_or_steps; rows of another method are ignored;
    ``runtime_seconds`` is accepted and not needed.
    """
    if method not in PRIOR:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(PRIOR)})")
    if instances < 1 or num_samples_or_steps < 1 or shards < 1:
        raise ValueError("instances, numSamples/steps and shards must be >= 1")
    points = []
    for row in history:
        if row.get("method", method) != method:
            continue
        samples = row.get("samples_or_steps", row.get("samples"))
        work = float(row["explained"]) * float(samples)
        if work > 0 and float(row["cost"]) >= 0:
            points.append((float(row.get("shards", 1) or 1), work, float(row["cost"])))
    if points:
        fixed, per_unit = _fit(points)
        fitted = [fixed * s + per_unit * w for s, w, _ in points]
        ratios = [c / f for (_, _, c), f in zip(points, fitted, strict=True) if f > 0]
        return Estimate(
            method=method,
            instances=instances,
            samples_or_steps=num_samples_or_steps,
            shards=shards,
            currency=catalogue.currency,
            fixed_cost_per_shard=fixed,
            cost_per_unit=per_unit,
            high_factor=max([1.0, *ratios]),
            basis=f"history ({len(points)} run{'s' if len(points) != 1 else ''})",
        )
    prior = PRIOR[method]
    per_second = hourly_rate(request, catalogue) / 3600
    units_per_shard = instances * num_samples_or_steps / shards
    return Estimate(
        method=method,
        instances=instances,
        samples_or_steps=num_samples_or_steps,
        shards=shards,
        currency=catalogue.currency,
        fixed_cost_per_shard=prior["fixed_seconds_per_shard"] * per_second,
        cost_per_unit=prior["seconds_per_unit"] * per_second,
        high_factor=1.0,
        basis="prior",
        runtime_seconds=prior["fixed_seconds_per_shard"] + units_per_shard * prior["seconds_per_unit"],
    )


def _knob_maximum(method: str) -> int:
    from include.explainers.params import work_parameter

    spec = work_parameter(method)
    return int(spec.maximum) if spec is not None and spec.maximum is not None else 1_000_000


def fit_to_budget(estimate: Estimate, budget: float, *, floor: int | None = None) -> int | None:
    """The largest numSamples/steps whose ``cost_high`` fits the budget, or None below the floor.

    ``floor`` defaults to ``FLOOR[method]``; the result never exceeds the schema's maximum.
    """
    if estimate.method not in FLOOR and floor is None:
        return None  # no work knob: the run cannot be made cheaper
    minimum = FLOOR[estimate.method] if floor is None else floor
    maximum = CEILING.get(estimate.method) or _knob_maximum(estimate.method)
    factor = estimate.high_factor

    def fits(n: int) -> bool:
        return estimate.cost_for(n) * factor <= budget

    if not fits(minimum):
        return None
    if estimate.cost_per_unit <= 0:
        return maximum
    room = budget / factor - estimate.fixed_cost_per_shard * estimate.shards
    best = min(maximum, max(minimum, math.floor(room / (estimate.cost_per_unit * estimate.instances))))
    # float rounding at the boundary: step to the exact largest n that fits
    while best > minimum and not fits(best):
        best -= 1
    while best < maximum and fits(best + 1):
        best += 1
    return best
