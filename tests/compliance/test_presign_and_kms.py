"""Presigned download links and SSE-KMS, against the moto server on 127.0.0.1."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from include.compliance import (
    MANIFEST_NAME,
    STATEMENT_NAME,
    IncompleteBundleError,
    presign_bundle,
    public_key_pem,
    publish_bundle,
)

pytestmark = pytest.mark.integration


def test_presigned_links_serve_every_file_of_the_bundle(
    s3: Any, signer: Any, staged: Callable[..., Any], unique: Callable[[str], str]
) -> None:
    bucket = unique("presign")
    staging, manifest = staged()
    uri = publish_bundle(
        staging, s3_client=s3, bucket=bucket, prefix="m/1/r1", public_key_pem=public_key_pem(signer)
    )
    links = presign_bundle(s3, uri, expires_seconds=600)
    assert set(links) == {MANIFEST_NAME, STATEMENT_NAME, *(entry.path for entry in manifest.files)}
    for path, url in links.items():
        assert "X-Amz-Expires=600" in url or "Expires=" in url  # SigV4 or SigV2 query auth
        with urllib.request.urlopen(url, timeout=10) as response:  # no credentials: the link is the grant
            assert response.read() == (staging / path).read_bytes(), path


def test_presign_refuses_an_incomplete_bundle_and_absurd_expiry(
    s3: Any, unique: Callable[[str], str]
) -> None:
    bucket = unique("presign-incomplete")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="m/1/r1/manifest.json", Body=b"{}")
    with pytest.raises(IncompleteBundleError):
        presign_bundle(s3, f"s3://{bucket}/m/1/r1/")
    with pytest.raises(ValueError, match="7 days"):
        presign_bundle(s3, f"s3://{bucket}/m/1/r1/", expires_seconds=8 * 24 * 3600)


def test_sse_kms_applies_to_every_object(
    s3: Any, signer: Any, staged: Callable[..., Any], unique: Callable[[str], str]
) -> None:
    bucket = unique("kms")
    staging, manifest = staged()
    key = "arn:aws:kms:us-east-1:123456789012:key/0b3c1a2e-0000-4000-8000-000000000001"
    uri = publish_bundle(staging, s3_client=s3, bucket=bucket, prefix="m/1/r1", sse_kms_key_id=key)
    for path in (MANIFEST_NAME, STATEMENT_NAME, *(entry.path for entry in manifest.files)):
        head = s3.head_object(Bucket=bucket, Key=f"m/1/r1/{path}")
        assert head.get("ServerSideEncryption") == "aws:kms", path
        assert head.get("SSEKMSKeyId") == key, path
    assert uri == f"s3://{bucket}/m/1/r1/"
