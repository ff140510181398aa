"""A torch module around a model that is not a torch network (ONNX, trees, an inference server).

The explanation methods evaluate ``module(x)`` on batches of flat rows; this module hands each
batch to the real model as one numpy array (one call per pass: thousands of rows, never one per
perturbation) and returns its outputs as a tensor of the input's dtype. No gradients flow through
it: sources that return one declare themselves not differentiable, so gradient methods are refused
before any work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class BlackBoxModule(nn.Module):
    """``forward(x)`` = ``predict(x as numpy)`` as a ``(B, K)`` tensor."""

    def __init__(
        self, predict: Callable[[np.ndarray], np.ndarray], input_dtype: np.dtype, label: str
    ) -> None:
        super().__init__()
        self.predict = predict
        self.input_dtype = np.dtype(input_dtype)
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().cpu().numpy().astype(self.input_dtype, copy=False)
        out = np.asarray(self.predict(np.ascontiguousarray(rows)))
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != rows.shape[0]:
            raise RuntimeError(
                f"{self.label} returned shape {out.shape} for {rows.shape[0]} rows; "
                f"expected ({rows.shape[0]}, K)"
            )
        return torch.from_numpy(out.astype(np.float64, copy=False)).to(x.dtype)

    def extra_repr(self) -> str:
        return self.label
