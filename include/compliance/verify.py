"""Offline verification of a compliance bundle (local folder or s3:// URI).

Everything is recomputed locally from the downloaded bytes: the server (moto does not validate
checksums) is never trusted for integrity. Checks, each reported with a precise message:

* the DSSE envelope verifies with the given public key and carries an in-toto Statement v1 with the
  expected predicate type;
* the statement's subjects are exactly the manifest's files plus manifest.json, with equal digests,
  and its predicate equals the manifest's run dict;
* every listed file exists as a regular file with the listed size and sha256; no unlisted file exists;
* the bundle_id recomputes from the file list; every path is safe.

An ``s3://`` bundle is verified where it lies: every object is hashed while it streams in, several
objects at a time and large ones as parallel ranged GETs, with no temporary files. ``chain=True`` walks
the model's hash chain back to its first bundle and verifies every bundle on the way.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
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
    FileEntry,
    Manifest,
    compute_bundle_id,
    path_problem,
    sha256_file,
    short,
)
from include.compliance.errors import ManifestError, UnsafePathError

if TYPE_CHECKING:
    from securesystemslib.signer import SSlibKey

    from include.compliance.keys import Keyring, TrustedKey


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
    # With chain=True: one entry per bundle walked, this one first ({uri, bundle_id, created_at, ok}).
    chain: list[dict[str, Any]] = field(default_factory=list)
    chain_complete: bool = True  # False when max_depth stopped the walk before the first bundle

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
            "chain": self.chain,
            "chain_complete": self.chain_complete,
        }

    def summary(self) -> str:
        head = "OK" if self.ok else f"FAILED ({len(self.problems)} problem(s))"
        lines = [
            f"{head}: {self.source}",
            f"  bundle {self.bundle_id}, {self.files_checked} files, {self.bytes_checked} bytes checked,"
            f" key {self.key_id}",
        ]
        if self.chain:
            walked = "back to the first bundle" if self.chain_complete else "stopped at the depth limit"
            lines.append(f"  chain: {len(self.chain)} bundle(s) walked, {walked}")
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
    statement_raw: bytes, keyring: Keyring | None, problems: list[str], signed_by: list[str]
) -> tuple[dict[str, Any] | None, TrustedKey | None]:
    """Verify the envelope with the trusted key it names; return the decoded statement (even when the
    signature fails, for more checks) and the key that verified it."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import FormatError, VerificationError

    try:
        envelope = Envelope.from_dict(json.loads(statement_raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, FormatError) as exc:
        problems.append(f"{STATEMENT_NAME}: not a valid DSSE envelope ({type(exc).__name__}: {exc})")
        return None, None
    signed_by.extend(sorted(envelope.signatures))
    if envelope.payload_type != PAYLOAD_TYPE:
        problems.append(
            f"{STATEMENT_NAME}: payloadType {envelope.payload_type!r} (expected {PAYLOAD_TYPE!r})"
        )
    verified_by: TrustedKey | None = None
    if keyring is not None:
        # Only the keys the envelope names are tried: a bundle is verified by its own signer's key.
        named = [trusted for trusted in map(keyring.get, signed_by) if trusted is not None]
        try:
            accepted = envelope.verify([trusted.key for trusted in named], 1) if named else {}
        except VerificationError:
            accepted = {}
        verified_by = next((trusted for trusted in named if trusted.keyid in accepted), None)
        if verified_by is None:
            tried = [trusted.keyid for trusted in named] or keyring.keyids
            others = [keyid for keyid in signed_by if keyid not in tried]
            detail = f" (envelope signed by key {', '.join(others)})" if others else ""
            if len(tried) == 1:
                problems.append(f"signature does not verify with key {tried[0]}{detail}")
            else:
                problems.append(
                    f"signature does not verify with any trusted key ({', '.join(tried)}){detail}"
                )
    try:
        statement = json.loads(envelope.payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{STATEMENT_NAME}: payload is not JSON ({exc})")
        return None, verified_by
    if not isinstance(statement, dict):
        problems.append(f"{STATEMENT_NAME}: payload is not a JSON object")
        return None, verified_by
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"statement _type {statement.get('_type')!r} (expected {STATEMENT_TYPE!r})")
    if statement.get("predicateType") != PREDICATE_TYPE:
        problems.append(
            f"statement predicateType {statement.get('predicateType')!r} (expected {PREDICATE_TYPE!r})"
        )
    return statement, verified_by


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


def _as_keyring(key: SSlibKey | Keyring | None) -> Keyring | None:
    from include.compliance.keys import Keyring, TrustedKey

    if key is None or isinstance(key, Keyring):
        return key
    return Keyring((TrustedKey(key, "the given public key"),))


def _check_signed_manifest(
    manifest_raw: bytes | None,
    statement_raw: bytes | None,
    keyring: Keyring | None,
    report: VerificationReport,
) -> Manifest | None:
    """Signature, statement and manifest checks shared by folder and S3 verification."""
    problems = report.problems
    statement, verified_by = (
        _check_signature(statement_raw, keyring, problems, report.signed_by)
        if statement_raw is not None
        else (None, None)
    )
    if verified_by is not None:
        report.key_id = verified_by.keyid
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
        _check_config_digest(manifest, problems)
        if verified_by is not None:
            # created_at is inside the signed manifest, so the key's period is judged on signed data.
            period = verified_by.period_problem(manifest.created_at_datetime)
            if period is not None:
                problems.append(period)
    return manifest


def _check_config_digest(manifest: Manifest, problems: list[str]) -> None:
    """The bundled ``config.yaml`` must be the config the run recorded (``run.config_sha256``, signed):
    the run stages its config by digest and every stage reads that copy."""
    signed = manifest.run.get("config_sha256")
    entry = next((f for f in manifest.files if f.path == "config.yaml"), None)
    if signed and entry is not None and entry.sha256 != signed:
        problems.append(f"config.yaml: sha256 {entry.sha256} is not the run's signed config digest {signed}")


def verify_directory(root: Path, key: SSlibKey | Keyring | None) -> VerificationReport:
    """Verify a local bundle folder with a key or a keyring of trusted keys; ``key=None`` skips only
    the signature check (used before publishing)."""
    root = Path(root)
    keyring = _as_keyring(key)
    report = VerificationReport(
        ok=False,
        problems=[],
        bundle_id=None,
        files_checked=0,
        bytes_checked=0,
        source=str(root),
    )
    if not root.is_dir():
        report.problems.append(f"{root}: not a directory")
        return report
    root = root.resolve()
    manifest_raw = _read_regular(root / MANIFEST_NAME, MANIFEST_NAME, report.problems)
    statement_raw = _read_regular(root / STATEMENT_NAME, STATEMENT_NAME, report.problems)
    manifest = _check_signed_manifest(manifest_raw, statement_raw, keyring, report)
    if manifest is not None:
        report.files_checked, report.bytes_checked = _check_files(root, manifest, report.problems)
    report.ok = not report.problems
    return report


# --------------------------------------------------------------------------- S3, streamed

# Objects up to this size are read with one streaming GET; larger ones with ranged GETs in parallel.
# On moto a ranged GET costs about as much as reading the whole object, so the threshold is high;
# on S3 one connection tops out far below the link speed and parts pay off for large objects.
RANGE_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
VERIFY_WORKERS = 8
_CHUNK = 1024 * 1024


@dataclass
class _Hashed:
    size: int
    sha256: str


def _stream_sha256(s3_client: Any, bucket: str, key: str) -> _Hashed | None:
    """sha256 of one object, hashed while it downloads (no temp file); None when the object is absent."""
    from botocore.exceptions import ClientError

    from include.compliance.store import _is_not_found

    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in iter(lambda: body.read(_CHUNK), b""):
            digest.update(chunk)  # hashlib releases the GIL: several objects hash in parallel
            size += len(chunk)
    finally:
        body.close()
    return _Hashed(size, digest.hexdigest())


def _ranged_sha256(
    s3_client: Any, bucket: str, key: str, parts: ThreadPoolExecutor, part_size: int, window: int
) -> _Hashed | None:
    """sha256 of a large object from ranged GETs fetched in parallel and hashed in order.

    At most ``window`` parts are in memory at a time. The object's real size comes from the first
    response's Content-Range (the manifest's size is untrusted and only chose this path).
    """
    from botocore.exceptions import ClientError

    from include.compliance.store import _is_not_found

    def fetch(offset: int) -> bytes:
        response = s3_client.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + part_size - 1}"
        )
        return bytes(response["Body"].read())

    try:
        first = s3_client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{part_size - 1}")
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        if _error_code(exc) == "InvalidRange":  # an empty object has no byte 0
            return _stream_sha256(s3_client, bucket, key)
        raise
    data = bytes(first["Body"].read())
    total = int(str(first.get("ContentRange", "")).rpartition("/")[2] or len(data))
    digest = hashlib.sha256(data)
    offsets = iter(range(part_size, total, part_size))
    pending: list[Future[bytes]] = []
    for offset in offsets:
        pending.append(parts.submit(fetch, offset))
        if len(pending) >= window:
            break
    size = len(data)
    while pending:
        chunk = pending.pop(0).result()
        digest.update(chunk)
        size += len(chunk)
        following = next(offsets, None)
        if following is not None:
            pending.append(parts.submit(fetch, following))
    return _Hashed(size, digest.hexdigest())


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _check_s3_files(
    s3_client: Any,
    bucket: str,
    prefix: str,
    manifest: Manifest,
    problems: list[str],
    *,
    workers: int,
    range_threshold: int,
    part_size: int,
) -> tuple[int, int]:
    """Hash every listed object concurrently, straight from S3. Same messages as :func:`_check_files`."""
    entries = []
    listed: set[str] = set()
    for entry in manifest.files:
        if entry.path in listed:
            problems.append(f"duplicate path in manifest: {entry.path}")
            continue
        listed.add(entry.path)
        entries.append(entry)
    # Largest first, so the big transfers overlap with the many small ones.
    order = sorted(entries, key=lambda e: e.size, reverse=True)
    with ThreadPoolExecutor(max_workers=workers) as files, ThreadPoolExecutor(max_workers=workers) as parts:

        def hash_one(entry: FileEntry) -> _Hashed | None:
            key = f"{prefix}/{entry.path}"
            if entry.size > range_threshold:
                return _ranged_sha256(s3_client, bucket, key, parts, part_size, window=workers)
            return _stream_sha256(s3_client, bucket, key)

        futures = {entry.path: files.submit(hash_one, entry) for entry in order}
        results = {path: future.result() for path, future in futures.items()}
    files_checked = bytes_checked = 0
    for entry in entries:  # report in manifest order, as the folder check does
        got = results[entry.path]
        if got is None:
            problems.append(f"{entry.path}: missing (listed in manifest)")
            continue
        files_checked += 1
        bytes_checked += got.size
        if got.size != entry.size:
            problems.append(
                f"{entry.path}: size mismatch (manifest {entry.size} bytes, file {got.size} bytes)"
            )
        elif got.sha256 != entry.sha256:
            problems.append(
                f"{entry.path}: sha256 mismatch (manifest {short(entry.sha256)}, file {short(got.sha256)})"
            )
    return files_checked, bytes_checked


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


def _verify_s3(
    s3_client: Any,
    uri: str,
    keyring: Keyring,
    *,
    workers: int = VERIFY_WORKERS,
    range_threshold: int = RANGE_THRESHOLD,
    part_size: int = PART_SIZE,
) -> tuple[VerificationReport, Manifest | None]:
    """Verify an ``s3://`` bundle without writing it to disk: objects are hashed as they stream in."""
    from include.compliance.store import _get_bytes, _safe_targets, parse_s3_uri

    report = VerificationReport(False, [], None, 0, 0, None, uri)
    bucket, prefix = parse_s3_uri(uri)
    if not prefix:
        raise ValueError(f"{uri}: a bundle URI needs a prefix")
    statement_raw = _get_bytes(s3_client, bucket, f"{prefix}/{STATEMENT_NAME}")
    if statement_raw is None:
        report.problems.append(f"{uri}: no {STATEMENT_NAME}; the bundle is incomplete or absent")
        return report, None
    manifest_raw = _get_bytes(s3_client, bucket, f"{prefix}/{MANIFEST_NAME}")
    if manifest_raw is None:
        report.problems.append(f"{uri}: {STATEMENT_NAME} present but {MANIFEST_NAME} missing")
        return report, None
    try:
        parsed = Manifest.from_bytes(manifest_raw)
        # The same refusal as a download: a manifest naming unsafe paths is not looked at further.
        _safe_targets(None, parsed)
    except ManifestError as exc:
        report.problems.append(str(exc))
        return report, None
    except UnsafePathError as exc:
        report.problems.extend(exc.problems)
        return report, None
    manifest = _check_signed_manifest(manifest_raw, statement_raw, keyring, report)
    if manifest is not None and manifest.location is not None and not same_location(manifest.location, uri):
        report.problems.append(
            f"{uri}: this bundle was signed for {manifest.location}; a copy found anywhere else is not it"
        )
    if manifest is not None:
        report.files_checked, report.bytes_checked = _check_s3_files(
            s3_client,
            bucket,
            prefix,
            manifest,
            report.problems,
            workers=workers,
            range_threshold=range_threshold,
            part_size=part_size,
        )
        for extra in _extra_s3_objects(s3_client, bucket, prefix, manifest):
            report.problems.append(f"extra object in S3 not in manifest: s3://{bucket}/{extra}")
    report.ok = not report.problems
    return report, manifest


# --------------------------------------------------------------------------- the hash chain


def _model_of(manifest: Manifest) -> str | None:
    value = manifest.run.get("model", manifest.run.get("model_name"))
    return str(value) if value is not None else None


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
    if previous.location is not None and not same_location(previous.location, link["uri"]):
        return [
            f"chain broken: the previous bundle at {link['uri']} was signed for {previous.location} (a copy)"
        ]
    return []


def same_location(signed: str, found: str) -> bool:
    """Whether two ``s3://bucket/prefix`` URIs name the same bundle (trailing slashes aside)."""
    from include.compliance.store import parse_s3_uri

    try:
        return parse_s3_uri(signed) == parse_s3_uri(found)
    except ValueError:
        return False


def _walk_chain(
    s3_client: Any,
    head: Manifest,
    head_source: str,
    keyring: Keyring,
    report: VerificationReport,
    *,
    max_depth: int | None,
    **s3_options: Any,
) -> None:
    """Verify every predecessor of ``head`` back to the model's first bundle.

    Each predecessor gets the full check (signature, every digest, missing/extra objects) and each link
    is checked: the predecessor must exist, be the bundle the successor recorded (content address), be
    older than its successor and belong to the same model. A problem names the bundle it was found in.
    The walk stops where the chain is broken (a missing bundle has no further link to follow).
    """
    from include.compliance.store import parse_s3_uri

    model = _model_of(head)
    seen = {head_source.rstrip("/")}
    current, current_source = head, head_source
    report.chain.append(
        {
            "uri": head_source,
            "bundle_id": head.bundle_id,
            "created_at": head.created_at,
            "key_id": report.key_id,
            "ok": not report.problems,
        }
    )
    depth = 0
    while current.previous_bundle:
        if max_depth is not None and depth >= max_depth:
            report.chain_complete = False
            return
        depth += 1
        link = current.previous_bundle
        uri = link["uri"]
        where = f"chain link {depth} ({current_source} -> {uri})"
        try:
            parse_s3_uri(uri)
        except ValueError:
            report.problems.append(f"{where}: previous_bundle {uri!r} is not an s3:// URI")
            return
        if uri.rstrip("/") in seen:
            report.problems.append(f"{where}: the chain loops back to a bundle already walked")
            return
        seen.add(uri.rstrip("/"))
        previous_report, previous = _verify_s3(s3_client, uri, keyring, **s3_options)
        report.chain.append(
            {
                "uri": uri,
                "bundle_id": previous_report.bundle_id,
                "created_at": previous.created_at if previous else None,
                "key_id": previous_report.key_id,
                "ok": previous_report.ok,
            }
        )
        report.files_checked += previous_report.files_checked
        report.bytes_checked += previous_report.bytes_checked
        if previous is None:
            # Nothing readable there: the bundle was deleted (or never completed).
            detail = "; ".join(previous_report.problems)
            report.problems.append(
                f"chain broken at {where}: the previous bundle is missing or incomplete ({detail})"
            )
            return
        report.problems.extend(f"{uri}: {problem}" for problem in previous_report.problems)
        if previous.bundle_id != link["bundle_id"]:
            report.problems.append(
                f"chain broken at {where}: the previous bundle is {previous.bundle_id}, but "
                f"{current_source} was signed after {link['bundle_id']} (replaced?)"
            )
        if previous.created_at_datetime >= current.created_at_datetime:
            report.problems.append(
                f"chain out of order at {where}: the previous bundle was created {previous.created_at}, "
                f"not before its successor ({current.created_at})"
            )
        if _model_of(previous) != model:
            report.problems.append(
                f"chain mixes models at {where}: the previous bundle is of model {_model_of(previous)!r}, "
                f"the chain's is {model!r}"
            )
        current, current_source = previous, uri


# --------------------------------------------------------------------------- entry point


def verify_bundle(
    path_or_uri: str | Path,
    *,
    public_key_pem: bytes | str | None = None,
    keyring: Keyring | None = None,
    s3_client: Any | None = None,
    chain: bool = False,
    max_depth: int | None = None,
    workers: int = VERIFY_WORKERS,
    range_threshold: int = RANGE_THRESHOLD,
    part_size: int = PART_SIZE,
) -> VerificationReport:
    """Verify a bundle folder or an ``s3://bucket/prefix/`` bundle against a public key PEM, or against
    a ``keyring`` of trusted keys (:func:`include.compliance.keys.load_keyring`): after key rotations a
    chain holds bundles signed by several keys, and each is verified with the one it names, within that
    key's trusted period. ``report.key_id`` (and each chain entry's ``key_id``) is the verifying key.

    An ``s3://`` bundle is verified in place: objects are hashed as they download, several at a time,
    large ones as parallel ranged GETs; nothing is written to disk. Its direct chain link (the previous
    bundle exists and is the one recorded) is always checked. With ``chain=True`` every predecessor is
    verified too, back to the model's first bundle (or ``max_depth`` links); this needs ``s3_client``
    also for a local folder, whose link points into S3.
    """
    from include.compliance.keys import Keyring

    if (public_key_pem is None) == (keyring is None):
        raise ValueError("verify_bundle needs exactly one of public_key_pem and keyring")
    key = keyring if keyring is not None else Keyring.of(public_key_pem or b"")
    source = str(path_or_uri)
    s3_options = {"workers": workers, "range_threshold": range_threshold, "part_size": part_size}
    if source.startswith("s3://"):
        if s3_client is None:
            raise ValueError("verifying an s3:// bundle needs s3_client")
        report, manifest = _verify_s3(s3_client, source, key, **s3_options)
    else:
        report = verify_directory(Path(source), key)
        manifest = None
        if chain:
            try:
                manifest = Manifest.from_bytes((Path(source) / MANIFEST_NAME).read_bytes())
            except (OSError, ManifestError):
                manifest = None
    if manifest is not None and chain:
        if s3_client is None:
            report.problems.append("chain: walking the chain needs access to S3 (no client given)")
        else:
            _walk_chain(s3_client, manifest, source, key, report, max_depth=max_depth, **s3_options)
    elif manifest is not None and source.startswith("s3://"):
        report.problems.extend(_chain_problems(s3_client, manifest))
    report.ok = not report.problems
    return report
