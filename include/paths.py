"""Where the project keeps its generated state on the embedded default.

Everything generated (sample data, trained models, the Feast registry, Airflow's SQLite
database, run workspaces, the demo signing key) lives under ``XAC_HOME``, which defaults to
``.xac/`` in the repository root and is ignored by Git.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "include" / "configs"


def xac_home() -> Path:
    """The root of all generated state (``$XAC_HOME`` or ``<repo>/.xac``)."""
    return Path(os.environ.get("XAC_HOME", REPO_ROOT / ".xac")).resolve()


def data_dir() -> Path:
    return xac_home() / "data"


def models_dir() -> Path:
    return xac_home() / "models"


def runs_dir() -> Path:
    return xac_home() / "runs"


def keys_dir() -> Path:
    return xac_home() / "keys"
