"""GradientSHAP (``captum.attr.GradientShap``): expected gradients over the background.

For each of ``numSamples`` draws Captum picks a background row b (the baseline), a point
``a ~ U(0, 1)`` on the straight path from b to x, adds Gaussian noise to x, and takes
``grad f(b + a (x + noise - b)) * (x + noise - b)``; the attribution is the mean over draws.
In expectation (without noise) the attributions add up to ``f(x) - E_bg[f]`` and, for a linear
model, equal ``w * (x - E_bg[x])``; a finite ``numSamples`` gives a Monte Carlo estimate whose
error the fidelity figures (local accuracy, two-seed stability) measure.

Parameters: ``numSamples`` (Captum ``n_samples``), ``stdevs`` (Captum's noise) and the
background summary of KernelSHAP (``backgroundDataStrategy``, ``backgroundDataSubsetSize``;
k-means centroids are repeated in proportion to their cluster sizes, because Captum draws
baselines uniformly). ``stdevs`` is in units of each feature's background standard deviation:
the call runs in standardised coordinates ``z = (x - mean) / std`` (Captum's noise has one
scale per input tensor, and raw features here span very different scales). The attributions
are the same in either coordinates: ``(z - z_b) * df/dz = (x - x_b) * df/dx``.

Determinism: Captum draws from the process-global torch and numpy generators, with no
generator argument, so each instance is explained by its own Captum call with both generators
seeded from the instance's seed (and restored afterwards). A row's draws then depend only on
(run seed, inference id) and every call has the same shape (``numSamples`` rows), so shards are
bit-identical to one run. The calls run one after the other (a global generator cannot be
shared by parallel workers); measured on the sample-sized MLP with one thread: ~420
instances/s at 64 samples against ~550 for one Captum call over all instances.
Where ``numSamples`` rows do not fit the memory budget, an instance's draws are split into
sub-calls of a power-of-two number of samples; the split then depends on the budget (the same
on identically sized pods, but not across pod sizes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from include.explainers.base import (
    Attributions,
    ExplainedModel,
    instance_seeds_for,
    memory_budget_bytes,
    pow2_floor,
)
from include.explainers.gradient_family import (
    BACKWARD_OVERHEAD,
    FidelityProbe,
    expected_output,
    feature_scale,
    flat_attributions,
    require_differentiable,
    seeded,
    targets_and_outputs,
    weighted_mean,
)
from include.explainers.params import GRADIENT_SHAP


def baseline_rows(background: torch.Tensor, weights: np.ndarray, rows_available: int) -> torch.Tensor:
    """Rows Captum draws its baselines from (uniformly): weighted summaries repeated by weight."""
    if np.allclose(weights, weights[0]):
        return background
    counts = np.maximum(np.round(np.asarray(weights) * rows_available).astype(np.int64), 1)
    return background.repeat_interleave(torch.from_numpy(counts), dim=0)


class _Standardised:
    """``model.scores`` as a function of standardised modality tensors (see the module docstring)."""

    def __init__(self, model: ExplainedModel, background: torch.Tensor) -> None:
        self.model = model
        mean = background.double().mean(0)
        std = background.double().std(0) if background.shape[0] > 1 else torch.ones_like(mean)
        std = torch.where(std > 0, std, torch.ones_like(std))
        self.mean = model.split(mean.to(model.dtype)[None])
        self.std = model.split(std.to(model.dtype)[None])

    def to_z(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(
            ((part - m) / s).contiguous()
            for part, m, s in zip(self.model.split(flat), self.mean, self.std, strict=True)
        )

    def __call__(self, *z: torch.Tensor) -> torch.Tensor:
        return self.model.scores(*(part * s + m for part, m, s in zip(z, self.mean, self.std, strict=True)))


def samples_per_call(model: ExplainedModel, num_samples: int) -> int:
    """Samples per Captum call: all of them, unless the memory budget says fewer (a power of two)."""
    fit = pow2_floor(memory_budget_bytes() / (model.row_bytes() * BACKWARD_OVERHEAD))
    return num_samples if num_samples <= fit else max(fit, 1)


def gradient_shap_rows(
    model: ExplainedModel,
    standardised: _Standardised,
    baselines_z: tuple[torch.Tensor, ...],
    flat: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    num_samples: int,
    stdevs: float,
    per_call: int,
) -> np.ndarray:
    """Captum GradientShap of each flat row with its own seeded draws, (B, F) float64."""
    from captum.attr import GradientShap

    explainer = GradientShap(standardised)
    out = np.zeros((flat.shape[0], flat.shape[1]))
    for i in range(flat.shape[0]):
        z = standardised.to_z(flat[i : i + 1])
        total = np.zeros(flat.shape[1])
        done = 0
        with seeded(int(seeds[i])):
            while done < num_samples:
                take = min(per_call, num_samples - done)
                with torch.enable_grad():
                    parts = explainer.attribute(
                        tuple(t.requires_grad_(True) for t in z),
                        baselines=baselines_z,
                        n_samples=take,
                        stdevs=stdevs,
                        target=targets[i : i + 1],
                    )
                total += flat_attributions(model, parts)[0] * take
                done += take
        out[i] = total / num_samples
    return out


class GradientShapExplainer:
    """GradientSHAP (see the module docstring)."""

    name = GRADIENT_SHAP

    def check_model(self, model: ExplainedModel) -> None:
        require_differentiable(model, GRADIENT_SHAP)

    def _setup(
        self, model: ExplainedModel, background: tuple[torch.Tensor, ...], params: dict[str, Any], seed: int
    ) -> tuple[torch.Tensor, np.ndarray, dict[str, Any], _Standardised, tuple[torch.Tensor, ...]]:
        from include.explainers.kernel_shap import summarise_background

        bg_all = model.flatten(background).to(model.dtype).contiguous()
        bg, bg_w, info = summarise_background(
            bg_all, params["backgroundDataStrategy"], int(params["backgroundDataSubsetSize"]), seed
        )
        standardised = _Standardised(model, bg_all)
        draw_from = baseline_rows(bg, bg_w, info["rows_available"])
        return bg, bg_w, info, standardised, standardised.to_z(draw_from)

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

        started = time.perf_counter()
        num_samples, stdevs = int(params["numSamples"]), float(params["stdevs"])
        x = model.flatten(inputs).to(model.dtype).contiguous()
        n = x.shape[0]
        seeds = instance_seeds_for(seed, n, instance_seeds)
        bg, bg_w, info, standardised, baselines_z = self._setup(model, background, params, seed)
        targets, fx = targets_and_outputs(model, x)
        base = expected_output(model, bg, bg_w, targets)
        per_call = samples_per_call(model, num_samples)
        features = gradient_shap_rows(
            model, standardised, baselines_z, x, targets, seeds, num_samples, stdevs, per_call
        )
        return Attributions(
            method=GRADIENT_SHAP,
            player_names=model.feature_names(),
            players=features,
            features=features,
            feature_player=np.arange(x.shape[1]),
            outputs=fx,
            baselines=base,
            baseline_kind="expected value of the explained output over the background (E_bg[f])",
            targets=targets.numpy(),
            resolved_params={
                "numSamples": num_samples,
                "stdevs": stdevs,
                "backgroundDataStrategy": params["backgroundDataStrategy"],
                "backgroundDataSubsetSize": int(params["backgroundDataSubsetSize"]),
            },
            details={
                "background": info,
                "baseline_rows": int(baselines_z[0].shape[0]),
                "samples_per_call": per_call,
                "captum_calls": n * -(-num_samples // per_call),
                "seconds": time.perf_counter() - started,
            },
        )

    def stability_rerun(
        self,
        model: ExplainedModel,
        inputs: tuple[torch.Tensor, ...],
        background: tuple[torch.Tensor, ...],
        params: dict[str, Any],
        seed: int,
        instance_seeds: Sequence[int],
        rerun_seeds: Sequence[int],
        attributions: Attributions,
        *,
        n_global: int | None = None,
    ) -> Attributions:
        """The same job with every instance's draws from seed + 1 (same background)."""
        return self.explain(model, inputs, background, params, seed, rerun_seeds, n_global=n_global)

    def fidelity_probe(
        self,
        model: ExplainedModel,
        inputs: tuple[torch.Tensor, ...],
        background: tuple[torch.Tensor, ...],
        params: dict[str, Any],
        seed: int,
        instance_seeds: Sequence[int],
        attributions: Attributions,
        *,
        n_global: int | None = None,
    ) -> FidelityProbe:
        num_samples, stdevs = int(params["numSamples"]), float(params["stdevs"])
        bg, bg_w, _, standardised, baselines_z = self._setup(model, background, params, seed)
        x = model.flatten(inputs).to(model.dtype).contiguous()
        per_call = samples_per_call(model, num_samples)
        seeds = list(instance_seeds)

        def explain_rows(rows: torch.Tensor, targets: torch.Tensor, owners: np.ndarray) -> np.ndarray:
            return gradient_shap_rows(
                model,
                standardised,
                baselines_z,
                rows,
                targets,
                [seeds[o] for o in owners],
                num_samples,
                stdevs,
                per_call,
            )

        return FidelityProbe(
            model=model,
            x=x,
            targets=torch.from_numpy(attributions.targets).long(),
            seeds=seeds,
            attributions=attributions.features,
            scale=feature_scale(model, model.flatten(background)),
            explain_rows=explain_rows,
            reference=weighted_mean(bg, bg_w).expand_as(x),
            rows_per_explanation=per_call,
            n_job=n_global or x.shape[0],
            parallel=False,  # global generators
        )


EXPLAINER = GradientShapExplainer()
