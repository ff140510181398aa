"""The catalogue of models the runtime knows how to build and explain.

Read from ``include/configs/models.yaml`` (the same file the configuration validator checks
``modelName`` against) and kept free of heavy imports (no torch): the CLI must start fast.
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


def _load_catalogue() -> dict[str, CatalogueEntry]:
    """The catalogue kept as code in ``include/configs/models.yaml`` (one source for config validation
    and for the runtime)."""
    from include.configuration.loader import model_catalogue

    return {
        name: CatalogueEntry(
            name=name,
            architecture=str(entry["architecture"]),
            feature_service=str(entry["featureService"]),
            default_version=str(entry["defaultVersion"]),
            entity=str(entry["entity"]),
            task=str(entry["task"]),
            description=str(entry.get("description", "")),
        )
        for name, entry in model_catalogue().items()
    }


MODEL_CATALOGUE: dict[str, CatalogueEntry] = _load_catalogue()


def known_models() -> list[str]:
    """Model names a configuration may use (sorted)."""
    return sorted(MODEL_CATALOGUE)


def catalogue_entry(name: str) -> CatalogueEntry:
    """The catalogue entry of ``name``; ``KeyError`` names the known models."""
    try:
        return MODEL_CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(known_models())}") from None
