"""The explainer runtime: what ``xac explain`` runs (KernelSHAP, Integrated Gradients).

Only light names are imported here (no torch), so the CLI can validate configurations fast;
``run_explain`` imports the heavy libraries when called.
"""

from include.explainers.catalogue import CatalogueEntry, catalogue_entries, catalogue_entry, known_models
from include.explainers.errors import (
    ExplainError,
    InputValidationError,
    MethodNotApplicableError,
    ModelLoadError,
    ModelNotFoundError,
    OutputExistsError,
    ParameterError,
    UnknownMethodError,
)
from include.explainers.params import known_methods, method_parameters, normalise_params
from include.explainers.runtime import ExplainRequest, merge_shards, read_explanation, run_explain

__all__ = [
    "CatalogueEntry",
    "ExplainError",
    "ExplainRequest",
    "InputValidationError",
    "MethodNotApplicableError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OutputExistsError",
    "ParameterError",
    "UnknownMethodError",
    "catalogue_entries",
    "catalogue_entry",
    "known_methods",
    "known_models",
    "merge_shards",
    "method_parameters",
    "normalise_params",
    "read_explanation",
    "run_explain",
]
