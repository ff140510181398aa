"""Offline verification of a compliance bundle (local folder or s3:// URI).

Everything is recomputed locally from the downloaded bytes: the server (moto does not validate
checksums) is never trusted for integrity. Checks, each reported with a precise message:

* the DSSE envelope verifies with the given public key and carries an in-toto Statement v1 with the
  expected predicate type;
* the statement's subjects are exactly the manifest's files plus manifest.json, with equal digests,
  and its predicate equals the manifest's run dict;
* every listed file exists as a regular file with the listed size and sha256; no unlisted file exists;
* the bundle_id recomputes from the file list; every path is safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.compliance.bundle import (
    CLAIM_NAME,
    MANIFEST_NAME,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_NAME,
    STATEMENT_TYPE,
    Manifest,
    compute_bundle_id,
    path_problem,
    sha256_file,
    short,
)
from include.compliance.errors import BundleError, ManifestError, UnsafePathError

if TYPE_CHECKING:
    from securesystemslib.signer import SSlibKey


@dataclass
class VerificationReport:
    ok: bool
    problems: list[str]
    bundle_id: str | None
    files_checked: int
    bytes_checked: int
    key_id: str | None = None
    source: str = ""
    signed_by: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "bundle_id": self.bundle_id,
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
            "key_id": self.key_id,
            "source": self.source,
            "signed_by": self.signed_by,
        }

    def summary(self) -> str:
        head = "OK" if self.ok else f"FAILED ({len(self.problems)} problem(s))"
        lines = [
            f"{head}: {self.source}",
            f"  bundle {self.bundle_id}, {self.files_checked} files, {self.bytes_checked} bytes checked,"
            f" key {self.key_id}",
        ]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def _read_regular(path: Path, label: str, problems: list[str]) -> bytes | None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        problems.append(f"{label}: missing")
        return None
    if not stat.S_ISREG(mode):
        problems.append(f"{label}: not a regular file (symlinks are refused)")
        return None
    return path.read_bytes()


def _check_signature(
    statement_raw: bytes, key: SSlibKey | None, problems: list[str], signed_by: list[str]
) -> dict[str, Any] | None:
    """Verify the envelope; return the decoded statement (even when the signature fails, for more checks)."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import FormatError, VerificationError

    try:
        envelope = Envelope.from_dict(json.loads(statement_raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, FormatError) as exc:
        problems.append(f"{STATEMENT_NAME}: not a valid DSSE envelope ({type(exc).__name__}: {exc})")
        return None
    signed_by.extend(sorted(envelope.signatures))
    if envelope.payload_type != PAYLOAD_TYPE:
        problems.append(
            f"{STATEMENT_NAME}: payloadType {envelope.payload_type!r} (expected {PAYLOAD_TYPE!r})"
        )
    if key is not None:
        try:
            envelope.verify([key], 1)
        except VerificationError:
            others = [keyid for keyid in signed_by if keyid != key.keyid]
            detail = f" (envelope signed by key {', '.join(others)})" if others else ""
            problems.append(f"signature does not verify with key {key.keyid}{detail}")
    try:
        statement = json.loads(envelope.payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{STATEMENT_NAME}: payload is not JSON ({exc})")
        return None
    if not isinstance(statement, dict):
        problems.append(f"{STATEMENT_NAME}: payload is not a JSON object")
        return None
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"statement _type {statement.get('_type')!r} (expected {STATEMENT_TYPE!r})")
    if statement.get("predicateType") != PREDICATE_TYPE:
        problems.append(
            f"statement predicateType {statement.get('predicateType')!r} (expected {PREDICATE_TYPE!r})"
        )
    return statement


def _subject_digests(statement: dict[str, Any], problems: list[str]) -> dict[str, str]:
    subjects = statement.get("subject")
    digests: dict[str, str] = {}
    if not isinstance(subjects, list):
        problems.append("statement has no subject list")
        return digests
    for subject in subjects:
        name = subject.get("name") if isinstance(subject, dict) else None
        digest = subject.get("digest", {}).get("sha256") if isinstance(subject, dict) else None
        if not isinstance(name, str) or not isinstance(digest, str):
            problems.append(f"statement subject without name/sha256: {subject!r}")
            continue
        if name in digests:
            problems.append(f"statement lists subject twice: {name}")
        digests[name] = digest
    return digests


def _compare_subjects(
    manifest: Manifest, manifest_sha256: str, statement: dict[str, Any], problems: list[str]
) -> None:
    subjects = _subject_digests(statement, problems)
    signed_manifest = subjects.pop(MANIFEST_NAME, None)
    if signed_manifest is None:
        problems.append(f"{MANIFEST_NAME} is not a subject of the signed statement")
    elif signed_manifest != manifest_sha256:
        problems.append(
            f"{MANIFEST_NAME}: sha256 mismatch with signed statement "
            f"(statement {short(signed_manifest)}, file {short(manifest_sha256)})"
        )
    for entry in manifest.files:
        signed = subjects.pop(entry.path, None)
        if signed is None:
            problems.append(f"{entry.path}: listed in manifest but not in signed statement")
        elif signed != entry.sha256:
            problems.append(
                f"{entry.path}: manifest sha256 differs from signed statement "
                f"(statement {short(signed)}, manifest {short(entry.sha256)})"
            )
    for name in sorted(subjects):
        problems.append(f"{name}: in signed statement but not in manifest")
    if statement.get("predicate") != manifest.run:
        problems.append("statement predicate differs from the manifest's run info")


def _check_files(root: Path, manifest: Manifest, problems: list[str]) -> tuple[int, int]:
    """Size and sha256 of every listed file, then unlisted files. Returns (files_checked, bytes_checked)."""
    files_checked = bytes_checked = 0
    listed: set[str] = set()
    for entry in manifest.files:
        if entry.path in listed:
            problems.append(f"duplicate path in manifest: {entry.path}")
            continue
        listed.add(entry.path)
        problem = path_problem(entry.path)
        if problem is not None:
            problems.append(f"unsafe path in manifest: {entry.path!r} ({problem})")
            continue
        full = root / entry.path
        try:
            mode = full.lstat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            problems.append(f"{entry.path}: missing (listed in manifest)")
            continue
        if not stat.S_ISREG(mode) or not full.resolve().is_relative_to(root):
            problems.append(f"{entry.path}: not a regular file inside the bundle (symlinks are refused)")
            continue
        files_checked += 1
        size, digest = sha256_file(full)
        bytes_checked += size
        if size != entry.size:
            problems.append(f"{entry.path}: size mismatch (manifest {entry.size} bytes, file {size} bytes)")
        elif digest != entry.sha256:
            problems.append(
                f"{entry.path}: sha256 mismatch (manifest {short(entry.sha256)}, file {short(digest)})"
            )
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        # Symlinked directories show up in dirnames and are not descended into: report them too.
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            rel = (base / name).relative_to(root).as_posix()
            if rel in (MANIFEST_NAME, STATEMENT_NAME) or rel in listed:
                continue
            problems.append(f"extra file not in manifest: {rel}")
    return files_checked, bytes_checked


def verify_directory(root: Path, key: SSlibKey | None) -> VerificationReport:
    """Verify a local bundle folder; ``key=None`` skips only the signature check (used before publishing)."""
    problems: list[str] = []
    signed_by: list[str] = []
    root = Path(root)
    report = VerificationReport(
        ok=False,
        problems=problems,
        bundle_id=None,
        files_checked=0,
        bytes_checked=0,
        key_id=key.keyid if key is not None else None,
        source=str(root),
        signed_by=signed_by,
    )
    if not root.is_dir():
        problems.append(f"{root}: not a directory")
        return report
    root = root.resolve()
    manifest_raw = _read_regular(root / MANIFEST_NAME, MANIFEST_NAME, problems)
    statement_raw = _read_regular(root / STATEMENT_NAME, STATEMENT_NAME, problems)
    statement = (
        _check_signature(statement_raw, key, problems, signed_by) if statement_raw is not None else None
    )

    manifest: Manifest | None = None
    if manifest_raw is not None:
        try:
            manifest = Manifest.from_bytes(manifest_raw)
        except ManifestError as exc:
            problems.append(str(exc))
    if manifest is not None:
        report.bundle_id = manifest.bundle_id
        recomputed = compute_bundle_id(manifest.files)
        if recomputed != manifest.bundle_id:
            problems.append(
                "bundle_id does not match the file list "
                f"(manifest {manifest.bundle_id}, recomputed {recomputed})"
            )
        if statement is not None:
            _compare_subjects(manifest, hashlib.sha256(manifest.raw).hexdigest(), statement, problems)
        report.files_checked, report.bytes_checked = _check_files(root, manifest, problems)
    report.ok = not problems
    return report


def _extra_s3_objects(s3_client: Any, bucket: str, prefix: str, manifest: Manifest) -> list[str]:
    """Objects under the bundle prefix that the manifest does not list (injected after publishing)."""
    expected = {f"{prefix}/{entry.path}" for entry in manifest.files}
    expected |= {f"{prefix}/{name}" for name in (MANIFEST_NAME, STATEMENT_NAME, CLAIM_NAME)}
    extras = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            if item["Key"] not in expected:
                extras.append(item["Key"])
    return extras


def verify_bundle(
    path_or_uri: str | Path, *, public_key_pem: bytes | str, s3_client: Any | None = None
) -> VerificationReport:
    """Verify a bundle folder or an ``s3://bucket/prefix/`` bundle against a public key PEM."""
    from include.compliance.keys import load_public_key
    from include.compliance.store import download_bundle, parse_s3_uri

    key = load_public_key(public_key_pem)
    source = str(path_or_uri)
    if not source.startswith("s3://"):
        return verify_directory(Path(source), key)
    if s3_client is None:
        raise ValueError("verifying an s3:// bundle needs s3_client")
    bucket, prefix = parse_s3_uri(source)
    with tempfile.TemporaryDirectory(prefix="xac-verify-") as tmp:
        target = Path(tmp) / "bundle"
        try:
            download_bundle(s3_client, source, target, missing_ok=True)
        except UnsafePathError as exc:
            return VerificationReport(False, list(exc.problems), None, 0, 0, key.keyid, source)
        except BundleError as exc:
            return VerificationReport(False, [str(exc)], None, 0, 0, key.keyid, source)
        report = verify_directory(target, key)
        report.source = source
        try:
            manifest = Manifest.from_bytes((target / MANIFEST_NAME).read_bytes())
        except (OSError, ManifestError):
            manifest = None
        if manifest is not None:
            for extra in _extra_s3_objects(s3_client, bucket, prefix, manifest):
                report.problems.append(f"extra object in S3 not in manifest: s3://{bucket}/{extra}")
            report.problems.extend(_chain_problems(s3_client, manifest))
        report.ok = not report.problems
        return report


def _chain_problems(s3_client: Any, manifest: Manifest) -> list[str]:
    """The hash-chain link: the previous accepted bundle must still exist, complete and unchanged.

    A missing previous bundle, or one whose content address differs from the one this bundle
    recorded when it was signed, means a bundle of the model was deleted or replaced.
    """
    from include.compliance.store import _get_bytes, parse_s3_uri

    link = manifest.previous_bundle
    if not link:
        return []
    try:
        bucket, prefix = parse_s3_uri(link["uri"])
    except ValueError:
        return [f"previous_bundle: {link['uri']!r} is not an s3:// URI"]
    raw = _get_bytes(s3_client, bucket, f"{prefix}/{MANIFEST_NAME}")
    if raw is None or _get_bytes(s3_client, bucket, f"{prefix}/{STATEMENT_NAME}") is None:
        return [f"chain broken: the previous bundle {link['uri']} is missing or incomplete"]
    try:
        previous = Manifest.from_bytes(raw)
    except ManifestError as exc:
        return [f"chain broken: the previous bundle's manifest does not parse ({exc})"]
    if previous.bundle_id != link["bundle_id"]:
        return [
            f"chain broken: the previous bundle {link['uri']} is {previous.bundle_id}, "
            f"but this bundle was signed after {link['bundle_id']} (replaced?)"
        ]
    return []
