"""LIME for tabular models (LimeTabularExplainer semantics), batched.

For each instance x (Ribeiro et al. 2016, and lime's ``LimeTabularExplainer`` with
``discretize_continuous=False, sample_around_instance=True``):

* ``numSamples`` perturbations ``x + z * scale`` with ``z ~ N(0, I)``, the first one being x
  itself (z = 0); ``scale`` is the background's per-feature standard deviation (lime's
  StandardScaler on its training data). A feature that never varies in the background is
  held at its value (lime would perturb it by one raw unit; nothing in the data says what a
  plausible change of it is) and gets a zero coefficient;
* proximity: the exponential kernel ``sqrt(exp(-d^2 / kernelWidth^2))`` of the Euclidean
  distance ``d = ||z||`` in standardised units (default ``kernelWidth = 0.75 * sqrt(F)``);
* the surrogate: a weighted ridge regression (alpha 1, with intercept, lime's default
  ``Ridge(alpha=1)``) of the explained output on the standardised features, over every feature
  (no feature selection: nothing is dropped silently).

Reported per instance: the surrogate's coefficients (per unit of each feature, and per
background standard deviation), its intercept, its prediction at x, and its **weighted local
R^2** ``1 - sum w (f - g)^2 / sum w (f - mean_w f)^2`` over the perturbations, which is LIME's
fidelity figure. The attributions are the surrogate's local contributions
``coef_j * (x_j - mean_j)``: how much each feature's value moves the surrogate away from its
prediction at the background mean (on a linear model these are its exact Shapley values,
``w_j (x_j - E[x_j])``, up to the ridge shrinkage).

All perturbations of all instances are evaluated in a few large fixed-shape passes
(:mod:`include.explainers.perturbation`); each instance draws from its own seed, so results
do not depend on the shard or the batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from include.explainers.base import (
    PREDICT_CHUNK_ROWS,
    Attributions,
    ExplainedModel,
    instance_seeds_for,
    memory_budget_bytes,
)
from include.explainers.errors import MethodNotApplicableError
from include.explainers.kernel_shap import summarise_background
from include.explainers.params import LIME
from include.explainers.perturbation import background_scale, evaluate_rows, job_chunk_rows

RIDGE_ALPHA = 1.0  # lime's default surrogate: sklearn Ridge(alpha=1.0)


def default_kernel_width(n_features: int) -> float:
    return 0.75 * math.sqrt(n_features)


def kernel_weights(distances: np.ndarray, width: float) -> np.ndarray:
    """lime's exponential kernel: ``sqrt(exp(-d^2 / width^2))``."""
    return np.sqrt(np.exp(-(distances**2) / width**2))


def weighted_ridge(
    z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float = RIDGE_ALPHA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted ridge with an unpenalised intercept, for a batch of problems.

    ``z`` ``(G, S, F)``, ``y`` and ``w`` ``(G, S)`` -> coefficients ``(G, F)``, intercepts ``(G,)``
    and weighted R^2 ``(G,)``. Minimises ``sum w (y - b - z beta)^2 + alpha |beta|^2``: the
    weighted means are removed first (exactly what sklearn's Ridge does with sample weights).
    """
    total = w.sum(axis=1, keepdims=True)
    mz = np.einsum("gs,gsf->gf", w, z) / total
    my = (w * y).sum(axis=1, keepdims=True) / total
    zc = z - mz[:, None, :]
    yc = y - my
    gram = np.einsum("gsf,gs,gsk->gfk", zc, w, zc)
    gram += alpha * np.eye(z.shape[2])[None]
    rhs = np.einsum("gsf,gs->gf", zc, w * yc)
    coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
    intercept = my[:, 0] - np.einsum("gf,gf->g", mz, coef)
    fitted = intercept[:, None] + np.einsum("gsf,gf->gs", z, coef)
    residual = (w * (y - fitted) ** 2).sum(axis=1)
    spread = (w * yc**2).sum(axis=1)
    # sklearn's r2_score convention for a constant target: 1 when fitted exactly, else 0.
    tiny = spread <= 1e-30 * np.maximum(1.0, (w * y**2).sum(axis=1))
    safe = np.where(tiny, 1.0, spread)
    r2 = np.where(tiny, np.where(residual <= 1e-30, 1.0, 0.0), 1.0 - residual / safe)
    return coef, intercept, r2


class LimeExplainer:
    """LIME for tabular models (see the module docstring)."""

    name = LIME

    def check_model(self, model: ExplainedModel) -> None:
        if model.has_image:
            raise MethodNotApplicableError(
                "LIME is implemented for tabular models only; this model has an image input "
                "(use KernelSHAP, which groups pixels into superpixels, or IntegratedGradients)"
            )
        if model.n_features == 0:
            raise MethodNotApplicableError("LIME needs at least one input feature")

    def explain(
        self,
        model: ExplainedModel,
        inputs: tuple[torch.Tensor, ...],
        background: tuple[torch.Tensor, ...],
        params: dict[str, Any],
        seed: int,
        instance_seeds: Sequence[int] | None = None,
        *,
        n_global: int | None = None,
    ) -> Attributions:
        self.check_model(model)
        started = time.perf_counter()
        n_samples = int(params["numSamples"])
        x = model.flatten(inputs).to(model.dtype).contiguous()
        n, n_feat = x.shape
        width = float(params.get("kernelWidth") or default_kernel_width(n_feat))
        seeds = instance_seeds_for(seed, n, instance_seeds)
        bg, bg_w, bg_info = summarise_background(
            model.flatten(background).to(model.dtype).contiguous(),
            params["backgroundDataStrategy"],
            int(params["backgroundDataSubsetSize"]),
            seed,
        )
        mean, scale = background_scale(bg, bg_w)
        varies = scale > 0.0

        scores = model.evaluate(x, PREDICT_CHUNK_ROWS)
        targets = model.targets(scores)
        fx = scores.gather(1, targets[:, None]).squeeze(1).double().numpy()
        x64 = x.double().numpy()
        chunk_rows = job_chunk_rows(model, n_samples, n_global or n)

        # Instances are processed in groups whose perturbations fit the memory budget; a row's
        # result depends neither on its group nor on its position (fixed pass shapes).
        per_instance_bytes = n_samples * n_feat * 8 * 4  # z, rows (float64 + model dtype), temporaries
        group = max(1, min(n, memory_budget_bytes() // max(per_instance_bytes, 1)))
        coef = np.zeros((n, n_feat))
        intercept = np.zeros(n)
        r2 = np.zeros(n)
        passes = 0
        for lo in range(0, n, group):
            hi = min(lo + group, n)
            z = np.stack(
                [np.random.default_rng(seeds[i]).standard_normal((n_samples, n_feat)) for i in range(lo, hi)]
            )
            z[:, 0, :] = 0.0  # the first sample is the instance itself, as in lime
            z[:, :, ~varies] = 0.0
            rows = x64[lo:hi, None, :] + z * scale
            values = evaluate_rows(model, torch.from_numpy(rows.reshape(-1, n_feat)), chunk_rows)
            passes += -(-values.shape[0] // chunk_rows)
            values = values.reshape(hi - lo, n_samples, -1)
            y = np.take_along_axis(values, targets[lo:hi].numpy()[:, None, None], axis=2)[..., 0]
            w = kernel_weights(np.sqrt((z**2).sum(axis=2)), width)
            coef[lo:hi], intercept[lo:hi], r2[lo:hi] = weighted_ridge(z, y, w)

        safe_scale = np.where(varies, scale, 1.0)
        coef_raw = np.where(varies, coef / safe_scale, 0.0)  # per raw unit of each feature
        contributions = coef_raw * (x64 - mean)
        # The surrogate's prediction at x is its intercept (x is z = 0); at the background mean
        # it is intercept + coef . (mean - x) / scale, so contributions add up to the difference.
        at_mean = intercept - contributions.sum(axis=1)
        names = model.feature_names()
        return Attributions(
            method=LIME,
            player_names=names,
            players=contributions,
            features=contributions.copy(),
            feature_player=np.arange(n_feat),
            outputs=fx,
            baselines=at_mean,
            baseline_kind=(
                "LIME surrogate's prediction at the background mean (the attributions add up to the "
                "surrogate's prediction at x minus this value)"
            ),
            targets=targets.numpy(),
            resolved_params={
                "numSamples": n_samples,
                "kernelWidth": width,
                "backgroundDataStrategy": params["backgroundDataStrategy"],
                "backgroundDataSubsetSize": int(params["backgroundDataSubsetSize"]),
            },
            per_instance={
                "r2": r2,
                "surrogate_prediction": intercept,
                "surrogate_intercept_at_mean": at_mean,
                "coefficients": coef_raw,
                "coefficients_per_std": coef,
            },
            details={
                "background": bg_info,
                "feature_mean": mean.tolist(),
                "feature_scale": scale.tolist(),
                "ridge_alpha": RIDGE_ALPHA,
                "kernel": "sqrt(exp(-d^2 / kernelWidth^2)), d = Euclidean distance in background std units",
                "chunk_rows": chunk_rows,
                "forward_passes": passes,
                "model_rows_evaluated": int(n * n_samples),
                "seconds": time.perf_counter() - started,
            },
        )


EXPLAINER = LimeExplainer()
