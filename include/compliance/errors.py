"""Exceptions raised by the compliance bundle code (one hierarchy so callers can catch BundleError)."""

from __future__ import annotations


class BundleError(Exception):
    """Base class for every bundle problem."""


class UnsafeBundleError(BundleError):
    """The staging folder holds something that must not be bundled (symlink, device file, bad name)."""


class ManifestError(BundleError):
    """manifest.json is missing, not JSON, or does not have the expected shape."""


class OversizedObjectError(ManifestError):
    """A bundle metadata object (manifest, statement, claim, key) is larger than any real one can be:
    it is not read whole (a hostile or broken object must not exhaust a reader's memory)."""


class UnsafePathError(BundleError):
    """An untrusted manifest names paths that would escape the target folder; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("refusing unsafe paths in manifest: " + "; ".join(problems))
        self.problems = problems


class IncompleteBundleError(BundleError):
    """The S3 prefix has no statement.dsse.json: the publish never finished (or is still running)."""


class BundleConflictError(BundleError):
    """The S3 location already holds different content; nothing was overwritten."""
