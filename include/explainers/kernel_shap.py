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

All (instance, coalition) pairs of all instances form one stream cut into passes of a fixed
shape (``pairs x background rows``, about 16 MiB of working set, within the memory budget);
the mixed rows are written straight into each pass's buffer and the passes run on parallel
workers with single-threaded torch ops (:func:`run_passes`). Coalition sampling shares the
enumerated part and the draw plan across instances, and the constrained least squares uses
the normal equations (well conditioned for Shapley-kernel designs). On 2 cores this explains
~540 rows/s of a 20->16->1 MLP at numSamples 500 with 100 background rows, ~5x stock shap
(bench/bench_kernel_shap.py).

On a GPU (``XAC_EXPLAIN_DEVICE``, :mod:`include.explainers.device`) the pass buffers, the
mixing and the background reduction live on the device, passes are sized from its free memory
(up to 2^21 rows) and run back to back; coalition sampling and the least squares stay on the
CPU (about 0.7 ms per instance here for 20 features at numSamples 500: the ceiling of a GPU
run; bench/bench_gpu.py measures it).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from include.explainers.base import (
    PREDICT_CHUNK_ROWS,
    Attributions,
    ExplainedModel,
    Modality,
    instance_seeds_for,
    run_passes,
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


# Classes up to this many coalitions are listed (and cached) and drawn from by index.
LISTED_CLASS_MAX = 50_000


@functools.lru_cache(maxsize=64)
def _listed_class(m: int, size: int) -> np.ndarray:
    """Every coalition of ``size`` among ``m`` players as sorted member indices ``(C, size)``.

    In ``itertools.combinations`` (lexicographic) order; for the middle class (2 size == m)
    only the canonical member of each pair {z, ~z}, the ones holding player 0, which are
    exactly the first C(m - 1, size - 1) in that order. Cached: listing C(20, 6) = 38760
    combinations in Python took ~10 ms per instance before, more than its model evaluations.
    """
    total = math.comb(m, size)
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(m), size)),
        dtype=np.int32,
        count=total * size,
    )
    combos = flat.reshape(total, size)
    if 2 * size == m:
        combos = combos[: math.comb(m - 1, size - 1)]
    combos.setflags(write=False)  # shared by every caller through the cache
    return combos


def _pick_listed(m: int, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct canonical coalitions of ``size``, picked by index among the listed ones."""
    combos = (
        _listed_class(m, size)
        if math.comb(m, size) <= 2 * LISTED_CLASS_MAX
        else _listed_class.__wrapped__(m, size)  # a one-off for that job: not cached
    )
    picked = np.sort(rng.choice(combos.shape[0], size=count, replace=False))
    out = np.zeros((count, m), dtype=bool)
    out[np.arange(count)[:, None], combos[picked]] = True
    return out


def _draw_rejecting(m: int, wanted: Sequence[tuple[int, int]], rng: np.random.Generator) -> list[np.ndarray]:
    """For each (size, count): ``count`` distinct canonical coalitions of that size.

    For large classes of which few are wanted: uniform draws with duplicates (and, in the middle
    class, the other member of an already drawn pair) rejected. Every class's candidates come
    from one vectorised draw per round; keeping the first ``count`` distinct candidates in draw
    order is the same distribution as drawing them one at a time.
    """
    got = [np.zeros((0, m), dtype=bool) for _ in wanted]
    seen: list[set[bytes]] = [set() for _ in wanted]
    while True:
        need = [count - g.shape[0] for (_, count), g in zip(wanted, got, strict=True)]
        if max(need, default=0) <= 0:
            return got
        rows = [n + 4 if n > 0 else 0 for n in need]
        order = np.argsort(rng.random((sum(rows), m)), axis=1)
        start = 0
        for k, ((size, _), n_rows) in enumerate(zip(wanted, rows, strict=True)):
            if n_rows == 0:
                continue
            masks = np.zeros((n_rows, m), dtype=bool)
            masks[np.arange(n_rows)[:, None], order[start : start + n_rows, :size]] = True
            start += n_rows
            if 2 * size == m:
                flip = ~masks[:, 0]
                masks[flip] = ~masks[flip]  # canonical member: the one holding player 0
            fresh = []
            for row, key in enumerate(np.packbits(masks, axis=1)):
                digest = key.tobytes()
                if digest not in seen[k] and len(fresh) < need[k]:
                    seen[k].add(digest)
                    fresh.append(row)
            got[k] = np.concatenate([got[k], masks[fresh]])


@dataclass(frozen=True)
class _Design:
    """What every instance with ``m`` players and a budget shares: the enumerated part and the plan
    of the sampled part (so each instance only draws)."""

    exact: bool
    fixed_masks: np.ndarray  # (E, m) interleaved z, ~z of the enumerated classes (read-only)
    fixed_weights: np.ndarray  # (E,) unnormalised kernel weight of each
    sampled: tuple[tuple[int, int, int, float], ...]  # (size, pairs in class, pairs drawn, weight)


def _interleave(block: np.ndarray) -> np.ndarray:
    """z0, ~z0, z1, ~z1, ... from the canonical members ``block``."""
    return np.stack([block, ~block], axis=1).reshape(-1, block.shape[1])


@functools.lru_cache(maxsize=16)
def _design(m: int, num_samples: int) -> _Design:
    if m < 62 and (1 << m) - 2 <= num_samples:
        codes = np.arange(1, (1 << m) - 1, dtype=np.int64)
        masks = ((codes[:, None] >> np.arange(m, dtype=np.int64)) & 1).astype(bool)
        sizes = masks.sum(1)
        weights = np.array([0.0] + [shapley_kernel(m, s) for s in range(1, m)])[sizes]
        masks.setflags(write=False)
        return _Design(True, masks, weights, ())

    classes = _pair_classes(m)
    blocks: list[np.ndarray] = []
    block_weights: list[np.ndarray] = []
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
        combos = (
            _listed_class(m, size)
            if coalitions <= 2 * LISTED_CLASS_MAX
            else _listed_class.__wrapped__(m, size)
        )
        block = np.zeros((combos.shape[0], m), dtype=bool)
        block[np.arange(combos.shape[0])[:, None], combos] = True
        blocks.append(_interleave(block))
        block_weights.append(np.full(coalitions, mass / coalitions))

    sampled = []
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
            if drawn > 0:
                sampled.append((size, pairs, int(drawn), mass / (2 * int(drawn))))
    fixed = np.concatenate(blocks) if blocks else np.zeros((0, m), dtype=bool)
    fixed.setflags(write=False)
    weights = np.concatenate(block_weights) if block_weights else np.zeros(0)
    return _Design(False, fixed, weights, tuple(sampled))


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
    The returned masks may be a shared read-only array: do not modify them.
    """
    if m <= 1:
        return np.zeros((0, m), dtype=bool), np.zeros(0), True
    design = _design(m, num_samples)
    if not design.sampled:
        return design.fixed_masks, design.fixed_weights / design.fixed_weights.sum(), design.exact
    # Small classes (or most of one wanted) are picked by index among their listed members;
    # the others are drawn with rejection, all of them in one vectorised draw.
    by_index = [pairs <= LISTED_CLASS_MAX or 4 * drawn >= pairs for _, pairs, drawn, _ in design.sampled]
    sampled = list(zip(design.sampled, by_index, strict=True))
    picked = iter([_pick_listed(m, size, drawn, rng) for (size, _, drawn, _), listed in sampled if listed])
    rejected = [(size, drawn) for (size, _, drawn, _), listed in sampled if not listed]
    drawn_blocks = iter(_draw_rejecting(m, rejected, rng))
    blocks = [design.fixed_masks]
    weights = [design.fixed_weights]
    for (_, _, drawn, weight), listed in sampled:
        blocks.append(_interleave(next(picked) if listed else next(drawn_blocks)))
        weights.append(np.full(2 * drawn, weight))
    out_w = np.concatenate(weights)
    return np.concatenate(blocks), out_w / out_w.sum(), False


def solve_constrained(masks: np.ndarray, weights: np.ndarray, values: np.ndarray, delta: float) -> np.ndarray:
    """Weighted least squares ``values ~ masks @ phi`` subject to ``sum(phi) == delta``.

    ``values`` are v(z) - v(empty). The constraint is imposed by eliminating the last player
    (phi_last = delta - sum(others)), so efficiency holds to float64 rounding.

    Solved by the normal equations with a Cholesky factorisation when the design is well
    conditioned (Shapley-kernel designs are: cond(sqrt(W) D) was 2.5-21 for 5-64 players), else
    by an SVD least squares (rank-deficient designs, e.g. fewer coalition pairs than players,
    get the minimum-norm solution). ``np.linalg.lstsq`` cost 0.2-3 ms per instance here (its
    LAPACK driver spawns BLAS threads), as much as the instance's model evaluations.
    """
    m = masks.shape[1]
    if m == 0:
        return np.zeros(0)
    if m == 1:
        return np.array([delta])
    z = masks.astype(np.float64)
    design = z[:, :-1] - z[:, -1:]
    target = values - z[:, -1] * delta
    rest = None
    if design.shape[0] >= design.shape[1]:
        weighted = design * weights[:, None]
        gram = design.T @ weighted
        try:
            chol = np.linalg.cholesky(gram)
        except np.linalg.LinAlgError:
            chol = None
        pivots = np.diag(chol) if chol is not None else None
        # Pivot ratio >= 1e-4 means cond(gram) >= 1e8 is ruled out only roughly, so the
        # threshold is kept far from float64 trouble (cond(gram) ~ 1e16).
        if pivots is not None and pivots.min() > 1e-4 * pivots.max():
            y = np.linalg.solve(chol, weighted.T @ target)
            rest = np.linalg.solve(chol.T, y)
    if rest is None:
        root = np.sqrt(weights)
        rest, *_ = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)
    return np.append(rest, delta - rest.sum())


# ----------------------------------------------------------------------------- evaluation

# Working set aimed at by one model pass (inputs + activations, ``ExplainedModel.row_bytes``).
# Larger passes amortise the per-pass overhead, smaller ones keep the activations in cache.
# Measured on 2 cores (explained rows/s by pass rows): the 20->16->1 MLP (216 B/row) gained up
# to 65536 rows (251 at 4096, 355 at 16384, 399 at 65536); the 20->256->256->1 MLP
# (4.2 KB/row) lost beyond 4096 (12.8 at 4096, 10.3 at 16384, 4.9 at 65536). Both optima sit
# near 16 MiB. A constant, so every shard evaluates passes of the same shape.
PASS_BYTES = 16 << 20


def cache_pass_rows(model: ExplainedModel) -> int:
    """Rows of one pass for ``model``: the power of two nearest to PASS_BYTES / row bytes."""
    rows = PASS_BYTES / model.row_bytes()
    return 1 << max(round(math.log2(max(rows, 1.0))), 8)


def pass_shape(chunk_rows: int, n_bg: int) -> tuple[int, int]:
    """(coalitions per pass, background rows per pass segment) for passes of chunk_rows rows.

    A pass evaluates whole (coalition, background segment) blocks, so the mixed rows are
    written straight into the pass buffer by one ``torch.where`` with no copy; a background
    larger than one pass is cut into segments (the last padded with zero-weight rows). The
    pass itself keeps exactly ``chunk_rows`` rows (a power of two; the few rows after the
    blocks are filler): BLAS kernels round a row differently depending on where it falls
    relative to their blocking when the row count is not a multiple of it (seen on the tabular
    sample model: 1 output in 16200 changed when the rows were shifted by 8, none in 16384),
    and a pair's position in a pass differs between shards.
    """
    seg = max(1, min(n_bg, chunk_rows))
    return max(1, chunk_rows // seg), seg


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

    ``plans[i]`` is an (S_i, P) bool matrix over all players. The (instance, coalition) pairs of
    all instances form one stream, cut into passes of a fixed number of pairs (the last one
    padded by repeating its last pair). A pass is ``pairs x background segment`` rows mixed by
    one broadcast op straight into its buffer; its outputs are reduced against the background
    weights in float64. Every pass has the same shape whatever the shard holds, and passes
    are independent, so they run on parallel workers (:func:`run_passes`).
    """
    sizes = [p.shape[0] for p in plans]
    total = sum(sizes)
    if total == 0:
        return [np.zeros(0) for _ in plans], 0
    device = model.device  # the pass buffers live where the model is (CPU tensors come in)
    n_bg, n_feat = background.shape
    n_players = plans[0].shape[1]
    per_pass, seg = pass_shape(chunk_rows, n_bg)
    n_seg = -(-n_bg // seg)
    pad = n_seg * seg - n_bg
    bg = background if pad == 0 else torch.cat([background, background[-1:].expand(pad, -1)])
    w_bg = np.concatenate([np.asarray(bg_weights, dtype=np.float64), np.zeros(pad)])
    w_segs = [torch.from_numpy(w_bg[k * seg : (k + 1) * seg]) for k in range(n_seg)]
    bg_segs = [bg[k * seg : (k + 1) * seg] for k in range(n_seg)]
    pass_rows = max(chunk_rows, per_pass * seg)
    # Tabular players are the features themselves: no per-pass mask expansion needed.
    identity = n_players == n_feat and bool(np.array_equal(feature_player, np.arange(n_feat)))
    feat_player_t = torch.from_numpy(feature_player)
    # torch.lerp(bg, x, w) is exact at w = 0 and w = 1 (it evaluates end - (end - start) * (1 - w)
    # for w >= 0.5), so with 0/1 weights it selects exactly like torch.where, 2.4x faster on
    # 20-feature rows (the broadcast where cost as much as the model's forward pass). Only for
    # finite inputs: an infinite value would turn the difference into NaN.
    use_lerp = bool(torch.isfinite(x).all()) and bool(torch.isfinite(background).all())
    zero_one = torch.tensor([0.0, 1.0], dtype=x.dtype, device=device)
    x, bg, targets, feat_player_t = x.to(device), bg.to(device), targets.to(device), feat_player_t.to(device)
    bg_segs = [b.to(device) for b in bg_segs]
    w_segs = [w.to(device) for w in w_segs]

    values = np.zeros(total)
    owner = np.repeat(np.arange(len(plans)), sizes)  # instance of every pair
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_passes = -(-total // per_pass)

    def run(k: int) -> None:
        start = k * per_pass
        stop = min(start + per_pass, total)
        m = stop - start
        # This pass's coalitions, copied out of the per-instance plans (a few slices).
        pair_masks = torch.empty((per_pass, n_players), dtype=torch.bool)
        pair = start
        while pair < stop:
            i = int(owner[pair])
            lo = pair - int(offsets[i])
            take = min(sizes[i] - lo, stop - pair)
            pair_masks[pair - start : pair - start + take] = torch.from_numpy(plans[i][lo : lo + take])
            pair += take
        if m < per_pass:
            pair_masks[m:] = pair_masks[m - 1]  # padding repeats the last pair
        pair_masks = pair_masks.to(device)
        inst = torch.from_numpy(owner[np.arange(start, start + per_pass).clip(max=stop - 1)]).to(device)
        feature_masks = pair_masks if identity else pair_masks[:, feat_player_t]
        mask_w = zero_one[feature_masks.long()][:, None, :] if use_lerp else None
        xs = x[inst][:, None, :]
        flat_buffer = torch.empty((pass_rows, n_feat), dtype=x.dtype, device=device)
        flat_buffer[per_pass * seg :] = bg[0]  # filler rows: a valid input, outputs ignored
        buffer = flat_buffer[: per_pass * seg].view(per_pass, seg, n_feat)
        acc = torch.zeros(per_pass, dtype=torch.float64, device=device)
        for bg_seg, w_seg in zip(bg_segs, w_segs, strict=True):
            if mask_w is not None:
                torch.lerp(bg_seg[None], xs, mask_w, out=buffer)
            else:
                torch.where(feature_masks[:, None, :], xs, bg_seg[None], out=buffer)
            with torch.inference_mode():
                scores = model.scores(*model.split(flat_buffer))[: per_pass * seg]
            out = scores.view(per_pass, seg, -1)
            if out.shape[2] == 1:
                out = out[..., 0]
            else:
                out = out.gather(2, targets[inst][:, None, None].expand(-1, seg, 1))[..., 0]
            # A row-wise multiply-and-sum reduces every row in the same order wherever it sits
            # in the pass (a pair's position differs between shards); a BLAS gemv promises
            # nothing about that, although no difference was seen here.
            acc += (out.double() * w_seg).sum(dim=1)
        values[start:stop] = acc[:m].cpu().numpy()

    run_passes(n_passes, run, device)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(plans))], n_passes * n_seg


# ----------------------------------------------------------------------------- explainer


class KernelShapExplainer:
    """KernelSHAP (see the module docstring)."""

    name = KERNEL_SHAP
    devices = ("cpu", "cuda")

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
        seeds = instance_seeds_for(seed, n, instance_seeds)

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
        if model.device.type == "cpu":
            chunk_rows = min(chunk_rows, cache_pass_rows(model))
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
