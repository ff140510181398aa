"""A sample of a team's own model: an XGBoost booster saved in its own format (UBJ), declared in
``include/configs/models.yaml`` by its ``source`` exactly as a user's model is. Nothing in the
product imports this module: ``xac samples prepare`` trains the file, and the explainer loads it
through :mod:`include.explainers.sources` like any other team's booster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from examples import datasets
from include.paths import models_dir

MODEL_NAME = "diagnosis-risk-xgb"
VERSION = "1"


def model_file(version: str = VERSION) -> Path:
    """Where the catalogue's ``{xac_home}/models/diagnosis-risk-xgb/{version}/model.ubj`` points."""
    return models_dir() / MODEL_NAME / version / "model.ubj"


def train_xgboost_sample(force: bool = False) -> Path:
    """Train the booster on the tabular sample (its feature names are the feature service's)."""
    import xgboost as xgb

    path = model_file()
    if path.is_file() and not force:
        return path
    frame = datasets.tabular_frame()
    x = frame[datasets.TABULAR_FEATURES].astype(np.float64)
    y = frame[datasets.TABULAR_TARGET].to_numpy()
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.2, "seed": 7, "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(x, y, feature_names=list(x.columns)), num_boost_round=60)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    booster.save_model(str(tmp.with_suffix(".ubj")))
    tmp.with_suffix(".ubj").replace(path)
    return path
