"""TorchScript and ``torch.export`` artifacts: differentiable, so every method applies.

* ``torchscript:PATH``: an archive written by ``torch.jit.save`` (loaded with ``torch.jit.load``:
  TorchScript code and tensors, never Python pickles).
* ``torch-export:PATH``: a ``.pt2`` written by ``torch.export.save``; ``torch.export.load`` returns an
  ExportedProgram whose ``module()`` runs it (gradients flow; ``train()`` is not supported, the
  runtime never calls it).

The module takes one ``(B, F)`` float tensor of the feature columns in order and returns
``(B, K)``: one column is read as a regression output (or a binary logit with ``task: binary``),
several as class logits (``output_scale: probabilities`` when it ends in a softmax).
"""

from __future__ import annotations

import torch
from torch import nn

from include.explainers.errors import ModelLoadError
from include.explainers.sources import (
    LoadOptions,
    ModelOrigin,
    ModelSource,
    SourceModel,
    artifact_file,
)


class ExportedModule(nn.Module):
    """An exported program's module. Exported programs are frozen in the mode they were exported in
    (``eval()``/``train()`` raise), so switching modes is a no-op here: export models in eval mode."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.graph_module(*inputs)

    def train(self, mode: bool = True) -> ExportedModule:
        return self


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _dtype_of(module) -> object | None:
    first = next(iter(module.parameters()), None)
    return first.dtype if first is not None else None


def load_torchscript(location: str, options: LoadOptions) -> SourceModel:
    import torch

    with artifact_file(location, "torchscript") as (path, digest):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript archives
            raise ModelLoadError(
                f"{location} is not a TorchScript archive ({_first_line(exc)}); "
                "save the model with torch.jit.save(torch.jit.script(model) or torch.jit.trace(...)). "
                "torch.save checkpoints are pickles and are never accepted"
            ) from None
    module.eval()
    return SourceModel(
        module=module,
        differentiable=True,
        origin=ModelOrigin("torchscript", location, (digest,), options.version, "TorchScript archive"),
        output=None,
        dtype=_dtype_of(module),
    )


def load_torch_export(location: str, options: LoadOptions) -> SourceModel:
    import torch

    with artifact_file(location, "torch-export") as (path, digest):
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelLoadError(
                f"{location} is not a torch.export archive ({_first_line(exc)}); "
                "save the model with torch.export.save(torch.export.export(model, example_inputs), PATH)"
            ) from None
    module = ExportedModule(program.module())
    return SourceModel(
        module=module,
        differentiable=True,
        origin=ModelOrigin(
            "torch-export", location, (digest,), options.version, "torch.export program (.pt2)"
        ),
        output=None,
        dtype=_dtype_of(module),
    )


SOURCES = {
    "torchscript": ModelSource(
        "torchscript",
        "A TorchScript archive (torch.jit.save): every gradient and perturbation method.",
        "TorchScript zip archive",
        True,
        load_torchscript,
    ),
    "torch-export": ModelSource(
        "torch-export",
        "A torch.export program (torch.export.save, .pt2): every gradient and perturbation method.",
        "torch.export .pt2 archive",
        True,
        load_torch_export,
    ),
}
