"""KernelSHAP's coalitions and least squares for many instances at once, in torch.

On a GPU the model evaluations of a KernelSHAP row cost ~0.3 ms (20 features, numSamples 500,
100 background rows, a 20->256->256->1 MLP on an H100), while drawing its coalitions one
instance at a time in numpy (:func:`include.explainers.coalitions.sample_coalitions`) costs
~0.25 ms and its least squares ~0.15 ms of one CPU core: measured there, 8.8 s for 4096 rows of
which 1.2 s on the GPU. This module does both on the device, for a whole batch of instances
per operation:

* the same design (:func:`include.explainers.coalitions.coalition_design`): enumerated classes shared,
  the rest drawn per size class without replacement, in complementary pairs, with the same
  Horvitz-Thompson weights;
* the draws come from a counter-based generator (SplitMix64 of the instance's seed, the class,
  the round and the position), so an instance's coalitions depend on its seed only, never on
  the batch or the shard it is in, and the CPU and the GPU draw the same ones;
* the constrained least squares is one batched Cholesky solve; an instance whose normal
  equations are ill conditioned (or a design with fewer pairs than players) is solved on the
  CPU by :func:`include.explainers.coalitions.solve_constrained` instead.

Up to 62 players per instance (a coalition is one int64 code while removing duplicates).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from include.explainers.coalitions import coalition_design, solve_constrained

MAX_PLAYERS = 62

# SplitMix64 (Steele, Lea & Flood 2014) constants as signed int64 (torch has no uint64
# arithmetic; multiplication and addition wrap modulo 2^64 on both CPU and CUDA).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (``>>`` is arithmetic in torch)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 output function of the state ``z`` (int64, bit pattern of a uint64)."""
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _stream_base(seeds: torch.Tensor, klass: int, round_: int) -> torch.Tensor:
    """One state per instance for the draws of size class ``klass`` in rejection round ``round_``."""
    tag = splitmix64(torch.tensor((klass << 16) + round_ + 1, dtype=torch.int64) * _GOLDEN)
    return splitmix64(seeds.to(torch.int64) * _GOLDEN + tag.to(seeds.device))


def _candidates(base: torch.Tensor, count: int, m: int, size: int) -> torch.Tensor:
    """``count`` uniform random coalitions of ``size`` among ``m`` players per instance, (R, count, m)
    bool: the ``size`` players with the smallest of ``m`` random keys."""
    counter = torch.arange(1, count * m + 1, dtype=torch.int64, device=base.device)
    keys = splitmix64(base[:, None] + counter[None, :] * _GOLDEN).view(-1, count, m)
    members = keys.argsort(dim=2)[..., :size]
    return torch.zeros(keys.shape, dtype=torch.bool, device=base.device).scatter_(2, members, True)


@functools.lru_cache(maxsize=256)
def _candidate_count(drawn: int, pairs: int) -> int:
    """Candidates per instance so that ``drawn`` distinct ones are almost always among them: the
    draws needed to see ``drawn`` distinct of ``pairs`` (a partial coupon collector: a sum of
    geometric waits) at their mean plus 4 standard deviations. A rare shortfall is redrawn, so
    this only sets the speed."""
    waits = np.arange(drawn, dtype=np.float64)
    mean = float((pairs / (pairs - waits)).sum())
    variance = float((waits * pairs / (pairs - waits) ** 2).sum())
    return math.ceil(mean + 4.0 * math.sqrt(variance)) + 2


def draw_distinct(seeds: torch.Tensor, klass: int, m: int, size: int, drawn: int, pairs: int) -> torch.Tensor:
    """``drawn`` distinct canonical coalitions of ``size`` per instance, (R, drawn, m) bool.

    The first ``drawn`` distinct candidates of a stream of uniform draws, in draw order: a
    uniform sample without replacement. In the middle class (2 size == m) the canonical member
    of each pair {z, ~z} is the one holding player 0. An instance whose candidates hold fewer
    than ``drawn`` distinct ones draws again from a fresh stream, twice as long.
    """
    n, device = seeds.shape[0], seeds.device
    out = torch.zeros((n, drawn, m), dtype=torch.bool, device=device)
    todo = torch.arange(n, device=device)
    count = _candidate_count(drawn, pairs)
    weights = torch.ones(m, dtype=torch.int64, device=device) << torch.arange(m, device=device)
    for round_ in range(64):
        masks = _candidates(_stream_base(seeds[todo], klass, round_), count, m, size)
        if 2 * size == m:
            masks = torch.where(masks[..., :1], masks, ~masks)
        codes = (masks.to(torch.int64) * weights).sum(2)  # (r, count)
        ordered, order = codes.sort(dim=1, stable=True)
        repeat_sorted = torch.zeros_like(ordered, dtype=torch.bool)
        repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        repeat = torch.zeros_like(repeat_sorted).scatter_(1, order, repeat_sorted)
        fresh = ~repeat
        enough = fresh.sum(1) >= drawn
        # Positions of the first `drawn` fresh candidates, in draw order.
        position = torch.arange(count, device=device).expand_as(codes)
        rank = torch.where(fresh, position, count + position)
        picked = rank.argsort(dim=1)[:, :drawn]
        chosen = masks.gather(1, picked[..., None].expand(-1, -1, m))
        out[todo[enough]] = chosen[enough]
        todo = todo[~enough]
        if todo.numel() == 0:
            return out
        count *= 2
    raise RuntimeError(f"could not draw {drawn} distinct coalitions of size {size} among {m} players")


def draw_batch(m: int, num_samples: int, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Coalitions ``(R, S, m)`` bool for the R instances of ``seeds`` (on their device), the
    weights ``(S,)`` float64 (sum 1, the same for every instance) and whether the set is complete.

    The design of :func:`include.explainers.coalitions.sample_coalitions` (the empty and the
    full coalition excluded; z and ~z interleaved), drawn per instance from its seed.
    """
    if not 2 <= m <= MAX_PLAYERS:
        raise ValueError(f"batched coalitions need 2 to {MAX_PLAYERS} players, got {m}")
    device, n = seeds.device, seeds.shape[0]
    design = coalition_design(m, num_samples)
    fixed = torch.from_numpy(design.fixed_masks.copy()).to(device)  # the design's is read-only
    blocks = [fixed[None].expand(n, -1, -1)]
    weights = [design.fixed_weights]
    for klass, (size, pairs, drawn, weight) in enumerate(design.sampled):
        canonical = draw_distinct(seeds, klass, m, size, drawn, pairs)
        blocks.append(torch.stack([canonical, ~canonical], dim=2).reshape(n, 2 * drawn, m))
        weights.append(np.full(2 * drawn, weight))
    out_w = np.concatenate(weights)
    return (
        torch.cat(blocks, dim=1),
        torch.from_numpy(out_w / out_w.sum()).to(device),
        design.exact,
    )


def solve_batch(
    masks: torch.Tensor, weights: torch.Tensor, values: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """:func:`include.explainers.coalitions.solve_constrained` for R instances at once.

    ``masks`` (R, S, m) bool, ``weights`` (S,), ``values`` (R, S) = v(z) - v(empty), ``delta``
    (R,) = f(x) - E[f]; returns (R, m) float64 with ``sum(phi) == delta`` per row. Instances
    whose normal equations fail the same conditioning test as the CPU solver are solved there.
    """
    _, s, m = masks.shape
    z = masks.to(torch.float64)
    design = z[..., :-1] - z[..., -1:]
    target = values.to(torch.float64) - z[..., -1] * delta[:, None]
    weighted = design * weights.to(torch.float64)[None, :, None]
    gram = design.transpose(1, 2) @ weighted
    chol, info = torch.linalg.cholesky_ex(gram)
    pivots = torch.diagonal(chol, dim1=1, dim2=2)
    good = (info == 0) & (pivots.amin(1) > 1e-4 * pivots.amax(1))
    if s < m - 1:  # fewer coalitions than unknowns: rank deficient, the CPU's minimum-norm answer
        good = torch.zeros_like(good)
    # Failed factorisations are swapped for the identity (their rows are redone below) so that
    # no NaN is computed at all.
    identity = torch.eye(m - 1, dtype=chol.dtype, device=chol.device)
    chol = torch.where(good[:, None, None], chol, identity)
    rest = torch.cholesky_solve(weighted.transpose(1, 2) @ target[..., None], chol)[..., 0]
    phi = torch.cat([rest, (delta - rest.sum(1))[:, None]], dim=1)
    bad = torch.nonzero(~good).flatten().tolist()
    for row in bad:  # rare: ill-conditioned or rank-deficient designs
        phi[row] = torch.from_numpy(
            solve_constrained(
                masks[row].cpu().numpy(),
                weights.double().cpu().numpy(),
                values[row].double().cpu().numpy(),
                float(delta[row]),
            )
        ).to(phi.device)
    return phi
