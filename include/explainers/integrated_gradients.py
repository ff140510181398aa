"""Integrated Gradients (captum), for every modality of a model at once.

Attributions are ``(x - x') * integral_0^1 grad f(x' + a (x - x')) da`` per input feature,
approximated by captum with ``steps`` points of ``integrationMethod`` (Gauss-Legendre by
default, which converges much faster than Riemann sums on smooth paths). Multimodal models get
their inputs as a tuple ``(image, tabular)``, so one path moves all modalities together and the
attributions of both modalities share one completeness budget ``f(x) - f(x')``.

Baselines x': ``zeros`` or ``background_mean`` (the mean of all background rows), per
modality; default zeros for images (a blank scan) and the background mean for tabular inputs
(an "average" record: zero is not a meaningful value of, say, a radius in mm).

Batching: instances go to captum in groups of a fixed size (the last group padded), with
``internal_batch_size`` rows per forward/backward pass, both derived from the memory budget and
the size of the whole job — never captum's default of all steps of all instances at once —
so every shard runs passes of the same shapes (bit-identical results, see ``base``).
The method is deterministic: the seed is not used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from include.explainers.base import (
    PREDICT_CHUNK_ROWS,
    Attributions,
    ExplainedModel,
    memory_budget_bytes,
    pow2_ceil,
    pow2_floor,
)
from include.explainers.errors import MethodNotApplicableError, ParameterError
from include.explainers.params import INTEGRATED_GRADIENTS

# Backward keeps activations and their gradients: about 3x a forward pass per row.
BACKWARD_OVERHEAD = 3.0
AUTO_BATCH_MIN, AUTO_BATCH_MAX = 256, 8192


def resolve_baselines(model: ExplainedModel, spec: str | dict[str, str] | None) -> dict[str, str]:
    """The baseline choice for each modality (defaults: zeros for images, mean for tabular)."""
    out = {}
    for modality in model.modalities:
        default = "zeros" if modality.kind == "image" else "background_mean"
        if isinstance(spec, str):
            out[modality.name] = spec
        elif isinstance(spec, dict):
            out[modality.name] = spec.get(modality.name, default)
        else:
            out[modality.name] = default
    return out


def auto_internal_batch_size(model: ExplainedModel) -> int:
    """Rows per pass that fit the memory budget: a power of two in [256, 8192]."""
    rows = memory_budget_bytes() / (model.row_bytes() * BACKWARD_OVERHEAD)
    return int(min(max(pow2_floor(rows), AUTO_BATCH_MIN), AUTO_BATCH_MAX))


class IntegratedGradientsExplainer:
    """Integrated Gradients (see the module docstring)."""

    name = INTEGRATED_GRADIENTS

    def check_model(self, model: ExplainedModel) -> None:
        if not model.differentiable:
            raise MethodNotApplicableError(
                "IntegratedGradients needs a model differentiable in its inputs; this model's "
                "metadata marks it as not differentiable (use KernelSHAP)"
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
        from captum.attr import IntegratedGradients

        started = time.perf_counter()
        steps = int(params["steps"])
        method = str(params["integrationMethod"])
        baselines_spec = resolve_baselines(model, params.get("baseline"))
        inputs = tuple(x.to(model.dtype) for x in inputs)
        n = inputs[0].shape[0]

        baselines = []
        for modality, x, bg in zip(model.modalities, inputs, background, strict=True):
            if baselines_spec[modality.name] == "zeros":
                baselines.append(torch.zeros_like(x))
            else:
                if bg.shape[0] == 0:
                    raise ParameterError("baseline background_mean needs at least one background row")
                # Mean in float64 then cast: the baseline must not depend on summation order.
                mean = bg.double().mean(dim=0).to(model.dtype)
                baselines.append(mean.expand_as(x).contiguous())
        baselines_t = tuple(baselines)

        flat_x, flat_b = model.flatten(inputs), model.flatten(baselines_t)
        scores = model.evaluate(flat_x, PREDICT_CHUNK_ROWS)
        targets = model.targets(scores)
        fx = scores.gather(1, targets[:, None]).squeeze(1).double().numpy()
        fb = (
            model.evaluate(flat_b, PREDICT_CHUNK_ROWS).gather(1, targets[:, None]).squeeze(1).double().numpy()
        )

        requested = params.get("internalBatchSize")
        internal = int(requested) if requested else auto_internal_batch_size(model)
        # Instances per captum call: as many as one pass of all steps allows, never more than the
        # whole job has (so tiny jobs do not pad to hundreds of copies).
        group = max(1, min(internal // steps, pow2_ceil(n_global or n)))
        internal = max(internal, group)  # captum needs at least one step of every instance

        ig = IntegratedGradients(model.scores)
        parts: list[list[torch.Tensor]] = [[] for _ in model.modalities]
        calls = 0
        for start in range(0, n, group):
            stop = min(start + group, n)
            pad = group - (stop - start)
            xs = tuple(_pad(x[start:stop], pad) for x in inputs)
            bs = tuple(_pad(b[start:stop], pad) for b in baselines_t)
            tg = _pad(targets[start:stop], pad)
            attributions = ig.attribute(
                inputs=xs,
                baselines=bs,
                target=tg,
                n_steps=steps,
                method=method,
                internal_batch_size=internal,
            )
            calls += 1
            for k, a in enumerate(attributions):
                parts[k].append(a[: stop - start].detach())
        per_modality = [torch.cat(p) for p in parts]
        features = model.flatten(per_modality).double().numpy()

        resolved: dict[str, Any] = {
            "steps": steps,
            "integrationMethod": method,
            "baseline": baselines_spec,
            "internalBatchSize": internal,
        }
        return Attributions(
            method=INTEGRATED_GRADIENTS,
            player_names=model.feature_names(),
            players=features,
            features=features,
            feature_player=np.arange(features.shape[1]),
            outputs=fx,
            baselines=fb,
            baseline_kind="explained output at the baseline input (f(baseline))",
            targets=targets.numpy(),
            resolved_params=resolved,
            details={
                "instances_per_call": group,
                "captum_calls": calls,
                "requested_internal_batch_size": requested,
                "seconds": time.perf_counter() - started,
            },
        )


def _pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Repeat the last row ``pad`` times (a fixed group shape; the copies are dropped after)."""
    if pad == 0:
        return x
    return torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])


EXPLAINER = IntegratedGradientsExplainer()
