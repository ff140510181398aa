"""The Feast repository the provenance stage reads: which one, its configuration, its store.

A team's own repository is named by ``XAC_FEATURE_REPO``; the default is the samples'
(``examples/feature_repo``, prepared and applied by ``xac samples prepare``). Heavy imports (Feast)
stay inside the functions: the ``xac`` CLI imports this module and must start fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from include.paths import REPO_ROOT, xac_home

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

FEATURE_REPO_DIR = REPO_ROOT / "examples" / "feature_repo"  # the samples' repository, the default
FEATURE_STORE_YAML = FEATURE_REPO_DIR / "feature_store.yaml"


class UnknownFeatureServiceError(ValueError):
    """The feature service is not defined in the feature repository."""

    def __init__(self, name: str, known: list[str]) -> None:
        hint = (
            f"known: {', '.join(sorted(known))}"
            if known
            else "the registry is empty: apply the feature repository first (feast apply; for the samples, "
            "xac samples prepare)"
        )
        super().__init__(f"unknown feature service {name!r}; {hint}")
        self.name = name


def feature_repo_dir() -> Path:
    """The Feast repository the provenance stage reads: ``XAC_FEATURE_REPO`` (a folder holding
    ``feature_store.yaml``, relative to the repository root or absolute; a team's own repository,
    e.g. with a PostgreSQL registry) or, by default, the samples' repository."""
    configured = os.environ.get("XAC_FEATURE_REPO")
    if not configured:
        return FEATURE_REPO_DIR
    path = Path(configured).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def load_repo_config(repo: Path | None = None) -> RepoConfig:
    """Load ``<repo>/feature_store.yaml`` with ``${XAC_HOME}`` resolved from :func:`include.paths.xac_home`.

    Feast itself expands ``${VAR}`` with ``os.path.expandvars``, which leaves an unset variable
    untouched; ``XAC_HOME`` is optional in this project (it defaults to ``<repo>/.xac``), so it
    is substituted here instead of mutating ``os.environ`` for the whole process.
    """
    import yaml
    from feast.repo_config import RepoConfig

    repo = repo or feature_repo_dir()
    store_yaml = repo / "feature_store.yaml"
    if not store_yaml.is_file():
        raise FileNotFoundError(f"no Feast repository at {repo}: {store_yaml} is missing (XAC_FEATURE_REPO)")
    text = store_yaml.read_text(encoding="utf-8")
    text = os.path.expandvars(text.replace("${XAC_HOME}", str(xac_home())))
    config = RepoConfig(**yaml.safe_load(text))
    config.repo_path = repo
    _make_sqlite_folders(config)
    return config


def _make_sqlite_folders(config: RepoConfig) -> None:
    """SQLite creates database files but not their folder: make the folders of absolute paths."""
    registry = str(getattr(config.registry, "path", "") or "")
    online = str(getattr(config.online_store, "path", "") or "")
    for path in (registry.removeprefix("sqlite:///") if registry.startswith("sqlite:///") else "", online):
        if path and Path(path).is_absolute():
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def get_store(repo: Path | None = None) -> FeatureStore:
    """A FeatureStore on the configured repository (a new one each call: fresh registry cache)."""
    from feast import FeatureStore

    repo = repo or feature_repo_dir()
    return FeatureStore(repo_path=str(repo), config=load_repo_config(repo))
