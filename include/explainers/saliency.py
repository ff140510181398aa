"""Saliency: the gradient of the explained output at the input (``captum.attr.Saliency``).

``attr_i = d f(x) / d x_i`` (``abs: true``: its absolute value, Captum's default). A local,
reference-free explanation: it says how the explained output moves for a small change of each
feature, in output units per feature unit, and does not add up to anything. The default here
is the signed gradient (``abs: false``): the sign says in which direction a feature pushes,
and the fidelity metric (Captum ``infidelity`` against small Gaussian perturbations) compares
signed first-order predictions with the signed output change.

Evaluation: Captum's ``Saliency.attribute`` on passes of a fixed number of instances (a power
of two from the memory budget and the whole job's size, the last pass padded), passes on
parallel workers with single-threaded torch ops — the same scheme as Integrated Gradients, so
shards are bit-identical to one run. Deterministic: the seed is not used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from include.explainers.base import Attributions, ExplainedModel
from include.explainers.gradient_family import (
    FidelityProbe,
    evaluate_in_passes,
    feature_scale,
    flat_attributions,
    instances_per_pass,
    require_differentiable,
    targets_and_outputs,
)
from include.explainers.params import SALIENCY


def saliency_rows(
    model: ExplainedModel, flat: torch.Tensor, targets: torch.Tensor, absolute: bool
) -> np.ndarray:
    """Captum Saliency of flat rows at fixed target columns, (B, F) float64 (one call)."""
    from captum.attr import Saliency

    inputs = tuple(t.contiguous().requires_grad_(True) for t in model.split(flat.detach()))
    with torch.enable_grad():
        parts = Saliency(model.scores).attribute(inputs, target=targets, abs=absolute)
    return flat_attributions(model, parts)


class SaliencyExplainer:
    """Saliency (see the module docstring)."""

    name = SALIENCY

    def check_model(self, model: ExplainedModel) -> None:
        require_differentiable(model, SALIENCY)

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
        absolute = bool(params.get("abs", False))
        x = model.flatten(inputs).to(model.dtype).contiguous()
        n = x.shape[0]
        targets, fx = targets_and_outputs(model, x)
        per_pass = instances_per_pass(model, 1, n_global or n)
        features, passes = evaluate_in_passes(
            n,
            per_pass,
            lambda rows: saliency_rows(
                model, x[torch.from_numpy(rows)], targets[torch.from_numpy(rows)], absolute
            ),
            x.shape[1],
        )
        return Attributions(
            method=SALIENCY,
            player_names=model.feature_names(),
            players=features,
            features=features,
            feature_player=np.arange(x.shape[1]),
            outputs=fx,
            baselines=fx.copy(),
            baseline_kind=(
                "none: Saliency is the gradient at x and has no reference point (the value repeats f(x))"
            ),
            targets=targets.numpy(),
            resolved_params={"abs": absolute},
            details={
                "instances_per_pass": per_pass,
                "passes": passes,
                "seconds": time.perf_counter() - started,
            },
        )

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
        absolute = bool(params.get("abs", False))
        x = model.flatten(inputs).to(model.dtype).contiguous()
        return FidelityProbe(
            model=model,
            x=x,
            targets=torch.from_numpy(attributions.targets).long(),
            seeds=list(instance_seeds),
            attributions=attributions.features,
            scale=feature_scale(model, model.flatten(background)),
            explain_rows=lambda rows, targets, owners: saliency_rows(model, rows, targets, absolute),
            reference=None,
            rows_per_explanation=1,
            n_job=n_global or x.shape[0],
        )


EXPLAINER = SaliencyExplainer()
