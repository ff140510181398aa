"""Where an explanation is computed: the CPU, or the CUDA GPU a pod was given.

``XAC_EXPLAIN_DEVICE`` chooses: ``auto`` (default: the first CUDA device when torch sees one,
else the CPU), ``cpu`` or ``cuda`` (a GPU is required: without one the run stops before any
work (``xac explain`` exits 1, nothing written) rather than silently running a GPU-priced pod on its CPU).

Only the methods whose evaluation engine batches on the device run there (KernelSHAP and
Integrated Gradients: ``Explainer.devices`` lists ``cuda``); every other method, the fidelity
probes and the written outputs stay on the CPU. The device used is recorded in the run summary.

Reproducibility: on the CPU the same seed gives bit-identical attributions whatever the shard
(see :mod:`include.explainers.base`). CUDA kernels do not promise that (cuDNN picks algorithms,
some backward kernels accumulate with atomics); a GPU run records its device, so an auditor
reproducing bit for bit reruns with ``XAC_EXPLAIN_DEVICE=cpu``.

No torch import at module level: the CLI imports this while starting.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from include.explainers.errors import ParameterError

if TYPE_CHECKING:
    import torch

DEVICE_ENV = "XAC_EXPLAIN_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda")
# A GPU pass may use this share of the device's free memory (the rest: the model, the
# allocator's fragmentation, autograd temporaries beyond the row estimate), capped.
CUDA_MEMORY_FRACTION = 0.5
CUDA_MEMORY_CAP = 40 << 30


def requested_device(environ: Mapping[str, str] | None = None) -> str:
    """The device asked for in ``XAC_EXPLAIN_DEVICE`` (default ``auto``)."""
    env = os.environ if environ is None else environ
    value = env.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if value not in DEVICE_CHOICES:
        raise ParameterError(
            f"{DEVICE_ENV}={env.get(DEVICE_ENV)!r} is not a device; choose one of {', '.join(DEVICE_CHOICES)}"
        )
    return value


def resolve_device(requested: str) -> torch.device:
    """The torch device for ``requested`` (``auto``/``cpu``/``cuda``); refuses ``cuda`` without a GPU."""
    import torch

    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "cuda":
        raise ParameterError(
            f"{DEVICE_ENV}=cuda but torch sees no CUDA device (torch {torch.__version__}, built for "
            f"CUDA {torch.version.cuda or 'none: a CPU-only build'}); check the pod's nvidia.com/gpu "
            f"request and the image's torch build, or set {DEVICE_ENV}=auto to run on the CPU"
        )
    return torch.device("cpu")


def device_for(explainer: Any, requested: str) -> torch.device:
    """The device ``explainer`` computes on: the resolved device if the method supports it, else the CPU."""
    import torch

    device = resolve_device(requested)
    if device.type != "cpu" and device.type not in getattr(explainer, "devices", ("cpu",)):
        return torch.device("cpu")
    return device


def describe_device(device: torch.device, requested: str) -> dict[str, Any]:
    """What the run summary records about the device."""
    import torch

    out: dict[str, Any] = {"requested": requested, "type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out |= {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
    else:
        out["threads"] = torch.get_num_threads()
    return out


def cuda_memory_budget_bytes(device: torch.device) -> int:
    """Working-set budget of one pass on a GPU: a share of its free memory, capped
    (``XAC_EXPLAIN_MEMORY_BUDGET_BYTES`` overrides, as on the CPU)."""
    import torch

    from include.explainers.base import memory_budget_override

    override = memory_budget_override()
    if override is not None:
        return override
    free, _total = torch.cuda.mem_get_info(device)
    # Memory torch's allocator holds but does not use (an earlier job's passes) is free to us too.
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(min(int(free * CUDA_MEMORY_FRACTION), CUDA_MEMORY_CAP), 64 << 20)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast for ``precision == "bf16"`` (matrix products and convolutions in bf16,
    reductions and the softmax in fp32), nothing for fp32."""
    import torch

    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield
