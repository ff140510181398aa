"""What the Captum-backed methods share: Saliency, GradientSHAP, DeepSHAP and Occlusion.

* **Passes.** Every method evaluates its instances in passes of a fixed number of instances
  (``per_pass``, a power of two sized from the memory budget and the *whole* job's row count,
  never from the shard), the last pass padded by repeating its last instance, exactly like
  Integrated Gradients and KernelSHAP (see :mod:`include.explainers.base`). A row's bits then do
  not depend on which shard it is in or where it sits in its pass.
* **Draws.** Captum's random methods (GradientShap, the fidelity metrics' perturbations) draw
  from process-global generators (``torch.normal``, ``np.random``). Per-instance
  reproducibility therefore needs one seeded call per instance (:func:`seeded`), which is what
  GradientSHAP does; the fidelity perturbations instead use our own perturbation functions with
  one ``torch.Generator`` per instance, so they stay batched.
* **The fidelity probe** (:class:`FidelityProbe`): what :mod:`include.explainers.fidelity`
  needs to compute Captum's ``infidelity`` and ``sensitivity_max`` for a run: the model, the
  explained rows and targets, how to re-explain perturbed rows, and the removal reference.
* **DeepLift compatibility** (:func:`deeplift_problems`): DeepLift propagates multipliers with
  rules for the nonlinear *modules* Captum knows, plus the rescale rule for SiLU, GELU and Mish
  (:func:`deeplift_rules`); anything else (a functional ``torch.relu`` in ``forward``, a
  product of two input-dependent tensors, a nonlinear module called twice, a Hardswish)
  silently gets plain gradients and a wrong answer, so it is refused up front.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from include.explainers.base import (
    ExplainedModel,
    memory_budget_bytes,
    pow2_ceil,
    pow2_floor,
    run_passes,
)

# Backward keeps activations and their gradients: about 3x a forward pass per row (as IG).
BACKWARD_OVERHEAD = 3.0
# Hard cap on instances per pass (a pass's rows are per_pass x rows_per_instance).
MAX_PER_PASS = 4096


def instances_per_pass(
    model: ExplainedModel, rows_per_instance: int, n_job: int, overhead: float = BACKWARD_OVERHEAD
) -> int:
    """Instances per pass: a power of two that fits the memory budget, from job-wide numbers only.

    ``rows_per_instance`` model rows are evaluated per instance in one pass; ``n_job`` is the
    number of instances of the whole (unsharded) job, so every shard gets the same value.
    """
    budget_rows = memory_budget_bytes() / (model.row_bytes() * overhead * max(rows_per_instance, 1))
    per_pass = min(pow2_floor(budget_rows), pow2_ceil(n_job), MAX_PER_PASS)
    return max(int(per_pass), 1)


def evaluate_in_passes(
    n: int,
    per_pass: int,
    attribute: Callable[[np.ndarray], np.ndarray],
    n_features: int,
    *,
    parallel: bool = True,
) -> tuple[np.ndarray, int]:
    """``attribute(rows)`` on passes of exactly ``per_pass`` row indices; returns ((n, F), passes).

    The last pass repeats its last index (padding); only the first rows of each pass are kept.
    ``parallel`` spreads passes over workers with single-threaded torch ops (:func:`run_passes`);
    methods that mutate shared state during a call (hooks on the model) pass False.
    """
    out = np.zeros((n, n_features))
    n_passes = -(-n // per_pass) if n else 0

    def run(p: int) -> None:
        start, stop = p * per_pass, min((p + 1) * per_pass, n)
        rows = np.arange(start, start + per_pass).clip(max=stop - 1)
        out[start:stop] = attribute(rows)[: stop - start]

    if parallel:
        run_passes(n_passes, run)
    else:
        for p in range(n_passes):
            run(p)
    return out, n_passes


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global generators for one call, restoring both afterwards.

    Captum's GradientShap draws its noise with ``torch.normal``, its baselines and path
    positions with ``np.random``; there is no generator argument.
    """
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        try:
            yield
        finally:
            np.random.set_state(np_state)


def derived_seed(seed: int, salt: int) -> int:
    """An independent 63-bit stream from an instance seed (the rerun, the fidelity draws)."""
    rng = np.random.default_rng([int(seed), int(salt)])
    return int(rng.integers(0, 2**63 - 1))


def feature_scale(model: ExplainedModel, background_flat: torch.Tensor) -> torch.Tensor:
    """Per-feature spread of the background (std, float64 then cast); 0 where a feature is constant."""
    if background_flat.shape[0] < 2:
        return torch.zeros(background_flat.shape[1], dtype=model.dtype)
    return background_flat.double().std(dim=0).to(model.dtype)


def weighted_mean(rows: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
    """Weighted mean of ``rows`` in float64 (order-independent to rounding), cast back."""
    w = torch.from_numpy(np.asarray(weights, dtype=np.float64))
    return (rows.double() * w[:, None]).sum(0).to(rows.dtype)


def targets_and_outputs(model: ExplainedModel, flat_x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """The explained column of every row and its value f(x) (float64)."""
    from include.explainers.base import PREDICT_CHUNK_ROWS

    scores = model.evaluate(flat_x, PREDICT_CHUNK_ROWS)
    targets = model.targets(scores)
    return targets, scores.gather(1, targets[:, None]).squeeze(1).double().numpy()


def expected_output(
    model: ExplainedModel, bg: torch.Tensor, bg_weights: np.ndarray, targets: torch.Tensor
) -> np.ndarray:
    """E_bg[f] at each row's explained column (float64)."""
    from include.explainers.base import PREDICT_CHUNK_ROWS

    bg_scores = model.evaluate(bg, PREDICT_CHUNK_ROWS).double().numpy()
    return (np.asarray(bg_weights, dtype=np.float64) @ bg_scores)[targets.numpy()]


def require_differentiable(model: ExplainedModel, method: str) -> None:
    from include.explainers.errors import MethodNotApplicableError

    if not model.differentiable:
        raise MethodNotApplicableError(
            f"{method} needs a torch model differentiable in its inputs; this model's metadata "
            "marks it as not differentiable (use KernelSHAP or Occlusion)"
        )


# ----------------------------------------------------------------------------- fidelity probe


@dataclass
class FidelityProbe:
    """What the Captum fidelity metrics need about one run (see :mod:`fidelity`).

    ``explain_rows(rows, targets, owners)`` re-explains flat rows (perturbed copies of the
    explained instances) at fixed target columns; ``owners[r]`` is the index of the instance
    row ``r`` was derived from, so random methods reuse that instance's draws (common random
    numbers: the sensitivity measures the method's response to the input, not its Monte Carlo
    noise, which the two-seed stability measures). ``reference`` is the removal reference of
    the infidelity perturbation ((N, F): removed features take its values) or ``None`` for a
    local (Gaussian) perturbation (Saliency).
    """

    model: ExplainedModel
    x: torch.Tensor  # (N, F) flat explained rows
    targets: torch.Tensor  # (N,)
    seeds: list[int]  # one per instance
    attributions: np.ndarray  # (N, F) what the run reported
    scale: torch.Tensor  # (F,) background std per feature
    explain_rows: Callable[[torch.Tensor, torch.Tensor, np.ndarray], np.ndarray]
    reference: torch.Tensor | None
    rows_per_explanation: int  # model rows one re-explained row costs (sizes the metric passes)
    n_job: int  # instances of the whole (unsharded) job: pass sizes come from it, not the shard
    parallel: bool = True  # explain_rows may run on parallel workers


# ----------------------------------------------------------------------------- DeepLift checks

# Modules that are affine in their input in eval mode: DeepLift's multipliers are their gradients.
_LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,  # refused below: it multiplies two inputs
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
)
_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
# Smooth elementwise activations Captum has no rule for. DeepLift's rescale rule (multiplier =
# (y - y') / (x - x'), the gradient where x == x') is defined for any elementwise function and
# keeps summation-to-delta exact, so these get Captum's own ``nonlinear`` rule, registered only
# for the duration of a DeepLift call (:func:`deeplift_rules`).
RESCALE_MODULES: tuple[type[nn.Module], ...] = (nn.SiLU, nn.GELU, nn.Mish)


@contextlib.contextmanager
def deeplift_rules() -> Iterator[None]:
    """Captum's DeepLift with the rescale rule for :data:`RESCALE_MODULES` too (then removed again).

    Captum looks its rules up in the module-level ``SUPPORTED_NON_LINEAR`` table (a private
    name: pinned with captum). Calls run one after another (DeepSHAP's passes are sequential).
    """
    from captum.attr._core import deep_lift

    added = [kind for kind in RESCALE_MODULES if kind not in deep_lift.SUPPORTED_NON_LINEAR]
    for kind in added:
        deep_lift.SUPPORTED_NON_LINEAR[kind] = deep_lift.nonlinear
    try:
        yield
    finally:
        for kind in added:
            deep_lift.SUPPORTED_NON_LINEAR.pop(kind, None)


# Functions and tensor methods that are linear in each input-dependent argument (shape moves,
# sums, additions). ``mul``/``truediv``/``matmul`` are linear only when one side is constant.
_LINEAR_FUNCTIONS: set[Any] = {
    operator.add,
    operator.sub,
    operator.neg,
    operator.pos,
    operator.getitem,
    torch.add,
    torch.sub,
    torch.neg,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.sum,
    torch.mean,
    torch.nn.functional.linear,
    torch.nn.functional.conv1d,
    torch.nn.functional.conv2d,
    torch.nn.functional.conv3d,
    torch.nn.functional.avg_pool1d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.pad,
    getattr,
}
_PRODUCT_FUNCTIONS: set[Any] = {
    operator.mul,
    operator.truediv,
    torch.mul,
    torch.div,
    operator.matmul,
    torch.matmul,
}
_LINEAR_METHODS = {
    "view",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
    "permute",
    "transpose",
    "contiguous",
    "size",
    "dim",
    "sum",
    "mean",
    "add",
    "sub",
    "neg",
    "expand",
    "expand_as",
    "repeat",
    "float",
    "double",
    "to",
    "clone",
    "narrow",
    "select",
    "t",
}
_PRODUCT_METHODS = {"mul", "div", "matmul"}


def deeplift_problems(module: nn.Module) -> list[str]:
    """Why Captum's DeepLift would give wrong multipliers for ``module`` (empty: it can explain it).

    Module types must be affine (eval mode) or one of Captum's supported nonlinearities; the
    forward graph (torch.fx) may only combine input-dependent values linearly, and a nonlinear
    module may be called once (DeepLift keeps one input/reference pair per module).
    """
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    nonlinear = (*SUPPORTED_NON_LINEAR, *RESCALE_MODULES)
    problems: list[str] = []
    for name, sub in module.named_modules():
        if isinstance(sub, _CONTAINERS) or list(sub.children()):
            continue  # containers and custom composites: their forward is checked by the trace below
        if isinstance(sub, nn.Bilinear) or not isinstance(sub, _LINEAR_MODULES + nonlinear):
            problems.append(f"module {name or '<root>'} ({type(sub).__name__}) has no DeepLift rule")
    try:
        import torch.fx

        graph = torch.fx.symbolic_trace(module).graph
    except Exception as exc:  # data-dependent control flow, unsupported ops
        problems.append(f"forward cannot be traced to check its operations ({type(exc).__name__}: {exc})")
        return problems
    submodules = dict(module.named_modules())
    dependent: set[str] = set()
    calls: dict[str, int] = {}

    def depends(arg: Any) -> bool:
        if isinstance(arg, torch.fx.Node):
            return arg.name in dependent
        if isinstance(arg, list | tuple):
            return any(depends(a) for a in arg)
        if isinstance(arg, dict):
            return any(depends(a) for a in arg.values())
        return False

    for node in graph.nodes:
        if node.op == "placeholder":
            dependent.add(node.name)
            continue
        if node.op in ("get_attr", "output"):
            continue
        inputs = [a for a in (*node.args, *node.kwargs.values()) if depends(a)]
        if not inputs:
            continue  # constant computation (e.g. on buffers)
        dependent.add(node.name)
        if node.op == "call_module":
            target = submodules.get(str(node.target))
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
            if type(target) in nonlinear and calls[str(node.target)] == 2:
                problems.append(f"nonlinear module {node.target} is called more than once")
            continue
        label = (
            node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
        )
        if node.op == "call_function" and node.target in _LINEAR_FUNCTIONS:
            continue
        if node.op == "call_method" and node.target in _LINEAR_METHODS:
            continue
        product = (node.op == "call_function" and node.target in _PRODUCT_FUNCTIONS) or (
            node.op == "call_method" and node.target in _PRODUCT_METHODS
        )
        positional = [a for a in node.args if depends(a)]
        if product and len(positional) == 1:
            divisor_dependent = node.target in (operator.truediv, torch.div, "div") and depends(node.args[1])
            if not divisor_dependent:
                continue
        problems.append(f"operation {label} in forward is not linear in the input and has no DeepLift rule")
    return problems


def explained_output_module(model: ExplainedModel) -> nn.Module:
    """``model.scores`` as an nn.Module (DeepLift needs one): the network, then its output head.

    Binary: ``nn.Sigmoid`` (a Captum-supported nonlinearity), regression: identity. Multiclass
    (log-softmax over all logits) has no DeepLift rule and is refused by the caller.
    """

    class _Explained(nn.Module):
        def __init__(self, network: nn.Module, task: str) -> None:
            super().__init__()
            self.network = network
            self.head = nn.Sigmoid() if task == "binary" else nn.Identity()

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            out = self.network(*inputs)
            return self.head(out.reshape(out.shape[0], -1))

    return _Explained(model.module, model.task).eval()


def flat_attributions(model: ExplainedModel, parts: Sequence[torch.Tensor]) -> np.ndarray:
    """Captum's per-input attribution tensors -> one (B, F) float64 array."""
    return torch.cat([p.detach().reshape(p.shape[0], -1) for p in parts], dim=1).double().numpy()
