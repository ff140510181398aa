"""Exact Shapley values by enumerating every coalition (small player counts only).

The game is KernelSHAP's (:mod:`include.explainers.kernel_shap`): players are the tabular
features and image superpixels, and a coalition's value is the interventional expectation
``v(S) = sum_b w_b f(x_S, bg_b)`` over the summarised background. All ``2^M`` coalitions of
every instance (the empty and the full one included) are evaluated with KernelSHAP's batched
coalition passes, and the values come from the Shapley formula itself, not from a regression:

    phi_j = sum over S not holding j of |S|! (M - |S| - 1)! / M! * (v(S + j) - v(S))

so they are exact up to floating-point rounding, and ``sum(phi) = v(all) - v(empty) =
f(x) - E_bg[f]``. The cost is ``2^M x background rows`` model evaluations per instance, so
more than :data:`MAX_PLAYERS` players are refused before any work (use KernelSHAP, or larger
``imageSuperpixel`` tiles for images).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from include.explainers.base import PREDICT_CHUNK_ROWS, Attributions, ExplainedModel
from include.explainers.errors import MethodNotApplicableError
from include.explainers.kernel_shap import (
    build_players,
    cache_pass_rows,
    coalition_values,
    summarise_background,
)
from include.explainers.params import EXACT_SHAPLEY

MAX_PLAYERS = 16


@functools.lru_cache(maxsize=8)
def all_coalitions(m: int) -> np.ndarray:
    """Every coalition of ``m`` players as a ``(2^m, m)`` bool matrix; row ``c`` is the bits of ``c``."""
    codes = np.arange(1 << m, dtype=np.int64)
    masks = ((codes[:, None] >> np.arange(m, dtype=np.int64)) & 1).astype(bool)
    masks.setflags(write=False)
    return masks


def shapley_from_values(values: np.ndarray, m: int) -> np.ndarray:
    """Shapley values ``(m,)`` from the values ``(2^m,)`` of every coalition (indexed by bit code)."""
    codes = np.arange(1 << m, dtype=np.int64)
    sizes = all_coalitions(m).sum(axis=1)
    # weight[s] = s! (m - s - 1)! / m! for a coalition of size s not holding the player
    weight = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)])
    phi = np.zeros(m)
    for j in range(m):
        without = codes[(codes >> j) & 1 == 0]
        phi[j] = float(np.dot(weight[sizes[without]], values[without | (1 << j)] - values[without]))
    return phi


class ExactShapleyExplainer:
    """Exact Shapley values (see the module docstring)."""

    name = EXACT_SHAPLEY

    def check_model(self, model: ExplainedModel) -> None:
        if model.n_features == 0:
            raise MethodNotApplicableError("ExactShapley needs at least one input feature")

    def check_params(self, model: ExplainedModel, params: dict[str, Any]) -> None:
        """Refuse too many players before any work (the cost doubles with each one)."""
        names, _ = build_players(model.modalities, int(params.get("imageSuperpixel") or 2))
        if len(names) > MAX_PLAYERS:
            hint = " or raise imageSuperpixel so that fewer pixel tiles play" if model.has_image else ""
            raise MethodNotApplicableError(
                f"ExactShapley enumerates all 2^players coalitions and accepts at most {MAX_PLAYERS} "
                f"players; this model has {len(names)} (use KernelSHAP{hint})"
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
        self.check_params(model, params)
        started = time.perf_counter()
        superpixel = int(params.get("imageSuperpixel") or 2)
        names, feature_player = build_players(model.modalities, superpixel)
        m = len(names)
        x = model.flatten(inputs).to(model.dtype).contiguous()
        n = x.shape[0]
        bg, bg_w, bg_info = summarise_background(
            model.flatten(background).to(model.dtype).contiguous(),
            params["backgroundDataStrategy"],
            int(params["backgroundDataSubsetSize"]),
            seed,
        )
        scores = model.evaluate(x, PREDICT_CHUNK_ROWS)
        targets = model.targets(scores)
        fx = scores.gather(1, targets[:, None]).squeeze(1).double().numpy()

        masks = all_coalitions(m).copy()  # writable: torch.from_numpy warns on read-only arrays
        plans = [masks] * n  # the same enumeration for every instance (shared, never written)
        max_rows = masks.shape[0] * bg.shape[0] * (n_global or n)
        chunk_rows = min(model.chunk_rows_for(max_rows), cache_pass_rows(model))
        values, passes = coalition_values(model, x, bg, bg_w, feature_player, plans, targets, chunk_rows)

        phi = np.stack([shapley_from_values(v, m) for v in values]) if n else np.zeros((0, m))
        base = np.array([v[0] for v in values])  # v(empty) = E_bg[f]
        counts = np.bincount(feature_player, minlength=m)
        features = phi[:, feature_player] / counts[feature_player]
        resolved: dict[str, Any] = {
            "backgroundDataStrategy": params["backgroundDataStrategy"],
            "backgroundDataSubsetSize": int(params["backgroundDataSubsetSize"]),
        }
        if model.has_image:
            resolved["imageSuperpixel"] = superpixel
        return Attributions(
            method=EXACT_SHAPLEY,
            player_names=names,
            players=phi,
            features=features,
            feature_player=feature_player,
            outputs=fx,
            baselines=base,
            baseline_kind="expected value of the explained output over the background (E_bg[f])",
            targets=targets.numpy(),
            resolved_params=resolved,
            per_instance={
                "coalitions": np.full(n, masks.shape[0]),
                "full_coalition_value": np.array([v[-1] for v in values]),
            },
            details={
                "background": bg_info,
                "players": m,
                "chunk_rows": chunk_rows,
                "forward_passes": passes,
                "model_rows_evaluated": int(n * masks.shape[0] * bg.shape[0]),
                "seconds": time.perf_counter() - started,
            },
        )


EXPLAINER = ExactShapleyExplainer()
