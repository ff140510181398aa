"""Point-in-time-correct retrieval of the inference and background sets through Feast.

Both sets are read with ``FeatureStore.get_historical_features`` at one retrieval timestamp
(the run's "now"), so a feature row written after the run started, or older than its view's
ttl, is never used. The feature service, its views and their sources are read from the Feast
registry (the applied state), not from the definitions code.

Besides the join, the stage reads each view's batch source for entity ids and event times (which
ids exist, how old a joined row is) and its column names. A local file source is read as the
Parquet file it is; any other source (a table or query of PostgreSQL, BigQuery, Snowflake...)
through the repository's own offline store (``pull_all_from_table_or_query``) and the source's
``get_table_column_names_and_types``, so a team's shared feature store works as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from include.provenance.feature_data import UnknownFeatureServiceError

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureService, FeatureStore, FeatureView
    from feast.repo_config import RepoConfig

__all__ = [
    "BACKGROUND_STRATEGIES",
    "TIMESTAMP_COLUMN",
    "RetrievalResult",
    "ServiceSpec",
    "UnknownEntityError",
    "UnknownFeatureServiceError",
    "ViewSpec",
    "feature_ages",
    "retrieve",
    "select_background",
    "service_spec",
]

BACKGROUND_STRATEGIES = ("random_subset", "kmeans", "all")
# Column of the entity frame (and of the retrieved frames) holding the retrieval timestamp.
TIMESTAMP_COLUMN = "event_timestamp"
AGE_SUFFIX = "__feature_age_seconds"


class UnknownEntityError(ValueError):
    """Inference ids that no source of the feature service knows."""

    def __init__(self, feature_service: str, ids: Sequence[str]) -> None:
        shown = ", ".join(ids[:20]) + (f" … ({len(ids)} in all)" if len(ids) > 20 else "")
        super().__init__(f"feature service {feature_service!r} has no entity with id {shown}")
        self.ids = list(ids)


@dataclass(frozen=True)
class ViewSpec:
    """One feature view of a feature service, as registered."""

    view: FeatureView
    features: list[str]  # the service's projection of the view, in order
    config: RepoConfig  # the repository's: a source other than a local file is read through it

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def ttl(self) -> timedelta | None:
        # Feast stores "no ttl" as 0 seconds.
        return self.view.ttl if self.view.ttl and self.view.ttl.total_seconds() > 0 else None

    @property
    def local_file(self) -> Path | None:
        """The source's Parquet file (or folder) when it is one on this machine, else None."""
        from feast import FileSource

        source = self.view.batch_source
        if isinstance(source, FileSource) and "://" not in source.path:
            return Path(source.path)
        return None

    @property
    def source_location(self) -> str:
        """Where the source is, as its store names it: a path, a table or a query."""
        source = self.view.batch_source
        if isinstance(getattr(source, "path", None), str):
            return source.path
        return source.get_table_query_string()

    def source_columns(self) -> list[str]:
        if self.local_file is not None:
            import pyarrow.parquet as pq

            return list(pq.read_schema(self.local_file).names)
        return [name for name, _ in self.view.batch_source.get_table_column_names_and_types(self.config)]

    def read_source(
        self, entity_key: str, features: Sequence[str] = (), until: datetime | None = None
    ) -> pd.DataFrame:
        """The source's rows (at or before ``until``): the entity key, the event time, ``features``."""
        import pandas as pd

        columns = [entity_key, self.timestamp_field, *features]
        if self.local_file is not None:
            frame = pd.read_parquet(self.local_file, columns=columns)
        else:
            frame = self._pull(entity_key, features, until)[columns]
        # one cut-off for every store, whichever way its own end_date filter treats the bound
        return frame if until is None else frame[frame[self.timestamp_field] <= until]

    def _pull(self, entity_key: str, features: Sequence[str], until: datetime | None) -> pd.DataFrame:
        """The rows of a non-file source, through the repository's offline store."""
        import pandas as pd
        from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

        store = get_offline_store_from_config(self.config.offline_store)
        job = store.pull_all_from_table_or_query(
            config=self.config,
            data_source=self.view.batch_source,
            join_key_columns=[entity_key],
            feature_name_columns=list(features),
            timestamp_field=self.timestamp_field,
            start_date=datetime(1970, 1, 1, tzinfo=UTC),
            end_date=until or datetime(2200, 1, 1, tzinfo=UTC),  # every row, as a file read gives
        )
        frame = job.to_df()
        frame[self.timestamp_field] = pd.to_datetime(frame[self.timestamp_field], utc=True)
        return frame

    @property
    def timestamp_field(self) -> str:
        return self.view.batch_source.timestamp_field

    @property
    def age_column(self) -> str:
        """The column of the validated frame that holds the age of this view's feature rows."""
        return f"{self.name}{AGE_SUFFIX}"


@dataclass(frozen=True)
class ServiceSpec:
    """A feature service with everything retrieval and validation need about it."""

    service: FeatureService
    entity_name: str
    entity_key: str
    views: list[ViewSpec]

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def features(self) -> list[str]:
        return [f for v in self.views for f in v.features]

    @property
    def feature_refs(self) -> list[str]:
        return [f"{v.name}:{f}" for v in self.views for f in v.features]


def service_spec(store: FeatureStore, feature_service: str) -> ServiceSpec:
    """Read a feature service and its feature views from the registry (uncached)."""
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(feature_service, allow_cache=False)
    except FeatureServiceNotFoundException:
        known = [s.name for s in store.list_feature_services()]
        raise UnknownFeatureServiceError(feature_service, known) from None
    views: list[ViewSpec] = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name, allow_registry_cache=False)
        views.append(ViewSpec(view=view, features=[f.name for f in projection.features], config=store.config))
    keys = {tuple(v.view.join_keys) for v in views}
    entities = {tuple(v.view.entities) for v in views}
    if len(keys) != 1 or len(next(iter(keys))) != 1 or len(entities) != 1:
        # The retrieval below builds one entity frame with one key column.
        raise ValueError(f"feature service {feature_service!r} must use exactly one single-key entity")
    return ServiceSpec(
        service=service,
        entity_name=next(iter(entities))[0],
        entity_key=next(iter(keys))[0],
        views=views,
    )


def missing_source_features(spec: ServiceSpec) -> dict[str, list[str]]:
    """Features that a view's source file lacks, per view (only views with gaps).

    Feast fails the whole retrieval on a missing column; retrieving the remaining features
    instead lets the validation report the gap as a failed expectation (a data problem),
    while a missing key or timestamp column is a broken source and raises.
    """
    missing: dict[str, list[str]] = {}
    for view in spec.views:
        columns = set(view.source_columns())
        for required in (spec.entity_key, view.timestamp_field):
            if required not in columns:
                raise ValueError(f"source {view.source_location} of {view.name!r} has no column {required!r}")
        gaps = [f for f in view.features if f not in columns]
        if gaps:
            missing[view.name] = gaps
    return missing


def latest_event_times(spec: ServiceSpec, at: datetime) -> pd.Series:
    """Per entity id (index, sorted): the newest source timestamp at or before ``at`` over all views.

    Entities that only have rows after ``at`` map to NaT; every id of every source is present.
    """
    import pandas as pd

    latest: pd.Series | None = None
    for view in spec.views:
        frame = view.read_source(spec.entity_key)
        stamps = frame[view.timestamp_field].where(frame[view.timestamp_field] <= at)
        per_id = stamps.groupby(frame[spec.entity_key].astype(str)).max()
        latest = per_id if latest is None else pd.concat([latest, per_id], axis=1).max(axis=1)
    assert latest is not None
    return latest.sort_index()


def resolve_inference_ids(
    spec: ServiceSpec, ids: Sequence[str] | None, count: int, latest: pd.Series
) -> list[str]:
    """Explicit ids (checked, duplicates dropped) or the ``count`` most recent entity ids."""
    if ids is not None:
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if not wanted:
            raise ValueError("inference_ids is empty; pass None to use the most recent entities")
        unknown = [i for i in wanted if i not in latest.index]
        if unknown:
            raise UnknownEntityError(spec.name, unknown)
        return wanted
    if count < 1:
        raise ValueError(f"inference_count must be at least 1 (got {count})")
    known = latest.dropna()
    # Newest first; ties broken by id so that the choice is reproducible.
    ordered = sorted(known.items(), key=lambda item: (-item[1].value, item[0]))
    return [entity_id for entity_id, _ in ordered[:count]]


def select_background(
    universe: Sequence[str], inference_ids: Sequence[str], strategy: str, size: int, seed: int
) -> list[str]:
    """The background entity ids: never an inference id, sorted, reproducible for a seed.

    ``random_subset`` draws ``size`` ids (all when fewer exist) with ``seed``; ``kmeans`` and
    ``all`` return every other entity (the explainer summarises them, e.g. with k-means).
    """
    import numpy as np

    if strategy not in BACKGROUND_STRATEGIES:
        raise ValueError(f"background strategy {strategy!r} is not one of {', '.join(BACKGROUND_STRATEGIES)}")
    excluded = set(inference_ids)
    candidates = sorted(i for i in set(universe) if i not in excluded)
    if strategy != "random_subset":
        return candidates
    if size < 1:
        raise ValueError(f"background size must be at least 1 for random_subset (got {size})")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), size=min(size, len(candidates)), replace=False)
    return [candidates[i] for i in sorted(int(i) for i in chosen)]


def entity_frame(spec: ServiceSpec, ids: Sequence[str], at: datetime) -> pd.DataFrame:
    """The entity frame Feast joins against: one row per id, all at the retrieval timestamp."""
    import pandas as pd

    return pd.DataFrame(
        {
            spec.entity_key: pd.Series(list(ids), dtype=object),
            TIMESTAMP_COLUMN: pd.Series([pd.Timestamp(at)] * len(ids), dtype="datetime64[ns, UTC]"),
        }
    )


def retrieve(
    store: FeatureStore, spec: ServiceSpec, ids: Sequence[str], at: datetime, missing: dict[str, list[str]]
) -> pd.DataFrame:
    """Point-in-time features of ``ids`` at ``at``.

    Columns: entity key, ``event_timestamp`` (= ``at``), then the service's features in order
    (minus any the sources lack); rows in the order of ``ids``.
    """
    import pandas as pd

    skipped = {(view, f) for view, names in missing.items() for f in names}
    refs = [f"{v.name}:{f}" for v in spec.views for f in v.features if (v.name, f) not in skipped]
    features = [ref.split(":", 1)[1] for ref in refs]
    entities = entity_frame(spec, ids, at)
    if not ids or not refs:
        empty = entities.copy()
        for name in features:
            empty[name] = pd.Series([float("nan")] * len(entities), dtype="float32")
        return empty
    joined = store.get_historical_features(entity_df=entities, features=refs).to_df()
    joined[spec.entity_key] = joined[spec.entity_key].astype(str)
    # Feast returns rows in its own order, and its file offline store drops entity rows that
    # have no feature row within the ttl instead of returning nulls. Joining back onto the
    # entity frame restores the requested order and turns dropped rows into nulls, which the
    # validation then reports.
    frame = entities.merge(
        joined.drop(columns=[TIMESTAMP_COLUMN]).drop_duplicates(spec.entity_key),
        on=spec.entity_key,
        how="left",
        validate="one_to_one",
    )
    for name in features:
        # A left join that adds nulls widens float32 to float64; keep Feast's declared type.
        if joined[name].dtype.kind == "f" and frame[name].dtype != joined[name].dtype:
            frame[name] = frame[name].astype(joined[name].dtype)
    return frame[[spec.entity_key, TIMESTAMP_COLUMN, *features]]


def feature_ages(spec: ServiceSpec, ids: Sequence[str], at: datetime) -> pd.DataFrame:
    """Per view, the age in seconds of the feature row a point-in-time join at ``at`` picks.

    Feast does not return the event time of the rows it joined, so it is recomputed from the
    sources: the newest row of each entity at or before ``at``, ignoring ttl (so that a stale
    row shows up as a large age rather than as nothing). NaN when the entity has no such row.
    """
    import pandas as pd

    ages = pd.DataFrame(index=range(len(ids)))
    for view in spec.views:
        frame = view.read_source(spec.entity_key, until=at)
        newest = frame.groupby(frame[spec.entity_key].astype(str))[view.timestamp_field].max()
        picked = newest.reindex(list(ids))
        ages[view.age_column] = (pd.Timestamp(at) - picked).dt.total_seconds().to_numpy()
    return ages


@dataclass
class RetrievalResult:
    """The two retrieved frames and what is needed to describe how they were obtained."""

    spec: ServiceSpec
    retrieval_time: datetime
    inference_ids: list[str]
    background_ids: list[str]
    inference: pd.DataFrame
    background: pd.DataFrame
    missing_features: dict[str, list[str]] = field(default_factory=dict)


def retrieve_sets(
    store: FeatureStore,
    feature_service: str,
    *,
    inference_ids: Sequence[str] | None,
    inference_count: int,
    background_strategy: str,
    background_size: int,
    seed: int,
    at: datetime,
) -> RetrievalResult:
    """Resolve the inference and background ids and retrieve both sets at ``at``.

    Raises for configuration errors only (unknown feature service or ids, bad strategy or
    sizes); data problems (nulls, gaps, stale rows) come back in the frames for validation.
    """
    if background_strategy not in BACKGROUND_STRATEGIES:
        raise ValueError(
            f"background strategy {background_strategy!r} is not one of {', '.join(BACKGROUND_STRATEGIES)}"
        )
    spec = service_spec(store, feature_service)
    latest = latest_event_times(spec, at)
    chosen = resolve_inference_ids(spec, inference_ids, inference_count, latest)
    background_ids = select_background(list(latest.index), chosen, background_strategy, background_size, seed)
    missing = missing_source_features(spec)
    return RetrievalResult(
        spec=spec,
        retrieval_time=at,
        inference_ids=chosen,
        background_ids=background_ids,
        inference=retrieve(store, spec, chosen, at, missing),
        background=retrieve(store, spec, background_ids, at, missing),
        missing_features=missing,
    )
