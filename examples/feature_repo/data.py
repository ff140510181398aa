"""The samples' Feast repository: prepare its Parquet sources from the sample data sets, apply it,
and read a feature service's training frame. A team's own repository needs none of this: it is
applied with ``feast apply`` (or made by ``xac feast init``).

Everything written here lives under ``$XAC_HOME/data/feast`` (see
``examples/feature_repo/definitions.py::feast_dir``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from include.provenance.feature_data import FEATURE_REPO_DIR, UnknownFeatureServiceError, get_store

if TYPE_CHECKING:
    import pandas as pd

    from examples.feature_repo.definitions import FeatureRepoObjects

log = logging.getLogger(__name__)


def _source_frames(now: datetime) -> dict[str, pd.DataFrame]:
    from examples.datasets import image_frames, tabular_frame

    pixels, scan = image_frames(now)
    return {"patient_measurements": tabular_frame(now), "digit_pixels": pixels, "digit_scan": scan}


def prepare_feature_data(now: datetime | None = None, *, force: bool = False) -> dict[str, Path]:
    """Write the Parquet source of every feature view; return ``{feature view: path}``.

    When every file already exists and ``force`` is false, nothing is rewritten: the values are
    fixed by a seed, only the event timestamps would move, and keeping the files keeps their
    SHA-256 digests (recorded in every provenance.json) stable between runs. ``force=True``
    rewrites them with timestamps laid out before ``now`` (default: the current time).
    """
    from examples.feature_repo.definitions import SOURCE_FILES, sources_dir

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
    from examples.feature_repo.definitions import build_objects

    return build_objects()


def apply_feature_repo(repo: Path | None = None, objects: FeatureRepoObjects | None = None) -> None:
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

    store = get_store(repo or FEATURE_REPO_DIR)
    objects = objects or repo_objects()
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

    from examples.feature_repo.definitions import SERVICE_TARGETS

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
