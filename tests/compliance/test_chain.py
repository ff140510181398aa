"""The hash chain: a bundle names the previous accepted bundle of its model; verify checks the link."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from include.compliance import STATEMENT_NAME, public_key_pem, publish_bundle, verify_bundle

from .conftest import sample_run

pytestmark = pytest.mark.integration


def test_chain_link_is_checked_from_s3(
    s3: Any, signer: Any, staged: Callable[..., Any], unique: Callable[[str], str]
) -> None:
    bucket = unique("chain")
    key = public_key_pem(signer)
    first_dir, first = staged("first", seed="a", run=sample_run(run_id="r1"))
    first_uri = publish_bundle(
        first_dir, s3_client=s3, bucket=bucket, prefix="m/1/runs/r1", public_key_pem=key
    )

    link = {"uri": first_uri, "bundle_id": first.bundle_id}
    second_dir, _ = staged("second", seed="b", run=sample_run(run_id="r2"), previous=link)
    second_uri = publish_bundle(
        second_dir, s3_client=s3, bucket=bucket, prefix="m/1/runs/r2", public_key_pem=key
    )
    assert verify_bundle(second_uri, public_key_pem=key, s3_client=s3).ok

    forged = {"uri": first_uri, "bundle_id": "sha256:" + "0" * 64}
    third_dir, _ = staged("third", seed="c", run=sample_run(run_id="r3"), previous=forged)
    third_uri = publish_bundle(
        third_dir, s3_client=s3, bucket=bucket, prefix="m/1/runs/r3", public_key_pem=key
    )
    report = verify_bundle(third_uri, public_key_pem=key, s3_client=s3)
    assert not report.ok and any("replaced?" in p for p in report.problems), report.problems

    s3.delete_object(Bucket=bucket, Key=f"m/1/runs/r1/{STATEMENT_NAME}")  # the first bundle disappears
    report = verify_bundle(second_uri, public_key_pem=key, s3_client=s3)
    assert not report.ok
    assert any("chain broken" in p and "missing" in p for p in report.problems), report.problems


def _copy_prefix(s3: Any, bucket: str, source: str, target: str) -> None:
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=source + "/")["Contents"]:
        key = target + item["Key"][len(source) :]
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": item["Key"]})


def test_a_bundle_copied_elsewhere_does_not_verify_there(
    s3: Any, signer: Any, staged: Callable[..., Any], unique: Callable[[str], str], tmp_path: Any
) -> None:
    """Issue 18 item 10: the manifest signs its own location, so a whole bundle copied to another
    prefix fails there (and so does a chain link that names the copy); the original and a download of
    it still verify."""
    from include.compliance import download_bundle

    bucket = unique("located")
    key = public_key_pem(signer)
    first_dir, first = staged(
        "first", seed="a", run=sample_run(run_id="r1"), location=f"s3://{bucket}/m/1/runs/r1/"
    )
    first_uri = publish_bundle(
        first_dir, s3_client=s3, bucket=bucket, prefix="m/1/runs/r1", public_key_pem=key
    )
    assert first.location == first_uri
    assert verify_bundle(first_uri, public_key_pem=key, s3_client=s3).ok
    _copy_prefix(s3, bucket, "m/1/runs/r1", "m/1/runs/copy")
    copied = verify_bundle(f"s3://{bucket}/m/1/runs/copy/", public_key_pem=key, s3_client=s3)
    assert not copied.ok
    assert any(f"signed for {first_uri}" in p for p in copied.problems), copied.problems
    local = download_bundle(s3, first_uri, tmp_path / "download")
    assert verify_bundle(local, public_key_pem=key).ok  # a download is a copy by design: no location check

    link = {"uri": f"s3://{bucket}/m/1/runs/copy/", "bundle_id": first.bundle_id}
    second_dir, _ = staged(
        "second", seed="b", run=sample_run(run_id="r2"), previous=link, location=f"s3://{bucket}/m/1/runs/r2/"
    )
    second_uri = publish_bundle(
        second_dir, s3_client=s3, bucket=bucket, prefix="m/1/runs/r2", public_key_pem=key
    )
    report = verify_bundle(second_uri, public_key_pem=key, s3_client=s3)
    assert not report.ok and any("(a copy)" in p for p in report.problems), report.problems
