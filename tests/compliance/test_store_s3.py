"""Publish / list / download / verify against a real moto S3 server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.compliance import (
    CLAIM_NAME,
    MANIFEST_NAME,
    STATEMENT_NAME,
    BundleConflictError,
    BundleError,
    IncompleteBundleError,
    PublishStats,
    UnsafePathError,
    build_bundle,
    download_bundle,
    ensure_bucket,
    fetch_public_key,
    key_id,
    list_bundles,
    parse_s3_uri,
    public_key_pem,
    publish_bundle,
    verify_bundle,
)
from include.compliance.bundle import PAYLOAD_TYPE, canonical_json, short

from .conftest import make_client, sample_run

pytestmark = pytest.mark.integration

Staged = Callable[..., Any]


def _body(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _publish(staging: Path, s3: Any, bucket: str, prefix: str, signer: Any, **kwargs: Any) -> str:
    return publish_bundle(
        staging, s3_client=s3, bucket=bucket, prefix=prefix, public_key_pem=public_key_pem(signer), **kwargs
    )


def test_round_trip_publish_list_download_verify(
    s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str], tmp_path: Path
) -> None:
    bucket = unique("bundles")
    staging, manifest = staged()
    stats = PublishStats()
    uri = _publish(staging, s3, bucket, "diagnosis-risk-tabular/1/manual__1", signer, stats=stats)
    assert uri == f"s3://{bucket}/diagnosis-risk-tabular/1/manual__1/"

    # Order of writes: key and claim first, payload, then manifest, statement strictly last.
    assert stats.uploaded[:2] == [
        f"_keys/{key_id(signer)}.pub.pem",
        f"diagnosis-risk-tabular/1/manual__1/{CLAIM_NAME}",
    ]
    assert stats.uploaded[-2:] == [
        f"diagnosis-risk-tabular/1/manual__1/{MANIFEST_NAME}",
        f"diagnosis-risk-tabular/1/manual__1/{STATEMENT_NAME}",
    ]
    assert stats.bytes_uploaded >= manifest.total_bytes
    assert fetch_public_key(s3, bucket, key_id(signer)) == public_key_pem(signer)

    # Every object carries a SHA256 checksum and our digest metadata.
    head = s3.head_object(
        Bucket=bucket, Key=f"{parse_s3_uri(uri)[1]}/explanations/P1.json", ChecksumMode="ENABLED"
    )
    p1 = (staging / "explanations" / "P1.json").read_bytes()
    assert head["Metadata"]["sha256"] == hashlib.sha256(p1).hexdigest()
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(p1).digest()).decode()

    [summary] = list_bundles(s3, bucket)
    assert summary.complete
    assert summary.uri == uri
    assert summary.bundle_id == manifest.bundle_id
    assert (summary.model, summary.version, summary.run_id) == ("diagnosis-risk-tabular", "1", "manual__1")
    assert summary.created_at == manifest.created_at_datetime
    assert summary.file_count == len(manifest.files)

    local = download_bundle(s3, uri, tmp_path / "download")
    for entry in manifest.files:
        assert (local / entry.path).read_bytes() == (staging / entry.path).read_bytes()
    local_report = verify_bundle(str(local), public_key_pem=public_key_pem(signer))
    assert local_report.ok, local_report.problems
    remote_report = verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=s3)
    assert remote_report.ok, remote_report.problems
    assert remote_report.bundle_id == manifest.bundle_id
    assert remote_report.files_checked == len(manifest.files)
    assert remote_report.bytes_checked == manifest.total_bytes

    # Publishing the same bundle again is a no-op that succeeds.
    again = PublishStats()
    assert _publish(staging, s3, bucket, "diagnosis-risk-tabular/1/manual__1", signer, stats=again) == uri
    assert again.uploaded == []


def test_list_filters_by_model_and_time(
    s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket = unique("listing")
    old_stage, _ = staged("old", run=sample_run(run_id="r-old"))
    _publish(old_stage, s3, bucket, "diagnosis-risk-tabular/1/r-old", signer)
    cutoff = datetime.now(UTC)
    new_stage, _ = staged("new", run=sample_run(run_id="r-new"))
    _publish(new_stage, s3, bucket, "diagnosis-risk-tabular/1/r-new", signer)
    img_stage, _ = staged("img", seed="img", run=sample_run(model="multimodal-image-classifier-v3"))
    _publish(img_stage, s3, bucket, "multimodal-image-classifier-v3/1/r1", signer)

    assert [b.run_id for b in list_bundles(s3, bucket, model="diagnosis-risk-tabular")] == ["r-old", "r-new"]
    assert [b.model for b in list_bundles(s3, bucket, model="multimodal-image-classifier-v3")] == [
        "multimodal-image-classifier-v3"
    ]
    assert [b.run_id for b in list_bundles(s3, bucket, since=cutoff)] == ["r-new", "manual__1"]
    assert [b.run_id for b in list_bundles(s3, bucket, prefix="diagnosis-risk-tabular/")] == [
        "r-old",
        "r-new",
    ]
    assert list_bundles(s3, bucket, since=datetime.now(UTC) + timedelta(hours=1)) == []


# --------------------------------------------------------------------------- tampering in S3


def _tamper_byte(s3: Any, bucket: str, prefix: str, **_: Any) -> list[str]:
    key = f"{prefix}/explanations/P1.json"
    original = _body(s3, bucket, key)
    changed = bytearray(original)
    changed[5] ^= 0x20
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(changed))
    return [
        f"explanations/P1.json: sha256 mismatch (manifest {short(hashlib.sha256(original).hexdigest())}, "
        f"file {short(hashlib.sha256(bytes(changed)).hexdigest())})"
    ]


def _tamper_remove(s3: Any, bucket: str, prefix: str, **_: Any) -> list[str]:
    s3.delete_object(Bucket=bucket, Key=f"{prefix}/validation.json")
    return ["validation.json: missing (listed in manifest)"]


def _tamper_add(s3: Any, bucket: str, prefix: str, **_: Any) -> list[str]:
    s3.put_object(Bucket=bucket, Key=f"{prefix}/explanations/P3.json", Body=b'{"forged": true}')
    return [f"extra object in S3 not in manifest: s3://{bucket}/{prefix}/explanations/P3.json"]


def _tamper_manifest(s3: Any, bucket: str, prefix: str, **_: Any) -> list[str]:
    key = f"{prefix}/{MANIFEST_NAME}"
    original = _body(s3, bucket, key)
    doc = json.loads(original)
    doc["run"]["model"] = "some-other-model"
    edited = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    s3.put_object(Bucket=bucket, Key=key, Body=edited)
    return [
        f"{MANIFEST_NAME}: sha256 mismatch with signed statement (statement "
        f"{short(hashlib.sha256(original).hexdigest())}, file {short(hashlib.sha256(edited).hexdigest())})",
        "statement predicate differs from the manifest's run info",
    ]


def _tamper_signature(
    s3: Any,
    bucket: str,
    prefix: str,
    *,
    staging: Path,
    tmp_path: Path,
    signer: Any,
    other_signer: Any,
    **_: Any,
) -> list[str]:
    # Re-sign the *identical* manifest with another key: only the signature differs.
    copy = tmp_path / "resigned"
    shutil.copytree(staging, copy)
    original = json.loads((staging / MANIFEST_NAME).read_text())
    build_bundle(
        copy,
        run=original["run"],
        signer=other_signer,
        created_at=datetime.fromisoformat(original["created_at"].replace("Z", "+00:00")),
    )
    assert (copy / MANIFEST_NAME).read_bytes() == (staging / MANIFEST_NAME).read_bytes()
    s3.put_object(Bucket=bucket, Key=f"{prefix}/{STATEMENT_NAME}", Body=(copy / STATEMENT_NAME).read_bytes())
    return [
        f"signature does not verify with key {key_id(signer)} (envelope signed by key {key_id(other_signer)})"
    ]


@pytest.mark.parametrize(
    "tamper",
    [_tamper_byte, _tamper_remove, _tamper_add, _tamper_manifest, _tamper_signature],
    ids=["one-byte-changed", "file-removed", "file-added", "manifest-edited", "signature-swapped"],
)
def test_tampering_in_s3_is_detected(
    tamper: Callable[..., list[str]],
    s3: Any,
    signer: Any,
    other_signer: Any,
    staged: Staged,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    bucket = unique("tamper")
    staging, manifest = staged()
    uri = _publish(staging, s3, bucket, "m/1/run", signer)
    assert verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=s3).ok

    expected = tamper(
        s3, bucket, "m/1/run", staging=staging, tmp_path=tmp_path, signer=signer, other_signer=other_signer
    )
    report = verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=s3)
    assert not report.ok
    assert report.problems == expected
    assert report.bundle_id == manifest.bundle_id


def test_wrong_public_key_is_detected(
    s3: Any, signer: Any, other_signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket = unique("wrongkey")
    staging, _ = staged()
    uri = _publish(staging, s3, bucket, "m/1/run", signer)
    report = verify_bundle(uri, public_key_pem=public_key_pem(other_signer), s3_client=s3)
    assert not report.ok
    assert report.problems == [
        f"signature does not verify with key {key_id(other_signer)} (envelope signed by key {key_id(signer)})"
    ]
    # The same check offline, on the staging folder.
    assert (
        verify_bundle(str(staging), public_key_pem=public_key_pem(other_signer)).problems == report.problems
    )


# --------------------------------------------------------------------------- untrusted manifests


def _sign_statement_for(manifest_raw: bytes, files: list[dict[str, Any]], signer: Any) -> bytes:
    from securesystemslib.dsse import Envelope

    subjects = [{"name": f["path"], "digest": {"sha256": f["sha256"]}} for f in files]
    subjects.append({"name": MANIFEST_NAME, "digest": {"sha256": hashlib.sha256(manifest_raw).hexdigest()}})
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects,
        "predicateType": "https://explainability-as-code.dev/run/v1",
        "predicate": {},
    }
    envelope = Envelope(canonical_json(statement), PAYLOAD_TYPE, {})
    envelope.sign(signer)
    return json.dumps(envelope.to_dict()).encode()


@pytest.mark.parametrize(
    ("evil_path", "reason"),
    [
        ("../escaped.txt", "'..' component"),
        ("explanations/../../escaped.txt", "'..' component"),
        ("/tmp/escaped.txt", "absolute path"),
        ("..\\escaped.txt", "backslash in path"),
    ],
)
def test_path_traversal_manifest_is_refused_on_download(
    s3: Any,
    signer: Any,
    unique: Callable[[str], str],
    tmp_path: Path,
    evil_path: str,
    reason: str,
) -> None:
    bucket = unique("evil")
    ensure_bucket(s3, bucket)
    payload = b"owned\n"
    files = [
        {"path": "explanations/P1.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
        {"path": evil_path, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
    ]
    manifest = {
        "format": "xac-bundle/1",
        "bundle_id": "sha256:" + "0" * 64,
        "created_at": "2026-01-01T00:00:00Z",
        "files": files,
        "run": {},
        "previous_bundle": None,
    }
    manifest_raw = json.dumps(manifest).encode()
    s3.put_object(Bucket=bucket, Key="m/1/evil/explanations/P1.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key=f"m/1/evil/{evil_path}", Body=payload)
    s3.put_object(Bucket=bucket, Key=f"m/1/evil/{MANIFEST_NAME}", Body=manifest_raw)
    s3.put_object(
        Bucket=bucket, Key=f"m/1/evil/{STATEMENT_NAME}", Body=_sign_statement_for(manifest_raw, files, signer)
    )

    sandbox = tmp_path / "sandbox"
    target = sandbox / "a" / "download"
    with pytest.raises(UnsafePathError) as caught:
        download_bundle(s3, f"s3://{bucket}/m/1/evil/", target)
    assert caught.value.problems == [f"unsafe path in manifest: {evil_path!r} ({reason})"]
    # Nothing was written anywhere: not the target, not the escape destination.
    assert not target.exists()
    assert not (sandbox / "a" / "escaped.txt").exists()
    assert not Path("/tmp/escaped.txt").exists() or Path("/tmp/escaped.txt").read_bytes() != payload

    report = verify_bundle(f"s3://{bucket}/m/1/evil/", public_key_pem=public_key_pem(signer), s3_client=s3)
    assert not report.ok
    assert report.problems == [f"unsafe path in manifest: {evil_path!r} ({reason})"]


# --------------------------------------------------------------------------- partial publish / conflicts


def _fail_puts_after(client: Any, allowed: int) -> None:
    """Make the client crash (before sending) on every PutObject after the first ``allowed`` ones."""
    lock = threading.Lock()
    seen = {"n": 0}

    def hook(**_: Any) -> None:
        with lock:
            seen["n"] += 1
            if seen["n"] > allowed:
                raise ConnectionError("simulated crash in the middle of a publish")

    client.meta.events.register("before-call.s3.PutObject", hook)


def test_partial_publish_is_not_complete_and_retry_finishes_it(
    s3_server: Any, s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket = unique("partial")
    staging, manifest = staged()
    crashing = make_client(s3_server.endpoint_url)
    # key + claim + 3 payload files, then the "worker dies".
    _fail_puts_after(crashing, 5)
    with pytest.raises(ConnectionError, match="simulated crash"):
        publish_bundle(
            staging,
            s3_client=crashing,
            bucket=bucket,
            prefix="m/1/run",
            public_key_pem=public_key_pem(signer),
            max_workers=1,
        )
    written = _keys(s3, bucket, "m/1/run/")
    assert f"m/1/run/{CLAIM_NAME}" in written
    assert f"m/1/run/{STATEMENT_NAME}" not in written
    assert 0 < len(written) < len(manifest.files) + 3

    assert list_bundles(s3, bucket) == []
    [incomplete] = list_bundles(s3, bucket, include_incomplete=True)
    assert not incomplete.complete
    assert incomplete.bundle_id == manifest.bundle_id
    with pytest.raises(IncompleteBundleError):
        download_bundle(s3, f"s3://{bucket}/m/1/run/", staging.parent / "dl")
    report = verify_bundle(f"s3://{bucket}/m/1/run/", public_key_pem=public_key_pem(signer), s3_client=s3)
    assert not report.ok and "incomplete" in report.problems[0]

    stats = PublishStats()
    uri = _publish(staging, s3, bucket, "m/1/run", signer, stats=stats)
    assert len(stats.already_present) == 5
    assert stats.uploaded[-1] == f"m/1/run/{STATEMENT_NAME}"
    [complete] = list_bundles(s3, bucket)
    assert complete.complete and complete.bundle_id == manifest.bundle_id
    assert verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=s3).ok


def test_second_bundle_into_same_prefix_fails_without_overwriting(
    s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket = unique("conflict")
    first, first_manifest = staged("first", seed="first")
    uri = _publish(first, s3, bucket, "m/1/run", signer)
    before = {key: _body(s3, bucket, key) for key in _keys(s3, bucket, "m/1/run/")}

    second, second_manifest = staged("second", seed="second")
    assert second_manifest.bundle_id != first_manifest.bundle_id
    with pytest.raises(BundleConflictError, match="already holds a different bundle"):
        _publish(second, s3, bucket, "m/1/run", signer)
    after = {key: _body(s3, bucket, key) for key in _keys(s3, bucket, "m/1/run/")}
    assert after == before
    assert verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=s3).ok

    # Same payload, different run metadata (different manifest) is a different bundle too.
    third, third_manifest = staged("third", seed="first", run=sample_run(run_id="other"))
    assert third_manifest.bundle_id == first_manifest.bundle_id
    with pytest.raises(BundleConflictError):
        _publish(third, s3, bucket, "m/1/run", signer)
    assert {key: _body(s3, bucket, key) for key in _keys(s3, bucket, "m/1/run/")} == before


def test_existing_object_with_other_content_is_never_overwritten(
    s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket = unique("preexisting")
    ensure_bucket(s3, bucket)
    ensure_bucket(s3, bucket)  # idempotent
    s3.put_object(Bucket=bucket, Key="m/1/run/provenance.json", Body=b"someone else's file")
    staging, _ = staged()
    with pytest.raises(BundleConflictError, match=r"s3://.*/m/1/run/provenance.json already exists"):
        _publish(staging, s3, bucket, "m/1/run", signer, max_workers=1)
    assert _body(s3, bucket, "m/1/run/provenance.json") == b"someone else's file"
    assert list_bundles(s3, bucket) == []


def test_race_on_put_is_caught_by_if_none_match(
    s3_server: Any, s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    """Another writer creates the key between our HEAD and PUT: the 412 path must refuse, not overwrite."""
    bucket = unique("race")
    staging, _ = staged()
    racing = make_client(s3_server.endpoint_url)
    target = "m/1/run/config.yaml"

    def intruder(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key") == target:
            s3.put_object(Bucket=bucket, Key=target, Body=b"raced in")

    racing.meta.events.register("before-parameter-build.s3.PutObject", intruder)
    with pytest.raises(
        BundleConflictError, match=re.escape("config.yaml already exists with different content")
    ):
        _publish(staging, racing, bucket, "m/1/run", signer, max_workers=1)
    assert _body(s3, bucket, target) == b"raced in"


def test_multipart_upload_is_create_only_too(
    s3_server: Any, s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str], tmp_path: Path
) -> None:
    bucket = unique("multipart")
    staging, manifest = staged(big_bytes=11 * 1024 * 1024)
    five_mib = 5 * 1024 * 1024
    uri = _publish(staging, s3, bucket, "m/1/run", signer, multipart_threshold=five_mib, part_size=five_mib)
    report = verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=s3)
    assert report.ok, report.problems
    assert report.bytes_checked == manifest.total_bytes
    # Retrying is accepted (same digest in the metadata of the multipart object).
    again = PublishStats()
    _publish(
        staging, s3, bucket, "m/1/run", signer, multipart_threshold=five_mib, part_size=five_mib, stats=again
    )
    assert again.uploaded == []

    # A writer sneaking in before CompleteMultipartUpload is refused by IfNoneMatch on completion.
    bucket2 = unique("multipart-race")
    racing = make_client(s3_server.endpoint_url)

    def intruder(params: dict[str, Any], **_: Any) -> None:
        s3.put_object(Bucket=bucket2, Key=params["Key"], Body=b"raced in")

    racing.meta.events.register("before-parameter-build.s3.CompleteMultipartUpload", intruder)
    with pytest.raises(
        BundleConflictError, match=re.escape("plots/big.bin already exists with different content")
    ):
        _publish(
            staging, racing, bucket2, "m/1/run", signer, multipart_threshold=five_mib, part_size=five_mib
        )
    assert _body(s3, bucket2, "m/1/run/plots/big.bin") == b"raced in"
    assert s3.list_multipart_uploads(Bucket=bucket2).get("Uploads", []) == []


def test_publish_refuses_a_staging_folder_changed_after_build(
    s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str]
) -> None:
    bucket = unique("changed")
    staging, _ = staged()
    (staging / "validation.json").write_text('{"success": false}\n')
    with pytest.raises(BundleError, match=re.escape("validation.json: size mismatch")):
        _publish(staging, s3, bucket, "m/1/run", signer)
    with pytest.raises(ValueError, match="bad bundle prefix"):
        _publish(staging, s3, bucket, "../x", signer)
    with pytest.raises(ValueError, match="reserved name"):
        _publish(staging, s3, bucket, "_keys/x", signer)


def test_download_refuses_non_empty_target(
    s3: Any, signer: Any, staged: Staged, unique: Callable[[str], str], tmp_path: Path
) -> None:
    bucket = unique("nonempty")
    staging, _ = staged()
    uri = _publish(staging, s3, bucket, "m/1/run", signer)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        download_bundle(s3, uri, target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
