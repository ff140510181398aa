"""DeepSHAP: DeepLift averaged over background baselines (Captum ``DeepLiftShap``).

``attr(x) = sum_b w_b * DeepLift(x; baseline b)`` over the (summarised, weighted) background
rows. DeepLift's rescale rule makes each term add up exactly to ``f(x) - f(b)``, so the
attributions add up to ``f(x) - E_bg[f]``; for a linear model they equal ``w * (x - E_bg[x])``
exactly. Deterministic given the background summary (``backgroundDataStrategy``,
``backgroundDataSubsetSize`` as for KernelSHAP; the seed only draws the subset).

Which models: DeepLift needs a rule for every nonlinearity on the way from the input to the
explained output. Captum has rules for its supported modules (ReLU, ELU, LeakyReLU, Sigmoid,
Tanh, Softplus, MaxPool, Softmax); SiLU, GELU and Mish modules get the rescale rule here
(:func:`include.explainers.gradient_family.deeplift_rules`). Any other nonlinearity — a
functional ``torch.relu`` inside ``forward``, a product of two input-dependent tensors, a
Hardswish — would silently receive plain gradients and give wrong attributions, so
:meth:`check_model` refuses such a model with a :class:`MethodNotApplicableError` naming what
it found (:func:`include.explainers.gradient_family.deeplift_problems`). Multiclass models are
refused too: their explained output is a log-softmax over all logits, which has no DeepLift
rule. Of the sample models, the binary tabular one (SiLU) can be explained; the multimodal
one is multiclass and is refused (use GradientSHAP or KernelSHAP for it).

Evaluation: Captum's ``DeepLiftShap`` expands every input over all baselines and averages
uniformly. The same computation is done here with Captum's ``DeepLift`` on explicit (instance,
background row) pairs, so that weighted (k-means) backgrounds work and every pass has a fixed
power-of-two shape: the background is padded to a power of two with zero-weight rows, passes
hold a fixed number of instances (from the memory budget and the whole job's size, the last
pass padded), and the per-pair attributions are averaged in float64. Passes run one after the
other: DeepLift installs hooks on the model's modules during a call, which parallel calls on
the same module would see.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from include.explainers.base import Attributions, ExplainedModel, pow2_ceil
from include.explainers.errors import MethodNotApplicableError
from include.explainers.gradient_family import (
    FidelityProbe,
    deeplift_problems,
    deeplift_rules,
    evaluate_in_passes,
    expected_output,
    explained_output_module,
    feature_scale,
    instances_per_pass,
    require_differentiable,
    targets_and_outputs,
    weighted_mean,
)
from include.explainers.params import DEEP_SHAP


def padded_background(bg: torch.Tensor, weights: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Background rows padded to a power of two (copies of the last row) and float64 weights (0 on pads)."""
    rows = pow2_ceil(bg.shape[0])
    pad = rows - bg.shape[0]
    padded = torch.cat([bg, bg[-1:].expand(pad, -1)]) if pad else bg
    w = np.concatenate([np.asarray(weights, dtype=np.float64), np.zeros(pad)])
    return padded.contiguous(), torch.from_numpy(w)


def deep_shap_rows(
    model: ExplainedModel, flat: torch.Tensor, bg: torch.Tensor, bg_w: torch.Tensor
) -> np.ndarray:
    """Weighted DeepLift average over the (padded) background for each flat row, (B, F) float64."""
    from captum.attr import DeepLift

    n, n_bg, n_feat = flat.shape[0], bg.shape[0], flat.shape[1]
    pairs_x = flat.detach().repeat_interleave(n_bg, dim=0)
    pairs_b = bg.repeat(n, 1)
    network = explained_output_module(model)
    explainer = DeepLift(network)
    inputs = tuple(t.contiguous().requires_grad_(True) for t in model.split(pairs_x))
    baselines = tuple(t.contiguous() for t in model.split(pairs_b))
    with torch.enable_grad(), warnings.catch_warnings(), deeplift_rules():
        # Captum announces on every call that it sets hooks on the nonlinear modules (and removes them).
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        parts = explainer.attribute(inputs, baselines=baselines, target=0)
    per_pair = torch.cat([p.detach().reshape(p.shape[0], -1) for p in parts], dim=1).double()
    return (per_pair.view(n, n_bg, n_feat) * bg_w[None, :, None]).sum(1).numpy()


class DeepShapExplainer:
    """DeepSHAP (see the module docstring)."""

    name = DEEP_SHAP

    def check_model(self, model: ExplainedModel) -> None:
        require_differentiable(model, DEEP_SHAP)
        if model.task == "multiclass":
            raise MethodNotApplicableError(
                "DeepSHAP cannot explain a multiclass model: its explained output, the log-softmax of "
                "the predicted class, has no DeepLift rule (use GradientSHAP or KernelSHAP)"
            )
        problems = deeplift_problems(model.module)
        if problems:
            raise MethodNotApplicableError(
                "DeepSHAP (Captum DeepLift) cannot explain this model exactly: "
                + "; ".join(problems[:5])
                + ("; ..." if len(problems) > 5 else "")
                + ". Supported nonlinearities are the modules ReLU, ELU, LeakyReLU, Sigmoid, Tanh, "
                "Softplus, MaxPool, Softmax, SiLU, GELU and Mish (use GradientSHAP or KernelSHAP)"
            )

    def _background(
        self, model: ExplainedModel, background: tuple[torch.Tensor, ...], params: dict[str, Any], seed: int
    ) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
        from include.explainers.kernel_shap import summarise_background

        bg_all = model.flatten(background).to(model.dtype).contiguous()
        return summarise_background(
            bg_all, params["backgroundDataStrategy"], int(params["backgroundDataSubsetSize"]), seed
        )

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
        x = model.flatten(inputs).to(model.dtype).contiguous()
        n = x.shape[0]
        bg, bg_w, info = self._background(model, background, params, seed)
        padded, padded_w = padded_background(bg, bg_w)
        targets, fx = targets_and_outputs(model, x)
        base = expected_output(model, bg, bg_w, targets)
        # DeepLift runs inputs and baselines through the model together: 2 rows per pair.
        per_pass = instances_per_pass(model, 2 * padded.shape[0], n_global or n)
        features, passes = evaluate_in_passes(
            n,
            per_pass,
            lambda rows: deep_shap_rows(model, x[torch.from_numpy(rows)], padded, padded_w),
            x.shape[1],
            parallel=False,
        )
        return Attributions(
            method=DEEP_SHAP,
            player_names=model.feature_names(),
            players=features,
            features=features,
            feature_player=np.arange(x.shape[1]),
            outputs=fx,
            baselines=base,
            baseline_kind="expected value of the explained output over the background (E_bg[f])",
            targets=targets.numpy(),
            resolved_params={
                "backgroundDataStrategy": params["backgroundDataStrategy"],
                "backgroundDataSubsetSize": int(params["backgroundDataSubsetSize"]),
            },
            details={
                "background": info,
                "background_rows_padded": int(padded.shape[0]),
                "instances_per_pass": per_pass,
                "passes": passes,
                "seconds": time.perf_counter() - started,
            },
        )

    @staticmethod
    def background_is_sampled(params: dict[str, Any], n_background: int) -> bool:
        """Whether the seed changes the background summary (else a rerun is identical)."""
        return (
            params["backgroundDataStrategy"] != "all"
            and int(params["backgroundDataSubsetSize"]) < n_background
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
    ) -> Attributions | None:
        """The same job on the background summary drawn with seed + 1; None when it cannot differ."""
        if not self.background_is_sampled(params, background[0].shape[0]):
            return None
        return self.explain(model, inputs, background, params, seed + 1, instance_seeds, n_global=n_global)

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
        bg, bg_w, _ = self._background(model, background, params, seed)
        padded, padded_w = padded_background(bg, bg_w)
        x = model.flatten(inputs).to(model.dtype).contiguous()
        return FidelityProbe(
            model=model,
            x=x,
            targets=torch.from_numpy(attributions.targets).long(),
            seeds=list(instance_seeds),
            attributions=attributions.features,
            scale=feature_scale(model, model.flatten(background)),
            explain_rows=lambda rows, targets, owners: deep_shap_rows(model, rows, padded, padded_w),
            reference=weighted_mean(bg, bg_w).expand_as(x),
            rows_per_explanation=2 * padded.shape[0],
            n_job=n_global or x.shape[0],
            parallel=False,  # DeepLift hooks the model's modules during a call
        )


EXPLAINER = DeepShapExplainer()
