"""Publishing through boto3's transfer manager: create-only on the wire, scoped to the bundle's own writes.

Everything runs against the real moto server on 127.0.0.1; the requests are observed with botocore's
``before-send`` event, i.e. exactly as they leave the client (headers after serialisation and signing).
"""

from __future__ import annotations

import base64
import gc
import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from include.compliance import (
    CLAIM_NAME,
    MANIFEST_NAME,
    STATEMENT_NAME,
    BundleConflictError,
    BundleError,
    PublishStats,
    key_id,
    list_bundles,
    public_key_pem,
    publish_bundle,
    verify_bundle,
)
from include.compliance.retention import object_lock_settings
from include.compliance.store import _CreateOnlyGuard

from .conftest import make_client

pytestmark = pytest.mark.integration

Staged = Callable[..., Any]
FIVE_MIB = 5 * 1024 * 1024
BIG = 11 * 1024 * 1024  # three 5 MiB parts: 5 + 5 + 1


class Wire:
    """Every request a client sends: (operation, bucket-and-key path, lower-cased headers)."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.sent: list[tuple[str, str, dict[str, str]]] = []
        client.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        # Path-style URLs on the loopback endpoint: /<bucket>/<key>?query
        path = request.url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
        with self.lock:
            self.sent.append(
                (operation, path, {name.lower(): _text(value) for name, value in request.headers.items()})
            )

    def of(self, *operations: str) -> list[tuple[str, str, dict[str, str]]]:
        with self.lock:
            return [sent for sent in self.sent if sent[0] in operations]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _conditional(headers: dict[str, str]) -> str | None:
    return headers.get("if-none-match")


def _live_guards() -> int:
    return sum(isinstance(obj, _CreateOnlyGuard) for obj in gc.get_objects())


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_if_none_match_goes_on_exactly_the_bundle_writes(
    s3_server: Any, s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket, elsewhere = unique("wire"), unique("wire-other")
    s3.create_bucket(Bucket=elsewhere)
    staging, manifest = staged(big_bytes=BIG)
    client = make_client(s3_server.endpoint_url)
    wire = Wire(client)
    big_key = "m/1/run/plots/big.bin"
    side_calls: list[str] = []

    def meanwhile(params: dict[str, Any], **_: Any) -> None:
        # Other work on the same client, on a transfer thread, while the big file's upload is in flight:
        # an unrelated key in the bundle's bucket, and the very key being uploaded but in another bucket.
        if params.get("PartNumber") == 2 and not side_calls:
            side_calls.append("done")
            client.put_object(Bucket=bucket, Key="unrelated/note.txt", Body=b"n")
            client.put_object(Bucket=elsewhere, Key=big_key, Body=b"same key, other bucket")

    client.meta.events.register("before-parameter-build.s3.UploadPart", meanwhile)
    stats = PublishStats()
    uri = publish_bundle(
        staging,
        s3_client=client,
        bucket=bucket,
        prefix="m/1/run",
        public_key_pem=public_key_pem(signer),
        multipart_threshold=FIVE_MIB,
        part_size=FIVE_MIB,
        stats=stats,
    )
    assert side_calls == ["done"]
    bundle_keys = {
        f"_keys/{key_id(signer)}.pub.pem",
        *(f"m/1/run/{name}" for name in (CLAIM_NAME, MANIFEST_NAME, STATEMENT_NAME)),
        *(f"m/1/run/{entry.path}" for entry in manifest.files),
    }
    assert set(stats.uploaded) == bundle_keys

    puts = {path: headers for _, path, headers in wire.of("PutObject")}
    completes = {path: headers for _, path, headers in wire.of("CompleteMultipartUpload")}
    # One create-only write per bundle object: PutObject for the small ones, the completion for the big one.
    created = {path.split("/", 1)[1] for path in (*puts, *completes) if path.startswith(f"{bucket}/")}
    assert created - {"unrelated/note.txt"} == bundle_keys
    assert set(completes) == {f"{bucket}/{big_key}"}
    for path, headers in (*puts.items(), *completes.items()):
        expected = None if path in (f"{bucket}/unrelated/note.txt", f"{elsewhere}/{big_key}") else "*"
        assert _conditional(headers) == expected, path
    # Nothing else (HEADs, bucket checks, the multipart start and parts) carries the header.
    others = [sent for sent in wire.sent if sent[0] not in ("PutObject", "CompleteMultipartUpload")]
    assert {operation for operation, _, _ in others} >= {"HeadObject", "CreateMultipartUpload", "UploadPart"}
    assert [path for _, path, headers in others if _conditional(headers) is not None] == []

    # Managed multipart: part_size honoured, every part SHA-256 checksummed, our digest in the metadata.
    parts = wire.of("UploadPart")
    assert len(parts) == 3
    for _, _, headers in parts:
        assert "x-amz-checksum-sha256" in headers
    [(_, _, lowered)] = wire.of("CreateMultipartUpload")
    big = (staging / "plots" / "big.bin").read_bytes()
    assert lowered["x-amz-meta-sha256"] == hashlib.sha256(big).hexdigest()
    assert lowered["x-amz-checksum-algorithm"] == "SHA256"
    # Single PUTs send the digest computed at build time and S3 stores it as the full-object checksum.
    for entry in manifest.files:
        if entry.path == "plots/big.bin":
            continue
        head = s3.head_object(Bucket=bucket, Key=f"m/1/run/{entry.path}", ChecksumMode="ENABLED")
        data = (staging / entry.path).read_bytes()
        assert head["ChecksumSHA256"] == _b64_sha256(data), entry.path
        assert head["Metadata"]["sha256"] == entry.sha256, entry.path
    assert verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=s3).ok


def test_guard_is_gone_after_publish_success_or_failure(
    s3_server: Any, s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket = unique("scoped")
    staging, _ = staged()
    client = make_client(s3_server.endpoint_url)
    wire = Wire(client)
    gc.collect()
    guards_before = _live_guards()
    publish_bundle(
        staging, s3_client=client, bucket=bucket, prefix="m/1/run", public_key_pem=public_key_pem(signer)
    )
    # Afterwards the client is plain again: an ordinary overwrite of a bundle key is not create-only.
    client.put_object(Bucket=bucket, Key="m/1/run/validation.json", Body=b"{}")
    assert _conditional(wire.of("PutObject")[-1][2]) is None

    other, _ = staged("other", seed="other")
    with pytest.raises(BundleConflictError):
        publish_bundle(
            other, s3_client=client, bucket=bucket, prefix="m/1/run", public_key_pem=public_key_pem(signer)
        )
    client.put_object(Bucket=bucket, Key="m/1/run/config.yaml", Body=b"x: 1\n")
    assert _conditional(wire.of("PutObject")[-1][2]) is None
    # Nothing of the guards stays behind on the client (a registered handler would keep its guard alive).
    gc.collect()
    assert _live_guards() == guards_before


def test_a_write_that_lost_its_precondition_is_not_counted_as_done(
    s3_server: Any, s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    """If some other handler strips IfNoneMatch, the publish must fail rather than claim create-only."""
    bucket = unique("stripped")
    staging, _ = staged()
    client = make_client(s3_server.endpoint_url)

    def strip(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key", "").endswith("validation.json"):
            params.pop("IfNoneMatch", None)

    client.meta.events.register_last("before-parameter-build.s3.PutObject", strip)
    with pytest.raises(BundleError, match=r"validation.json was written without If-None-Match"):
        publish_bundle(
            staging, s3_client=client, bucket=bucket, prefix="m/1/run", public_key_pem=public_key_pem(signer)
        )
    assert list_bundles(s3, bucket) == []
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix="m/1/run/").get("Contents", [])]
    assert f"m/1/run/{STATEMENT_NAME}" not in keys and f"m/1/run/{MANIFEST_NAME}" not in keys


def test_concurrent_publishes_share_one_client(
    s3_server: Any, s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    """Two bundles at once and the same bundle twice at once, all on one client: guards never clash."""
    bucket = unique("together")
    first, _ = staged("first", seed="first", big_bytes=BIG)
    second, _ = staged("second", seed="second", big_bytes=BIG)
    client = make_client(s3_server.endpoint_url)
    jobs = [(first, "m/1/a"), (second, "m/1/b"), (first, "m/1/same"), (first, "m/1/same")]
    stats = [PublishStats() for _ in jobs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def run(index: int) -> None:
        staging, prefix = jobs[index]
        barrier.wait()
        try:
            publish_bundle(
                staging,
                s3_client=client,
                bucket=bucket,
                prefix=prefix,
                public_key_pem=public_key_pem(signer),
                multipart_threshold=FIVE_MIB,
                part_size=FIVE_MIB,
                stats=stats[index],
            )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for prefix in ("m/1/a", "m/1/b", "m/1/same"):
        assert verify_bundle(
            f"s3://{bucket}/{prefix}/", public_key_pem=public_key_pem(signer), s3_client=s3
        ).ok
    # Each of the racing pair accounts for every object of m/1/same: written by itself, or found in place
    # with identical bytes (HEAD or 412). Whether exactly one of them wrote each object cannot be asserted
    # here: moto checks If-None-Match and stores the object in two steps, so two truly simultaneous
    # conditional writes can both succeed on moto (S3 makes the check atomic).
    everything = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix="m/1/same/")["Contents"]}
    for publish in stats[2:]:
        done = [key for key in publish.uploaded + publish.already_present if key.startswith("m/1/same/")]
        assert sorted(done) == sorted(everything)
    # Only these two write under m/1/same/, so each object there was uploaded by one of them (or both).
    assert {
        key for publish in stats[2:] for key in publish.uploaded if key.startswith("m/1/same/")
    } == everything


def test_object_lock_and_kms_reach_single_and_multipart_objects(
    s3_server: Any, s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket = unique("locked")
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    now = datetime(2026, 11, 27, 8, 30, tzinfo=UTC)
    lock = object_lock_settings(s3, bucket, years=1, mode="GOVERNANCE", now=now)
    kms = "arn:aws:kms:us-east-1:123456789012:key/0b3c1a2e-0000-4000-8000-000000000002"
    staging, manifest = staged(big_bytes=BIG)
    client = make_client(s3_server.endpoint_url)
    wire = Wire(client)
    options: dict[str, Any] = {
        "s3_client": client,
        "bucket": bucket,
        "prefix": "m/1/run",
        "public_key_pem": public_key_pem(signer),
        "object_lock": lock,
        "sse_kms_key_id": kms,
        "multipart_threshold": FIVE_MIB,
        "part_size": FIVE_MIB,
    }
    uri = publish_bundle(staging, **options)
    until = lock["ObjectLockRetainUntilDate"]
    for path in (MANIFEST_NAME, STATEMENT_NAME, CLAIM_NAME, *(entry.path for entry in manifest.files)):
        head = s3.head_object(Bucket=bucket, Key=f"m/1/run/{path}")
        assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == ("aws:kms", kms), path
        if path == "plots/big.bin":
            continue  # moto 5.2 drops Object Lock fields on multipart uploads: checked on the wire below
        assert head["ObjectLockMode"] == "GOVERNANCE", path
        assert head["ObjectLockRetainUntilDate"].astimezone(UTC) == until, path
    [(_, _, started)] = wire.of("CreateMultipartUpload")
    assert started["x-amz-object-lock-mode"] == "GOVERNANCE"
    assert (
        datetime.fromisoformat(started["x-amz-object-lock-retain-until-date"].replace("Z", "+00:00")) == until
    )
    assert started["x-amz-server-side-encryption-aws-kms-key-id"] == kms
    assert verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=s3).ok
    # A retry on the locked bucket is a no-op, multipart object included.
    again = PublishStats()
    publish_bundle(staging, **options, stats=again)
    assert again.uploaded == [] and len(again.already_present) == len(manifest.files) + 4
