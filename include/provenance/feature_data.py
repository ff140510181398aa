"""The Feast feature repository's data and registry: prepare the Parquet sources, `feast apply`.

Everything written here lives under ``$XAC_HOME/data/feast`` (see
``include/feature_repo/definitions.py::feast_dir``). Heavy imports (Feast, pandas) stay inside
the functions: the ``xac`` CLI imports this module and must start fast.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from include.paths import REPO_ROOT, xac_home

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from include.feature_repo.definitions import FeatureRepoObjects

log = logging.getLogger(__name__)

FEATURE_REPO_DIR = REPO_ROOT / "include" / "feature_repo"
FEATURE_STORE_YAML = FEATURE_REPO_DIR / "feature_store.yaml"


class UnknownFeatureServiceError(ValueError):
    """The feature service is not defined in the feature repository."""

    def __init__(self, name: str, known: list[str]) -> None:
        hint = (
            f"known: {', '.join(sorted(known))}"
            if known
            else "the registry is empty: run the set-up (feature_data.ensure_feature_repo) first"
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
    if repo == FEATURE_REPO_DIR:
        from include.feature_repo.definitions import feast_dir

        # SQLite creates database files but not their folder.
        feast_dir().mkdir(parents=True, exist_ok=True)
    return config


def get_store(repo: Path | None = None) -> FeatureStore:
    """A FeatureStore on the configured repository (a new one each call: fresh registry cache)."""
    from feast import FeatureStore

    repo = repo or feature_repo_dir()
    return FeatureStore(repo_path=str(repo), config=load_repo_config(repo))


def _source_frames(now: datetime) -> dict[str, pd.DataFrame]:
    from include.samples.datasets import image_frames, tabular_frame

    pixels, scan = image_frames(now)
    return {"patient_measurements": tabular_frame(now), "digit_pixels": pixels, "digit_scan": scan}


def prepare_feature_data(now: datetime | None = None, *, force: bool = False) -> dict[str, Path]:
    """Write the Parquet source of every feature view; return ``{feature view: path}``.

    When every file already exists and ``force`` is false, nothing is rewritten: the values are
    fixed by a seed, only the event timestamps would move, and keeping the files keeps their
    SHA-256 digests (recorded in every provenance.json) stable between runs. ``force=True``
    rewrites them with timestamps laid out before ``now`` (default: the current time).
    """
    from include.feature_repo.definitions import SOURCE_FILES, sources_dir

    directory = sources_dir()
    paths = {view: directory / name for view, name in SOURCE_FILES.items()}
    if not force and all(p.is_file() for p in paths.values()):
        return paths

    directory.mkdir(parents=True, exist_ok=True)
    frames = _source_frames(now or datetime.now(UTC).replace(microsecond=0))
    for view, path in paths.items():
        # Write then rename, so a concurrent reader (another DAG run) never sees half a file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        frames[view].to_parquet(tmp, index=False)
        os.replace(tmp, path)
        log.info("wrote feature source %s (%d rows)", path, len(frames[view]))
    return paths


def repo_objects() -> FeatureRepoObjects:
    """The repository's Feast objects, with batch sources under the current ``$XAC_HOME``."""
    from include.feature_repo.definitions import build_objects

    return build_objects()


def apply_feature_repo() -> None:
    """Register the repository's objects like ``feast apply`` does (idempotent).

    It runs Feast's own apply path (``apply_total_with_repo_instance``: plan, registry diff,
    infrastructure diff, deletion of objects no longer defined) on the objects built by
    ``definitions.build_objects``. The ``feast`` CLI's module scan is skipped because it
    chdirs and imports the definitions by file path, and its objects would carry the
    ``$XAC_HOME`` of import time. Feast's progress messages go to the log, not stdout.
    """
    from feast import Project
    from feast.feature_view import DUMMY_ENTITY
    from feast.repo_contents import RepoContents
    from feast.repo_operations import apply_total_with_repo_instance

    store = get_store(FEATURE_REPO_DIR)
    objects = repo_objects()
    contents = RepoContents(
        # The same Project the CLI would build from feature_store.yaml, so that a later
        # `feast plan` reports no change.
        projects=[Project(name=store.config.project, description=store.config.project_description or "")],
        data_sources=[view.batch_source for view in objects.feature_views],
        feature_views=list(objects.feature_views),
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        # parse_repo always adds Feast's dummy entity (used by entity-less views); do the same
        # so that a later `feast apply` from the CLI sees no difference.
        entities=[*objects.entities, DUMMY_ENTITY],
        feature_services=list(objects.feature_services),
        permissions=[],
    )
    echoed = io.StringIO()
    with contextlib.redirect_stdout(echoed):
        apply_total_with_repo_instance(
            store, store.config.project, store.registry, contents, skip_source_validation=False
        )
    for line in echoed.getvalue().splitlines():
        if line.strip():
            log.info("feast apply: %s", line.strip())


def ensure_feature_repo() -> dict[str, Path]:
    """Prepare the sources if missing and apply the repository: a one-call setup for `make`/init."""
    paths = prepare_feature_data()
    apply_feature_repo()
    return paths


def load_training_frame(feature_service: str) -> pd.DataFrame:
    """The full source data of a feature service, for training its model.

    Columns: the entity key, ``event_timestamp`` (the latest of the views' rows), the features
    in the feature service's order, then the target. One row per entity (its latest row in each
    source). The sources are prepared first if they are missing; the registry is not needed.
    """
    import pandas as pd

    from include.feature_repo.definitions import SERVICE_TARGETS

    objects = repo_objects()
    services = {s.name: s for s in objects.feature_services}
    if feature_service not in services:
        raise UnknownFeatureServiceError(feature_service, list(services))
    prepare_feature_data()

    views = {v.name: v for v in objects.feature_views}
    target_view, target = SERVICE_TARGETS[feature_service]
    merged: pd.DataFrame | None = None
    key = ""
    features: list[str] = []
    for projection in services[feature_service].feature_view_projections:
        view = views[projection.name]
        key = view.join_keys[0]
        names = [f.name for f in projection.features]
        features.extend(names)
        wanted = [key, view.batch_source.timestamp_field, *names]
        if view.name == target_view:
            wanted.append(target)
        frame = pd.read_parquet(view.batch_source.path, columns=wanted)
        frame = frame.rename(columns={view.batch_source.timestamp_field: f"__ts_{view.name}"})
        # A source may hold several rows per entity over time; training uses the latest.
        frame = frame.sort_values(f"__ts_{view.name}").drop_duplicates(key, keep="last")
        merged = frame if merged is None else merged.merge(frame, on=key, how="inner")
    assert merged is not None  # every feature service has at least one projection
    ts_columns = [c for c in merged.columns if c.startswith("__ts_")]
    merged["event_timestamp"] = merged[ts_columns].max(axis=1)
    merged = merged.sort_values(key, kind="stable").reset_index(drop=True)
    return merged[[key, "event_timestamp", *features, target]]
