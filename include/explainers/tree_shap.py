"""TreeSHAP for tree-ensemble models, with ``shap.TreeExplainer``.

Only models whose module is a :class:`~include.explainers.sample_models.TreeEnsemble` (a
gradient-boosted ensemble stored as tensors; see the model store) are accepted; anything else
(a torch MLP, a CNN) is refused by :meth:`TreeShapExplainer.check_model` before any work.

The game is the **interventional** one over the summarised background
(``feature_perturbation="interventional"``), as for KernelSHAP and ExactShapley:

* regression ensembles (``model_output="raw"``): the values are the exact Shapley values of the
  raw output's game (Lundberg et al. 2020) and equal ExactShapley's on the same background (the
  tests check this to 1e-9);
* binary ensembles: what is explained is, as everywhere, the probability of the positive class
  (``model_output="probability"``). shap computes it by exact Shapley values of the log-odds per
  background row, each rescaled by ``(p(x) - p(r)) / (logit(x) - logit(r))`` (shap's
  ``tree_shap.h``). That keeps ``sum(phi) = f(x) - E_bg[f]`` exactly, but it is not the exact
  Shapley value of the probability game (the sigmoid makes that game non-decomposable):
  on the sample ensemble the two differ by up to ~0.08 per feature. ExactShapley gives the
  exact values when the player count allows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from include.explainers.base import PREDICT_CHUNK_ROWS, Attributions, ExplainedModel
from include.explainers.errors import MethodNotApplicableError
from include.explainers.kernel_shap import summarise_background
from include.explainers.params import TREE_SHAP


class TreeShapExplainer:
    """TreeSHAP (see the module docstring)."""

    name = TREE_SHAP

    def check_model(self, model: ExplainedModel) -> None:
        from include.explainers.sample_models import TreeEnsemble

        if not isinstance(model.module, TreeEnsemble):
            raise MethodNotApplicableError(
                f"TreeSHAP explains tree ensembles only; this model is a {type(model.module).__name__} "
                "(a neural network): use KernelSHAP, ExactShapley or IntegratedGradients"
            )
        if model.task not in ("binary", "regression"):
            raise MethodNotApplicableError(
                "TreeSHAP here explains binary tree ensembles (probability of the positive class) and "
                f"regression ones (raw output); this model's task is {model.task}"
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
        import shap

        self.check_model(model)
        started = time.perf_counter()
        x_t = model.flatten(inputs).to(model.dtype).contiguous()
        bg, bg_w, bg_info = summarise_background(
            model.flatten(background).to(model.dtype).contiguous(),
            params["backgroundDataStrategy"],
            int(params["backgroundDataSubsetSize"]),
            seed,
        )
        if not np.allclose(bg_w, bg_w[0]):
            # shap weighs background rows equally: repeat them in proportion to kmeans' weights
            # would change the game; refuse rather than explain a different background.
            raise MethodNotApplicableError(
                "TreeSHAP weighs background rows equally; use backgroundDataStrategy random_subset or all"
            )
        scores = model.evaluate(x_t, PREDICT_CHUNK_ROWS)
        targets = model.targets(scores)
        fx = scores.gather(1, targets[:, None]).squeeze(1).double().numpy()
        model_output = "probability" if model.task == "binary" else "raw"
        explainer = shap.TreeExplainer(
            model.module.shap_model(),
            data=bg.double().numpy(),
            feature_perturbation="interventional",
            model_output=model_output,
        )
        phi = np.asarray(
            explainer.shap_values(x_t.double().numpy(), check_additivity=False), dtype=np.float64
        )
        expected = float(np.asarray(explainer.expected_value).reshape(-1)[0])
        n, n_feat = phi.shape
        names = model.feature_names()
        return Attributions(
            method=TREE_SHAP,
            player_names=names,
            players=phi,
            features=phi.copy(),
            feature_player=np.arange(n_feat),
            outputs=fx,
            baselines=np.full(n, expected),
            baseline_kind="expected value of the explained output over the background (E_bg[f])",
            targets=targets.numpy(),
            resolved_params={
                "backgroundDataStrategy": params["backgroundDataStrategy"],
                "backgroundDataSubsetSize": int(params["backgroundDataSubsetSize"]),
            },
            per_instance={},
            details={
                "background": bg_info,
                "library": f"shap {shap.__version__} TreeExplainer "
                f"(interventional, model_output={model_output})",
                "trees": int(model.module.left.shape[0]),
                "seconds": time.perf_counter() - started,
            },
        )


EXPLAINER = TreeShapExplainer()
