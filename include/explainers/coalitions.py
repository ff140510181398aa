"""KernelSHAP's coalitions and least squares, per instance: numpy only (no torch).

Kept apart from :mod:`include.explainers.kernel_shap` so that an (opt-in) pool of worker
processes can draw the coalitions of many instances (:func:`sample_many`) without importing
torch. This is the CPU route; on a GPU the same design (:func:`coalition_design`) is drawn and
solved in batches on the device (:mod:`include.explainers.coalition_batches`).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
class CoalitionDesign:
    """What every instance with ``m`` players and a budget shares: the enumerated part and the plan
    of the sampled part (so each instance only draws)."""

    exact: bool
    fixed_masks: np.ndarray  # (E, m) interleaved z, ~z of the enumerated classes (read-only)
    fixed_weights: np.ndarray  # (E,) unnormalised kernel weight of each
    sampled: tuple[tuple[int, int, int, float], ...]  # (size, pairs in class, pairs drawn, weight)

    @property
    def coalitions(self) -> int:
        """Coalitions each instance gets: the enumerated ones and both members of each drawn pair."""
        return self.fixed_masks.shape[0] + 2 * sum(drawn for _, _, drawn, _ in self.sampled)


def _interleave(block: np.ndarray) -> np.ndarray:
    """z0, ~z0, z1, ~z1, ... from the canonical members ``block``."""
    return np.stack([block, ~block], axis=1).reshape(-1, block.shape[1])


@functools.lru_cache(maxsize=16)
def coalition_design(m: int, num_samples: int) -> CoalitionDesign:
    if m < 62 and (1 << m) - 2 <= num_samples:
        codes = np.arange(1, (1 << m) - 1, dtype=np.int64)
        masks = ((codes[:, None] >> np.arange(m, dtype=np.int64)) & 1).astype(bool)
        sizes = masks.sum(1)
        weights = np.array([0.0] + [shapley_kernel(m, s) for s in range(1, m)])[sizes]
        masks.setflags(write=False)
        return CoalitionDesign(True, masks, weights, ())

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
    return CoalitionDesign(False, fixed, weights, tuple(sampled))


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
    design = coalition_design(m, num_samples)
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


# ----------------------------------------------------------------------------- many instances

SAMPLING_WORKERS_ENV = "XAC_SAMPLING_WORKERS"
# A pool is opt-in (``XAC_SAMPLING_WORKERS``): each worker is a fresh interpreter (spawned:
# forking a process that holds torch's threads, or a CUDA context, is unsafe) that imports the
# parent's main module, against ~0.25-0.7 ms of sampling per instance (20 players, numSamples
# 500, one core). Measured: on 2 cores, 2048 instances, 1.34-1.43 s in one process and
# 1.58-1.77 s with 2 workers; on a 16-CPU GPU host, 4096 instances took 6.8 s on 16 workers
# (bench_gpu.py as the main module, which imports torch) against ~1 s expected in one process.
# GPU runs draw on the device instead (include/explainers/coalition_batches.py). With the
# variable set, jobs below these sizes still stay in one process.
POOL_MIN_INSTANCES = 512
POOL_MIN_INSTANCES_PER_WORKER = 128
POOL_MIN_CPUS = 4
POOL_MAX_WORKERS = 32


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a pod's limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    for path in (Path("/sys/fs/cgroup/cpu.max"), Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")):
        try:
            fields = path.read_text().split()
        except OSError:
            continue
        if path.name == "cpu.max" and fields and fields[0] != "max":
            cpus = min(cpus, max(1, math.ceil(int(fields[0]) / int(fields[1]))))
        elif path.name == "cpu.cfs_quota_us" and fields and int(fields[0]) > 0:
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
            cpus = min(cpus, max(1, math.ceil(int(fields[0]) / int(period.read_text()))))
        break
    return max(cpus, 1)


def sampling_workers(n_instances: int) -> int:
    """Processes that draw the coalitions of ``n_instances``: 1 unless ``XAC_SAMPLING_WORKERS``
    names a count, or ``auto`` (one per 128 instances from 512 on, at most the usable CPUs and
    32, none below 4 CPUs)."""
    env = os.environ.get(SAMPLING_WORKERS_ENV, "").strip()
    if not env:
        return 1
    if env == "auto":
        cpus = usable_cpus()
        if n_instances < POOL_MIN_INSTANCES or cpus < POOL_MIN_CPUS:
            return 1
        return max(1, min(cpus, n_instances // POOL_MIN_INSTANCES_PER_WORKER, POOL_MAX_WORKERS))
    return max(1, int(env))


def _sample_chunk(
    job: tuple[Sequence[int], int, Sequence[int]],
) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    counts, num_samples, seeds = job
    return [
        sample_coalitions(m, num_samples, np.random.default_rng(seed))
        for m, seed in zip(counts, seeds, strict=True)
    ]


def sample_many(
    player_counts: Sequence[int], num_samples: int, seeds: Sequence[int], workers: int = 1
) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """:func:`sample_coalitions` for every instance (its own ``default_rng(seed)``), on ``workers``
    processes when more than one: the same arrays either way, since each instance's draws
    depend only on its seed."""
    job = (list(player_counts), int(num_samples), list(seeds))
    if workers <= 1 or len(job[0]) < 2:
        return _sample_chunk(job)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    n = len(job[0])
    pieces = min(n, 4 * workers)  # a few chunks per worker: an uneven chunk does not stall the pool
    bounds = [n * k // pieces for k in range(pieces + 1)]
    chunks = [(job[0][a:b], job[1], job[2][a:b]) for a, b in itertools.pairwise(bounds)]
    try:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            return [drawn for part in pool.map(_sample_chunk, chunks) for drawn in part]
    except (BrokenProcessPool, OSError, RuntimeError):
        # No pool here (a main module spawned workers cannot import, e.g. ``python -c``; no
        # process limit left): the same draws, in this process.
        return _sample_chunk(job)
