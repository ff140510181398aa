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

ExactShapley, TreeSHAP — **local accuracy**
    The same additivity score against ``E_bg[f]``. Both are exact (every coalition enumerated;
    TreeSHAP's polynomial-time algorithm), so the score checks the computation, not an estimate.

LIME — **weighted local R^2**
    ``max(0, R^2)`` of the surrogate over the instance's perturbations, weighted by the
    proximity kernel: the share of the model's local variation the linear surrogate explains.

Counterfactual — **validity**
    1 when a counterfactual was found that flips the prediction and lies within the declared
    feature ranges, else 0; the aggregate is the share of instances with a valid one.
Saliency, Occlusion — **min(infidelity score, sensitivity score)**;
GradientSHAP, DeepSHAP — **min(local accuracy, stability, infidelity score, sensitivity score)**
    Computed with Captum's own metrics (``captum.metrics.infidelity`` / ``sensitivity_max``) on
    every run, normalised into [0, 1] (1 is best):

    * *infidelity score* ``= max(0, 1 - INFD / E[(f(x) - f(x - I))^2])`` where ``INFD`` is
      Captum's infidelity ``E[(I . attr - (f(x) - f(x - I)))^2]`` (``normalize=False``) over
      32 perturbations ``I`` per instance, and the denominator is the same expectation with
      zero attributions (same draws). It is the share of the output change under the
      perturbations that the attributions predict (an uncentred R^2). The perturbation is the
      one that fits what the method claims: for Saliency (a gradient) small Gaussian noise,
      ``I ~ N(0, (0.1 s_j)^2)`` per feature with ``s_j`` the feature's background standard
      deviation, so ``I . grad ~ f(x) - f(x - I)``; for GradientSHAP, DeepSHAP and Occlusion (which
      attribute the change from a reference) *removal*: a random half of the features take the
      reference value (the background mean for the SHAP methods, the occlusion baseline for
      Occlusion) and ``I`` is that 0/1 mask, so ``I . attr`` is the sum of the removed
      features' attributions (Captum's documented binary perturbation for global attributions,
      an estimate of sensitivity-n). A linear model scores exactly 1 with Saliency, DeepSHAP and
      Occlusion, and GradientSHAP up to its sampling error.
    * *sensitivity score* ``= max(0, 1 - SENS)`` where ``SENS`` is Captum's ``sensitivity_max``:
      the largest relative change ``||attr(x + d) - attr(x)|| / ||attr(x)||`` over 8 draws of
      ``d`` uniform in ``[-0.02 s_j, 0.02 s_j]`` per feature. 0.95 means the explanation moved by
      at most 5 % of its norm when each feature moved by 2 % of its spread. Random methods
      re-explain a perturbed input with the instance's own draws (common random numbers), so
      this measures the method's response to the input; its Monte Carlo noise is the
      stability's business.
    * *local accuracy* and *stability* as for KernelSHAP (``E_bg[f]`` reference; Spearman between
      seed ``s`` and ``s + 1``). GradientSHAP's rerun redraws every instance's samples with the
      next seed (same background); DeepSHAP is deterministic given its background, so its rerun
      draws the background summary with the next seed (stability 1 without a rerun when the
      summary keeps every row: ``all`` or a subset size >= the rows available).

    Perturbation draws come from one ``torch.Generator`` per instance seeded from the instance's
    seed, so figures do not depend on the shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from include.explainers.base import Attributions
from include.explainers.params import (
    ATTENTION_ROLLOUT,
    COUNTERFACTUAL,
    DEEP_SHAP,
    EXACT_SHAPLEY,
    GRADIENT_SHAP,
    INTEGRATED_GRADIENTS,
    KERNEL_SHAP,
    LIME,
    OCCLUSION,
    SALIENCY,
    TREE_SHAP,
)

if TYPE_CHECKING:
    from include.explainers.gradient_family import FidelityProbe

EPSILON = 1e-6
# Captum metrics (see the module docstring). Powers of two: they multiply the pass row counts.
INFIDELITY_SAMPLES = 32
SENSITIVITY_SAMPLES = 8
LOCAL_NOISE = 0.1  # Saliency's Gaussian perturbation, in background standard deviations
SENSITIVITY_RADIUS = 0.02  # sensitivity_max's L-infinity radius, in background standard deviations
REMOVAL_PROBABILITY = 0.5
# Denominator floor of the infidelity score: an output that does not move at all under the
# perturbations (a saturated sigmoid) has nothing to predict.
OUTPUT_CHANGE_FLOOR = 1e-12
_INFIDELITY_SALT, _SENSITIVITY_SALT = 0x1F1D, 0x5E75

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
    **{
        method: {
            "metric": "local_accuracy",
            "definition": (
                "max(0, 1 - |sum(phi) - (f(x) - E_bg[f])| / max(|f(x) - E_bg[f]|, 1e-6)) (exact values: "
                "checks the computation); aggregate = mean over instances"
            ),
        }
        for method in (EXACT_SHAPLEY, TREE_SHAP)
    },
    LIME: {
        "metric": "local_r2",
        "definition": (
            "max(0, weighted R^2 of the LIME surrogate over the instance's perturbations, weights = "
            "proximity kernel); aggregate = mean over instances"
        ),
    },
    **{
        method: {
            "metric": "min(infidelity_score, sensitivity_score)",
            "definition": (
                "infidelity_score = max(0, 1 - captum infidelity / E[(f(x) - f(x - I))^2]) over 32 "
                "perturbations "
                + perturbation
                + "; sensitivity_score = max(0, 1 - captum sensitivity_max) over 8 uniform perturbations of "
                "+-0.02 background std per feature (relative change of the attributions); score = min per "
                "instance; aggregate = mean over instances"
            ),
        }
        for method, perturbation in (
            (SALIENCY, "I ~ N(0, (0.1 std_j)^2)"),
            (OCCLUSION, "I = random half of the features set to the occlusion baseline"),
        )
    },
    **{
        method: {
            "metric": "min(local_accuracy, stability, infidelity_score, sensitivity_score)",
            "definition": (
                "local_accuracy = max(0, 1 - |sum(phi) - (f(x) - E_bg[f])| / max(|f(x) - E_bg[f]|, 1e-6)); "
                "stability = max(0, Spearman of phi with "
                + rerun
                + "); infidelity_score = max(0, 1 - captum infidelity / E[(f(x) - f(x - I))^2]) over 32 "
                "perturbations I = random half of the features set to the background mean; "
                "sensitivity_score = max(0, 1 - captum sensitivity_max) over 8 uniform perturbations of "
                "+-0.02 background std per feature; score = min per instance; aggregate = mean over instances"
            ),
        }
        for method, rerun in (
            (GRADIENT_SHAP, "every instance's draws from seed s+1 (same background)"),
            (DEEP_SHAP, "the background summary drawn with seed s+1 (1 when the summary keeps every row)"),
        )
    },
    ATTENTION_ROLLOUT: {
        "metric": "gradient_agreement",
        "definition": (
            "max(0, Spearman rank correlation between each feature token's attention-rollout relevance and "
            "its |gradient x input| (summed over the token's features)); aggregate = mean over instances. "
            "Attention is not faithful by construction: this says how far the map agrees with what moves "
            "the output"
        ),
    },
    COUNTERFACTUAL: {
        "metric": "validity",
        "definition": (
            "1 if a counterfactual flipping the prediction within the declared feature ranges was found, "
            "else 0; aggregate = share of instances with a valid counterfactual"
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


def exact_shapley_fidelity(attributions: Attributions) -> dict[str, Any]:
    """Local accuracy of exact Shapley values (ExactShapley, TreeSHAP)."""
    local = additivity_score(attributions.players.sum(axis=1), attributions.outputs, attributions.baselines)
    return _summary(attributions.method, local, {"local_accuracy": local})


def lime_fidelity(attributions: Attributions) -> dict[str, Any]:
    """The surrogate's weighted local R^2 per instance, clipped to [0, 1]."""
    r2 = np.asarray(attributions.per_instance["r2"], dtype=np.float64)
    score = np.clip(r2, 0.0, 1.0)
    return _summary(LIME, score, {"local_r2": score})


def attention_fidelity(attributions: Attributions) -> dict[str, Any]:
    """Rank agreement of the rollout relevance with |gradient x input|, per instance."""
    reference = np.asarray(attributions.per_instance["gradient_x_input_per_token"], dtype=np.float64)
    agreement = np.array(
        [spearman(attributions.players[i], reference[i]) for i in range(len(attributions.players))]
    )
    return _summary(ATTENTION_ROLLOUT, agreement, {"gradient_agreement": agreement})


def counterfactual_fidelity(attributions: Attributions) -> dict[str, Any]:
    """1 per instance with a valid counterfactual, else 0."""
    valid = np.asarray(attributions.per_instance["found"], dtype=np.float64)
    return _summary(COUNTERFACTUAL, valid, {"validity": valid})


def _generators(seeds: list[int], salt: int) -> list[Any]:
    import torch

    from include.explainers.gradient_family import derived_seed

    return [torch.Generator().manual_seed(derived_seed(seed, salt)) for seed in seeds]


def captum_metrics(probe: FidelityProbe) -> dict[str, np.ndarray]:
    """Captum infidelity and sensitivity_max per instance, raw and as scores (module docstring).

    Instances go through the metrics in passes of a fixed number (from the memory budget and the
    whole job's size, the last pass padded), each instance's perturbations drawn from its own
    generator: the figures of a row do not depend on the shard.
    """
    import torch
    from captum.metrics import infidelity, sensitivity_max

    from include.explainers.base import run_passes
    from include.explainers.gradient_family import instances_per_pass

    model, n = probe.model, probe.x.shape[0]
    rows_per_instance = max(INFIDELITY_SAMPLES, SENSITIVITY_SAMPLES * max(probe.rows_per_explanation, 1))
    per_pass = instances_per_pass(model, rows_per_instance, probe.n_job)
    attributions = torch.from_numpy(np.ascontiguousarray(probe.attributions)).to(probe.x.dtype)
    scale = probe.scale.to(probe.x.dtype)
    out = {name: np.zeros(n) for name in ("infidelity", "output_change", "sensitivity_max")}

    def forward(flat: torch.Tensor) -> torch.Tensor:
        return model.scores(*model.split(flat))

    def run(p: int) -> None:
        start, stop = p * per_pass, min((p + 1) * per_pass, n)
        idx = torch.from_numpy(np.arange(start, start + per_pass).clip(max=stop - 1))
        x, targets, attr = probe.x[idx].contiguous(), probe.targets[idx], attributions[idx].contiguous()
        seeds = [probe.seeds[int(i)] for i in idx]
        reference = probe.reference[idx] if probe.reference is not None else None

        def infidelity_perturbation(generators: list[Any]) -> Any:
            def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                m = inputs.shape[0] // per_pass  # captum repeats each row m times, consecutively
                blocks_i, blocks_x = [], []
                for j, generator in enumerate(generators):
                    rows = inputs[j * m : (j + 1) * m]
                    if reference is None:
                        noise = torch.randn(rows.shape, generator=generator, dtype=rows.dtype)
                        noise = noise * (LOCAL_NOISE * scale)
                        blocks_i.append(noise)
                        blocks_x.append(rows - noise)
                    else:
                        mask = torch.rand(rows.shape, generator=generator) < REMOVAL_PROBABILITY
                        blocks_i.append(mask.to(rows.dtype))
                        blocks_x.append(torch.where(mask, reference[j].expand_as(rows), rows))
                return torch.cat(blocks_i), torch.cat(blocks_x)

            return perturb

        infid = infidelity(
            forward,
            infidelity_perturbation(_generators(seeds, _INFIDELITY_SALT)),
            x,
            attr,
            target=targets,
            n_perturb_samples=INFIDELITY_SAMPLES,
        )
        change = infidelity(
            forward,
            infidelity_perturbation(_generators(seeds, _INFIDELITY_SALT)),  # the same draws
            x,
            torch.zeros_like(attr),
            target=targets,
            n_perturb_samples=INFIDELITY_SAMPLES,
        )
        sensitivity_generators = _generators(seeds, _SENSITIVITY_SALT)

        def sensitivity_perturbation(inputs: torch.Tensor, radius: float) -> torch.Tensor:
            m = inputs.shape[0] // per_pass
            blocks = []
            for j, generator in enumerate(sensitivity_generators):
                rows = inputs[j * m : (j + 1) * m]
                unit = torch.rand(rows.shape, generator=generator, dtype=rows.dtype) * 2.0 - 1.0
                blocks.append(rows + unit * (radius * scale))
            return torch.cat(blocks)

        def explanation(
            inputs: torch.Tensor | tuple[torch.Tensor], target: torch.Tensor
        ) -> tuple[torch.Tensor]:
            # captum passes the unperturbed inputs as a 1-tuple and iterates over what this returns.
            if isinstance(inputs, tuple):
                (inputs,) = inputs
            if inputs.shape[0] == per_pass and torch.equal(inputs, x):
                return (attr,)  # the reported attributions, not a recomputation
            m = inputs.shape[0] // per_pass
            owners = np.repeat(idx.numpy(), m)
            return (torch.from_numpy(probe.explain_rows(inputs, target, owners)).to(inputs.dtype),)

        sens = sensitivity_max(
            explanation,
            x,
            perturb_func=sensitivity_perturbation,
            perturb_radius=SENSITIVITY_RADIUS,
            n_perturb_samples=SENSITIVITY_SAMPLES,
            target=targets,
        )
        keep = stop - start
        out["infidelity"][start:stop] = infid.double().numpy()[:keep]
        out["output_change"][start:stop] = change.double().numpy()[:keep]
        out["sensitivity_max"][start:stop] = sens.double().numpy()[:keep]

    n_passes = -(-n // per_pass) if n else 0
    if probe.parallel:
        run_passes(n_passes, run)
    else:
        for p in range(n_passes):
            run(p)
    out["infidelity_score"] = np.clip(
        1.0 - out["infidelity"] / np.maximum(out["output_change"], OUTPUT_CHANGE_FLOOR), 0.0, 1.0
    )
    out["sensitivity_score"] = np.clip(1.0 - out["sensitivity_max"], 0.0, 1.0)
    return out


def _captum_components(probe: FidelityProbe | None, method: str) -> dict[str, np.ndarray]:
    if probe is None:
        raise ValueError(f"{method} fidelity needs the run's FidelityProbe (Captum infidelity/sensitivity)")
    metrics = captum_metrics(probe)
    return {
        "infidelity_score": metrics["infidelity_score"],
        "sensitivity_score": metrics["sensitivity_score"],
        "infidelity": metrics["infidelity"],
        "sensitivity_max": metrics["sensitivity_max"],
    }


def perturbation_fidelity(attributions: Attributions, probe: FidelityProbe | None) -> dict[str, Any]:
    """Saliency and Occlusion: min(infidelity score, sensitivity score) per instance."""
    components = _captum_components(probe, attributions.method)
    score = np.minimum(components["infidelity_score"], components["sensitivity_score"])
    return _summary(attributions.method, score, components)


def sampled_shap_fidelity(
    attributions: Attributions, rerun: Attributions | None, probe: FidelityProbe | None
) -> dict[str, Any]:
    """GradientSHAP and DeepSHAP: min(local accuracy, stability, infidelity, sensitivity scores).

    ``rerun`` is ``None`` when a second run cannot differ (DeepSHAP on an unsampled background):
    stability is then 1.
    """
    local = additivity_score(attributions.players.sum(axis=1), attributions.outputs, attributions.baselines)
    stability = np.ones(len(local))
    if rerun is not None:
        pairs = zip(attributions.players, rerun.players, strict=True)
        stability = np.array([spearman(a, b) for a, b in pairs])
    components = {
        "local_accuracy": local,
        "stability": stability,
        **_captum_components(probe, attributions.method),
    }
    score = np.minimum.reduce(
        [local, stability, components["infidelity_score"], components["sensitivity_score"]]
    )
    return _summary(attributions.method, score, components)


def evaluate_fidelity(
    attributions: Attributions, rerun: Attributions | None = None, probe: FidelityProbe | None = None
) -> dict[str, Any]:
    """The fidelity summary of a method's attributions (see the module docstring).

    ``probe`` carries what Captum's metrics need (the Saliency/GradientSHAP/DeepSHAP/Occlusion
    explainers build it with ``fidelity_probe``).
    """
    if attributions.method in (SALIENCY, OCCLUSION):
        return perturbation_fidelity(attributions, probe)
    if attributions.method in (GRADIENT_SHAP, DEEP_SHAP):
        return sampled_shap_fidelity(attributions, rerun, probe)
    if attributions.method == INTEGRATED_GRADIENTS:
        return integrated_gradients_fidelity(attributions)
    if attributions.method == KERNEL_SHAP:
        return kernel_shap_fidelity(attributions, rerun)
    if attributions.method in (EXACT_SHAPLEY, TREE_SHAP):
        return exact_shapley_fidelity(attributions)
    if attributions.method == LIME:
        return lime_fidelity(attributions)
    if attributions.method == COUNTERFACTUAL:
        return counterfactual_fidelity(attributions)
    if attributions.method == ATTENTION_ROLLOUT:
        return attention_fidelity(attributions)
    raise ValueError(f"no fidelity metric for method {attributions.method!r}")
