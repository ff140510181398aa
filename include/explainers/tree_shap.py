"""TreeSHAP for tree-ensemble models, with ``shap.TreeExplainer``.

Any model whose module is a :class:`TreeModel` is accepted: it hands ``shap.TreeExplainer`` the
real model object (an XGBoost or LightGBM Booster, a scikit-learn tree ensemble loaded through
skops; see :mod:`include.explainers.sources.trees`), or a tree ensemble in shap's own dictionary
format. Anything else (a torch MLP, a CNN, an ONNX graph) is refused by
:meth:`TreeShapExplainer.check_model` before any work, and so is a model shap cannot read.

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
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from include.explainers.base import PREDICT_CHUNK_ROWS, Attributions, ExplainedModel
from include.explainers.errors import MethodNotApplicableError
from include.explainers.kernel_shap import summarise_background
from include.explainers.params import TREE_SHAP


@runtime_checkable
class TreeModel(Protocol):
    """A module backed by a tree ensemble that ``shap.TreeExplainer`` reads."""

    def shap_model(self) -> Any:
        """The object handed to ``shap.TreeExplainer``."""
        ...

    @property
    def tree_count(self) -> int: ...


def _tree_explainer(model: ExplainedModel, data: np.ndarray | None, model_output: str) -> Any:
    import shap

    try:
        if data is None:  # only reading the model (check_model): shap's default game needs no data
            return shap.TreeExplainer(model.module.shap_model())
        return shap.TreeExplainer(
            model.module.shap_model(),
            data=data,
            feature_perturbation="interventional",
            model_output=model_output,
        )
    except Exception as exc:  # shap's InvalidModelError, NotImplementedError, ValueError...
        raise MethodNotApplicableError(
            f"TreeSHAP: shap.TreeExplainer cannot explain {model.module} with "
            f"model_output={model_output!r}: {exc}; use KernelSHAP or ExactShapley"
        ) from None


class TreeShapExplainer:
    """TreeSHAP (see the module docstring)."""

    name = TREE_SHAP

    def check_model(self, model: ExplainedModel) -> None:
        if not isinstance(model.module, TreeModel):
            raise MethodNotApplicableError(
                f"TreeSHAP explains tree ensembles only; this model is a {type(model.module).__name__} "
                "(not a tree ensemble): use KernelSHAP, ExactShapley or IntegratedGradients"
            )
        if model.task not in ("binary", "regression"):
            raise MethodNotApplicableError(
                "TreeSHAP here explains binary tree ensembles (probability of the positive class) and "
                f"regression ones (raw output); this model's task is {model.task}"
            )
        _tree_explainer(model, None, "raw")  # shap reads the model now: a model it cannot read is refused

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
        # What is explained is the module's output: a binary model's positive-class probability
        # (shap's "probability" of a model whose trees sum log-odds; "raw" when the trees already
        # average probabilities, as scikit-learn's random forests do), a regressor's raw output.
        model_output = "raw"
        if model.task == "binary" and not _trees_output_probabilities(model):
            model_output = "probability"
        explainer = _tree_explainer(model, bg.double().numpy(), model_output)
        phi = np.asarray(
            explainer.shap_values(x_t.double().numpy(), check_additivity=False), dtype=np.float64
        )
        expected_values = np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)
        if phi.ndim == 3:  # one slice per class (scikit-learn classifiers): the positive class's
            phi = phi[..., -1]
        expected = float(expected_values[-1])
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
                "trees": int(model.module.tree_count),
                "seconds": time.perf_counter() - started,
            },
        )


def _trees_output_probabilities(model: ExplainedModel) -> bool:
    """Whether the ensemble's trees average class probabilities (scikit-learn forests)."""
    native = model.module.shap_model()
    module = type(native).__module__
    return module.startswith("sklearn.ensemble._forest") or module.startswith("sklearn.tree")


EXPLAINER = TreeShapExplainer()
