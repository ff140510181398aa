"""KernelSHAP in torch, batched.

The game: players are the tabular features and, for image inputs, square superpixels. The
value of a coalition z for instance x is the *interventional* expectation

    v(z) = sum_b w_b * f(x_z, bg_b)         (players outside z take background row b's values)

over the (weighted) background rows. Shapley values are estimated as in Lundberg & Lee (2017)
by a Shapley-kernel weighted least squares over coalitions, with the efficiency constraint
``sum(phi) = f(x) - E_bg[f]`` imposed exactly (one unknown eliminated), never by penalty, and
no regularisation (no feature is dropped).

Coalitions, per instance (shap's KernelExplainer scheme, with stratified draws):

* ``2^M - 2 <= numSamples``: every coalition is enumerated -> the exact Shapley values;
* otherwise the coalition sizes whose whole set fits the budget (given the kernel weight mass
  of that size) are enumerated from the outside in (size 1 and M-1, then 2 and M-2, ...), and
  the rest of the budget is sampled in complementary (antithetic) pairs, split across the
  remaining sizes in proportion to their kernel mass and drawn without replacement within a
  size (see :func:`sample_coalitions`).

A player whose values in x equal those of every background row is a *dummy* of the game and
has a Shapley value of exactly 0: it is left out of the regression (exact, not a heuristic).

All coalitions x background rows of all instances are streamed through the model in chunks of
a fixed number of rows sized by the memory budget — few, large forward passes.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from include.explainers.base import (
    PREDICT_CHUNK_ROWS,
    Attributions,
    ExplainedModel,
    Modality,
    instance_seed,
)
from include.explainers.errors import MethodNotApplicableError, ParameterError
from include.explainers.params import KERNEL_SHAP

# ----------------------------------------------------------------------------- players


def build_players(modalities: Sequence[Modality], superpixel: int) -> tuple[list[str], np.ndarray]:
    """Player names and, for each flat feature, the index of its player.

    Tabular columns are one player each; an image ``(C, H, W)`` is cut into ``superpixel`` x
    ``superpixel`` tiles (all channels together), the last row/column of tiles cut short when
    the side is not a multiple.
    """
    names: list[str] = []
    feature_player: list[np.ndarray] = []
    for modality in modalities:
        if modality.kind == "image":
            channels, height, width = modality.shape
            if superpixel > max(height, width):
                raise ParameterError(
                    f"imageSuperpixel {superpixel} is larger than the {height}x{width} image of input "
                    f"{modality.name!r}"
                )
            grid = np.empty((channels, height, width), dtype=np.int64)
            for r0 in range(0, height, superpixel):
                for c0 in range(0, width, superpixel):
                    r1, c1 = min(r0 + superpixel, height), min(c0 + superpixel, width)
                    grid[:, r0:r1, c0:c1] = len(names)
                    names.append(f"{modality.name}[r{r0}:{r1},c{c0}:{c1}]")
            feature_player.append(grid.reshape(-1))
        else:
            start = len(names)
            names.extend(modality.columns)
            feature_player.append(np.arange(start, start + modality.size, dtype=np.int64))
    return names, np.concatenate(feature_player)


# ----------------------------------------------------------------------------- background


def summarise_background(
    background: torch.Tensor, strategy: str, size: int, seed: int
) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """The background rows the game uses and their weights (summing to 1).

    random_subset: ``size`` rows drawn without replacement (seeded); kmeans: ``size`` k-means
    centroids (seeded) weighted by cluster size; all: every row. Asking for at least as many
    rows as there are keeps every row (nothing to summarise).
    """
    n = background.shape[0]
    if strategy == "all" or size >= n:
        rows, weights = background, np.full(n, 1.0 / n)
    elif strategy == "random_subset":
        rng = np.random.default_rng([int(seed), 0xB6])
        index = np.sort(rng.choice(n, size=size, replace=False))
        rows, weights = background[torch.from_numpy(index)], np.full(size, 1.0 / size)
    elif strategy == "kmeans":
        from sklearn.cluster import KMeans

        data = background.detach().double().numpy()
        km = KMeans(n_clusters=size, random_state=int(seed) % (2**32), n_init=3).fit(data)
        counts = np.bincount(km.labels_, minlength=size).astype(np.float64)
        keep = counts > 0  # an empty cluster carries no probability mass
        rows = torch.from_numpy(km.cluster_centers_[keep]).to(background.dtype)
        weights = counts[keep] / counts.sum()
    else:
        raise ParameterError(f"unknown backgroundDataStrategy {strategy!r}")
    info = {"strategy": strategy, "rows_available": int(n), "rows_used": int(rows.shape[0])}
    return rows.contiguous(), weights, info


# ----------------------------------------------------------------------------- coalitions


def shapley_kernel(m: int, size: int) -> float:
    """Shapley kernel weight of ONE coalition of ``size`` among ``m`` players."""
    return (m - 1) / (math.comb(m, size) * size * (m - size))


def _pair_classes(m: int) -> list[tuple[int, int, float]]:
    """(size s, number of complementary pairs {z, ~z} with |z| = s, kernel mass) for s <= m/2.

    The mass is the total Shapley-kernel weight of every coalition of size s and m - s.
    """
    classes = []
    for size in range(1, m // 2 + 1):
        middle = 2 * size == m
        pairs = math.comb(m, size) // 2 if middle else math.comb(m, size)
        mass = (m - 1) / (size * (m - size)) * (1 if middle else 2)
        classes.append((size, pairs, mass))
    total = sum(c[2] for c in classes)
    return [(s, p, w / total) for s, p, w in classes]


def _draw_pairs(m: int, size: int, count: int, total: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` distinct coalitions z of ``size`` (without replacement; one per pair {z, ~z})."""
    middle = 2 * size == m
    if total <= 50_000 or 4 * count >= total:
        # Small class (or most of it wanted): list it and pick, no rejection loop.
        combos = [c for c in itertools.combinations(range(m), size) if not middle or c[0] == 0]
        picked = rng.choice(len(combos), size=count, replace=False)
        out = []
        for index in np.sort(picked):
            mask = np.zeros(m, dtype=bool)
            mask[list(combos[index])] = True
            out.append(mask)
        return out
    seen: set[bytes] = set()
    out = []
    while len(out) < count:
        mask = np.zeros(m, dtype=bool)
        mask[rng.permutation(m)[:size]] = True
        if middle and not mask[0]:
            mask = ~mask  # canonical member of the pair, so a pair is never drawn twice
        key = mask.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(mask)
    return out


def sample_coalitions(
    m: int, num_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Coalitions ``(S, m)`` bool, their weights ``(S,)`` (sum 1) and whether the set is complete.

    The empty and the full coalition are excluded: they enter as the exact constraint.
    Coalitions always come in complementary pairs {z, ~z} (antithetic sampling). Pair classes
    (sizes s and m - s) are enumerated from the outside in while the budget share their kernel
    mass earns covers the whole class (shap's rule); the remaining budget is split across the
    remaining classes in proportion to their kernel mass and drawn without replacement inside
    each class. A drawn coalition stands for ``pairs / drawn`` coalitions of its class
    (Horvitz-Thompson weight): stratifying by size removes the variance a random
    size mix adds (measured on 10-feature MLPs: 18-50 % lower error than shap's draws).
    ``numSamples`` is an upper bound: an odd remainder leaves one coalition unused.
    """
    if m <= 1:
        return np.zeros((0, m), dtype=bool), np.zeros(0), True
    if m < 62 and (1 << m) - 2 <= num_samples:
        codes = np.arange(1, (1 << m) - 1, dtype=np.int64)
        masks = ((codes[:, None] >> np.arange(m, dtype=np.int64)) & 1).astype(bool)
        sizes = masks.sum(1)
        weights = np.array([0.0] + [shapley_kernel(m, s) for s in range(1, m)])[sizes]
        return masks, weights / weights.sum(), True

    classes = _pair_classes(m)
    masks: list[np.ndarray] = []
    weights: list[float] = []
    left = num_samples
    remaining = np.array([c[2] for c in classes])
    first_sampled = len(classes)
    for index, (size, pairs, mass) in enumerate(classes):
        coalitions = 2 * pairs
        if left * remaining[index] / coalitions < 1.0 - 1e-8:
            first_sampled = index
            break
        left -= coalitions
        if remaining[index] < 1.0:
            remaining = remaining / (1.0 - remaining[index])
        w = mass / coalitions
        for combo in itertools.combinations(range(m), size):
            if 2 * size == m and combo[0] != 0:
                continue  # the middle class: each pair once
            mask = np.zeros(m, dtype=bool)
            mask[list(combo)] = True
            masks += [mask, ~mask]
            weights += [w, w]

    rest = classes[first_sampled:]
    if rest:
        budget_pairs = left // 2
        share = np.array([c[2] for c in rest])
        share = share / share.sum()
        capacity = np.array([c[1] for c in rest])
        alloc = np.minimum(np.floor(budget_pairs * share).astype(np.int64), capacity)
        # Hand out the pairs lost to rounding, largest unmet share first.
        while alloc.sum() < budget_pairs and (alloc < capacity).any():
            gap = np.where(alloc < capacity, budget_pairs * share - alloc, -np.inf)
            alloc[int(np.argmax(gap))] += 1
        for (size, pairs, mass), drawn in zip(rest, alloc, strict=True):
            if drawn == 0:
                continue
            w = mass / (2 * int(drawn))
            for mask in _draw_pairs(m, size, int(drawn), pairs, rng):
                masks += [mask, ~mask]
                weights += [w, w]
    out_w = np.asarray(weights, dtype=np.float64)
    return np.asarray(masks, dtype=bool).reshape(-1, m), out_w / out_w.sum(), False


def solve_constrained(masks: np.ndarray, weights: np.ndarray, values: np.ndarray, delta: float) -> np.ndarray:
    """Weighted least squares ``values ~ masks @ phi`` subject to ``sum(phi) == delta``.

    ``values`` are v(z) - v(empty). The constraint is imposed by eliminating the last player
    (phi_last = delta - sum(others)), so efficiency holds to float64 rounding.
    """
    m = masks.shape[1]
    if m == 0:
        return np.zeros(0)
    if m == 1:
        return np.array([delta])
    z = masks.astype(np.float64)
    design = z[:, :-1] - z[:, -1:]
    target = values - z[:, -1] * delta
    root = np.sqrt(weights)
    rest, *_ = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)
    return np.append(rest, delta - rest.sum())


# ----------------------------------------------------------------------------- streaming


class _OutputQueue:
    """Model outputs in stream order; ``take(n)`` pops the next n."""

    def __init__(self) -> None:
        self._parts: deque[torch.Tensor] = deque()
        self.available = 0

    def push(self, values: torch.Tensor) -> None:
        self._parts.append(values)
        self.available += values.shape[0]

    def take(self, n: int) -> torch.Tensor:
        pieces, need = [], n
        while need:
            head = self._parts[0]
            if head.shape[0] <= need:
                pieces.append(self._parts.popleft())
                need -= head.shape[0]
            else:
                pieces.append(head[:need])
                self._parts[0] = head[need:]
                need = 0
        self.available -= n
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def coalition_values(
    model: ExplainedModel,
    x: torch.Tensor,
    background: torch.Tensor,
    bg_weights: np.ndarray,
    feature_player: np.ndarray,
    plans: Sequence[np.ndarray],
    targets: torch.Tensor,
    chunk_rows: int,
) -> tuple[list[np.ndarray], int]:
    """v(z) for every planned coalition of every instance; returns (values per instance, passes).

    ``plans[i]`` is an (S_i, P) bool matrix over all players. Rows are (coalition, background
    row) pairs, built with one ``torch.where`` per block of coalitions and copied into a
    fixed-size buffer that is evaluated whenever full (the last one padded).
    """
    n_bg, n_feat = background.shape
    w_bg = torch.from_numpy(np.asarray(bg_weights, dtype=np.float64))
    buffer = torch.empty((chunk_rows, n_feat), dtype=x.dtype)
    row_targets = torch.zeros(chunk_rows, dtype=torch.long)
    queue = _OutputQueue()
    pending: deque[tuple[int, int]] = deque()
    results: list[np.ndarray] = [np.zeros(0) for _ in plans]
    fill = 0
    passes = 0
    feat_player_t = torch.from_numpy(feature_player)

    def drain() -> None:
        while pending and queue.available >= pending[0][1]:
            index, rows = pending.popleft()
            out = queue.take(rows).double().reshape(-1, n_bg)
            results[index] = (out @ w_bg).numpy()

    def run(m: int) -> None:
        nonlocal passes
        if m < chunk_rows:
            buffer[m:] = buffer[m - 1]
            row_targets[m:] = row_targets[m - 1]
        with torch.inference_mode():
            scores = model.scores(*model.split(buffer))
            queue.push(scores.gather(1, row_targets[:, None]).squeeze(1)[:m].clone())
        passes += 1
        drain()

    per_block = max(1, chunk_rows // n_bg)
    for i, plan in enumerate(plans):
        if plan.shape[0] == 0:
            continue
        pending.append((i, plan.shape[0] * n_bg))
        feature_masks = torch.from_numpy(plan)[:, feat_player_t]  # (S, F)
        for s0 in range(0, plan.shape[0], per_block):
            block = torch.where(feature_masks[s0 : s0 + per_block, None, :], x[i], background[None])
            block = block.reshape(-1, n_feat)
            pos = 0
            while pos < block.shape[0]:
                take = min(chunk_rows - fill, block.shape[0] - pos)
                buffer[fill : fill + take] = block[pos : pos + take]
                row_targets[fill : fill + take] = targets[i]
                fill += take
                pos += take
                if fill == chunk_rows:
                    run(fill)
                    fill = 0
    if fill:
        run(fill)
    drain()
    return results, passes


# ----------------------------------------------------------------------------- explainer


class KernelShapExplainer:
    """KernelSHAP (see the module docstring)."""

    name = KERNEL_SHAP

    def check_model(self, model: ExplainedModel) -> None:
        if model.n_features == 0:
            raise MethodNotApplicableError("KernelSHAP needs at least one input feature")

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
        superpixel = int(params.get("imageSuperpixel") or 2)
        num_samples = int(params["numSamples"])
        names, feature_player = build_players(model.modalities, superpixel)
        n_players = len(names)
        x = model.flatten(inputs).to(model.dtype).contiguous()
        bg_all = model.flatten(background).to(model.dtype).contiguous()
        n = x.shape[0]
        seeds = (
            list(instance_seeds)
            if instance_seeds is not None
            else [instance_seed(seed, str(i)) for i in range(n)]
        )
        if len(seeds) != n:
            raise ValueError("one instance seed per input row is required")

        bg, bg_w, bg_info = summarise_background(
            bg_all, params["backgroundDataStrategy"], int(params["backgroundDataSubsetSize"]), seed
        )
        scores = model.evaluate(x, PREDICT_CHUNK_ROWS)
        targets = model.targets(scores)
        fx = scores.gather(1, targets[:, None]).squeeze(1).double().numpy()
        bg_scores = model.evaluate(bg, PREDICT_CHUNK_ROWS).double().numpy()  # (B, K)
        expected = bg_w @ bg_scores  # (K,) E_bg[f] per output column
        base = expected[targets.numpy()]

        # Dummy players (x equals every background row on all the player's features).
        active = np.zeros((n, n_players), dtype=bool)
        for i in range(n):  # per instance: an (N, B, F) comparison could be large
            differs = (bg != x[i]).any(dim=0).numpy()
            np.logical_or.at(active[i], feature_player, differs)

        plans: list[np.ndarray] = []
        local: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        exact = np.zeros(n, dtype=bool)
        for i in range(n):
            players = np.flatnonzero(active[i])
            masks, weights, is_exact = sample_coalitions(
                len(players), num_samples, np.random.default_rng(seeds[i])
            )
            plan = np.ones((masks.shape[0], n_players), dtype=bool)  # dummies: either value is the same
            plan[:, players] = masks
            plans.append(plan)
            local.append((players, masks, weights))
            exact[i] = is_exact

        # Sized over the whole job so that every shard evaluates in chunks of the same shape.
        max_rows = num_samples * bg.shape[0] * (n_global or n)
        chunk_rows = model.chunk_rows_for(max_rows)
        values, passes = coalition_values(model, x, bg, bg_w, feature_player, plans, targets, chunk_rows)

        phi = np.zeros((n, n_players))
        for i, (players, masks, weights) in enumerate(local):
            delta = fx[i] - base[i]
            if len(players):
                phi[i, players] = solve_constrained(masks, weights, values[i] - base[i], delta)
        counts = np.bincount(feature_player, minlength=n_players)
        features = phi[:, feature_player] / counts[feature_player]
        resolved = {
            "numSamples": num_samples,
            "backgroundDataStrategy": params["backgroundDataStrategy"],
            "backgroundDataSubsetSize": int(params["backgroundDataSubsetSize"]),
        }
        if model.has_image:
            resolved["imageSuperpixel"] = superpixel
        return Attributions(
            method=KERNEL_SHAP,
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
                "coalitions": np.array([p.shape[0] for p in plans]),
                "active_players": active.sum(1),
                "exact": exact,
            },
            details={
                "background": bg_info,
                "players": n_players,
                "chunk_rows": chunk_rows,
                "forward_passes": passes,
                "model_rows_evaluated": int(sum(p.shape[0] for p in plans) * bg.shape[0]),
                "seconds": time.perf_counter() - started,
            },
        )


EXPLAINER = KernelShapExplainer()
