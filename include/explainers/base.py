"""The shared interface of the explanation methods.

Three things live here:

* the *input layout* of a model (:class:`Modality`): which columns feed which model input, in
  which order and shape;
* the *output adapter* (:class:`ExplainedModel`): what scalar of the model we explain;
* the *method registry* (:data:`METHOD_MODULES`, :func:`get_explainer`) and the
  :class:`Explainer` protocol each method module implements, returning :class:`Attributions`.

What is explained (the output adapter)
--------------------------------------
* binary models: the probability of the positive class, ``sigmoid(logit)``;
* regression models (used by the tests' linear ground truth): the raw output;
* multiclass models: the **log-probability of the predicted class**, ``log_softmax(logits)[c]``
  (the class predicted for the explained instance; every coalition / path point of that
  instance is read at that same class). Why not the probability: a confident multiclass
  prediction sits on the flat top of the softmax (p = 0.99999), where the effect of a
  feature depends on all the others; the coalition values are then strongly non-additive and
  KernelSHAP at 500 coalitions was unstable on the sample digit model (Spearman between two
  seeds 0.80 on average, 0.54 at worst, below the 0.85 gate). In log-probability the same
  explanations are near-additive (0.977 on average, 0.93 at worst). Why not the raw logit:
  softmax ignores a shift common to all logits, so the raw logit of one class is not
  identified by the model's predictions; its log-probability is. Integrated Gradients
  completeness is about 1e-6 either way at 50 Gauss-Legendre steps (SiLU networks are smooth).
  Binary models keep the probability: sigmoid saturates less in practice and the
  positive-class probability is what a reviewer reads.

Determinism
-----------
CPU kernels may return bits that depend on the *shape* of the batch a row was evaluated in
(different blocking for different batch sizes). Measured here: with passes whose row count is a
power of two a row's result does not depend on its position or neighbours inside the pass, but a
16,200-row pass changed one output when its rows were shifted by 8. Every evaluation therefore runs
in passes of a fixed power-of-two number of rows (the last one padded), sized only from quantities
that are the same for every shard. That is what makes the union of shards bit-identical to one run.

The module imports torch lazily: the CLI imports the registry while starting.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from include.explainers.errors import UnknownMethodError
from include.explainers.params import (
    ATTENTION_ROLLOUT,
    COUNTERFACTUAL,
    DEEP_SHAP,
    EXACT_SHAPLEY,
    GRADIENT_SHAP,
    INTEGRATED_GRADIENTS,
    KERNEL_SHAP,
    LIME,
    OCCLUSION,
    SALIENCY,
    TREE_SHAP,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

# Method name (as written in configurations) -> module implementing it (an ``EXPLAINER`` object).
METHOD_MODULES: dict[str, str] = {
    KERNEL_SHAP: "include.explainers.kernel_shap",
    INTEGRATED_GRADIENTS: "include.explainers.integrated_gradients",
    LIME: "include.explainers.lime",
    COUNTERFACTUAL: "include.explainers.counterfactual",
    EXACT_SHAPLEY: "include.explainers.exact_shapley",
    TREE_SHAP: "include.explainers.tree_shap",
    SALIENCY: "include.explainers.saliency",
    GRADIENT_SHAP: "include.explainers.gradient_shap",
    DEEP_SHAP: "include.explainers.deep_shap",
    OCCLUSION: "include.explainers.occlusion",
    ATTENTION_ROLLOUT: "include.explainers.attention",
}

# What a model's module returns (see ExplainedModel.scores).
OUTPUT_SCALES = ("logits", "probabilities", "raw")

# Fixed chunk for small evaluations (predictions, baselines): a constant shape keeps them
# bit-identical whatever the number of rows in the shard.
PREDICT_CHUNK_ROWS = 64
MIN_CHUNK_ROWS = 256
MAX_CHUNK_ROWS = 65_536
# On a GPU one pass should fill the device: a cheap MLP needs ~10^6 rows per call before the
# launch overhead stops mattering (on the CPU such passes fall out of cache, see kernel_shap).
MAX_CUDA_CHUNK_ROWS = 1 << 21


@dataclass(frozen=True)
class Modality:
    """One model input: its columns (in order) and the per-instance tensor shape."""

    name: str  # "image" | "tabular"
    kind: str  # "image" | "tabular"
    columns: tuple[str, ...]
    shape: tuple[int, ...]  # (1, 8, 8) for an image, (n_features,) for tabular

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "columns": list(self.columns),
            "shape": list(self.shape),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Modality:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            columns=tuple(str(c) for c in data["columns"]),
            shape=tuple(int(s) for s in data["shape"]),
        )


@dataclass
class Attributions:
    """What a method returns for N instances over F flat features (modalities concatenated).

    ``players`` are the units the method attributes to (features for IG; features or image
    superpixels for KernelSHAP). ``features`` spreads each player's value evenly over its
    features so that every method yields a per-pixel grid; the sum is unchanged.
    """

    method: str
    player_names: list[str]
    players: np.ndarray  # (N, P) float64
    features: np.ndarray  # (N, F) float64
    feature_player: np.ndarray  # (F,) int: the player each feature belongs to
    outputs: np.ndarray  # (N,) explained output f(x)
    baselines: np.ndarray  # (N,) E_bg[f] (KernelSHAP) or f(baseline) (IG)
    baseline_kind: str
    targets: np.ndarray  # (N,) int: the output column explained
    resolved_params: dict[str, Any]  # the parameters as actually applied (defaults resolved)
    per_instance: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Explainer(Protocol):
    """An explanation method. One module per method exposes an ``EXPLAINER`` instance."""

    name: str

    def check_model(self, model: ExplainedModel) -> None:
        """Raise :class:`MethodNotApplicableError` when the method cannot explain ``model``."""

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
        """Attribute ``model``'s explained output for each row of ``inputs``.

        ``inputs``/``background`` hold one tensor per modality, shaped ``(N, *modality.shape)``.
        ``params`` are normalised (see :mod:`include.explainers.params`). ``seed`` drives
        draws shared by all instances (the background subset); ``instance_seeds`` the draws of
        each instance (default: derived from ``seed`` and the row index). ``n_global`` is the
        number of instances of the whole (unsharded) job, used to size batches identically in
        every shard.
        """
        ...


def known_methods() -> list[str]:
    return list(METHOD_MODULES)


def get_explainer(method: str) -> Explainer:
    """The explainer registered for ``method`` (raises :class:`UnknownMethodError`)."""
    if method not in METHOD_MODULES:
        raise UnknownMethodError(
            f"unknown explanation method {method!r}; known methods: {', '.join(METHOD_MODULES)}"
        )
    module = importlib.import_module(METHOD_MODULES[method])
    return module.EXPLAINER


def instance_seed(seed: int, inference_id: str) -> int:
    """A 63-bit seed from (run seed, inference id): a row's draws do not depend on its shard."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{inference_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def instance_seeds_for(seed: int, n: int, instance_seeds: Sequence[int] | None) -> list[int]:
    """The per-row seeds a method was given, or (callers without inference ids) from the row index."""
    seeds = (
        list(instance_seeds)
        if instance_seeds is not None
        else [instance_seed(seed, str(i)) for i in range(n)]
    )
    if len(seeds) != n:
        raise ValueError("one instance seed per input row is required")
    return seeds


# ----------------------------------------------------------------------------- memory


def available_memory_bytes() -> int:
    """Memory this process may still use: the host's available memory, capped by the cgroup.

    psutil (like /proc/meminfo) reports the *host* inside a container; a pod with a 2 GiB
    limit on a 256 GiB node would otherwise size its batches for the node and be OOM-killed.
    """
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unusable: fall back to /proc/meminfo
        available = _meminfo_available()
    limit = _cgroup_headroom()
    return min(available, limit) if limit is not None else available


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 * 1024**3  # unknown platform: assume a modest 2 GiB


def _cgroup_headroom() -> int | None:
    candidates = [
        (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),  # cgroup v2
        (
            Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
            Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        ),
    ]
    for limit_path, usage_path in candidates:
        try:
            raw = limit_path.read_text().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 1 << 60:  # v1 reports "unlimited" as a huge number
                return None
            usage = int(usage_path.read_text().strip())
            return max(limit - usage, 0)
        except (OSError, ValueError):
            continue
    return None


def memory_budget_override() -> int | None:
    """``XAC_EXPLAIN_MEMORY_BUDGET_BYTES``, the budget forced for every device (at least 1 MiB)."""
    env = os.environ.get("XAC_EXPLAIN_MEMORY_BUDGET_BYTES")
    return max(int(env), 1 << 20) if env else None


def memory_budget_bytes(fraction: float = 0.25, cap: int = 1 << 30) -> int:
    """The working-set budget of one batch: a fraction of the free memory, capped."""
    override = memory_budget_override()
    if override is not None:
        return override
    return max(min(int(available_memory_bytes() * fraction), cap), 16 << 20)


def pow2_floor(value: float) -> int:
    return 1 << max(math.floor(math.log2(max(value, 1.0))), 0)


def pow2_ceil(value: float) -> int:
    return 1 << max(math.ceil(math.log2(max(value, 1.0))), 0)


# ----------------------------------------------------------------------------- the model adapter


class ExplainedModel:
    """A loaded torch module + its input layout + the output adapter (see the module docstring).

    ``scores(*inputs)`` returns ``(B, K)``: K = 1 (probability of the positive class) for
    binary models, K = number of classes (log-probabilities) for multiclass ones; the
    explained output of an instance is column ``target`` of it.
    """

    def __init__(
        self,
        module: nn.Module,
        modalities: Sequence[Modality],
        task: str,
        class_names: Sequence[str],
        *,
        differentiable: bool = True,
        output_scale: str = "logits",
        dtype: torch.dtype | None = None,
    ) -> None:
        import torch

        if task not in ("binary", "multiclass", "regression"):
            raise ValueError(f"unknown task {task!r}")
        if output_scale not in OUTPUT_SCALES:
            raise ValueError(f"unknown output scale {output_scale!r}; one of {', '.join(OUTPUT_SCALES)}")
        self.module = module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)  # gradients are only ever taken w.r.t. inputs
        self.modalities = tuple(modalities)
        self.task = task
        self.class_names = list(class_names)
        self.differentiable = differentiable
        self.output_scale = output_scale
        first = next(iter(self.module.parameters()), None)
        self.dtype = dtype or (first.dtype if first is not None else torch.get_default_dtype())
        self.device = torch.device("cpu")
        # ``torch.compile``d ``scores``, made by the first method that asks for it (see
        # integrated_gradients.compiled_scores) and reused by later calls in the process.
        self.compiled_scores: Callable[..., torch.Tensor] | None = None
        # Whether compiled_scores has run once (compiled): until then its first pass runs alone.
        self.compiled_scores_ran = False
        self._row_bytes: int | None = None
        # Peak GPU bytes per row of a forward+backward pass, by (device, precision): measured
        # once per process (integrated_gradients.cuda_pass_rows), not once per call.
        self.cuda_pass_row_bytes: dict[tuple[str, str], float] = {}

    @contextlib.contextmanager
    def on_device(self, device: torch.device) -> Iterator[None]:
        """Keep the module on ``device`` for the duration (back on the CPU after).

        Inputs stay CPU tensors everywhere: the methods that support a GPU move their pass
        buffers there and bring results back, the others never see another device.
        """
        import torch

        if device.type == "cpu":
            yield
            return
        self.module.to(device)
        self.device = device
        try:
            yield
        finally:
            self.module.to(torch.device("cpu"))
            self.device = torch.device("cpu")

    # layout --------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return sum(m.size for m in self.modalities)

    @property
    def n_outputs(self) -> int:
        return len(self.class_names) if self.task == "multiclass" else 1

    @property
    def has_image(self) -> bool:
        return any(m.kind == "image" for m in self.modalities)

    def feature_names(self) -> list[str]:
        return [c for m in self.modalities for c in m.columns]

    def modality_slices(self) -> list[slice]:
        out, start = [], 0
        for m in self.modalities:
            out.append(slice(start, start + m.size))
            start += m.size
        return out

    def flatten(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Modality tensors ``(B, *shape)`` -> one ``(B, F)`` tensor."""
        import torch

        return torch.cat([x.reshape(x.shape[0], -1) for x in inputs], dim=1)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, F)`` -> modality tensors ``(B, *shape)`` (views, no copy)."""
        return tuple(
            flat[:, s].reshape(flat.shape[0], *m.shape)
            for s, m in zip(self.modality_slices(), self.modalities, strict=True)
        )

    # outputs -------------------------------------------------------------------------------
    def scores(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Differentiable ``(B, K)`` outputs the explanations are about.

        ``output_scale`` says what the module returns: ``logits`` (the sample networks, exported
        torch and ONNX networks, tree margins), ``probabilities`` (``predict_proba`` of a
        scikit-learn model, most inference servers) or ``raw`` (regression). Binary models may
        return one column (the positive class) or two (both classes).
        """
        import torch

        out = self.module(*inputs)
        out = out.reshape(out.shape[0], -1)
        if self.task == "regression":
            return out[:, :1]
        if self.output_scale == "probabilities":
            if self.task == "binary":
                return out[:, -1:]
            return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
        if self.task == "binary":
            if out.shape[1] == 2:
                return torch.softmax(out, dim=1)[:, 1:]
            return torch.sigmoid(out[:, :1])
        return torch.log_softmax(out, dim=1)

    def evaluate(self, flat: torch.Tensor, chunk_rows: int = PREDICT_CHUNK_ROWS) -> torch.Tensor:
        """``scores`` of flat rows, without gradients, in fixed-shape chunks (module docstring)."""
        import torch

        n = flat.shape[0]
        out = torch.empty((n, self.n_outputs), dtype=self.dtype)
        with torch.inference_mode():
            for start in range(0, n, chunk_rows):
                block = flat[start : start + chunk_rows].to(self.device)
                m = block.shape[0]
                if m < chunk_rows:
                    block = torch.cat([block, block[-1:].expand(chunk_rows - m, -1)])
                out[start : start + m] = self.scores(*self.split(block))[:m].cpu()
        return out

    def class_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` class probabilities from ``scores`` (binary: [1 - p, p]; regression: as is)."""
        import torch

        if self.task == "binary":
            return torch.cat([1.0 - scores, scores], dim=1)
        if self.task == "multiclass":
            return scores.exp()
        return scores

    def targets(self, scores: torch.Tensor) -> torch.Tensor:
        """The explained column per row: 0 (P(positive)) for binary, the predicted class otherwise."""
        import torch

        if self.task == "multiclass":
            return scores.argmax(dim=1)
        return torch.zeros(scores.shape[0], dtype=torch.long)

    def explained_output_description(self) -> str:
        if self.task == "binary":
            return f"probability of the positive class ({self.class_names[-1]})"
        if self.task == "regression":
            return "the model's (single) raw output"
        return "log-probability (log-softmax) of the predicted class"

    # sizing ----------------------------------------------------------------------------------
    def row_bytes(self) -> int:
        """Estimated bytes one row costs in a forward pass (inputs + every leaf activation).

        Measured once with forward hooks on a single row, which stays right when the
        architecture changes, unlike a formula.
        """
        if self._row_bytes is None:
            import torch

            sizes: list[int] = []
            itemsize = torch.tensor([], dtype=self.dtype).element_size()
            if isinstance(self.module, torch.jit.ScriptModule):
                # TorchScript modules take no hooks: one activation per output unit of each weight
                # (a Linear's out_features; a convolution's channels at the image's full size).
                pixels = max(
                    (math.prod(m.shape[1:]) for m in self.modalities if m.kind == "image"), default=1
                )
                sizes = [int(p.shape[0]) * pixels * itemsize for p in self.module.parameters() if p.ndim >= 2]
            else:
                hooks = [
                    module.register_forward_hook(
                        lambda _m, _i, o: (
                            sizes.append(o.numel() * o.element_size())
                            if isinstance(o, torch.Tensor)
                            else None
                        )
                    )
                    for module in self.module.modules()
                    if not list(module.children())
                ]
                try:
                    with torch.inference_mode():
                        zeros = torch.zeros((1, self.n_features), dtype=self.dtype, device=self.device)
                        self.scores(*self.split(zeros))
                finally:
                    for hook in hooks:
                        hook.remove()
            self._row_bytes = self.n_features * itemsize + sum(sizes) + self.n_outputs * itemsize
        return self._row_bytes

    def chunk_rows_for(self, total_rows: int, overhead: float = 3.0) -> int:
        """Fixed chunk size for an evaluation stream of ``total_rows`` (over the whole job).

        A power of two fitted to the memory budget, never above what the job needs (so a tiny
        job does not pad its only chunk to 65536 rows). ``overhead`` covers temporaries
        (masks, the mixed rows themselves, autograd buffers).
        """
        if self.device.type == "cuda":
            from include.explainers.device import cuda_memory_budget_bytes

            budget, most = cuda_memory_budget_bytes(self.device), MAX_CUDA_CHUNK_ROWS
        else:
            budget, most = memory_budget_bytes(), MAX_CHUNK_ROWS
        budget_rows = budget / (self.row_bytes() * overhead)
        rows = min(pow2_floor(budget_rows), most, pow2_ceil(total_rows))
        return max(rows, min(MIN_CHUNK_ROWS, pow2_ceil(total_rows)))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a result (recorded in every explanation)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "captum", "numpy", "pandas", "scikit-learn", "scipy", "pyarrow", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


@contextlib.contextmanager
def _single_threaded_ops() -> Iterator[int]:
    """Run torch ops on one thread each; yields the thread count the caller had configured.

    Passes are then spread over that many Python workers instead (torch releases the GIL
    inside its kernels). Why not torch's intra-op threads: every op of a small model is a
    short parallel region ending in a barrier, and when another process holds one of the
    cores a barrier waits for a descheduled thread. Measured on 2 cores with one busy: 2
    intra-op threads explained 17-48 rows/s, one thread 360 rows/s. Coarse passes on
    separate workers never wait on each other, and each pass computes on one thread, so its
    bits do not depend on the thread count or on which worker ran it.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def run_passes(
    count: int, run: Callable[[int], None], device: torch.device | None = None, *, first_alone: bool = False
) -> None:
    """``run(k)`` for k in range(count) on as many workers as torch had threads.

    Shared by the methods that evaluate in independent passes (see :func:`_single_threaded_ops`).
    On a GPU the passes run one after the other: its kernels are queued asynchronously, and
    one pass already fills the device. ``first_alone``: pass 0 runs before the others start
    (a ``torch.compile``d function's first call compiles it; two workers calling it at once made
    dynamo compile it twice, "Unexpected recompilation": two graphs for the 32x32 benchmark CNN,
    first call 34-40 s with a cold inductor cache, against one graph and 34.5 s now).
    """
    if device is not None and device.type != "cpu":
        for k in range(count):
            run(k)
        return
    with _single_threaded_ops() as workers:
        if workers <= 1 or count <= 1:
            for k in range(count):
                run(k)
            return
        first = 1 if first_alone else 0
        if first:
            run(0)
        with ThreadPoolExecutor(max_workers=min(workers, count - first)) as pool:
            for _ in pool.map(run, range(first, count)):
                pass  # surface exceptions
