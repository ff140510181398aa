"""Feast object definitions of the two sample models (entities, feature views, feature services).

The definitions are built by :func:`build_objects` from the directory that holds the Parquet
sources, because that directory depends on ``$XAC_HOME`` (tests point it at a temporary folder
after this module is imported). The module-level names at the bottom exist for the plain
``feast`` CLI, which scans module attributes; the project's own code calls
:func:`build_objects` with the current directory instead (see
``include/provenance/feature_data.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_source import DataSource
from feast.types import Float32, String

from examples.datasets import (
    IMAGE_ENTITY,
    IMAGE_TARGET,
    PIXEL_FEATURES,
    SCAN_FEATURES,
    TABULAR_ENTITY,
    TABULAR_FEATURES,
    TABULAR_TARGET,
)
from include.paths import data_dir

OWNER = "xac-ml-platform@example.org"
# Feature rows older than this are dropped by Feast's point-in-time join and fail the
# freshness expectation of the provenance stage; the sample data spans the 6 days before it
# was prepared, so 30 days leaves room for a demo that runs weeks after `make`.
FEATURE_TTL = timedelta(days=30)
TIMESTAMP_FIELD = "event_timestamp"

# The label each feature service's model is trained on: (feature view whose source holds it,
# column). Labels sit in the source Parquet for training but are not features of any view.
SERVICE_TARGETS: dict[str, tuple[str, str]] = {
    "diagnosis_risk_tabular": ("patient_measurements", TABULAR_TARGET),
    "multimodal_image_classifier_v3": ("digit_scan", IMAGE_TARGET),
}

# Source file of each feature view, relative to the sources directory.
SOURCE_FILES: dict[str, str] = {
    "patient_measurements": "patient_measurements.parquet",
    "digit_pixels": "digit_pixels.parquet",
    "digit_scan": "digit_scan.parquet",
}


def feast_dir() -> Path:
    """Where the registry, the online store and the Parquet sources live (under $XAC_HOME)."""
    return data_dir() / "feast"


def sources_dir() -> Path:
    return feast_dir() / "sources"


@dataclass(frozen=True)
class FeatureRepoObjects:
    """Every Feast object of the repository, in the order `feast apply` needs nothing special for."""

    entities: list[Entity]
    feature_views: list[FeatureView]
    feature_services: list[FeatureService]

    def all(self) -> list[Entity | FeatureView | FeatureService]:
        return [*self.entities, *self.feature_views, *self.feature_services]


def build_objects(source_dir: Path | None = None, *, tables: bool = False) -> FeatureRepoObjects:
    """Build the Feast objects whose batch sources are the Parquet files in ``source_dir``, or, with
    ``tables``, PostgreSQL tables named after the views (the shared variant, :mod:`.postgres`)."""
    source_dir = (source_dir or sources_dir()).resolve()

    patient = Entity(
        name="patient",
        join_keys=[TABULAR_ENTITY],
        value_type=ValueType.STRING,
        description="A patient of the diagnosis sample (synthetic id; a personal identifier).",
        owner=OWNER,
        tags={"pii": "true", "domain": "clinical"},
    )
    image = Entity(
        name="image",
        join_keys=[IMAGE_ENTITY],
        value_type=ValueType.STRING,
        description="One scanned 8x8 digit image.",
        owner=OWNER,
        tags={"pii": "false", "domain": "imaging"},
    )

    def source(view: str, description: str) -> DataSource:
        if tables:
            from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
                PostgreSQLSource,
            )

            return PostgreSQLSource(
                name=f"{view}_source",
                table=view,
                timestamp_field=TIMESTAMP_FIELD,
                description=description,
                owner=OWNER,
            )
        return FileSource(
            name=f"{view}_source",
            path=str(source_dir / SOURCE_FILES[view]),
            timestamp_field=TIMESTAMP_FIELD,
            description=description,
            owner=OWNER,
        )

    patient_measurements = FeatureView(
        name="patient_measurements",
        entities=[patient],
        ttl=FEATURE_TTL,
        schema=[
            Field(name=TABULAR_ENTITY, dtype=String),
            *(Field(name=f, dtype=Float32) for f in TABULAR_FEATURES),
        ],
        source=source(
            "patient_measurements",
            "Wisconsin breast-cancer mean cell-nucleus measurements (plus the `malignant` label).",
        ),
        online=True,
        description="Ten mean cell-nucleus measurements of a fine-needle aspirate, per patient.",
        owner=OWNER,
        tags={"model": "diagnosis-risk-tabular", "pii": "false", "domain": "clinical"},
    )
    digit_pixels = FeatureView(
        name="digit_pixels",
        entities=[image],
        ttl=FEATURE_TTL,
        schema=[
            Field(name=IMAGE_ENTITY, dtype=String),
            *(Field(name=f, dtype=Float32) for f in PIXEL_FEATURES),
        ],
        source=source("digit_pixels", "scikit-learn digits: 64 pixel intensities 0..16 per image."),
        online=True,
        description="The 8x8 grey-level image, one column per pixel (row-major, values 0..16).",
        owner=OWNER,
        tags={"model": "multimodal-image-classifier-v3", "modality": "image", "domain": "imaging"},
    )
    digit_scan = FeatureView(
        name="digit_scan",
        entities=[image],
        ttl=FEATURE_TTL,
        schema=[
            Field(name=IMAGE_ENTITY, dtype=String),
            *(Field(name=f, dtype=Float32) for f in SCAN_FEATURES),
        ],
        source=source(
            "digit_scan", "Tabular statistics of each scan (plus the `digit` label), keyed by image."
        ),
        online=True,
        description="Ink statistics of the scan and a scanner-noise reading.",
        owner=OWNER,
        tags={"model": "multimodal-image-classifier-v3", "modality": "tabular", "domain": "imaging"},
    )

    diagnosis_risk_tabular = FeatureService(
        name="diagnosis_risk_tabular",
        features=[patient_measurements],
        description="Inputs of the diagnosis-risk-tabular model (version 1).",
        owner=OWNER,
        tags={"model": "diagnosis-risk-tabular", "model_version": "1"},
    )
    multimodal_image_classifier_v3 = FeatureService(
        name="multimodal_image_classifier_v3",
        # The order here is the model's input order: 64 pixels, then the 4 scan features.
        features=[digit_pixels, digit_scan],
        description="Inputs of the multimodal-image-classifier-v3 model (version 1).",
        owner=OWNER,
        tags={"model": "multimodal-image-classifier-v3", "model_version": "1"},
    )
    return FeatureRepoObjects(
        entities=[patient, image],
        feature_views=[patient_measurements, digit_pixels, digit_scan],
        feature_services=[diagnosis_risk_tabular, multimodal_image_classifier_v3],
    )


# Module-level objects for the `feast` CLI (it collects Feast objects from module attributes).
_default = build_objects()
patient_entity, image_entity = _default.entities
patient_measurements_view, digit_pixels_view, digit_scan_view = _default.feature_views
diagnosis_risk_tabular_service, multimodal_image_classifier_v3_service = _default.feature_services
