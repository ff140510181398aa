"""Batched evaluation of perturbed rows, shared by LIME and the counterfactual search.

Both methods build many perturbed copies of each instance (thousands per row) and need the
model's scores on all of them. They are stacked into one ``(R, F)`` tensor and evaluated in
passes of a fixed power-of-two number of rows on parallel workers (:func:`run_passes`), the
same scheme as KernelSHAP's coalition passes: a fixed pass shape keeps a row's result
independent of which shard it was computed in (see :mod:`include.explainers.base`), and coarse
passes avoid any per-sample Python.
"""

from __future__ import annotations

import numpy as np
import torch

from include.explainers.base import ExplainedModel, run_passes
from include.explainers.kernel_shap import cache_pass_rows


def job_chunk_rows(model: ExplainedModel, rows_per_instance: int, n_instances: int) -> int:
    """Rows of one pass, sized from the whole (unsharded) job so that every shard uses the same."""
    return min(model.chunk_rows_for(rows_per_instance * max(n_instances, 1)), cache_pass_rows(model))


def evaluate_rows(model: ExplainedModel, rows: torch.Tensor, chunk_rows: int) -> np.ndarray:
    """``model.scores`` of flat rows ``(R, F)`` as float64 ``(R, K)``, in fixed-shape passes."""
    total = rows.shape[0]
    out = np.empty((total, model.n_outputs), dtype=np.float64)
    if total == 0:
        return out
    rows = rows.to(model.dtype).contiguous()
    n_passes = -(-total // chunk_rows)

    def run(k: int) -> None:
        start = k * chunk_rows
        stop = min(start + chunk_rows, total)
        block = rows[start:stop]
        if block.shape[0] < chunk_rows:  # the last pass is padded to the common shape
            block = torch.cat([block, block[-1:].expand(chunk_rows - block.shape[0], -1)])
        with torch.inference_mode():
            scores = model.scores(*model.split(block))
        out[start:stop] = scores[: stop - start].double().numpy()

    run_passes(n_passes, run)
    return out


def background_scale(background: torch.Tensor, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted per-feature mean and standard deviation (population, ddof 0) of the background.

    The scale LimeTabularExplainer takes from its StandardScaler, and the unit in which the
    counterfactual search measures a change.
    """
    data = background.double().numpy()
    w = np.asarray(weights, dtype=np.float64)
    mean = w @ data
    var = w @ (data - mean) ** 2
    return mean, np.sqrt(np.maximum(var, 0.0))
