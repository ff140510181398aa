"""The catalogue of models the runtime knows how to build and explain.

Kept free of heavy imports (no torch): the configuration validator checks ``modelName``
against :func:`known_models` while the CLI starts, which must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogueEntry:
    """What the platform knows about a model before loading its weights."""

    name: str
    architecture: str
    feature_service: str
    default_version: str
    entity: str
    task: str  # "binary" | "multiclass"
    description: str


MODEL_CATALOGUE: dict[str, CatalogueEntry] = {
    "diagnosis-risk-tabular": CatalogueEntry(
        name="diagnosis-risk-tabular",
        architecture="TabularMLP",
        feature_service="diagnosis_risk_tabular",
        default_version="1",
        entity="patient_id",
        task="binary",
        description="MLP on the ten mean_* breast-cancer measurements; predicts malignant.",
    ),
    "multimodal-image-classifier-v3": CatalogueEntry(
        name="multimodal-image-classifier-v3",
        architecture="MultimodalDigitNet",
        feature_service="multimodal_image_classifier_v3",
        default_version="1",
        entity="image_id",
        task="multiclass",
        description="Small CNN on an 8x8 digit fused with four scan features; predicts the digit.",
    ),
}


def known_models() -> list[str]:
    """Model names a configuration may use (sorted)."""
    return sorted(MODEL_CATALOGUE)


def catalogue_entry(name: str) -> CatalogueEntry:
    """The catalogue entry of ``name``; ``KeyError`` names the known models."""
    try:
        return MODEL_CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(known_models())}") from None
