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
  size (see :func:`include.explainers.coalitions.sample_coalitions`).

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

On a GPU (``XAC_EXPLAIN_DEVICE``, :mod:`include.explainers.device`) the pass buffers, the mixing
and the background reduction live on the device, passes are sized from its free memory (up to
2^21 rows) and queued back to back, and the coalitions are drawn and the least squares solved
there too, a batch of instances per operation (:func:`batched_shapley`,
:mod:`include.explainers.coalition_batches`): done per instance on the CPU they cost ~0.25-0.7 ms
+ 0.15 ms a row, more than the GPU's evaluations (bench/bench_gpu.py: 462 -> 3,271 rows/s on an
H100). On the CPU they stay per instance in numpy, bit-identical for a seed; a pool of sampling
processes is opt-in (``XAC_SAMPLING_WORKERS``, :func:`coalitions.sample_many`: the same draws).
The details record the seconds spent sampling, evaluating and solving.
"""

from __future__ import annotations

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
from include.explainers.coalition_batches import MAX_PLAYERS, draw_batch, solve_batch
from include.explainers.coalitions import coalition_design, sample_many, sampling_workers, solve_constrained
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

    ``plans[i]`` is an (S_i, P) bool matrix over all players; see :func:`pair_values`.
    """
    sizes = [p.shape[0] for p in plans]
    if sum(sizes) == 0:
        return [np.zeros(0) for _ in plans], 0
    pairs = torch.from_numpy(np.concatenate(plans))
    owner = torch.from_numpy(np.repeat(np.arange(len(plans)), sizes))
    values, passes = pair_values(
        model, x, background, bg_weights, feature_player, pairs, owner, targets, chunk_rows
    )
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = values.cpu().numpy()
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(plans))], passes


def pair_values(
    model: ExplainedModel,
    x: torch.Tensor,
    background: torch.Tensor,
    bg_weights: np.ndarray,
    feature_player: np.ndarray,
    pairs: torch.Tensor,
    owner: torch.Tensor,
    targets: torch.Tensor,
    chunk_rows: int,
) -> tuple[torch.Tensor, int]:
    """v(z) of each (instance ``owner[t]``, coalition ``pairs[t]``); returns ((T,) float64 on the
    model's device, passes).

    ``pairs`` is a (T, P) bool matrix over all players. The pairs form one stream, cut into
    passes of a fixed number of pairs (the last one padded by repeating its last pair). A pass
    is ``pairs x background segment`` rows mixed by one broadcast op straight into its buffer;
    its outputs are reduced against the background weights in float64. Every pass has the same
    shape whatever the shard holds, and passes are independent, so they run on parallel
    workers (:func:`run_passes`); on a GPU they are queued back to back with no wait.
    """
    total = pairs.shape[0]
    device = model.device  # the pass buffers live where the model is (CPU tensors come in)
    n_bg, n_feat = background.shape
    n_players = pairs.shape[1]
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
    pairs, owner = pairs.to(device), owner.to(device)
    bg_segs = [b.to(device) for b in bg_segs]
    w_segs = [w.to(device) for w in w_segs]

    values = torch.zeros(total, dtype=torch.float64, device=device)
    n_passes = -(-total // per_pass) if total else 0

    def run(k: int) -> None:
        start = k * per_pass
        stop = min(start + per_pass, total)
        m = stop - start
        take = torch.arange(start, start + per_pass, device=device).clamp_(max=stop - 1)  # pad: repeat
        pair_masks = pairs[take]
        inst = owner[take]
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
        values[start:stop] = acc[:m]

    run_passes(n_passes, run, device)
    return values, n_passes * n_seg


# ----------------------------------------------------------------------------- on a GPU

# Instances drawn, evaluated and solved together on a GPU: at most BATCH_INSTANCES, and at most
# BATCH_ELEMENTS (instance, coalition, player) entries, since the solve holds a few float64
# arrays of that many (2 GiB each at the cap): 4096 instances at 20 players and numSamples 500,
# 12 when every one of 2^20 coalitions is enumerated.
BATCH_INSTANCES = 4096
BATCH_ELEMENTS = 1 << 28


def batch_instances(coalitions: int, players: int) -> int:
    return max(1, min(BATCH_INSTANCES, BATCH_ELEMENTS // max(coalitions * players, 1)))


def batched_route(model: ExplainedModel, active: np.ndarray) -> bool:
    """Whether the instances are drawn and solved in batches on the device (GPUs, up to
    MAX_PLAYERS non-dummy players) rather than one by one in numpy (CPUs: bit-identical per seed
    whatever the thread count, and the per-instance cost is small next to the model's there)."""
    return model.device.type == "cuda" and int(active.sum(1).max(initial=0)) <= MAX_PLAYERS


@dataclass
class ShapleyJob:
    """What both routes need: the game (model, instances, background, players) and the budget."""

    model: ExplainedModel
    x: torch.Tensor  # (N, F) flat instances
    bg: torch.Tensor  # (B, F) background rows the game uses
    bg_w: np.ndarray  # (B,) their weights
    feature_player: np.ndarray  # (F,) player of each feature
    active: np.ndarray  # (N, P) non-dummy players per instance
    seeds: Sequence[int]  # per instance
    num_samples: int
    targets: torch.Tensor  # (N,) explained output column
    fx: np.ndarray  # (N,) explained output
    base: np.ndarray  # (N,) its expectation over the background
    chunk_rows: int  # rows per model pass


def batched_shapley(job: ShapleyJob) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Shapley estimates on the model's (GPU) device, a batch of instances per operation
    (:mod:`include.explainers.coalition_batches`); returns (phi, coalitions per instance,
    exact per instance, details). Instances with the same number of non-dummy players are
    batched together."""
    model, active, num_samples = job.model, job.active, job.num_samples
    device = model.device
    n, n_players = active.shape
    phi = np.zeros((n, n_players))
    coalitions = np.zeros(n, dtype=np.int64)
    exact = np.zeros(n, dtype=bool)
    delta = job.fx - job.base
    # Seeds are 64-bit patterns: as int64 for torch, the same bits.
    seeds_t = torch.from_numpy(np.array([s % (1 << 64) for s in job.seeds], dtype=np.uint64).view(np.int64))
    delta_t, base_t = torch.from_numpy(delta).to(device), torch.from_numpy(job.base).to(device)
    clock = {"sampling": 0.0, "evaluation": 0.0, "solve": 0.0}
    passes = 0
    counts = active.sum(1)

    def lap(stage: str, since: float) -> float:
        if device.type == "cuda":  # the queued work must finish for the time to mean anything
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        clock[stage] += now - since
        return now

    for players_in_game in np.unique(counts):
        group = np.flatnonzero(counts == players_in_game)
        if players_in_game <= 1:  # no game to sample: the lone player takes the whole difference
            for i in group:
                phi[i, active[i]] = delta[i]
            exact[group] = True
            continue
        design = coalition_design(int(players_in_game), num_samples)
        per_batch = batch_instances(design.coalitions, n_players)
        for first in range(0, len(group), per_batch):
            rows = group[first : first + per_batch]
            since = time.perf_counter()
            masks, weights, is_exact = draw_batch(int(players_in_game), num_samples, seeds_t[rows].to(device))
            r, s, _ = masks.shape
            players = np.stack([np.flatnonzero(active[i]) for i in rows])  # (r, a)
            plan = torch.ones((r, s, n_players), dtype=torch.bool, device=device)  # dummies: either value
            plan.scatter_(2, torch.from_numpy(players).to(device)[:, None, :].expand(-1, s, -1), masks)
            since = lap("sampling", since)
            owner = torch.arange(r, device=device).repeat_interleave(s)
            values, used = pair_values(
                model,
                job.x[rows],
                job.bg,
                job.bg_w,
                job.feature_player,
                plan.view(r * s, n_players),
                owner,
                job.targets[rows],
                job.chunk_rows,
            )
            passes += used
            since = lap("evaluation", since)
            rows_t = torch.from_numpy(rows).to(device)
            solved = solve_batch(masks, weights, values.view(r, s) - base_t[rows_t, None], delta_t[rows_t])
            phi[rows[:, None], players] = solved.cpu().numpy()
            lap("solve", since)
            coalitions[rows] = s
            exact[rows] = is_exact
    details = {
        "sampled_on": str(device),
        "sampling_workers": 1,
        "forward_passes": passes,
        "sampling_seconds": clock["sampling"],
        "evaluation_seconds": clock["evaluation"],
        "solve_seconds": clock["solve"],
    }
    return phi, coalitions, exact, details


def per_instance_shapley(job: ShapleyJob) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The CPU route: coalitions drawn and solved per instance in numpy (bit-identical for a
    seed), evaluated in batched passes; returns (phi, coalitions, exact, details)."""
    n, n_players = job.active.shape
    plans: list[np.ndarray] = []
    local: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    exact = np.zeros(n, dtype=bool)
    clock = time.perf_counter()
    workers = sampling_workers(n)
    drawn = sample_many([int(c) for c in job.active.sum(1)], job.num_samples, job.seeds, workers)
    for i, (masks, weights, is_exact) in enumerate(drawn):
        players = np.flatnonzero(job.active[i])
        plan = np.ones((masks.shape[0], n_players), dtype=bool)  # dummies: either value is the same
        plan[:, players] = masks
        plans.append(plan)
        local.append((players, masks, weights))
        exact[i] = is_exact
    sampling_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    values, passes = coalition_values(
        job.model, job.x, job.bg, job.bg_w, job.feature_player, plans, job.targets, job.chunk_rows
    )
    evaluation_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    phi = np.zeros((n, n_players))
    for i, (players, masks, weights) in enumerate(local):
        if len(players):
            delta = job.fx[i] - job.base[i]
            phi[i, players] = solve_constrained(masks, weights, values[i] - job.base[i], delta)
    details = {
        "sampling_workers": workers,
        "forward_passes": passes,
        "sampling_seconds": sampling_seconds,
        "evaluation_seconds": evaluation_seconds,
        "solve_seconds": time.perf_counter() - clock,
    }
    return phi, np.array([p.shape[0] for p in plans]), exact, details


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

        # Sized over the whole job so that every shard evaluates in chunks of the same shape.
        max_rows = num_samples * bg.shape[0] * (n_global or n)
        chunk_rows = model.chunk_rows_for(max_rows)
        if model.device.type == "cpu":
            chunk_rows = min(chunk_rows, cache_pass_rows(model))
        job = ShapleyJob(
            model, x, bg, bg_w, feature_player, active, seeds, num_samples, targets, fx, base, chunk_rows
        )
        route = batched_shapley if batched_route(model, active) else per_instance_shapley
        phi, coalitions, exact, timing = route(job)
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
                "coalitions": coalitions,
                "active_players": active.sum(1),
                "exact": exact,
            },
            details={
                "background": bg_info,
                "players": n_players,
                "chunk_rows": chunk_rows,
                "model_rows_evaluated": int(coalitions.sum() * bg.shape[0]),
                **timing,
                "seconds": time.perf_counter() - started,
            },
        )


EXPLAINER = KernelShapExplainer()
