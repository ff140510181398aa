"""Tree models in their own non-executable formats: XGBoost, LightGBM, scikit-learn via skops.

* ``xgboost:PATH``: a Booster saved as JSON or UBJ (``Booster.save_model("model.json")``).
* ``lightgbm:PATH``: a LightGBM text model (``Booster.save_model("model.txt")``).
* ``skops:PATH``: a scikit-learn estimator written by ``skops.io.dump``. skops refuses types it
  does not trust by default (scikit-learn's tree storage among them: its node indices are not
  bounds-checked); the types to trust are listed explicitly (``--skops-trust`` /
  ``source.trustedTypes``), never taken from the file.

Each is explained by the perturbation methods (batched predictions through a black-box module)
and by TreeSHAP, which hands the real model object to ``shap.TreeExplainer``. What the module
returns: XGBoost and LightGBM multiclass models their margins (class logits; their softmax is the
probabilities they predict), binary models the positive-class probability, regressors their
prediction; scikit-learn classifiers ``predict_proba``. The task is read from the model (its
objective, or whether the estimator is a classifier) unless the config says otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from include.explainers.errors import ModelLoadError
from include.explainers.sources import (
    LoadOptions,
    ModelOrigin,
    ModelSource,
    OutputSpec,
    SourceModel,
    artifact_file,
)
from include.explainers.sources.blackbox import BlackBoxModule


class TreeModelModule(BlackBoxModule):
    """A black box whose real model is a tree ensemble ``shap.TreeExplainer`` can read."""

    def __init__(
        self, predict: Callable[[np.ndarray], np.ndarray], native: Any, tree_count: int, label: str
    ) -> None:
        super().__init__(predict, np.float64, label)
        self.native = native
        self._tree_count = tree_count

    def shap_model(self) -> Any:
        return self.native

    @property
    def tree_count(self) -> int:
        return self._tree_count


def _declared_names(names: Any, count: int) -> tuple[str, ...] | None:
    """Feature names the model was trained with, unless they are the library's placeholders."""
    if names is None:
        return None
    names = tuple(str(n) for n in names)
    placeholders = {tuple(f"Column_{k}" for k in range(count)), tuple(f"f{k}" for k in range(count))}
    return None if names in placeholders else names


# ----------------------------------------------------------------------------- XGBoost


def _xgboost_task(objective: str) -> tuple[OutputSpec, str]:
    """(what the module returns, the inplace_predict type that returns it)."""
    if objective == "binary:logistic":
        return OutputSpec("binary", "probabilities"), "value"
    if objective == "binary:logitraw":
        return OutputSpec("binary", "logits"), "margin"
    if objective.startswith("multi:"):
        return OutputSpec("multiclass", "logits"), "margin"
    return OutputSpec("regression", "raw"), "value"


def load_xgboost(location: str, options: LoadOptions) -> SourceModel:
    import xgboost as xgb

    with artifact_file(location, "xgboost") as (path, digest):
        if path.suffix.lower() not in (".json", ".ubj"):
            raise ModelLoadError(
                f"{location}: XGBoost models are read from JSON or UBJ files (.json or .ubj, written by "
                "Booster.save_model); the legacy binary format is not supported"
            )
        try:
            booster = xgb.Booster(model_file=str(path))
        except xgb.core.XGBoostError as exc:
            raise ModelLoadError(
                f"{location} is not a loadable XGBoost model: {str(exc).splitlines()[0]}"
            ) from None
    booster.set_param({"nthread": 1})  # the runtime runs passes on parallel workers itself
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    output, predict_type = _xgboost_task(objective)
    n_features = booster.num_features()

    def predict(rows: np.ndarray) -> np.ndarray:
        return booster.inplace_predict(rows, predict_type=predict_type)

    module = TreeModelModule(predict, booster, booster.num_boosted_rounds(), f"XGBoost booster {location}")
    return SourceModel(
        module=module,
        differentiable=False,
        origin=ModelOrigin(
            "xgboost",
            location,
            (digest,),
            options.version,
            f"XGBoost {path.suffix.lstrip('.').upper()}",
            {"objective": objective, "xgboost": xgb.__version__},
        ),
        output=output,
        input_names=_declared_names(booster.feature_names, n_features),
        n_inputs=n_features,
        native=booster,
    )


# ----------------------------------------------------------------------------- LightGBM


def _lightgbm_objective(path: Path) -> str:
    """The ``objective=`` line of a text model's header (read without parsing the trees)."""
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle):
            if line.startswith("objective="):
                return line.split("=", 1)[1].strip()
            if line.startswith("Tree=") or line_number > 10_000:
                break
    return ""


def load_lightgbm(location: str, options: LoadOptions) -> SourceModel:
    import lightgbm as lgb

    with artifact_file(location, "lightgbm") as (path, digest):
        with path.open("rb") as handle:
            if not handle.read(4096).startswith(b"tree\n"):
                raise ModelLoadError(
                    f"{location} is not a LightGBM text model (it must start with a 'tree' line; write it "
                    "with Booster.save_model('model.txt'))"
                )
        objective = _lightgbm_objective(path)
        try:
            booster = lgb.Booster(model_file=str(path))
        except lgb.basic.LightGBMError as exc:
            raise ModelLoadError(f"{location} is not a loadable LightGBM model: {exc}") from None
    kind = objective.split(" ", 1)[0]
    if kind == "binary":
        output, raw = OutputSpec("binary", "probabilities"), False
    elif kind in ("multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"):
        output, raw = (
            OutputSpec("multiclass", "logits" if kind in ("multiclass", "softmax") else "probabilities"),
            (kind in ("multiclass", "softmax")),
        )
    else:
        output, raw = OutputSpec("regression", "raw"), False

    def predict(rows: np.ndarray) -> np.ndarray:
        return booster.predict(rows, raw_score=raw, num_threads=1)

    n_features = booster.num_feature()
    module = TreeModelModule(predict, booster, booster.num_trees(), f"LightGBM booster {location}")
    return SourceModel(
        module=module,
        differentiable=False,
        origin=ModelOrigin(
            "lightgbm",
            location,
            (digest,),
            options.version,
            "LightGBM text model",
            {"objective": objective, "lightgbm": lgb.__version__},
        ),
        output=output,
        input_names=_declared_names(booster.feature_name(), n_features),
        n_inputs=n_features,
        native=booster,
    )


# ----------------------------------------------------------------------------- scikit-learn (skops)


def load_skops(location: str, options: LoadOptions) -> SourceModel:
    import sklearn
    import skops
    import skops.io as sio
    from sklearn.base import is_classifier

    with artifact_file(location, "skops") as (path, digest):
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:  # not a zip / no schema: skops raises BadZipFile, KeyError...
            raise ModelLoadError(f"{location} is not a skops file (skops.io.dump): {exc}") from None
        missing = sorted(set(untrusted) - set(options.skops_trusted))
        if missing:
            raise ModelLoadError(
                f"{location}: the skops file holds types that are not trusted: {', '.join(missing)}. "
                "Review them, then trust them explicitly (xac explain --skops-trust TYPE, or the model "
                "source's trustedTypes list); they are never trusted from the file itself"
            )
        try:
            estimator = sio.load(path, trusted=list(options.skops_trusted))
        except Exception as exc:
            raise ModelLoadError(f"{location}: skops cannot load it: {exc}") from None
    if is_classifier(estimator):
        classes = tuple(str(c) for c in getattr(estimator, "classes_", ()))
        output = OutputSpec("binary" if len(classes) == 2 else "multiclass", "probabilities", classes)

        def predict(rows: np.ndarray) -> np.ndarray:
            return estimator.predict_proba(rows)
    else:
        output = OutputSpec("regression", "raw")

        def predict(rows: np.ndarray) -> np.ndarray:
            return estimator.predict(rows)

    names = getattr(estimator, "feature_names_in_", None)
    n_features = getattr(estimator, "n_features_in_", None)
    trees = len(np.ravel(getattr(estimator, "estimators_", [])))
    if names is not None:
        # fitted on a DataFrame: scikit-learn warns when fed arrays; feed it frames of its own columns
        import pandas as pd

        columns = [str(n) for n in names]
        fitted = predict

        def predict(rows: np.ndarray) -> np.ndarray:
            return fitted(pd.DataFrame(rows, columns=columns))

    module = TreeModelModule(predict, estimator, trees, f"scikit-learn {type(estimator).__name__} {location}")
    return SourceModel(
        module=module,
        differentiable=False,
        origin=ModelOrigin(
            "skops",
            location,
            (digest,),
            options.version,
            "skops",
            {
                "estimator": f"{type(estimator).__module__}.{type(estimator).__name__}",
                "scikit-learn": sklearn.__version__,
                "skops": skops.__version__,
                "trusted_types": ",".join(sorted(options.skops_trusted)),
            },
        ),
        output=output,
        input_names=tuple(str(n) for n in names) if names is not None else None,
        n_inputs=int(n_features) if n_features is not None else None,
        native=estimator,
    )


SOURCES = {
    "xgboost": ModelSource(
        "xgboost",
        "An XGBoost Booster (JSON or UBJ): TreeSHAP and the perturbation methods.",
        "XGBoost JSON / UBJ",
        False,
        load_xgboost,
    ),
    "lightgbm": ModelSource(
        "lightgbm",
        "A LightGBM text model: TreeSHAP and the perturbation methods.",
        "LightGBM text model",
        False,
        load_lightgbm,
    ),
    "skops": ModelSource(
        "skops",
        "A scikit-learn estimator saved with skops (explicitly trusted types): TreeSHAP for tree "
        "ensembles, the perturbation methods for any estimator.",
        "skops archive",
        False,
        load_skops,
    ),
}
