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
