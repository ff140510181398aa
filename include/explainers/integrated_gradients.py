"""Integrated Gradients, for every modality of a model at once.

Attributions are ``(x - x') * integral_0^1 grad f(x' + a (x - x')) da`` per input feature.
Multimodal models get their inputs as a tuple ``(image, tabular)``, so one path moves all
modalities together and the attributions of both modalities share one completeness budget
``f(x) - f(x')``.

Quadratures (``integrationMethod``):

* captum's rules — ``gausslegendre`` (default), ``riemann_left``/``right``/``middle``/
  ``trapezoid`` — with ``steps`` points: the nodes and weights are captum's own
  (``approximation_parameters``), so a configuration means exactly what it means in captum;
* ``gausslegendre_adaptive``: completeness-checked composite Gauss-Legendre per instance (see
  :func:`adaptive_attributions`); ``steps`` is then the per-instance cap on gradient
  evaluations and ``completenessTolerance`` (default 1e-3) the target.

Baselines x': ``zeros`` or ``background_mean`` (the mean of all background rows), per
modality; default zeros for images (a blank scan) and the background mean for tabular inputs
(an "average" record: zero is not a meaningful value of, say, a radius in mm).

Evaluation (why not captum's ``attribute``): the path points of a batch of (instance, rule)
tasks go through the model in passes of one fixed shape per job (``internalBatchSize`` rows,
rounded to whole tasks; the last pass repeats its last task), each pass on one torch thread,
the passes spread over workers
(:func:`include.explainers.base.run_passes`), and image inputs of convolutional models
in channels-last memory layout, which oneDNN's CPU convolutions run faster (forward+backward
of the 32x32 benchmark CNN on one core: 5.9-6.1k rows/s against 3.2-5.0k contiguous in passes
of 64 rows; 2.9k against 1.6k in passes of 1024). Weighted gradient sums accumulate in
float64 (captum rounds its step sizes to float32). Fixed pass shapes and single-threaded
kernels make results bit-identical whatever the shard or the machine's core count (see
``base``). The method is deterministic: the seed is not used.

On a GPU (``XAC_EXPLAIN_DEVICE``, :mod:`include.explainers.device`) the same passes run on the
device one after the other, sized from its free memory. Two settings trade exactness for speed
there (both default off, both allowed on the CPU too): ``precision: bf16`` runs the model's
forward and backward under bf16 autocast (inputs, path points, gradients and the weighted sums
stay fp32/fp64; completeness then bottoms out near bf16's resolution, about 1e-3 to 1e-2
relative, which the fidelity gate measures like any other error) and ``compile: true`` runs
the explained output through ``torch.compile`` (one graph, of the job's pass shape; a call's
shrunk last pass on a GPU runs eager instead of compiling a second shape, see
:func:`shrinks_last_pass`). Compilation costs seconds to a minute per process; with
``XAC_COMPILE_CACHE`` (a folder or an ``s3://`` prefix shared by the shards) the first process
saves torch's compiled artifacts and the others load them (:func:`compile_cache`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from include.explainers.base import (
    PREDICT_CHUNK_ROWS,
    Attributions,
    ExplainedModel,
    memory_budget_bytes,
    pow2_ceil,
    pow2_floor,
    run_passes,
)
from include.explainers.device import autocast, cuda_memory_budget_bytes
from include.explainers.errors import MethodNotApplicableError, ParameterError
from include.explainers.params import INTEGRATED_GRADIENTS

# Backward keeps activations and their gradients: about 3x a forward pass per row.
BACKWARD_OVERHEAD = 3.0
# Automatic pass size: the power of two nearest to PASS_BYTES of working set (row bytes x
# BACKWARD_OVERHEAD), within [AUTO_BATCH_MIN, AUTO_BATCH_MAX] and the memory budget. Passes run
# on one thread each, where cache fit beats amortising: the 32x32 benchmark CNN (216 KB of
# activations per row) ran forward+backward at 5116 rows/s in passes of 32 rows, 4686 at 64,
# 3350 at 512 and 2709 at 2048 (one core, channels-last).
PASS_BYTES = 16 << 20
AUTO_BATCH_MIN, AUTO_BATCH_MAX = 16, 8192
# On a GPU the pass size comes from a measured probe pass instead (activation estimates from
# forward hooks were 4-8x too high there: ResNet-50 got passes of 50 rows on an 80 GB H100 and
# ran at 0.6x Captum's throughput at 256): peak memory per row of CUDA_PROBE_ROWS rows, with
# CUDA_PASS_HEADROOM for what one probe cannot see (cudnn picking other algorithms at size).
CUDA_PROBE_ROWS = 8
CUDA_PASS_HEADROOM = 1.5

ADAPTIVE = "gausslegendre_adaptive"
DEFAULT_TOLERANCE = 1e-3
# Adaptive rule: start with ADAPTIVE_PANELS panels of ADAPTIVE_NODES Gauss-Legendre nodes.
# Chosen on the completeness errors of a trained 32x32 CNN (64 digits): mean gradient
# evaluations per instance to reach a max relative error of 1e-3 were 18.5 for (8 nodes, 2
# panels), 19.1-21.6 for 4-6 nodes, 20.0 for 10 nodes; one panel cost 24-29 (the integrand is
# a bump in the middle of the path, where a single Gauss rule has its sparsest nodes).
ADAPTIVE_NODES = 8
ADAPTIVE_PANELS = 2
# The completeness denominator never goes below this (as in ``fidelity``).
EPSILON = 1e-6


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
    """Rows per forward/backward pass on a CPU: a power of two in [16, 8192] (see PASS_BYTES),
    never more than the memory budget allows (on a GPU: :func:`cuda_pass_rows`)."""
    row = model.row_bytes() * BACKWARD_OVERHEAD
    cache_rows = 1 << max(round(math.log2(max(PASS_BYTES / row, 1.0))), 0)
    rows = min(cache_rows, pow2_floor(memory_budget_bytes() / row))
    return int(min(max(rows, AUTO_BATCH_MIN), AUTO_BATCH_MAX))


def cuda_pass_rows(model: ExplainedModel, precision: str) -> int:
    """Rows per forward+backward pass on a GPU: what its memory budget (free memory now) holds
    at the peak memory per row of an eager probe pass (a compiled pass needs no more), a power
    of two. The probe runs once per model, device and precision in a process. Inputs are
    contiguous there (see :func:`uses_channels_last`)."""
    device = model.device
    key = (str(device), precision)
    per_row = model.cuda_pass_row_bytes.get(key)
    if per_row is None:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        flat = torch.zeros((CUDA_PROBE_ROWS, model.n_features), dtype=model.dtype, device=device)
        inputs = [t.contiguous().requires_grad_(True) for t in model.split(flat)]
        with torch.enable_grad():
            with autocast(device, precision):
                scores = model.scores(*inputs)
            grads = torch.autograd.grad(scores.float().sum(), inputs)
        del grads, scores, inputs, flat
        torch.cuda.synchronize(device)
        per_row = max(torch.cuda.max_memory_allocated(device) - before, 1) / CUDA_PROBE_ROWS
        model.cuda_pass_row_bytes[key] = per_row
    rows = pow2_floor(cuda_memory_budget_bytes(device) / (per_row * CUDA_PASS_HEADROOM))
    return int(min(max(rows, 1), AUTO_BATCH_MAX))


def forward_chunk_rows(model: ExplainedModel, pass_rows: int, rows: int) -> int:
    """Rows per forward-only chunk (f(x), f(x'), the adaptive rule's checks).

    On the CPU the fixed PREDICT_CHUNK_ROWS (one shape: bit-identical shards). On a GPU the
    power of two that covers ``rows``, at most a gradient pass's rows (a forward holds less
    than a forward+backward): 32 images' f(x) and f(x') go through one 64-row forward instead
    of two padded ones, a few refined panels' midpoints through a few rows instead of 64."""
    if model.device.type != "cuda":
        return PREDICT_CHUNK_ROWS
    return min(pow2_ceil(rows), pow2_floor(pass_rows))


def shrinks_last_pass(device: torch.device) -> bool:
    """Whether a call's last pass may be smaller than the others: on a GPU only. The adaptive
    rule's later rounds refine a few panels each; padded to a full pass they cost a full pass
    (on the H100, bf16 adaptive IG spent 18 gradient evaluations per image but ran barely faster
    than 50 fixed steps). A CPU keeps one pass shape per job (results bit-identical across
    shards).

    With ``compile: true`` a shrunk pass runs eager: compiling its shape too would cost tens of
    seconds per shape on ResNet-50, and a dynamic batch dimension would cost the full passes
    inductor's channels-last layout optimisation, which it skips for convolutions of symbolic
    shape (``GraphLowering.decide_layout_opt``). Shrunk passes are a call's tail: small."""
    return device.type == "cuda"


def balanced_tasks_per_pass(most: int, tasks: int) -> int:
    """Tasks per pass, at most ``most``, spread evenly over the passes ``tasks`` need (32 tasks at
    most 10 per pass: 4 passes of 8, not 4 of 10 with 8 padding copies)."""
    most = max(1, min(most, tasks))
    passes = -(-tasks // most)
    return -(-tasks // passes)


def fixed_rule(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """captum's (alphas, step sizes) of ``method`` with ``steps`` points."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters(method)
    return np.asarray(alphas(steps), dtype=np.float64), np.asarray(step_sizes(steps), dtype=np.float64)


def gauss_legendre(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return (x + 1.0) / 2.0, w / 2.0


# ----------------------------------------------------------------------------- evaluation


COMPILE_CACHE_ENV = "XAC_COMPILE_CACHE"


@contextlib.contextmanager
def compiled_scores(model: ExplainedModel, enabled: bool) -> Iterator[Callable[..., torch.Tensor]]:
    """``model.scores``, through ``torch.compile`` when ``enabled`` (see :func:`compile_cache`).

    The compiled function is kept on the model object: a second explanation in the same process
    (KernelSHAP's stability rerun, a benchmark's repetitions) reuses it instead of recompiling.
    """
    if not enabled:
        yield model.scores
        return
    if model.compiled_scores is not None:
        yield model.compiled_scores
        return
    with compile_cache(model):
        # One graph, of the job's full pass shape (dynamic=False; shrunk passes run eager), and
        # a graph break would silently fall back to eager for part of the model, so it is refused.
        model.compiled_scores = torch.compile(model.scores, dynamic=False, fullgraph=True)
        yield model.compiled_scores


@contextlib.contextmanager
def compile_cache(model: ExplainedModel) -> Iterator[None]:
    """Load torch's compiled artifacts from ``XAC_COMPILE_CACHE`` before compiling, save them after.

    The cache is a folder or an ``s3://bucket/prefix`` every shard of a job can read; its entry
    is keyed by the model's weights, torch's version and the device, so a stale entry is never
    used (torch checks its own artifacts too and recompiles what does not match). Without the
    variable, torch's per-machine cache (``TORCHINDUCTOR_CACHE_DIR``) is all there is.
    """
    import hashlib

    location = os.environ.get(COMPILE_CACHE_ENV, "").strip()
    if not location:
        yield
        return
    digest = hashlib.sha256()
    for name, tensor in sorted(model.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    device = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    digest.update(f"{torch.__version__}|{device}".encode())
    name = f"xac-compile-{digest.hexdigest()[:32]}.bin"
    cached = _read_cache(location, name)
    if cached is not None:
        torch.compiler.load_cache_artifacts(cached)
    yield
    if cached is None:
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            _write_cache(location, name, saved[0])


def _s3_entry(location: str, name: str) -> tuple[str, str]:
    """(bucket, key) of cache entry ``name`` under the ``s3://bucket/prefix`` ``location``."""
    from include.compliance import parse_s3_uri

    bucket, prefix = parse_s3_uri(location)
    return bucket, f"{prefix}/{name}".lstrip("/")


def _read_cache(location: str, name: str) -> bytes | None:
    if location.startswith("s3://"):
        from include.storage import s3_client

        bucket, key = _s3_entry(location, name)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception:  # a missing entry (or an unreadable cache) only means compiling here
            return None
    path = Path(location) / name
    return path.read_bytes() if path.is_file() else None


def _write_cache(location: str, name: str, data: bytes) -> None:
    """Best effort (a cache that cannot be written costs the next shard a compilation, no more);
    written whole (temporary file + rename, or one S3 PUT) so a reader never sees a torn entry."""
    try:
        if location.startswith("s3://"):
            from include.storage import s3_client

            bucket, key = _s3_entry(location, name)
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
            return
        folder = Path(location)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)
    except Exception:
        return


def uses_channels_last(model: ExplainedModel) -> bool:
    """On a CPU, image inputs of a model with 2-D convolutions run in channels-last layout.

    Not on a GPU: on an H100 (bench/results/gpu_ig_probe.json) channels-last made ResNet-50's
    forward+backward slower, 2867 -> 2299 rows/s in fp32 and 4202 -> 3299 in bf16 (256 rows,
    cudnn autotuning on or off alike)."""
    return (
        model.device.type == "cpu"
        and any(len(m.shape) == 3 for m in model.modalities)
        and any(isinstance(layer, nn.Conv2d) for layer in model.module.modules())
    )


@contextlib.contextmanager
def memory_layout(model: ExplainedModel, channels_last: bool) -> Iterator[None]:
    """Keep the model's 4-D weights channels-last for the duration (restored after; only the
    layout changes, not a value). Inputs alone in channels-last gained nothing: oneDNN picks its
    fast NHWC kernels when the weights are in that layout too."""
    if not channels_last:
        yield
        return
    model.module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.module.to(memory_format=torch.contiguous_format)


@dataclass
class PassWork:
    """What a job's gradient passes and forward-only checks cost (reported in ``details``)."""

    passes: int = 0
    rows: int = 0  # rows through forward+backward, padding included
    compiled_rows: int = 0  # of which through the compiled graph
    gradient_seconds: float = 0.0
    forward_rows: int = 0  # path points evaluated forward only (the adaptive rule's checks)
    forward_seconds: float = 0.0


@dataclass
class PathProblem:
    """What every pass needs: the model, the flat inputs/baselines, the explained columns."""

    model: ExplainedModel
    x: torch.Tensor  # (N, F) flat inputs
    base: torch.Tensor  # (N, F) flat baselines
    targets: torch.Tensor  # (N,) explained column
    per_pass: int  # tasks per pass: fixed for the whole job (shard-independent)
    channels_last: bool
    precision: str = "fp32"  # "fp32" | "bf16" (autocast of the model's forward/backward)
    scores: Callable[..., torch.Tensor] | None = None  # its compiled form; None: model.scores
    # Whether a call's last, partly filled pass shrinks to a power of two of tasks instead of
    # being padded to ``per_pass`` (see :func:`shrinks_last_pass`).
    shrink_last_pass: bool = False
    pass_rows: int = PREDICT_CHUNK_ROWS  # rows of a gradient pass: bounds forward-only chunks
    diff: torch.Tensor = field(init=False)  # x - x' (on the model's device)
    work: PassWork = field(default_factory=PassWork)

    def __post_init__(self) -> None:
        device = self.model.device
        self.x, self.base = self.x.to(device), self.base.to(device)
        self.targets = self.targets.to(device)
        self.diff = self.x - self.base


def path_gradient_sums(
    problem: PathProblem, instances: np.ndarray, alphas: np.ndarray, weights: np.ndarray
) -> torch.Tensor:
    """``sum_j weights[t, j] * grad f(x' + alphas[t, j] (x - x'))`` for each task t.

    A task is (instance ``instances[t]``, its k path points). Tasks are packed
    ``problem.per_pass`` per pass, the last pass padded with copies of its last task, so every
    pass of the job has one shape (or, with ``problem.shrink_last_pass``, the last pass holds
    the power of two of tasks that covers what is left).
    Returns ``(T, F)`` float64 sums (gradients w.r.t. the path point, not yet times x - x')
    where the model is (on a GPU they stay there: what the caller reduces them to crosses to
    the host, not the sums); adds the passes, rows and seconds to ``problem.work``.
    """
    started = time.perf_counter()
    model = problem.model
    device = model.device
    n_tasks, k = alphas.shape
    per_pass = problem.per_pass
    n_feat = problem.x.shape[1]
    # Accumulated where the gradients are: no copy back (and, on a GPU, no wait) per pass.
    out = torch.zeros((n_tasks, n_feat), dtype=torch.float64, device=device)
    n_passes = -(-n_tasks // per_pass)
    left = n_tasks - (n_passes - 1) * per_pass
    last_size = min(per_pass, pow2_ceil(left)) if problem.shrink_last_pass else per_pass
    alphas_t = torch.from_numpy(alphas).to(device=device, dtype=problem.x.dtype)
    weights_t = torch.from_numpy(weights).to(device)
    compiled_fn = problem.scores if problem.scores is not None else model.scores

    def run(p: int) -> None:
        size = last_size if p == n_passes - 1 else per_pass
        # The compiled graph has the job's pass shape; a shrunk pass runs eager (see
        # shrinks_last_pass) rather than compile another.
        scores_fn = compiled_fn if size == per_pass else model.scores
        pass_rows = size * k
        start, stop = p * per_pass, min((p + 1) * per_pass, n_tasks)
        take = np.arange(start, start + size).clip(max=stop - 1)  # pad: repeat the last task
        inst = torch.from_numpy(instances[take]).to(device)
        take_t = torch.from_numpy(take).to(device)
        flat = torch.empty((pass_rows, n_feat), dtype=problem.x.dtype, device=device)
        points = flat.view(size, k, n_feat)
        # x' + a (x - x'), written in place: (tasks, k, F)
        torch.addcmul(
            problem.base[inst][:, None, :],
            alphas_t[take_t][:, :, None],
            problem.diff[inst][:, None, :],
            out=points,
        )
        inputs = []
        for tensor in model.split(flat):
            if problem.channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            else:
                tensor = tensor.contiguous()
            inputs.append(tensor.requires_grad_(True))
        row_targets = problem.targets[inst].repeat_interleave(k)
        with torch.enable_grad():
            with autocast(device, problem.precision):
                scores = scores_fn(*inputs)
            explained = scores.to(problem.x.dtype).gather(1, row_targets[:, None]).sum()
            grads = torch.autograd.grad(explained, inputs)
        grad = torch.cat([g.reshape(pass_rows, -1) for g in grads], dim=1).view(size, k, n_feat)
        if device.type == "cuda":
            # One batched product in fp32 (k terms each, ~1e-7 relative): the float64
            # multiply-and-sum moved ~10x the gradient's bytes and cost a third of a bf16 pass.
            sums = torch.bmm(weights_t[take_t][:, None, :].float(), grad.float())[:, 0].double()
        else:
            sums = (grad.double() * weights_t[take_t][:, :, None]).sum(1)
        out[start:stop] = sums[: stop - start]

    compiling = problem.scores is not None and not model.compiled_scores_ran
    run_passes(n_passes, run, device, first_alone=compiling)
    if problem.scores is not None:
        model.compiled_scores_ran = True
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the seconds below are the passes' own
    work = problem.work
    work.passes += n_passes
    work.rows += ((n_passes - 1) * per_pass + last_size) * k
    if problem.scores is not None:
        work.compiled_rows += ((n_passes - 1) * per_pass + (last_size if last_size == per_pass else 0)) * k
    work.gradient_seconds += time.perf_counter() - started
    return out


def row_dots(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-row dot products of two float64 ``(T, F)`` tensors, to the host as ``(T,)``.

    On the CPU numpy's per-row pairwise sums: a row's figure does not depend on the other rows
    (bit-identical shards), which torch's threaded reductions do not promise. On a GPU where the
    tensors are: only T figures cross to the host (the sums of 64 ResNet-50 panels are 77 MB,
    and multiplying them out on the host took longer than the gradient pass behind them).
    """
    if a.device.type == "cpu":
        return (a.numpy() * b.numpy()).sum(1)
    return (a * b).sum(1).cpu().numpy()


def sum_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """The element-wise sum of equally shaped rows, in their order (numpy's on the CPU, as
    :func:`row_dots`)."""
    if rows[0].device.type == "cpu":
        return torch.from_numpy(np.sum([row.numpy() for row in rows], axis=0))
    return torch.stack(list(rows)).sum(0)


def path_values(problem: PathProblem, instances: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """The explained output at path points ``x' + a (x - x')`` (forward only, fp32), float64."""
    started = time.perf_counter()
    device = problem.model.device
    index = torch.from_numpy(instances).to(device)
    alphas_t = torch.from_numpy(alphas).to(device=device, dtype=problem.x.dtype)
    points = problem.base[index] + alphas_t[:, None] * problem.diff[index]
    scores = problem.model.evaluate(
        points, forward_chunk_rows(problem.model, problem.pass_rows, len(instances))
    )
    problem.work.forward_rows += len(instances)
    problem.work.forward_seconds += time.perf_counter() - started
    return scores.gather(1, problem.targets[index].cpu()[:, None]).squeeze(1).double().numpy()


# ----------------------------------------------------------------------------- adaptive rule


def adaptive_attributions(
    problem: PathProblem,
    fx: np.ndarray,
    fb: np.ndarray,
    tolerance: float,
    max_evaluations: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Completeness-checked composite Gauss-Legendre IG; returns (attributions, per-instance).

    Each instance's path [0, 1] starts as ADAPTIVE_PANELS panels with ADAPTIVE_NODES
    Gauss-Legendre nodes each. For a panel [a, b], completeness holds locally: its attribution
    sum must equal g(b) - g(a), where g(a) = f(x' + a (x - x')) is known from a forward pass
    only (about a third of a forward+backward). That gap is the exact quadrature error of the
    explained output over the panel, so it is a free, reliable error indicator. An instance is
    done when the sum of its panels' gaps is <= ``tolerance * max(|f(x) - f(x')|, 1e-6)``;
    otherwise every panel whose gap exceeds its share (tolerance x its length) is halved and
    re-integrated, in rounds, until done or until ``max_evaluations`` gradient evaluations
    would be exceeded (then the best attributions so far are kept and ``converged`` is False).
    The gap bounds only the sum of the attributions; the benchmark measures the per-feature
    error against a high-order reference too (bench/bench_integrated_gradients.py).
    """
    n = problem.x.shape[0]
    if max_evaluations < ADAPTIVE_NODES * ADAPTIVE_PANELS:
        nodes, panels = max_evaluations, 1
    else:
        nodes, panels = ADAPTIVE_NODES, ADAPTIVE_PANELS
    unit_a, unit_w = gauss_legendre(nodes)
    scale = tolerance * np.maximum(np.abs(fx - fb), EPSILON)
    diff64 = problem.diff.double()  # where the model is, as the gradient sums

    # Per instance: {(a, b): [g(a), g(b), gradient sums (F,), gap]}
    edges = np.linspace(0.0, 1.0, panels + 1)
    inner = edges[1:-1]
    g_inner = (
        path_values(problem, np.repeat(np.arange(n), len(inner)), np.tile(inner, n)).reshape(n, len(inner))
        if len(inner)
        else np.zeros((n, 0))
    )
    panels_of: list[dict[tuple[float, float], list[Any]]] = []
    pending: list[tuple[int, float, float]] = []
    for i in range(n):
        g = np.concatenate([[fb[i]], g_inner[i], [fx[i]]])
        panels_of.append({(edges[j], edges[j + 1]): [g[j], g[j + 1], None, 0.0] for j in range(panels)})
        pending += [(i, edges[j], edges[j + 1]) for j in range(panels)]
    evaluations = np.full(n, nodes * panels)
    converged = np.zeros(n, dtype=bool)
    while pending:
        inst = np.array([p[0] for p in pending])
        a = np.array([p[1] for p in pending])
        b = np.array([p[2] for p in pending])
        sums = path_gradient_sums(
            problem, inst, a[:, None] + (b - a)[:, None] * unit_a, (b - a)[:, None] * unit_w
        )
        completeness = row_dots(sums, diff64[torch.from_numpy(inst).to(diff64.device)])
        for t, (i, lo, hi) in enumerate(pending):
            entry = panels_of[i][(lo, hi)]
            entry[2] = sums[t]
            entry[3] = abs(completeness[t] - (entry[1] - entry[0]))
        touched = sorted(set(inst.tolist()))
        pending = []
        split: list[tuple[int, float, float]] = []
        for i in touched:
            gaps = {key: entry[3] for key, entry in panels_of[i].items()}
            if sum(gaps.values()) <= scale[i]:
                converged[i] = True
                continue
            over = [key for key, gap in gaps.items() if gap > scale[i] * (key[1] - key[0])]
            # Worst panels first while the evaluation cap allows (two new panels each).
            over.sort(key=lambda key: (-gaps[key], key))
            room = (max_evaluations - int(evaluations[i])) // (2 * nodes)
            for key in over[:room]:
                split.append((i, *key))
            evaluations[i] += 2 * nodes * min(len(over), max(room, 0))
        if split:
            mids = np.array([(lo + hi) / 2.0 for _, lo, hi in split])
            g_mid = path_values(problem, np.array([i for i, _, _ in split]), mids)
            for (i, lo, hi), mid, g in zip(split, mids, g_mid, strict=True):
                g_lo, g_hi = panels_of[i][(lo, hi)][:2]
                del panels_of[i][(lo, hi)]
                panels_of[i][(lo, mid)] = [g_lo, g, None, 0.0]
                panels_of[i][(mid, hi)] = [g, g_hi, None, 0.0]
                pending += [(i, lo, mid), (i, mid, hi)]
    gradients = torch.stack(
        [sum_rows([panels_of[i][key][2] for key in sorted(panels_of[i])]) for i in range(n)]
    )
    per_instance = {
        "gradient_evaluations": evaluations,
        "panels": np.array([len(p) for p in panels_of]),
        "converged": converged,
        "completeness_gap_bound": np.array([sum(e[3] for e in p.values()) for p in panels_of]),
    }
    return (gradients * diff64).cpu().numpy(), per_instance


# ----------------------------------------------------------------------------- explainer


class IntegratedGradientsExplainer:
    """Integrated Gradients (see the module docstring)."""

    name = INTEGRATED_GRADIENTS
    devices = ("cpu", "cuda")

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

        requested = params.get("internalBatchSize")
        channels_last = uses_channels_last(model)
        precision = str(params.get("precision") or "fp32")
        compiled = bool(params.get("compile"))
        with memory_layout(model, channels_last), compiled_scores(model, compiled) as scores_fn:
            if requested:
                internal = int(requested)
            elif model.device.type == "cuda":
                internal = cuda_pass_rows(model, precision)
            else:
                internal = auto_internal_batch_size(model)
            flat_x, flat_b = model.flatten(inputs).contiguous(), model.flatten(tuple(baselines)).contiguous()
            if model.device.type == "cuda":  # one forward for both (see forward_chunk_rows)
                both = model.evaluate(torch.cat([flat_x, flat_b]), forward_chunk_rows(model, internal, 2 * n))
                scores, baseline_scores = both[:n], both[n:]
            else:
                scores = model.evaluate(flat_x, PREDICT_CHUNK_ROWS)
                baseline_scores = model.evaluate(flat_b, PREDICT_CHUNK_ROWS)
            targets = model.targets(scores)
            fx = scores.gather(1, targets[:, None]).squeeze(1).double().numpy()
            fb = baseline_scores.gather(1, targets[:, None]).squeeze(1).double().numpy()
            adaptive = method == ADAPTIVE
            nodes = ADAPTIVE_NODES if adaptive and steps >= ADAPTIVE_NODES * ADAPTIVE_PANELS else steps
            first_round = (n_global or n) * (ADAPTIVE_PANELS if adaptive else 1)
            # Tasks per pass: as many as the pass size allows, never more than the whole job
            # has (so tiny jobs do not pad to hundreds of copies); from job-wide numbers only.
            per_pass = balanced_tasks_per_pass(internal // nodes, first_round)
            setup_seconds = time.perf_counter() - started  # compile cache, pass sizing, f(x), f(x')
            problem = PathProblem(
                model,
                flat_x,
                flat_b,
                targets,
                per_pass,
                channels_last,
                precision,
                scores_fn if compiled else None,
                shrink_last_pass=shrinks_last_pass(model.device),
                pass_rows=internal,
            )
            resolved: dict[str, Any] = {
                "steps": steps,
                "integrationMethod": method,
                "baseline": baselines_spec,
                "internalBatchSize": internal,
                "precision": precision,
                "compile": compiled,
            }
            per_instance: dict[str, np.ndarray] = {}
            if adaptive:
                requested_tolerance = params.get("completenessTolerance")
                tolerance = DEFAULT_TOLERANCE if requested_tolerance is None else float(requested_tolerance)
                if not 0.0 < tolerance < 1.0:
                    raise ParameterError(f"completenessTolerance must be in (0, 1), got {tolerance}")
                features, per_instance = adaptive_attributions(problem, fx, fb, tolerance, steps)
                resolved["completenessTolerance"] = tolerance
            else:
                alphas, weights = fixed_rule(method, steps)
                instances = np.arange(n)
                sums = path_gradient_sums(
                    problem, instances, np.tile(alphas, (n, 1)), np.tile(weights, (n, 1))
                )
                features = (sums * problem.diff.double()).cpu().numpy()
        resolved["internalBatchSize"] = per_pass * nodes

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
            per_instance=per_instance,
            details={
                "instances_per_call": per_pass,
                "forward_backward_passes": problem.work.passes,
                # Where the time went (a GPU's figures included: each stage ends in a copy
                # to the host, which waits for the device).
                "work": {
                    "gradient_rows": problem.work.rows,
                    "compiled_gradient_rows": problem.work.compiled_rows,
                    "forward_check_rows": problem.work.forward_rows,
                    "seconds_setup": setup_seconds,
                    "seconds_gradient_passes": problem.work.gradient_seconds,
                    "seconds_forward_checks": problem.work.forward_seconds,
                },
                "channels_last": channels_last,
                "device": str(model.device),
                "requested_internal_batch_size": requested,
                "seconds": time.perf_counter() - started,
            },
        )


EXPLAINER = IntegratedGradientsExplainer()
