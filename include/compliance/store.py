"""Publishing bundles to S3 and reading them back (list, download).

Publish protocol (one bundle per prefix, create-only, retry-safe):

1. ``_keys/<key_id>.pub.pem`` (when the public key is given) and ``<prefix>/_claim.json``
   (``{bundle_id, manifest_sha256}``): the claim reserves the prefix before any payload byte is
   written, so a different bundle fails up front instead of leaving stray files behind;
2. every payload file, then ``manifest.json``, then ``statement.dsse.json`` LAST: the statement's
   presence is what marks a bundle complete for :func:`list_bundles` and :func:`download_bundle`.

Every object is written create-only (``If-None-Match: *``) with ``ChecksumAlgorithm="SHA256"``, and
carries ``x-amz-meta-sha256``. When a key already exists (a retry after a partial publish, or a 412 from a
racing writer) its digest is compared: identical content is accepted, anything else raises
:class:`BundleConflictError` and nothing is overwritten.

Upload mechanics: boto3's managed transfer (:func:`boto3.s3.transfer.create_transfer_manager` with a
:class:`~boto3.s3.transfer.TransferConfig`) does the PUTs: one manager per publish schedules every object
(largest first) on ``max_workers`` threads and switches to multipart at ``multipart_threshold``. Checksums,
metadata, content type, Object Lock and SSE-KMS go in as ``ExtraArgs``. ``IfNoneMatch`` cannot: s3transfer
0.19's ``ALLOWED_UPLOAD_ARGS`` lacks it (boto/boto3#4366; boto/s3transfer#371 is still open), so
:class:`_CreateOnlyGuard` adds it through botocore's event system to exactly the ``PutObject`` and
``CompleteMultipartUpload`` requests of the keys this publish is writing (S3 and moto 5.2 honour it on
both), and every upload is checked afterwards to have carried it. Downloads use ``download_file``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mimetypes
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.compliance.bundle import (
    CLAIM_NAME,
    MANIFEST_NAME,
    STATEMENT_NAME,
    Manifest,
    canonical_json,
    path_problem,
    short,
)
from include.compliance.errors import (
    BundleConflictError,
    BundleError,
    IncompleteBundleError,
    ManifestError,
    OversizedObjectError,
    UnsafePathError,
)

KEYS_PREFIX = "_keys"
META_SHA256 = "sha256"
# Single PUT below this size: keeps uploads replayable by moto's recorder and avoids multipart overhead.
DEFAULT_MULTIPART_THRESHOLD = 256 * 1024 * 1024
DEFAULT_PART_SIZE = 32 * 1024 * 1024
DEFAULT_WORKERS = 4


# --------------------------------------------------------------------------- helpers


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> (``bucket``, ``a/b``)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri}")
    return bucket, prefix.strip("/")


def bundle_uri(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}/"


def _normalise_prefix(prefix: str) -> str:
    cleaned = prefix.strip("/")
    problem = path_problem(cleaned) if cleaned else "empty prefix"
    if problem is None and (
        cleaned.split("/")[0] == KEYS_PREFIX
        or cleaned.split("/")[-1] in (MANIFEST_NAME, STATEMENT_NAME, CLAIM_NAME)
    ):
        problem = "reserved name"
    if problem is not None:
        raise ValueError(f"bad bundle prefix {prefix!r}: {problem}")
    return cleaned


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_not_found(exc: Exception) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") or _status(exc) == 404


def _is_precondition_failed(exc: Exception) -> bool:
    return _error_code(exc) in ("PreconditionFailed", "412") or _status(exc) == 412


def _head(s3_client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return dict(s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise


# The largest manifest, statement, claim or key file a reader takes whole: a real manifest lists
# ~120 bytes per file, so this is a bundle of ~250,000 files.
METADATA_MAX_BYTES = 32 << 20


def _get_bytes(s3_client: Any, bucket: str, key: str, limit: int | None = None) -> bytes | None:
    """The whole object, None when absent; over ``limit`` bytes (default METADATA_MAX_BYTES) raises
    OversizedObjectError unread."""
    from botocore.exceptions import ClientError

    limit = METADATA_MAX_BYTES if limit is None else limit
    try:
        answer = s3_client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise
    body = answer["Body"]
    try:
        if int(answer.get("ContentLength") or 0) > limit:
            raise OversizedObjectError(
                f"s3://{bucket}/{key}: {answer['ContentLength']} bytes, over the {limit}-byte limit"
            )
        data = bytes(body.read(limit + 1))
    finally:
        body.close()
    if len(data) > limit:
        raise OversizedObjectError(f"s3://{bucket}/{key}: over the {limit}-byte limit")
    return data


def _remote_sha256(s3_client: Any, bucket: str, key: str) -> str:
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _same_object(s3_client: Any, bucket: str, key: str, head: dict[str, Any], size: int, sha256: str) -> bool:
    """Does the existing object hold exactly these bytes?

    Trusts our own ``x-amz-meta-sha256`` plus the size; when S3 reports a full-object ChecksumSHA256 it
    must agree too (on real S3 that value is server-validated). Without our metadata, read it back.
    """
    if int(head.get("ContentLength", -1)) != size:
        return False
    stored = head.get("Metadata", {}).get(META_SHA256)
    if stored is None:
        return _remote_sha256(s3_client, bucket, key) == sha256
    if stored != sha256:
        return False
    checksum = head.get("ChecksumSHA256")
    # Multipart objects carry a checksum of part checksums (ETag "md5-N", ChecksumType COMPOSITE; moto
    # omits the type), which cannot be compared with a whole-file digest.
    multipart = "-" in str(head.get("ETag", "")) or "-" in str(checksum or "")
    full_object = head.get("ChecksumType", "COMPOSITE" if multipart else "FULL_OBJECT") == "FULL_OBJECT"
    if checksum and full_object:
        return bool(checksum == base64.b64encode(bytes.fromhex(sha256)).decode("ascii"))
    return True


@dataclass
class _Upload:
    key: str
    size: int
    sha256: str
    source: Path | bytes
    content_type: str = "application/octet-stream"
    # Applied on the PUT itself: Object Lock retention (ObjectLockMode, ObjectLockRetainUntilDate)
    # and server-side encryption (ServerSideEncryption, SSEKMSKeyId).
    lock: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PublishStats:
    """What one publish call did (exposed for logging and the throughput figures)."""

    uploaded: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0


def _content_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


class _CreateOnlyGuard:
    """Adds ``IfNoneMatch="*"`` to the PutObject / CompleteMultipartUpload requests of armed keys.

    The transfer manager refuses ``IfNoneMatch`` in ``ExtraArgs`` but sends its requests through the
    client's event system, so a ``before-parameter-build`` handler can set the parameter (it is then
    serialised and signed like any other). Scoped three ways: registered only for the ``with`` block (under
    unique ids, so two publishes on one client never clash), acting only on ``bucket`` and on the keys
    :meth:`arm`-ed for the upload in flight, and on those two operations only. A ``before-sign`` handler
    then confirms that the request about to be sent really carries ``If-None-Match: *`` (a later handler
    could drop the parameter, a botocore without it in the model would not serialise it):
    :meth:`disarm` reports that, so an unconfirmed write is never counted as create-only. The handlers run
    on the manager's worker threads, hence the lock.
    """

    OPERATIONS = ("PutObject", "CompleteMultipartUpload")
    _CONTEXT_KEY = "xac_create_only_key"

    def __init__(self, s3_client: Any, bucket: str) -> None:
        self._events = s3_client.meta.events
        self._bucket = bucket
        self._lock = threading.Lock()
        self._armed: set[str] = set()
        self._confirmed: set[str] = set()
        self._unique_id = f"xac-create-only-{uuid.uuid4().hex}"
        self._handlers = [
            (f"{stage}.s3.{operation}", handler)
            for operation in self.OPERATIONS
            for stage, handler in (("before-parameter-build", self._stamp), ("before-sign", self._confirm))
        ]

    def __enter__(self) -> _CreateOnlyGuard:
        for event, handler in self._handlers:
            self._events.register(event, handler, unique_id=f"{self._unique_id}:{event}")
        return self

    def __exit__(self, *_: object) -> None:
        for event, _handler in self._handlers:
            self._events.unregister(event, unique_id=f"{self._unique_id}:{event}")

    def arm(self, key: str) -> None:
        with self._lock:
            self._armed.add(key)
            self._confirmed.discard(key)

    def disarm(self, key: str) -> bool:
        """Stop guarding ``key``; True when a signed request for it carried ``If-None-Match: *``."""
        with self._lock:
            self._armed.discard(key)
            confirmed = key in self._confirmed
            self._confirmed.discard(key)
            return confirmed

    def _stamp(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if params.get("Bucket") != self._bucket:
            return
        key = params.get("Key")
        with self._lock:
            if key in self._armed:
                params["IfNoneMatch"] = "*"
                # The per-call context travels with the request to signing: it names the key there and
                # which guard armed it (two publishes of one bundle on one client may both guard it).
                context.setdefault(self._CONTEXT_KEY, []).append((self._unique_id, key))

    def _confirm(self, request: Any, **_: Any) -> None:
        marks = getattr(request, "context", {}).get(self._CONTEXT_KEY, [])
        keys = [key for guard_id, key in marks if guard_id == self._unique_id]
        if keys and request.headers.get("If-None-Match") == "*":
            with self._lock:
                self._confirmed.update(keys)


def _extra_args(item: _Upload, multipart_threshold: int) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "ChecksumAlgorithm": "SHA256",
        "Metadata": {META_SHA256: item.sha256},
        "ContentType": item.content_type,
        **item.lock,
    }
    # s3transfer goes multipart at size >= threshold. For a single PUT, sending the digest we already
    # computed lets S3 reject a corrupted upload without botocore re-hashing the file. Not for multipart:
    # s3transfer would turn it into a FULL_OBJECT checksum, which S3 allows for CRC algorithms only; there
    # botocore checksums every part with SHA-256 and the object gets a composite checksum.
    if item.size < multipart_threshold:
        extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(item.sha256)).decode("ascii")
    return extra


def _check_existing(
    s3_client: Any, bucket: str, item: _Upload, head: dict[str, Any], stats: PublishStats
) -> None:
    """An object already sits at ``item.key``: accept it if it holds our bytes, else BundleConflictError."""
    if not _same_object(s3_client, bucket, item.key, head, item.size, item.sha256):
        stored = head.get("Metadata", {}).get(META_SHA256, "?")
        raise BundleConflictError(
            f"s3://{bucket}/{item.key} already exists with different content (stored sha256 "
            f"{short(stored)}, size {head.get('ContentLength')}; "
            f"ours {short(item.sha256)}, size {item.size}); refusing to overwrite"
        )
    stats.already_present.append(item.key)


def _upload_create_only(
    s3_client: Any,
    bucket: str,
    items: list[_Upload],
    stats: PublishStats,
    *,
    manager: Any,
    guard: _CreateOnlyGuard,
    multipart_threshold: int,
    workers: int,
) -> None:
    """Write every item that is not there yet, in the given order; identical existing objects count as done.

    A HEAD per key first, so a retry does not send gigabytes only to be told 412 (on multipart that comes
    after the last part). Every upload runs to its end before the first error is raised, so a caller that
    sees success knows all of ``items`` are in place.
    """
    from botocore.exceptions import ClientError

    if len(items) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            heads = list(pool.map(lambda item: _head(s3_client, bucket, item.key), items))
    else:
        heads = [_head(s3_client, bucket, item.key) for item in items]
    for item, head in zip(items, heads, strict=True):
        if head is not None:
            # A different object in the way is a conflict before any byte is sent.
            _check_existing(s3_client, bucket, item, head, stats)

    pending = []
    for item, head in zip(items, heads, strict=True):
        if head is not None:
            continue
        guard.arm(item.key)
        source = str(item.source) if isinstance(item.source, Path) else io.BytesIO(item.source)
        future = manager.upload(source, bucket, item.key, extra_args=_extra_args(item, multipart_threshold))
        pending.append((item, future))

    errors: list[BaseException] = []
    for item, future in pending:
        try:
            try:
                future.result()
            finally:
                carried = guard.disarm(item.key)
        except ClientError as exc:
            if not _is_precondition_failed(exc):
                errors.append(exc)
                continue
            # Someone wrote the key between our HEAD and PUT: judge what they wrote.
            raced = _head(s3_client, bucket, item.key)
            if raced is None:
                errors.append(exc)
                continue
            try:
                _check_existing(s3_client, bucket, item, raced, stats)
            except BundleConflictError as conflict:
                errors.append(conflict)
            continue
        except Exception as exc:  # re-raised below, once every upload has ended
            errors.append(exc)
            continue
        if not carried:
            # The write happened without the precondition (a handler on this client removed it, or the
            # guard's handlers were bypassed): it may have replaced an object, so it is not "done".
            errors.append(
                BundleError(f"s3://{bucket}/{item.key} was written without If-None-Match; not create-only")
            )
            continue
        stats.uploaded.append(item.key)
        stats.bytes_uploaded += item.size
    if errors:
        raise errors[0]


def ensure_bucket(s3_client: Any, bucket: str) -> None:
    """Create ``bucket`` unless it exists (idempotent, safe against a concurrent creator)."""
    from botocore.exceptions import ClientError

    try:
        s3_client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if not _is_not_found(exc):
            raise
    region = s3_client.meta.region_name
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3_client.create_bucket(**kwargs)
    except ClientError as exc:
        if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        # "AlreadyExists" may mean someone else's bucket: only proceed if we can actually use it.
        s3_client.head_bucket(Bucket=bucket)


# --------------------------------------------------------------------------- publish


def _transfer_manager(
    s3_client: Any,
    *,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    part_size: int = DEFAULT_PART_SIZE,
    max_workers: int = DEFAULT_WORKERS,
) -> Any:
    """boto3's managed transfer for ``s3_client`` (a context manager; leaving it waits for or cancels work).

    Always the classic s3transfer manager, never the CRT one ``"auto"`` may pick on some instance types:
    the CRT client sends requests itself, where the create-only event handler would never see them.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(
        multipart_threshold=multipart_threshold,
        multipart_chunksize=part_size,
        max_concurrency=max_workers,
        use_threads=True,
        preferred_transfer_client="classic",
    )
    return create_transfer_manager(s3_client, config)


def publish_bundle(
    staging_dir: Path,
    *,
    s3_client: Any,
    bucket: str,
    prefix: str,
    public_key_pem: bytes | None = None,
    object_lock: Mapping[str, Any] | None = None,
    sse_kms_key_id: str | None = None,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    part_size: int = DEFAULT_PART_SIZE,
    max_workers: int = DEFAULT_WORKERS,
    stats: PublishStats | None = None,
) -> str:
    """Upload a built bundle to ``s3://bucket/prefix/`` and return that URI.

    The staging folder is re-verified first (files unchanged since :func:`build_bundle`; signature valid
    when ``public_key_pem`` is given, which is then also published at ``_keys/<key_id>.pub.pem``).
    Safe to call again after a failure part-way; fails with BundleConflictError, without overwriting
    anything, when the prefix holds (or is claimed by) a different bundle. ``object_lock`` (from
    :func:`include.compliance.retention.object_lock_settings`) is applied to every object of the bundle,
    and so is SSE-KMS encryption with ``sse_kms_key_id`` when one is given.
    """
    from include.compliance.keys import load_public_key
    from include.compliance.verify import verify_directory

    root = Path(staging_dir).resolve()
    prefix = _normalise_prefix(prefix)
    key = load_public_key(public_key_pem) if public_key_pem is not None else None
    report = verify_directory(root, key)
    if not report.ok:
        raise BundleError(f"refusing to publish {root}: " + "; ".join(report.problems))
    manifest = Manifest.from_bytes((root / MANIFEST_NAME).read_bytes())
    statement_raw = (root / STATEMENT_NAME).read_bytes()
    manifest_sha256 = hashlib.sha256(manifest.raw).hexdigest()
    stats = stats if stats is not None else PublishStats()

    lock = dict(object_lock or {})
    if sse_kms_key_id:
        lock |= {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": sse_kms_key_id}

    def small(key_name: str, data: bytes, content_type: str) -> _Upload:
        return _Upload(key_name, len(data), hashlib.sha256(data).hexdigest(), data, content_type, lock)

    payload = [
        _Upload(
            f"{prefix}/{entry.path}",
            entry.size,
            entry.sha256,
            root / entry.path,
            _content_type(entry.path),
            lock,
        )
        for entry in manifest.files
    ]
    # Largest first so the big transfers overlap with the many small ones.
    payload.sort(key=lambda item: item.size, reverse=True)
    claim = canonical_json({"bundle_id": manifest.bundle_id, "manifest_sha256": manifest_sha256})

    ensure_bucket(s3_client, bucket)
    with (
        _transfer_manager(
            s3_client, multipart_threshold=multipart_threshold, part_size=part_size, max_workers=max_workers
        ) as manager,
        _CreateOnlyGuard(s3_client, bucket) as guard,
    ):

        def upload(*items: _Upload) -> None:
            _upload_create_only(
                s3_client,
                bucket,
                list(items),
                stats,
                manager=manager,
                guard=guard,
                multipart_threshold=multipart_threshold,
                workers=max_workers,
            )

        if key is not None:
            pem = bytes(public_key_pem or b"")
            upload(small(f"{KEYS_PREFIX}/{key.keyid}.pub.pem", pem, "application/x-pem-file"))
        try:
            upload(small(f"{prefix}/{CLAIM_NAME}", claim, "application/json"))
        except BundleConflictError as exc:
            other = _get_bytes(s3_client, bucket, f"{prefix}/{CLAIM_NAME}") or b"{}"
            try:
                other_id = json.loads(other).get("bundle_id")
            except ValueError:
                other_id = None
            raise BundleConflictError(
                f"{bundle_uri(bucket, prefix)} already holds a different bundle ({other_id}); "
                f"not publishing {manifest.bundle_id} there"
            ) from exc
        upload(*payload)
        # Payload first, manifest next, statement last: only a fully uploaded bundle ever looks complete.
        upload(small(f"{prefix}/{MANIFEST_NAME}", manifest.raw, "application/json"))
        upload(small(f"{prefix}/{STATEMENT_NAME}", statement_raw, "application/json"))
    return bundle_uri(bucket, prefix)


@dataclass(frozen=True)
class PublicationState:
    """What an earlier publish attempt left under a bundle prefix (nothing, a claim, or all of it)."""

    claim: dict[str, Any] | None  # {"bundle_id", "manifest_sha256"} of the bundle that owns the prefix
    complete: bool  # manifest and statement present: a reader sees a finished bundle
    manifest: Manifest | None  # the published manifest when complete (unverified: verify to trust it)

    def owned_by(self, staging_dir: Path) -> bool:
        """True when the prefix is claimed by exactly the bundle built in ``staging_dir``."""
        manifest_path = Path(staging_dir) / MANIFEST_NAME
        if self.claim is None or not manifest_path.is_file():
            return False
        raw = manifest_path.read_bytes()
        return self.claim.get("manifest_sha256") == hashlib.sha256(raw).hexdigest()


def publication_state(s3_client: Any, bucket: str, prefix: str) -> PublicationState:
    """Read the claim / manifest / statement under ``prefix``: how far an earlier publish got.

    A task that retries its publish uses this to finish (or keep) the bundle its earlier attempt
    started instead of building a second one: create-only writes would refuse a different bundle.
    """
    prefix = _normalise_prefix(prefix)
    raw_claim = _get_bytes(s3_client, bucket, f"{prefix}/{CLAIM_NAME}")
    try:
        claim = json.loads(raw_claim) if raw_claim else None
    except ValueError:
        claim = {"bundle_id": None, "manifest_sha256": None}
    raw_manifest = _get_bytes(s3_client, bucket, f"{prefix}/{MANIFEST_NAME}")
    complete = raw_manifest is not None and _head(s3_client, bucket, f"{prefix}/{STATEMENT_NAME}") is not None
    manifest = None
    if complete and raw_manifest is not None:
        try:
            manifest = Manifest.from_bytes(raw_manifest)
        except Exception:  # an unreadable manifest is reported by verify, not here
            manifest = None
    return PublicationState(claim=claim, complete=complete, manifest=manifest)


# --------------------------------------------------------------------------- list


@dataclass
class BundleSummary:
    """One bundle found under a bucket/prefix. Fields come from the (unverified) manifest."""

    uri: str
    complete: bool
    bundle_id: str | None
    created_at: datetime | None
    model: str | None
    version: str | None
    run_id: str | None
    dag_id: str | None
    file_count: int | None
    total_bytes: int | None
    previous_bundle: dict[str, str] | None
    run: dict[str, Any]
    # Why the manifest could not be read (hostile, oversized or broken): such a bundle is listed as
    # incomplete, flagged, and never stops the listing of the others.
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "complete": self.complete,
            "problem": self.problem,
            "bundle_id": self.bundle_id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "model": self.model,
            "version": self.version,
            "run_id": self.run_id,
            "dag_id": self.dag_id,
            "file_count": self.file_count,
            "total_bytes": self.total_bytes,
            "previous_bundle": self.previous_bundle,
            "run": self.run,
        }


def _run_field(run: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = run.get(name)
        if value is not None:
            return str(value)
    return None


def _summary(
    s3_client: Any, bucket: str, root: str, complete: bool, has_manifest: bool, has_claim: bool
) -> BundleSummary:
    manifest: Manifest | None = None
    problem = None
    if has_manifest:
        try:
            raw = _get_bytes(s3_client, bucket, f"{root}/{MANIFEST_NAME}")
            manifest = Manifest.from_bytes(raw) if raw is not None else None
        except ManifestError as exc:
            problem = str(exc)
    bundle_id = manifest.bundle_id if manifest else None
    if bundle_id is None and has_claim:
        try:
            claim = json.loads(_get_bytes(s3_client, bucket, f"{root}/{CLAIM_NAME}") or b"{}")
            bundle_id = claim.get("bundle_id") if isinstance(claim, dict) else None
        except (ValueError, RecursionError, ManifestError):
            bundle_id = None
        bundle_id = bundle_id if isinstance(bundle_id, str) else None
    run = manifest.run if manifest else {}
    return BundleSummary(
        uri=bundle_uri(bucket, root),
        # A statement next to an unreadable manifest is not something a reader can use.
        complete=complete and manifest is not None,
        bundle_id=bundle_id,
        created_at=manifest.created_at_datetime if manifest else None,
        model=_run_field(run, "model", "model_name"),
        version=_run_field(run, "version", "model_version"),
        run_id=_run_field(run, "run_id"),
        dag_id=_run_field(run, "dag_id"),
        file_count=len(manifest.files) if manifest else None,
        total_bytes=manifest.total_bytes if manifest else None,
        previous_bundle=manifest.previous_bundle if manifest else None,
        run=run,
        problem=problem,
    )


def list_bundles(
    s3_client: Any,
    bucket: str,
    prefix: str = "",
    model: str | None = None,
    since: datetime | None = None,
    *,
    include_incomplete: bool = False,
) -> list[BundleSummary]:
    """Bundles under ``s3://bucket/prefix``, oldest first.

    Only complete bundles (statement.dsse.json present) unless ``include_incomplete``, which adds
    prefixes holding a claim or manifest but no statement (``complete=False``). ``model`` matches the
    run dict's ``model`` (or ``model_name``); ``since`` keeps bundles created at or after it (naive = UTC).
    The listing does not verify anything: use :func:`verify_bundle` for that.
    """
    from botocore.exceptions import ClientError

    markers: dict[str, set[str]] = {}
    list_prefix = prefix.lstrip("/")
    try:
        pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=list_prefix)
        for page in pages:
            for item in page.get("Contents", []):
                head, _, name = item["Key"].rpartition("/")
                if name in (MANIFEST_NAME, STATEMENT_NAME, CLAIM_NAME) and head:
                    markers.setdefault(head, set()).add(name)
    except ClientError as exc:
        if _is_not_found(exc):
            return []
        raise
    roots = {root for root, names in markers.items() if names & {STATEMENT_NAME, CLAIM_NAME}}

    def nested(root: str) -> bool:
        # A file called manifest.json deep inside some bundle must not be mistaken for a bundle.
        parts = root.split("/")
        return any("/".join(parts[:i]) in roots for i in range(1, len(parts)))

    since_utc = since if since is None or since.tzinfo else since.replace(tzinfo=UTC)
    found: list[BundleSummary] = []
    for root in sorted(markers):
        if root.split("/")[0] == KEYS_PREFIX or nested(root):
            continue
        names = markers[root]
        complete = STATEMENT_NAME in names and MANIFEST_NAME in names
        if not complete and not include_incomplete:
            continue
        summary = _summary(s3_client, bucket, root, complete, MANIFEST_NAME in names, CLAIM_NAME in names)
        if not summary.complete and not include_incomplete:
            continue
        if model is not None and summary.model != model:
            continue
        if since_utc is not None and (summary.created_at is None or summary.created_at < since_utc):
            continue
        found.append(summary)
    epoch = datetime.min.replace(tzinfo=UTC)
    found.sort(key=lambda item: (item.created_at or epoch, item.uri))
    return found


# --------------------------------------------------------------------------- download


def _safe_targets(root: Path | None, manifest: Manifest) -> dict[str, Path]:
    """Map every manifest path to its destination, or raise UnsafePathError before anything is written.

    ``root=None`` checks the paths alone (verification streams from S3 and writes nothing).
    """
    problems: list[str] = []
    targets: dict[str, Path] = {}
    seen_folded: dict[str, str] = {}
    for entry in manifest.files:
        problem = path_problem(entry.path)
        if problem is None:
            destination = (root / entry.path).resolve() if root is not None else Path(entry.path)
            if root is not None and not destination.is_relative_to(root):
                problem = "resolves outside the target folder"
            elif entry.path in targets:
                problem = "listed twice"
            elif entry.path.casefold() in seen_folded:
                # Would overwrite each other on case-insensitive file systems (macOS, Windows).
                problem = f"clashes with {seen_folded[entry.path.casefold()]!r} on case-insensitive disks"
        if problem is not None:
            problems.append(f"unsafe path in manifest: {entry.path!r} ({problem})")
            continue
        targets[entry.path] = destination
        seen_folded[entry.path.casefold()] = entry.path
    # A file and a folder with the same name cannot both exist.
    for path in targets:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in targets:
                problems.append(
                    f"unsafe path in manifest: {path!r} (parent {'/'.join(parts[:i])!r} is a file)"
                )
    if problems:
        raise UnsafePathError(problems)
    return targets


def download_bundle(
    s3_client: Any,
    uri: str,
    to_dir: Path,
    *,
    max_workers: int = DEFAULT_WORKERS,
    missing_ok: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Download the complete bundle at ``uri`` into ``to_dir`` (created; must be empty) and return it.

    The manifest is treated as untrusted: every path is checked (no ``..``, absolute, backslash or
    escaping path) before the first byte is written. Integrity is *not* judged here; call
    :func:`verify_bundle` on the result. A listed object that is gone from S3 raises BundleError, or is
    skipped with ``missing_ok=True`` (so a verifier can report it). After an error the folder may hold
    part of the bundle.
    """
    from botocore.exceptions import ClientError

    bucket, prefix = parse_s3_uri(uri)
    if not prefix:
        raise ValueError(f"{uri}: a bundle URI needs a prefix")
    statement_raw = _get_bytes(s3_client, bucket, f"{prefix}/{STATEMENT_NAME}")
    if statement_raw is None:
        raise IncompleteBundleError(f"{uri}: no {STATEMENT_NAME}; the bundle is incomplete or absent")
    manifest_raw = _get_bytes(s3_client, bucket, f"{prefix}/{MANIFEST_NAME}")
    if manifest_raw is None:
        raise IncompleteBundleError(f"{uri}: {STATEMENT_NAME} present but {MANIFEST_NAME} missing")
    manifest = Manifest.from_bytes(manifest_raw)

    root = Path(to_dir).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: download target must be an empty or new folder")
    targets = _safe_targets(root, manifest)

    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).write_bytes(manifest_raw)
    (root / STATEMENT_NAME).write_bytes(statement_raw)

    def fetch(path: str) -> None:
        destination = targets[path]
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Re-check after mkdir: nothing we created can be a symlink, but be strict anyway.
        if not destination.resolve().is_relative_to(root):
            raise UnsafePathError([f"unsafe path in manifest: {path!r} (resolves outside the target folder)"])
        try:
            s3_client.download_file(bucket, f"{prefix}/{path}", str(destination))
        except ClientError as exc:
            if not _is_not_found(exc):
                raise
            if missing_ok:
                return
            raise BundleError(f"{path}: listed in manifest but missing from {uri}") from exc
        if progress is not None:
            progress(path)

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = [pool.submit(fetch, path) for path in targets]
        errors = [future.exception() for future in futures]
    first_error = next((error for error in errors if error is not None), None)
    if first_error is not None:
        raise first_error
    return root


def fetch_public_key(s3_client: Any, bucket: str, key_id: str) -> bytes | None:
    """The public key published at ``_keys/<key_id>.pub.pem`` (for display; trust it only out of band)."""
    if path_problem(key_id) is not None or "/" in key_id:
        raise ValueError(f"bad key id {key_id!r}")
    return _get_bytes(s3_client, bucket, f"{KEYS_PREFIX}/{key_id}.pub.pem")


def presign_bundle(s3_client: Any, uri: str, *, expires_seconds: int = 3600) -> dict[str, str]:
    """Time-limited GET links for every file of a complete bundle (manifest and signature included).

    For a compliance officer without S3 credentials: the links expire after ``expires_seconds``
    (S3 caps SigV4 links at 7 days). The files are listed from the manifest, so only what the bundle
    declares is shared; an incomplete bundle (no signature yet) is refused.
    """
    if not 1 <= expires_seconds <= 7 * 24 * 3600:
        raise ValueError("expires_seconds must be between 1 second and 7 days")
    bucket, prefix = parse_s3_uri(uri)
    raw = _get_bytes(s3_client, bucket, f"{prefix}/{STATEMENT_NAME}")
    if raw is None:
        raise IncompleteBundleError(f"{uri} is not a complete bundle (no {STATEMENT_NAME})")
    manifest_raw = _get_bytes(s3_client, bucket, f"{prefix}/{MANIFEST_NAME}")
    if manifest_raw is None:
        raise IncompleteBundleError(f"{uri} has no {MANIFEST_NAME}")
    manifest = Manifest.from_bytes(manifest_raw)
    paths = [MANIFEST_NAME, STATEMENT_NAME, *(entry.path for entry in manifest.files)]
    return {
        path: s3_client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": f"{prefix}/{path}"}, ExpiresIn=expires_seconds
        )
        for path in paths
    }
