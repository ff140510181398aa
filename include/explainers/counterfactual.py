"""Counterfactual examples for tabular classifiers: the smallest change that flips the prediction.

For an instance x predicted as class c, find x' with ``argmax p(x') != c``, every feature of x'
within its **declared range** (the value ranges of the feature service's Great Expectations
suite files, :func:`include.provenance.expectations.declared_ranges`, the one place they are
written), minimising the L1 distance in units of each feature's background standard deviation

    d(x, x') = sum_j |x'_j - x_j| / scale_j .

A feature that never varies in the background (scale 0) is held fixed. The search, batched
over all instances (a few dozen model calls in all, each over every instance):

1. **rays**: from x along ``2F`` axis directions (one feature up or down: the sparse
   candidates L1 favours) and ``numSamples`` random directions (half of them on 2-3 features,
   half dense), each normalised to unit L1 length and cut at the box of the declared ranges;
   each ray is evaluated at 16 evenly spaced points, the first point that flips brackets the
   decision boundary, and the 32 most promising brackets per instance are bisected 20 times;
   then 8 rounds of 32 rays around the best direction so far (perturbations halving each
   round), each bisected, keep any closer flip (a curved boundary's nearest point lies
   between the sampled rays);
2. **sparsify**: from the best point, each changed feature is moved back towards x as far as
   the prediction stays flipped (an 8-point grid, then bisection, for all features at once),
   the largest saving is applied, and this repeats until nothing improves.

The result is a local optimum of a non-convex problem, not a certificate: on small models the
tests compare it with a brute-force grid search. Every random draw comes from the instance's
seed and every pass has a shape fixed by the whole job, so results are bit-identical across
runs and shards. An instance for which no flip exists inside the ranges (or none was found)
is reported with ``found: false``; the fidelity figure is the share of instances with a valid
counterfactual.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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
from include.explainers.params import COUNTERFACTUAL
from include.explainers.perturbation import background_scale, evaluate_rows, job_chunk_rows

RAY_POINTS = 16  # evaluation points along each ray
BRACKETS = 32  # rays per instance whose first flip is refined by bisection
BISECTIONS = 20
POLISH_ROUNDS = 8  # rounds of rays around the best direction found
POLISH_SIGMA = 0.3  # first round's perturbation of the (unit-L1) direction, halved each round
SPARSIFY_GRID = 8
SPARSIFY_BISECTIONS = 12


def _declared_ranges() -> dict[str, tuple[float, float]]:
    # the suite files, read without Great Expectations (the explainer image has none)
    from include.provenance.expectations import all_suites, declared_ranges

    return declared_ranges(all_suites())


def _inward_bounds(lo: np.ndarray, hi: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The declared bounds rounded inwards to values the model's dtype can hold exactly.

    A row is evaluated in the model's dtype (float32 for the sample models): 0.1 in float32
    is slightly above 0.1, so clipping to the float64 bound and casting could leave the range.
    """
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    lo_c, hi_c = lo.astype(np_dtype), hi.astype(np_dtype)
    lo_c = np.where(lo_c.astype(np.float64) < lo, np.nextafter(lo_c, np_dtype(np.inf)), lo_c)
    hi_c = np.where(hi_c.astype(np.float64) > hi, np.nextafter(hi_c, np_dtype(-np.inf)), hi_c)
    return lo_c.astype(np.float64), hi_c.astype(np.float64)


def _directions(rng: np.random.Generator, varies: np.ndarray, count: int) -> np.ndarray:
    """``2F`` axis directions then ``count`` random ones, each of unit L1 length (or all zero)."""
    n_feat = varies.shape[0]
    axis = np.concatenate([np.eye(n_feat), -np.eye(n_feat)]) * varies
    magnitude = rng.exponential(size=(count, n_feat)) * varies  # exponential -> uniform on the simplex
    signs = np.where(rng.random((count, n_feat)) < 0.5, -1.0, 1.0)
    # The first half keeps only 2-3 of the varying features (sparse moves are what L1 rewards).
    keys = np.where(varies, rng.random((count, n_feat)), np.inf)
    support = rng.integers(2, 4, size=count)[:, None]
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    sparse = np.arange(count)[:, None] < count // 2
    magnitude = np.where(sparse & (ranks >= support), 0.0, magnitude)
    random = magnitude * signs
    out = np.concatenate([axis, random])
    norm = np.abs(out).sum(axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


class CounterfactualExplainer:
    """Minimal-L1 counterfactuals within declared ranges (see the module docstring).

    ``ranges`` maps feature names to (min, max); by default the declared ranges of the
    feature-service suites.
    """

    name = COUNTERFACTUAL

    def __init__(self, ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
        self._ranges = dict(ranges) if ranges is not None else None

    def ranges(self) -> dict[str, tuple[float, float]]:
        return self._ranges if self._ranges is not None else _declared_ranges()

    def check_model(self, model: ExplainedModel) -> None:
        if model.has_image:
            raise MethodNotApplicableError(
                "Counterfactual is implemented for tabular models only; this model has an image input"
            )
        if model.task not in ("binary", "multiclass"):
            raise MethodNotApplicableError(
                f"Counterfactual needs a classifier (a prediction to flip); this model's task is {model.task}"
            )
        ranges = self.ranges()
        missing = [c for c in model.feature_names() if c not in ranges]
        if missing:
            raise MethodNotApplicableError(
                "Counterfactual must stay within the declared feature ranges, but no range is declared "
                f"for {', '.join(missing)} (ranges live in include/provenance/suites.py)"
            )

    # -------------------------------------------------------------------------------- helpers
    def _classes(self, model: ExplainedModel, scores: np.ndarray) -> np.ndarray:
        probabilities = model.class_probabilities(torch.from_numpy(scores))
        return probabilities.argmax(dim=1).numpy()

    def _flipped(
        self,
        model: ExplainedModel,
        x: np.ndarray,
        scale: np.ndarray,
        u: np.ndarray,
        c0: np.ndarray,
        chunk_rows: int,
    ) -> np.ndarray:
        """Whether ``x + scale * u`` (``u`` shaped ``(G, ..., F)``) is predicted differently from x."""
        shape = u.shape[:-1]
        rows = (x.reshape(x.shape[0], *([1] * (u.ndim - 2)), -1) + u * scale).reshape(-1, x.shape[1])
        classes = self._classes(model, evaluate_rows(model, torch.from_numpy(rows), chunk_rows))
        return classes.reshape(shape) != c0.reshape(c0.shape[0], *([1] * (u.ndim - 2)))

    # -------------------------------------------------------------------------------- explain
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
        count = int(params["numSamples"])
        x_t = model.flatten(inputs).to(model.dtype).contiguous()
        n, n_feat = x_t.shape
        seeds = instance_seeds_for(seed, n, instance_seeds)
        bg, bg_w, bg_info = summarise_background(
            model.flatten(background).to(model.dtype).contiguous(),
            params["backgroundDataStrategy"],
            int(params["backgroundDataSubsetSize"]),
            seed,
        )
        _, scale = background_scale(bg, bg_w)
        varies = scale > 0.0
        names = model.feature_names()
        ranges = self.ranges()
        lo, hi = _inward_bounds(
            np.array([ranges[c][0] for c in names], dtype=np.float64),
            np.array([ranges[c][1] for c in names], dtype=np.float64),
            model.dtype,
        )
        safe_scale = np.where(varies, scale, 1.0)
        x = x_t.double().numpy()
        scores0 = model.evaluate(x_t, PREDICT_CHUNK_ROWS)
        targets = model.targets(scores0)
        fx = scores0.gather(1, targets[:, None]).squeeze(1).double().numpy()
        c0 = self._classes(model, scores0.double().numpy())
        # The box of the declared ranges in scaled units around x (x itself always inside it).
        lo_u = np.where(varies, np.minimum((lo - x) / safe_scale, 0.0), 0.0)
        hi_u = np.where(varies, np.maximum((hi - x) / safe_scale, 0.0), 0.0)

        n_dirs = 2 * n_feat + count
        n_job = n_global or n
        chunks = {
            "rays": job_chunk_rows(model, n_dirs * RAY_POINTS, n_job),
            "bisect": job_chunk_rows(model, BRACKETS, n_job),
            "sparsify_grid": job_chunk_rows(model, n_feat * SPARSIFY_GRID, n_job),
            "sparsify_bisect": job_chunk_rows(model, n_feat, n_job),
        }
        per_instance_bytes = n_dirs * RAY_POINTS * n_feat * 8 * 4
        group = max(1, min(n, memory_budget_bytes() // max(per_instance_bytes, 1)))
        best = np.zeros((n, n_feat))
        found = np.zeros(n, dtype=bool)
        rays_l1 = np.full(n, np.nan)
        for g0 in range(0, n, group):
            g1 = min(g0 + group, n)
            sl = slice(g0, g1)
            u, ok, l1 = self._rays(
                model, x[sl], safe_scale, lo_u[sl], hi_u[sl], varies, c0[sl], seeds[g0:g1], count, chunks
            )
            u = self._polish(
                model, x[sl], safe_scale, lo_u[sl], hi_u[sl], varies, u, ok, c0[sl], seeds[g0:g1], chunks
            )
            u = self._sparsify(model, x[sl], safe_scale, u, ok, c0[sl], chunks)
            best[sl], found[sl], rays_l1[sl] = u, ok, l1

        # Final rows in the model's dtype, clipped to the (inward-rounded) ranges, checked again.
        cf = np.where(found[:, None], np.clip(x + best * safe_scale, lo, hi), x)
        cf_t = torch.from_numpy(cf).to(model.dtype)
        cf = cf_t.double().numpy()
        cf_scores = model.evaluate(cf_t, PREDICT_CHUNK_ROWS)
        cf_classes = self._classes(model, cf_scores.double().numpy())
        cf_probs = model.class_probabilities(cf_scores).double().numpy()
        within = ((cf >= lo) & (cf <= hi)).all(axis=1)
        valid = found & (cf_classes != c0) & within
        change = np.where(valid[:, None], cf - x, 0.0)
        scaled = np.where(varies, change / safe_scale, 0.0)
        l1 = np.where(valid, np.abs(scaled).sum(axis=1), np.nan)
        cf_out = cf_scores.gather(1, targets[:, None]).squeeze(1).double().numpy()
        at_cf = np.where(valid, cf_out, fx)

        documents = np.empty(n, dtype=object)
        for i in range(n):
            if not valid[i]:
                documents[i] = None
                continue
            changed = np.flatnonzero(change[i] != 0.0)
            k = int(cf_classes[i])
            documents[i] = {
                "row": dict(zip(names, cf[i].tolist(), strict=True)),
                "changes": {
                    names[j]: {
                        "from": float(x[i, j]),
                        "to": float(cf[i, j]),
                        "delta": float(change[i, j]),
                        "delta_in_background_std": float(scaled[i, j]),
                        "declared_range": [float(ranges[names[j]][0]), float(ranges[names[j]][1])],
                    }
                    for j in changed
                },
                "prediction": {
                    "class": model.class_names[k],
                    "class_index": k,
                    "probability": float(cf_probs[i, k]),
                },
                "original_class": model.class_names[int(c0[i])],
            }
        return Attributions(
            method=COUNTERFACTUAL,
            player_names=names,
            players=scaled,
            features=scaled.copy(),
            feature_player=np.arange(n_feat),
            outputs=fx,
            baselines=at_cf,
            baseline_kind=(
                "explained output at the counterfactual (equal to f(x) when none was found); the "
                "attributions are the counterfactual's change of each feature in background standard "
                "deviations"
            ),
            targets=targets.numpy(),
            resolved_params={
                "numSamples": count,
                "backgroundDataStrategy": params["backgroundDataStrategy"],
                "backgroundDataSubsetSize": int(params["backgroundDataSubsetSize"]),
            },
            per_instance={
                "found": valid,
                "within_ranges": within | ~found,
                "l1_distance": l1,
                "l1_distance_after_rays": rays_l1,
                "changed_features": (change != 0.0).sum(axis=1),
                "counterfactual": documents,
            },
            details={
                "background": bg_info,
                "distance": "L1 in units of each feature's background standard deviation",
                "feature_scale": scale.tolist(),
                "declared_ranges": {c: [float(ranges[c][0]), float(ranges[c][1])] for c in names},
                "fixed_features": [c for c, v in zip(names, varies, strict=True) if not v],
                "directions_per_instance": n_dirs,
                "chunk_rows": chunks,
                "seconds": time.perf_counter() - started,
            },
        )

    def _rays(
        self,
        model: ExplainedModel,
        x: np.ndarray,
        scale: np.ndarray,
        lo_u: np.ndarray,
        hi_u: np.ndarray,
        varies: np.ndarray,
        c0: np.ndarray,
        seeds: Sequence[int],
        count: int,
        chunks: dict[str, int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Phase 1: the nearest flip along rays; returns (u, found, L1) per instance."""
        g = x.shape[0]
        dirs = np.stack([_directions(np.random.default_rng(s), varies, count) for s in seeds])  # (G, K, F)
        with np.errstate(divide="ignore", invalid="ignore"):
            reach = np.where(
                dirs > 0, hi_u[:, None, :] / dirs, np.where(dirs < 0, lo_u[:, None, :] / dirs, np.inf)
            )
        t_max = reach.min(axis=2)
        t_max = np.where(np.isfinite(t_max) & (t_max > 0), t_max, 0.0)  # degenerate rays stay at x
        steps = np.arange(1, RAY_POINTS + 1) / RAY_POINTS
        u = t_max[:, :, None, None] * steps[None, None, :, None] * dirs[:, :, None, :]  # (G, K, T, F)
        flips = self._flipped(model, x, scale, u, c0, chunks["rays"]) & (t_max[:, :, None] > 0)
        has = flips.any(axis=2)
        first = flips.argmax(axis=2)
        lower = np.where(has, t_max * first / RAY_POINTS, np.inf)
        upper = np.where(has, t_max * (first + 1) / RAY_POINTS, np.inf)

        q = min(BRACKETS, dirs.shape[1])
        order = np.lexsort((upper, lower), axis=1)[:, :q]  # smallest lower bound first
        lo_t = np.take_along_axis(lower, order, axis=1)
        hi_t = np.take_along_axis(upper, order, axis=1)
        d = np.take_along_axis(dirs, order[:, :, None], axis=1)
        live = np.isfinite(lo_t)
        lo_t, hi_t = np.where(live, lo_t, 0.0), np.where(live, hi_t, 0.0)
        if q < BRACKETS:  # pad so that every bisection pass has the job's shape
            pad = BRACKETS - q
            lo_t, hi_t = np.pad(lo_t, ((0, 0), (0, pad))), np.pad(hi_t, ((0, 0), (0, pad)))
            d, live = np.pad(d, ((0, 0), (0, pad), (0, 0))), np.pad(live, ((0, 0), (0, pad)))
        for _ in range(BISECTIONS):
            mid = 0.5 * (lo_t + hi_t)
            flip = self._flipped(model, x, scale, mid[:, :, None] * d, c0, chunks["bisect"])
            hi_t = np.where(flip, mid, hi_t)
            lo_t = np.where(flip, lo_t, mid)
        dist = np.where(live, hi_t, np.inf)  # |u|_1 = t for a unit-L1 direction
        pick = dist.argmin(axis=1)
        found = np.isfinite(dist[np.arange(g), pick])
        u_best = np.where(found[:, None], hi_t[np.arange(g), pick][:, None] * d[np.arange(g), pick], 0.0)
        return u_best, found, np.where(found, np.abs(u_best).sum(axis=1), np.nan)

    def _polish(
        self,
        model: ExplainedModel,
        x: np.ndarray,
        scale: np.ndarray,
        lo_u: np.ndarray,
        hi_u: np.ndarray,
        varies: np.ndarray,
        u: np.ndarray,
        found: np.ndarray,
        c0: np.ndarray,
        seeds: Sequence[int],
        chunks: dict[str, int],
    ) -> np.ndarray:
        """Phase 1b: rays near the best one (shrinking perturbations of its direction).

        Where the boundary is curved the nearest L1 point lies between the sampled rays; each
        round tries ``BRACKETS`` directions around the current best and keeps any closer flip.
        """
        g, n_feat = u.shape
        u = u.copy()
        rngs = [np.random.default_rng([int(s), 0xCF]) for s in seeds]
        for r in range(POLISH_ROUNDS):
            best_t = np.abs(u).sum(axis=1)
            base = np.divide(u, best_t[:, None], out=np.zeros_like(u), where=best_t[:, None] > 0)
            noise = np.stack([rng.standard_normal((BRACKETS, n_feat)) for rng in rngs]) * varies
            d = base[:, None, :] + POLISH_SIGMA * 0.5**r * noise
            norm = np.abs(d).sum(axis=2, keepdims=True)
            d = np.divide(d, norm, out=np.zeros_like(d), where=norm > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                reach = np.where(
                    d > 0, hi_u[:, None, :] / d, np.where(d < 0, lo_u[:, None, :] / d, np.inf)
                ).min(axis=2)
            hi_t = np.minimum(best_t[:, None], np.where(np.isfinite(reach), reach, 0.0))
            live = found[:, None] & (hi_t > 0)
            live &= self._flipped(model, x, scale, hi_t[:, :, None] * d, c0, chunks["bisect"])
            lo_t = np.zeros_like(hi_t)
            for _ in range(BISECTIONS):
                mid = 0.5 * (lo_t + hi_t)
                flip = self._flipped(model, x, scale, mid[:, :, None] * d, c0, chunks["bisect"])
                hi_t = np.where(flip, mid, hi_t)
                lo_t = np.where(flip, lo_t, mid)
            dist = np.where(live, hi_t, np.inf)
            pick = dist.argmin(axis=1)
            better = dist[np.arange(g), pick] < best_t
            rows = np.flatnonzero(better)
            u[rows] = hi_t[rows, pick[rows]][:, None] * d[rows, pick[rows]]
        return u

    def _sparsify(
        self,
        model: ExplainedModel,
        x: np.ndarray,
        scale: np.ndarray,
        u: np.ndarray,
        found: np.ndarray,
        c0: np.ndarray,
        chunks: dict[str, int],
    ) -> np.ndarray:
        """Phase 2: move single features back towards x while the prediction stays flipped."""
        g, n_feat = u.shape
        u = u.copy()
        alphas = np.arange(SPARSIFY_GRID) / SPARSIFY_GRID  # 0, 1/8, ..., 7/8 (1 = no change)
        for _ in range(2 * n_feat):
            # candidate[i, j, a] = u_i with feature j scaled by alphas[a]
            cand = np.repeat(u[:, None, None, :], n_feat, axis=1).repeat(SPARSIFY_GRID, axis=2)
            idx = np.arange(n_feat)
            cand[:, idx, :, idx] = u[:, idx].T[:, :, None] * alphas[None, None, :]
            flip = self._flipped(model, x, scale, cand, c0, chunks["sparsify_grid"])  # (G, F, A)
            any_flip = flip.any(axis=2)
            a_first = flip.argmax(axis=2)
            hi_a = np.where(any_flip, alphas[a_first], 1.0)
            lo_a = np.where(any_flip & (a_first > 0), alphas[np.maximum(a_first - 1, 0)], hi_a)
            for _ in range(SPARSIFY_BISECTIONS):
                mid = 0.5 * (lo_a + hi_a)
                cand = np.repeat(u[:, None, :], n_feat, axis=1)
                cand[:, idx, idx] = u[:, idx] * mid
                flip = self._flipped(model, x, scale, cand, c0, chunks["sparsify_bisect"])
                hi_a = np.where(flip, mid, hi_a)
                lo_a = np.where(flip, lo_a, mid)
            saving = np.abs(u) * (1.0 - hi_a)
            j = saving.argmax(axis=1)
            gain = saving[np.arange(g), j]
            improve = found & (gain > 1e-12)
            if not improve.any():
                break
            rows = np.flatnonzero(improve)
            u[rows, j[rows]] *= hi_a[rows, j[rows]]
        return u


EXPLAINER = CounterfactualExplainer()
