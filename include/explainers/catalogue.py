"""The catalogue of models the runtime knows how to build and explain.

Read from ``include/configs/models.yaml`` (the same file the configuration validator checks
``modelName`` against) and kept free of heavy imports (no torch): the CLI must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from include.explainers.sources import SourceDeclaration, SourceProblem


@dataclass(frozen=True)
class CatalogueEntry:
    """What the platform knows about a model before loading its weights."""

    name: str
    architecture: str
    feature_service: str
    default_version: str
    entity: str
    task: str  # "binary" | "multiclass" | "regression"; "" for a source model that says itself
    description: str
    # A user's own model (include/explainers/sources): where its artifact lives. None: the model
    # store's model.pt + model.json, built from ``architecture``.
    source: SourceDeclaration | None = None
    source_problems: tuple[SourceProblem, ...] = ()
    inputs: tuple[str, ...] | None = None  # feature columns in order (default: the feature service's)
    class_names: tuple[str, ...] = ()


def catalogue_entries() -> dict[str, CatalogueEntry]:
    """The catalogue kept as code in ``include/configs/models.yaml`` (or ``XAC_MODEL_CATALOGUE``):
    one source for config validation and for the runtime, re-read when the file changes."""
    from include.configuration.loader import model_catalogue_path

    path = model_catalogue_path()
    return _entries(path, path.stat().st_mtime)


@lru_cache(maxsize=4)
def _entries(path: Path, mtime: float) -> dict[str, CatalogueEntry]:
    from include.configuration.loader import model_catalogue

    out = {}
    for name, entry in model_catalogue(path).items():
        source, problems = (None, [])
        if "source" in entry:
            source, problems = SourceDeclaration.parse(entry["source"])
        inputs = entry.get("inputs")
        out[name] = CatalogueEntry(
            name=name,
            architecture=str(entry.get("architecture", "")),
            feature_service=str(entry["featureService"]),
            default_version=str(entry["defaultVersion"]),
            entity=str(entry["entity"]),
            task=str(entry.get("task", "")),
            description=str(entry.get("description", "")),
            source=source,
            source_problems=tuple(problems),
            inputs=tuple(str(c) for c in inputs) if isinstance(inputs, list) else None,
            class_names=tuple(str(c) for c in entry.get("classNames") or ()),
        )
    return out


def known_models() -> list[str]:
    """Model names a configuration may use (sorted)."""
    return sorted(catalogue_entries())


def catalogue_entry(name: str) -> CatalogueEntry:
    """The catalogue entry of ``name``; ``KeyError`` names the known models."""
    try:
        return catalogue_entries()[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(known_models())}") from None
