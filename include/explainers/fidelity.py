"""Fidelity scores: how far an explanation can be trusted, per method, in [0, 1] (higher is better).

The gate of the pipeline compares the *aggregate* score (the mean over instances of the
per-instance score) with the configured threshold; the minimum is reported beside it so one
bad instance is visible even when the mean passes.

Integrated Gradients — **completeness**
    IG attributions must add up to the change of the explained output along the path:
    ``sum_i attr_i = f(x) - f(x')``. The score of an instance is
    ``max(0, 1 - |sum_i attr_i - (f(x) - f(x'))| / max(|f(x) - f(x')|, eps))`` with
    ``eps = 1e-6``: 1 means the integral was computed exactly; 0.99 means 1 % of the output
    change is missing (too few steps, or a path with sharp kinks).

KernelSHAP — **min(local accuracy, stability)**
    *Local accuracy* has the same form with the background expectation:
    ``max(0, 1 - |sum_i phi_i - (f(x) - E_bg[f])| / max(|f(x) - E_bg[f]|, eps))``. The
    runtime imposes this identity in its least squares, so the score checks the solver (it is
    1 up to rounding), not the estimate. *Stability* is what catches a poor estimate: the
    Spearman rank correlation between the attributions of the instance computed with seed
    ``s`` and with seed ``s + 1`` (same background), clipped at 0. When every coalition was
    enumerated the values are exact and do not depend on the seed, so stability is 1 without
    a second run. The gated per-instance score is the smaller of the two.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from include.explainers.base import Attributions
from include.explainers.params import INTEGRATED_GRADIENTS, KERNEL_SHAP

EPSILON = 1e-6

DEFINITIONS: dict[str, dict[str, str]] = {
    INTEGRATED_GRADIENTS: {
        "metric": "completeness",
        "definition": (
            "max(0, 1 - |sum(attributions) - (f(x) - f(baseline))| / max(|f(x) - f(baseline)|, 1e-6)); "
            "aggregate = mean over instances"
        ),
    },
    KERNEL_SHAP: {
        "metric": "min(local_accuracy, stability)",
        "definition": (
            "local_accuracy = max(0, 1 - |sum(phi) - (f(x) - E_bg[f])| / max(|f(x) - E_bg[f]|, 1e-6)); "
            "stability = max(0, Spearman rank correlation of phi computed with seeds s and s+1); "
            "score = min(local_accuracy, stability) per instance; aggregate = mean over instances"
        ),
    },
}


def additivity_score(attribution_sum: np.ndarray, output: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``max(0, 1 - |sum - (f(x) - ref)| / max(|f(x) - ref|, eps))`` per instance."""
    delta = np.asarray(output, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    error = np.abs(np.asarray(attribution_sum, dtype=np.float64) - delta)
    return np.clip(1.0 - error / np.maximum(np.abs(delta), EPSILON), 0.0, 1.0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties, clipped to [0, 1].

    Two constant vectors (nothing to rank) count as agreeing when equal.
    """
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ra, rb = rankdata(a), rankdata(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0.0 or sb == 0.0:
        return 1.0 if (sa == 0.0 and sb == 0.0 and np.allclose(a, b)) else 0.0
    rho = float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))
    return max(0.0, min(1.0, rho))


def _summary(method: str, scores: np.ndarray, components: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "method": method,
        **DEFINITIONS[method],
        "per_instance": {"score": scores, **components},
        "aggregate": float(scores.mean()) if scores.size else float("nan"),
        "min": float(scores.min()) if scores.size else float("nan"),
        "components": {name: float(values.mean()) for name, values in components.items() if values.size},
    }


def integrated_gradients_fidelity(attributions: Attributions) -> dict[str, Any]:
    """Completeness per instance, its mean (the gated aggregate) and its minimum."""
    completeness = additivity_score(
        attributions.features.sum(axis=1), attributions.outputs, attributions.baselines
    )
    return _summary(INTEGRATED_GRADIENTS, completeness, {"completeness": completeness})


def kernel_shap_fidelity(attributions: Attributions, rerun: Attributions | None) -> dict[str, Any]:
    """Local accuracy, stability against ``rerun`` (seed + 1) and their per-instance minimum.

    ``rerun`` may be ``None`` only when every instance was computed exactly (all coalitions).
    """
    local = additivity_score(attributions.players.sum(axis=1), attributions.outputs, attributions.baselines)
    exact = attributions.per_instance.get("exact", np.zeros(len(local), dtype=bool))
    stability = np.ones(len(local))
    for i in range(len(local)):
        if exact[i]:
            continue
        if rerun is None:
            raise ValueError("KernelSHAP stability needs a second run with seed + 1 for sampled instances")
        stability[i] = spearman(attributions.players[i], rerun.players[i])
    score = np.minimum(local, stability)
    return _summary(KERNEL_SHAP, score, {"local_accuracy": local, "stability": stability})


def evaluate_fidelity(attributions: Attributions, rerun: Attributions | None = None) -> dict[str, Any]:
    """The fidelity summary of a method's attributions (see the module docstring)."""
    if attributions.method == INTEGRATED_GRADIENTS:
        return integrated_gradients_fidelity(attributions)
    if attributions.method == KERNEL_SHAP:
        return kernel_shap_fidelity(attributions, rerun)
    raise ValueError(f"no fidelity metric for method {attributions.method!r}")
