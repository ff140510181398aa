"""Errors the explainer runtime raises for bad requests.

Every error derives from :class:`ExplainError` (a ``ValueError``) so a caller (the CLI, the DAG)
can tell "the request is wrong" apart from a crash, and the message always names what was
wrong and where it looked — the operator reads it in an Airflow log, far from the code.
"""

from __future__ import annotations


class ExplainError(ValueError):
    """Base class: the explanation request cannot be served as given."""


class ModelNotFoundError(ExplainError):
    """No artifact for this model name and version in the model store."""


class ModelLoadError(ExplainError):
    """The artifact exists but cannot be loaded (corrupt, tampered, unknown architecture)."""


class UnknownMethodError(ExplainError):
    """The method name is not one the runtime implements."""


class MethodNotApplicableError(ExplainError):
    """The method (or one of its parameters) does not fit this model."""


class ParameterError(ExplainError):
    """A method parameter is unknown, of the wrong type or out of range."""


class InputValidationError(ExplainError):
    """The inference or background data does not match the model's input spec."""


class OutputExistsError(ExplainError):
    """The output folder already holds the outputs of an earlier run."""
