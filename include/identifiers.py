"""Identifiers that end up in paths and object keys, checked in one place.

A model version names a folder of the model store and fills ``{version}`` in a model source's
location: ``../other-model/1`` from a trigger form must never explain another model while the signed
bundle names the configured one. The same pattern bounds ``spec.modelVersion`` in configs, the
trigger form's ``model_version`` Param and the run conf.
"""

from __future__ import annotations

import re

# Letters, digits, ".", "_" and "-", not starting with "." or "-", at most 64 characters.
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_MODEL_VERSION = re.compile(MODEL_VERSION_PATTERN)


def is_model_version(value: object) -> bool:
    return isinstance(value, str) and _MODEL_VERSION.fullmatch(value) is not None and ".." not in value


def model_version_problem(value: object) -> str | None:
    """None for a valid model version, else what is wrong with it (for the error message)."""
    if is_model_version(value):
        return None
    return (
        f"model version {value!r} is not valid: use letters, digits, '.', '_' and '-' (at most 64, not "
        "starting with '.' or '-', no '..')"
    )
