"""Occlusion (``captum.attr.Occlusion``): the output change when part of the input is replaced.

For each window position, the features under the window take their baseline values and the
attribution of each covered feature is ``f(x) - f(x with the window occluded)``, averaged over
the windows that cover it (Captum's rule). Tabular features are occluded one at a time (window 1),
so for a linear model the attribution of feature i is exactly ``w_i * (x_i - baseline_i)``. Image
inputs ``(C, H, W)`` use a square ``slidingWindow`` over all channels moved by ``strides``
pixels; the windows must tile the image (``(side - window)`` divisible by ``strides``, and
``strides <= slidingWindow``) so that no pixel is left without an attribution. Works on any
model (no gradients): also on models marked not differentiable.

Baselines (``baseline``): ``zeros`` or ``background_mean`` per modality, as for Integrated
Gradients; default zeros for images (a blank patch) and the background mean for tabular
features. The attributions do not add up to ``f(x) - f(baseline)`` in general (interactions
between features are counted once per feature occluded alone).

Evaluation: Captum's ``Occlusion.attribute`` on passes of a fixed number of instances (a power
of two from the memory budget and the whole job's size, the last pass padded), with
``perturbations_per_eval`` a power of two from the budget; passes run on parallel workers with
single-threaded torch ops. Captum evaluates the occluded copies of a pass in batches of
``perturbations_per_eval`` x instances rows, the last batch smaller when the number of windows
is not a multiple; that batch has the same shape in every pass and shard (the shard-union test
checks bit-identity). Deterministic: the seed is not used.
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
    pow2_floor,
)
from include.explainers.errors import ParameterError
from include.explainers.gradient_family import (
    FidelityProbe,
    evaluate_in_passes,
    feature_scale,
    flat_attributions,
    instances_per_pass,
    targets_and_outputs,
)
from include.explainers.params import OCCLUSION

# Forward passes only, but the occluded copies and Captum's accumulators sit beside them.
FORWARD_OVERHEAD = 2.0
DEFAULT_WINDOW = 2


def windows(
    model: ExplainedModel, params: dict[str, Any]
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Captum's ``sliding_window_shapes`` and ``strides`` per modality.

    Raises :class:`ParameterError` when the windows do not tile an image.
    """
    shapes, strides = [], []
    for modality in model.modalities:
        if modality.kind != "image":
            shapes.append((1,) * len(modality.shape))
            strides.append((1,) * len(modality.shape))
            continue
        channels, height, width = modality.shape
        window = int(params.get("slidingWindow") or DEFAULT_WINDOW)
        stride = int(params.get("strides") or window)
        if window > min(height, width):
            raise ParameterError(
                f"slidingWindow {window} is larger than the {height}x{width} image of input {modality.name!r}"
            )
        if stride > window:
            raise ParameterError(
                f"strides {stride} is larger than slidingWindow {window}: pixels would be skipped"
            )
        for side in (height, width):
            if (side - window) % stride:
                raise ParameterError(
                    f"slidingWindow {window} with strides {stride} does not tile the {height}x{width} image "
                    f"of input {modality.name!r}: (side - window) must be a multiple of strides"
                )
        shapes.append((channels, window, window))
        strides.append((1, stride, stride))
    return tuple(shapes), tuple(strides)


def window_count(
    model: ExplainedModel, shapes: Sequence[tuple[int, ...]], strides: Sequence[tuple[int, ...]]
) -> int:
    """Occluded copies per instance (the number of window positions over all modalities)."""
    total = 0
    for modality, shape, stride in zip(model.modalities, shapes, strides, strict=True):
        count = 1
        for side, w, s in zip(modality.shape, shape, stride, strict=True):
            count *= (side - w) // s + 1
        total += count
    return total


def occlusion_baseline(
    model: ExplainedModel, background: tuple[torch.Tensor, ...], spec: str | dict[str, str] | None
) -> tuple[torch.Tensor, dict[str, str]]:
    """The flat (1, F) baseline row and the choice per modality."""
    from include.explainers.integrated_gradients import resolve_baselines

    choice = resolve_baselines(model, spec)
    parts = []
    for modality, bg in zip(model.modalities, background, strict=True):
        if choice[modality.name] == "zeros":
            parts.append(torch.zeros((1, modality.size), dtype=model.dtype))
        else:
            if bg.shape[0] == 0:
                raise ParameterError("baseline background_mean needs at least one background row")
            parts.append(bg.double().mean(dim=0).reshape(1, -1).to(model.dtype))
    return torch.cat(parts, dim=1), choice


def occlusion_rows(
    model: ExplainedModel,
    flat: torch.Tensor,
    targets: torch.Tensor,
    baseline: torch.Tensor,
    shapes: tuple[tuple[int, ...], ...],
    strides: tuple[tuple[int, ...], ...],
    per_eval: int,
) -> np.ndarray:
    """Captum Occlusion of flat rows at fixed target columns, (B, F) float64 (one call)."""
    from captum.attr import Occlusion

    inputs = tuple(t.contiguous() for t in model.split(flat))
    baselines = tuple(t.expand_as(x).contiguous() for t, x in zip(model.split(baseline), inputs, strict=True))
    parts = Occlusion(model.scores).attribute(
        inputs,
        sliding_window_shapes=shapes,
        strides=strides,
        baselines=baselines,
        target=targets,
        perturbations_per_eval=per_eval,
    )
    return flat_attributions(model, parts)


class OcclusionExplainer:
    """Occlusion (see the module docstring)."""

    name = OCCLUSION

    def check_model(self, model: ExplainedModel) -> None:
        """Any model with inputs: occlusion needs forward passes only."""

    def check_params(self, model: ExplainedModel, params: dict[str, Any]) -> None:
        """Window and stride against the image sizes, before any work (ParameterError)."""
        windows(model, params)

    def _plan(
        self, model: ExplainedModel, params: dict[str, Any], n_job: int
    ) -> tuple[Any, Any, int, int, int]:
        shapes, strides = windows(model, params)
        count = window_count(model, shapes, strides)
        row_bytes = model.row_bytes() * FORWARD_OVERHEAD
        per_eval = min(pow2_floor(count), max(pow2_floor(memory_budget_bytes() / row_bytes), 1))
        per_pass = instances_per_pass(model, per_eval, n_job, FORWARD_OVERHEAD)
        return shapes, strides, count, per_eval, per_pass

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
        baseline, choice = occlusion_baseline(model, background, params.get("baseline"))
        shapes, strides, count, per_eval, per_pass = self._plan(model, params, n_global or n)
        targets, fx = targets_and_outputs(model, x)
        fb = model.evaluate(baseline.expand(n, -1).contiguous(), PREDICT_CHUNK_ROWS)
        fb = fb.gather(1, targets[:, None]).squeeze(1).double().numpy()
        features, passes = evaluate_in_passes(
            n,
            per_pass,
            lambda rows: occlusion_rows(
                model,
                x[torch.from_numpy(rows)],
                targets[torch.from_numpy(rows)],
                baseline,
                shapes,
                strides,
                per_eval,
            ),
            x.shape[1],
        )
        resolved: dict[str, Any] = {"baseline": choice}
        if model.has_image:
            image_shape = next(s for s, m in zip(shapes, model.modalities, strict=True) if m.kind == "image")
            image_stride = next(
                s for s, m in zip(strides, model.modalities, strict=True) if m.kind == "image"
            )
            resolved["slidingWindow"] = image_shape[-1]
            resolved["strides"] = image_stride[-1]
        return Attributions(
            method=OCCLUSION,
            player_names=model.feature_names(),
            players=features,
            features=features,
            feature_player=np.arange(x.shape[1]),
            outputs=fx,
            baselines=fb,
            baseline_kind="f(baseline): the explained output with every feature at its occlusion baseline",
            targets=targets.numpy(),
            resolved_params=resolved,
            details={
                "windows_per_instance": count,
                "perturbations_per_eval": per_eval,
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
        x = model.flatten(inputs).to(model.dtype).contiguous()
        baseline, _ = occlusion_baseline(model, background, params.get("baseline"))
        shapes, strides, count, per_eval, _ = self._plan(model, params, n_global or x.shape[0])
        return FidelityProbe(
            model=model,
            x=x,
            targets=torch.from_numpy(attributions.targets).long(),
            seeds=list(instance_seeds),
            attributions=attributions.features,
            scale=feature_scale(model, model.flatten(background)),
            explain_rows=lambda rows, targets, owners: occlusion_rows(
                model, rows, targets, baseline, shapes, strides, per_eval
            ),
            reference=baseline.expand_as(x),
            rows_per_explanation=count + 1,
            n_job=n_global or x.shape[0],
        )


EXPLAINER = OcclusionExplainer()
