"""Compliance bundles: a folder of run outputs plus a manifest and a signed in-toto statement.

Layout of a built bundle::

    <staging_dir>/
        explanations/*.json, plots/*.png, provenance.json, ...   (whatever the run produced)
        manifest.json         every other file with size and sha256, the run dict, the bundle id
        statement.dsse.json   in-toto Statement v1 over every file incl. manifest.json, DSSE/Ed25519

``bundle_id`` is a content address: ``sha256:`` + sha256 of the canonical JSON of the sorted
``[{path, sha256, size}]`` list. It names the *payload* (not the run metadata), so two runs producing
byte-identical outputs share it; ``manifest.json`` itself (run dict, timestamps, chain link) is
covered by the statement's subject list.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.compliance.errors import ManifestError, UnsafeBundleError

if TYPE_CHECKING:
    from securesystemslib.signer import Signer

FORMAT_VERSION = "xac-bundle/1"
MANIFEST_NAME = "manifest.json"
STATEMENT_NAME = "statement.dsse.json"
# S3-only marker written before any other object of a publish; reserves the prefix for one bundle.
CLAIM_NAME = "_claim.json"
RESERVED_NAMES = frozenset({MANIFEST_NAME, STATEMENT_NAME, CLAIM_NAME})

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://explainability-as-code.dev/run/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_MAX_PATH_LEN = 1024


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace, UTF-8, no NaN) used for hashing and signing."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_file(path: Path) -> tuple[int, str]:
    """(bytes read, hex sha256) of a file, streamed so 50 MB plots do not sit in memory."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
        size = handle.tell()
    return size, digest.hexdigest()


def short(digest: str) -> str:
    """Abbreviated digest for human-readable messages."""
    return f"{digest[:12]}…"


def path_problem(path: object) -> str | None:
    """Why ``path`` is not a safe bundle-relative POSIX path, or None when it is.

    Applied to untrusted manifests before anything is written: rejects absolute paths, Windows drive
    letters, backslashes (a separator on Windows), ``.``/``..``/empty components and control characters.
    """
    if not isinstance(path, str) or not path:
        return "empty or non-string path"
    if len(path) > _MAX_PATH_LEN:
        return "path too long"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "control character in path"
    if "\\" in path:
        return "backslash in path"
    if path.startswith("/"):
        return "absolute path"
    if _DRIVE_RE.match(path):
        return "drive-qualified path"
    parts = path.split("/")
    if ".." in parts:
        return "'..' component"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' component"
    if path in RESERVED_NAMES:
        return "reserved name"
    return None


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def compute_bundle_id(files: Iterable[FileEntry]) -> str:
    listing = sorted((entry.to_dict() for entry in files), key=lambda item: item["path"])
    return "sha256:" + hashlib.sha256(canonical_json(listing)).hexdigest()


@dataclass
class Manifest:
    bundle_id: str
    files: list[FileEntry]
    run: dict[str, Any]
    created_at: str
    previous_bundle: dict[str, str] | None = None
    # Where the bundle is published, signed with it: a copy found anywhere else does not verify
    # there. ``s3://bucket/prefix/`` (the prefix without its trailing slash is what is compared).
    # Absent in bundles made before it existed.
    location: str | None = None
    format: str = FORMAT_VERSION
    # Raw bytes as read/written, so digests are computed over exactly what is on disk or in S3.
    raw: bytes = field(default=b"", repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "bundle_id": self.bundle_id,
            "created_at": self.created_at,
            "files": [entry.to_dict() for entry in self.files],
            "run": self.run,
            "previous_bundle": self.previous_bundle,
            **({"location": self.location} if self.location is not None else {}),
        }

    def to_json(self) -> bytes:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        return (text + "\n").encode("utf-8")

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def created_at_datetime(self) -> datetime:
        return parse_timestamp(self.created_at)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse an untrusted manifest; raises ManifestError with a precise message on bad shape.

        Paths are *not* judged here (see :func:`path_problem`) so callers can report each one.
        """
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from exc
        except RecursionError:  # a hostile object: no real manifest nests more than a few levels
            raise ManifestError(f"{MANIFEST_NAME}: nested too deeply to be a manifest") from None
        manifest = cls.from_dict(doc)
        manifest.raw = bytes(data)
        return manifest

    @classmethod
    def from_dict(cls, doc: object) -> Manifest:
        if not isinstance(doc, dict):
            raise ManifestError(f"{MANIFEST_NAME}: top level is not an object")
        fmt = doc.get("format")
        if fmt != FORMAT_VERSION:
            raise ManifestError(f"{MANIFEST_NAME}: unsupported format {fmt!r} (expected {FORMAT_VERSION!r})")
        bundle_id = doc.get("bundle_id")
        if not isinstance(bundle_id, str):
            raise ManifestError(f"{MANIFEST_NAME}: bundle_id missing or not a string")
        created_at = doc.get("created_at")
        if not isinstance(created_at, str):
            raise ManifestError(f"{MANIFEST_NAME}: created_at missing or not a string")
        try:
            parse_timestamp(created_at)
        except ValueError as exc:
            raise ManifestError(f"{MANIFEST_NAME}: created_at is not ISO 8601 ({created_at!r})") from exc
        run = doc.get("run")
        if not isinstance(run, dict):
            raise ManifestError(f"{MANIFEST_NAME}: run missing or not an object")
        previous = doc.get("previous_bundle")
        if previous is not None and not _valid_previous(previous):
            raise ManifestError(
                f"{MANIFEST_NAME}: previous_bundle must be null or {{uri, bundle_id}} strings"
            )
        location = doc.get("location")
        if location is not None and not (isinstance(location, str) and location.startswith("s3://")):
            raise ManifestError(f"{MANIFEST_NAME}: location must be null or an s3:// URI")
        raw_files = doc.get("files")
        if not isinstance(raw_files, list):
            raise ManifestError(f"{MANIFEST_NAME}: files missing or not a list")
        files: list[FileEntry] = []
        for index, item in enumerate(raw_files):
            if not isinstance(item, dict):
                raise ManifestError(f"{MANIFEST_NAME}: files[{index}] is not an object")
            path, size, digest = item.get("path"), item.get("size"), item.get("sha256")
            if not isinstance(path, str):
                raise ManifestError(f"{MANIFEST_NAME}: files[{index}].path is not a string")
            # bool is an int subclass in Python; reject it explicitly.
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ManifestError(f"{MANIFEST_NAME}: {path}: size is not a non-negative integer")
            if not isinstance(digest, str) or not _SHA256_RE.match(digest):
                raise ManifestError(f"{MANIFEST_NAME}: {path}: sha256 is not 64 lowercase hex digits")
            files.append(FileEntry(path=path, size=size, sha256=digest))
        return cls(
            bundle_id=bundle_id,
            files=files,
            run=run,
            created_at=created_at,
            previous_bundle=previous,
            location=location,
            format=fmt,
        )


def _valid_previous(previous: object) -> bool:
    return (
        isinstance(previous, dict)
        and set(previous) == {"uri", "bundle_id"}
        and all(isinstance(value, str) for value in previous.values())
    )


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 -> aware datetime (naive input is taken as UTC)."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def scan_files(root: Path) -> list[FileEntry]:
    """Hash every regular file under ``root`` except the manifest and statement.

    Raises UnsafeBundleError for symlinks (which could smuggle in content from outside the folder),
    special files and names that would not survive as S3 keys / safe paths.
    """
    entries: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            full = base / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                raise UnsafeBundleError(f"{rel}: symbolic links are refused in a bundle")
        for name in filenames:
            full = base / name
            rel = full.relative_to(root).as_posix()
            if rel in (MANIFEST_NAME, STATEMENT_NAME):
                continue
            mode = full.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise UnsafeBundleError(f"{rel}: not a regular file")
            problem = path_problem(rel)
            if problem is not None:
                raise UnsafeBundleError(f"{rel!r}: {problem}")
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise UnsafeBundleError(f"{rel!r}: file name is not valid UTF-8") from exc
            size, digest = sha256_file(full)
            entries.append(FileEntry(path=rel, size=size, sha256=digest))
    entries.sort(key=lambda entry: entry.path)
    return entries


def make_statement(manifest: Manifest, manifest_sha256: str) -> dict[str, Any]:
    """The in-toto Statement v1: one subject per payload file plus manifest.json; predicate = run dict."""
    subjects = [{"name": entry.path, "digest": {"sha256": entry.sha256}} for entry in manifest.files]
    subjects.append({"name": MANIFEST_NAME, "digest": {"sha256": manifest_sha256}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": manifest.run,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def build_bundle(
    staging_dir: Path,
    *,
    run: dict[str, Any],
    signer: Signer,
    previous: dict[str, str] | None = None,
    created_at: datetime | None = None,
    location: str | None = None,
) -> Manifest:
    """Write manifest.json and statement.dsse.json into ``staging_dir`` and return the manifest.

    ``location`` (``s3://bucket/prefix/``) is where the bundle will be published: signed with it, so
    that a copy elsewhere fails verification there.

    ``run`` is the caller's JSON dict (dag_id, run_id, model, version, config digest, git commit...);
    ``previous`` is the hash-chain link ``{"uri", "bundle_id"}`` of the model's previous bundle.
    Existing manifest/statement files are replaced (rebuilding is allowed until the bundle is published).
    """
    from securesystemslib.dsse import Envelope

    root = Path(staging_dir)
    if root.is_symlink() or not root.is_dir():
        raise UnsafeBundleError(f"{root}: not a directory (symlinked staging folders are refused)")
    root = root.resolve()
    if not isinstance(run, dict):
        raise TypeError("run must be a dict")
    try:
        canonical_json(run)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run dict is not JSON-serialisable: {exc}") from exc
    if previous is not None and not _valid_previous(previous):
        raise ValueError("previous must be None or {'uri': str, 'bundle_id': str}")

    files = scan_files(root)
    if not files:
        raise UnsafeBundleError(f"{root}: nothing to bundle")
    stamp = (
        created_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if created_at is not None
        else _utc_now()
    )
    manifest = Manifest(
        bundle_id=compute_bundle_id(files),
        files=files,
        run=run,
        created_at=stamp,
        previous_bundle=dict(previous) if previous else None,
        location=location,
    )
    manifest.raw = manifest.to_json()

    statement = make_statement(manifest, hashlib.sha256(manifest.raw).hexdigest())
    envelope = Envelope(payload=canonical_json(statement), payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    # Manifest first, statement last: a statement on disk always refers to a finished manifest.
    _atomic_write(root / MANIFEST_NAME, manifest.raw)
    _atomic_write(root / STATEMENT_NAME, (json.dumps(envelope.to_dict(), indent=2) + "\n").encode("utf-8"))
    return manifest
