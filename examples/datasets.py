"""Deterministic sample data sets built from data bundled with scikit-learn (no downloads).

Two sample models use them:

* ``diagnosis-risk-tabular`` — a tabular classifier on the ten "mean" measurements of the
  Wisconsin breast-cancer data set, keyed by a synthetic ``patient_id`` (an identifier of a
  person: provenance records only salted hashes of it).
* ``multimodal-image-classifier-v3`` — a digit classifier that takes an 8×8 image (scikit-learn's
  digits, 64 pixel columns ``px_r{r}c{c}`` with values 0..16) together with four tabular features
  of the scan, keyed by ``image_id``.

The values are fixed by a seed; only the event timestamps are laid out relative to ``now`` so
that freshness checks against the feature views' ttl hold on the day the data is prepared.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

SEED = 20261127

TABULAR_ENTITY = "patient_id"
TABULAR_FEATURES: list[str] = [
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
]
TABULAR_TARGET = "malignant"

IMAGE_ENTITY = "image_id"
IMAGE_SIDE = 8
PIXEL_FEATURES: list[str] = [f"px_r{r}c{c}" for r in range(IMAGE_SIDE) for c in range(IMAGE_SIDE)]
SCAN_FEATURES: list[str] = ["ink_mean", "ink_coverage", "vertical_balance", "scan_noise"]
IMAGE_TARGET = "digit"


def _timestamps(n: int, now: datetime, rng: np.random.Generator) -> pd.Series:
    """Event timestamps spread over the 6 days before ``now`` (UTC, second resolution)."""
    offsets = rng.integers(60, 6 * 24 * 3600, size=n)
    return pd.Series([now - timedelta(seconds=int(s)) for s in offsets], dtype="datetime64[us, UTC]")


def tabular_frame(now: datetime | None = None) -> pd.DataFrame:
    """One row per patient: ``patient_id``, ``event_timestamp``, ten features, ``malignant``."""
    from sklearn.datasets import load_breast_cancer

    now = now or datetime.now(UTC).replace(microsecond=0)
    raw = load_breast_cancer()
    rng = np.random.default_rng(SEED)
    frame = pd.DataFrame(raw.data[:, :10].astype("float32"), columns=TABULAR_FEATURES)
    frame.insert(0, TABULAR_ENTITY, [f"P{100000 + i}" for i in range(len(frame))])
    frame.insert(1, "event_timestamp", _timestamps(len(frame), now, rng))
    # scikit-learn encodes malignant as 0 and benign as 1; the model predicts "malignant".
    frame[TABULAR_TARGET] = (raw.target == 0).astype("int64")
    return frame


def image_frames(now: datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two frames keyed by ``image_id``: the pixels and the scan's tabular features (+ ``digit``).

    The scan features are partly informative (ink statistics computed from the image) and
    partly noise (``scan_noise``), so a faithful explainer gives the noise little attribution.
    """
    from sklearn.datasets import load_digits

    now = now or datetime.now(UTC).replace(microsecond=0)
    raw = load_digits()
    rng = np.random.default_rng(SEED + 1)
    images = raw.images.astype("float32")  # (n, 8, 8), values 0..16
    n = len(images)
    ids = [f"IMG{10000 + i}" for i in range(n)]
    stamps = _timestamps(n, now, rng)

    pixels = pd.DataFrame(images.reshape(n, -1), columns=PIXEL_FEATURES)
    pixels.insert(0, IMAGE_ENTITY, ids)
    pixels.insert(1, "event_timestamp", stamps)

    flat = images.reshape(n, -1) / 16.0
    top = images[:, : IMAGE_SIDE // 2, :].sum(axis=(1, 2))
    bottom = images[:, IMAGE_SIDE // 2 :, :].sum(axis=(1, 2))
    scan = pd.DataFrame(
        {
            IMAGE_ENTITY: ids,
            "event_timestamp": stamps,
            "ink_mean": flat.mean(axis=1).astype("float32"),
            "ink_coverage": (flat > 0.25).mean(axis=1).astype("float32"),
            "vertical_balance": ((top - bottom) / np.maximum(top + bottom, 1.0)).astype("float32"),
            "scan_noise": rng.normal(0.0, 1.0, size=n).astype("float32"),
            IMAGE_TARGET: raw.target.astype("int64"),
        }
    )
    return pixels, scan
