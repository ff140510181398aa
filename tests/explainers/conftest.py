"""Fixtures of the explainer tests: the sample models, trained once per session, and data."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from include.paths import REPO_ROOT


@pytest.fixture(scope="session")
def sample_models() -> dict[str, Path]:
    """Both sample models trained (really, deterministically) into the session's XAC_HOME.

    The root conftest points XAC_HOME at a fresh temporary folder; training is idempotent, so
    other test packages of the session reuse these artifacts.
    """
    from examples.models import train_sample_models

    home = Path(os.environ["XAC_HOME"]).resolve()
    assert home != (REPO_ROOT / ".xac").resolve(), "tests must not write into the developer's .xac/"
    return train_sample_models()


@pytest.fixture(scope="session")
def tabular_frame() -> pd.DataFrame:
    from examples.datasets import tabular_frame

    return tabular_frame()


@pytest.fixture(scope="session")
def multimodal_frame() -> pd.DataFrame:
    from examples.models import multimodal_frame

    return multimodal_frame()


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.reset_index(drop=True).to_parquet(path)
    return path
