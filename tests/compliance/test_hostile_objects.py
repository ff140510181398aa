"""Issue 18 item 6: one hostile object in the bucket is a flagged row, not an outage.

A deeply nested ``manifest.json``, an oversized one and a manifest whose cost is a 400-digit number sit
beside a real bundle on the loopback S3 server: the listing, ``xac bundle list`` and the compliance page
keep serving the real bundle and flag the others (before: RecursionError, exit 3, HTTP 500)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from include.compliance import ensure_bucket, list_bundles, public_key_pem, publish_bundle
from include.compliance.bundle import MANIFEST_NAME, STATEMENT_NAME

from .conftest import sample_run

pytestmark = pytest.mark.integration


@pytest.fixture
def hostile_bucket(s3: Any, signer: Any, staged: Callable[..., Any], unique: Callable[[str], str]) -> str:
    bucket = unique("hostile")
    ensure_bucket(s3, bucket)
    staging, _ = staged()
    publish_bundle(
        staging, s3_client=s3, bucket=bucket, prefix="m/1/good", public_key_pem=public_key_pem(signer)
    )
    deep = b"[" * 1500 + b"]" * 1500  # under the size limit, past the parser's recursion limit
    s3.put_object(Bucket=bucket, Key=f"m/1/deep/{MANIFEST_NAME}", Body=deep)
    s3.put_object(Bucket=bucket, Key=f"m/1/deep/{STATEMENT_NAME}", Body=b"{}")
    s3.put_object(Bucket=bucket, Key=f"m/1/huge/{MANIFEST_NAME}", Body=b" " * 5000 + b"{}")
    s3.put_object(Bucket=bucket, Key=f"m/1/huge/{STATEMENT_NAME}", Body=b"{}")
    # a well-formed manifest (the real one's shape) whose cost no float can hold
    good = json.loads(s3.get_object(Bucket=bucket, Key=f"m/1/good/{MANIFEST_NAME}")["Body"].read())
    good["run"] = {**sample_run(), "cost_total": int("9" * 400), "fidelity_score": float("nan")}
    s3.put_object(Bucket=bucket, Key=f"m/1/costly/{MANIFEST_NAME}", Body=json.dumps(good).encode())
    s3.put_object(Bucket=bucket, Key=f"m/1/costly/{STATEMENT_NAME}", Body=b"{}")
    return bucket


@pytest.fixture
def small_metadata_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.compliance import store

    monkeypatch.setattr(store, "METADATA_MAX_BYTES", 4096)  # so a 5 KB manifest is "oversized"


def test_the_listing_flags_hostile_manifests_and_keeps_the_rest(
    s3: Any, hostile_bucket: str, small_metadata_limit: None
) -> None:
    complete = list_bundles(s3, hostile_bucket)
    assert sorted(b.uri.rsplit("/", 2)[-2] for b in complete) == ["costly", "good"]
    every = {b.uri.rsplit("/", 2)[-2]: b for b in list_bundles(s3, hostile_bucket, include_incomplete=True)}
    assert "nested too deeply" in (every["deep"].problem or "") and not every["deep"].complete
    assert "over the 4096-byte limit" in (every["huge"].problem or "") and not every["huge"].complete
    assert every["good"].problem is None and every["good"].complete


def test_the_page_shows_the_real_bundles_and_counts_the_flagged(
    s3: Any, hostile_bucket: str, small_metadata_limit: None
) -> None:
    from include.compliance_ui.app import render_page
    from include.compliance_ui.catalog import collect_catalog, group_by_model

    catalog = collect_catalog(s3, {hostile_bucket: ["m/"]})
    assert len(catalog.rows) == 2 and len(catalog.flagged) == 2
    costly = next(r for r in catalog.rows if r.uri.endswith("/costly/"))
    assert costly.cost_total is None and costly.fidelity_score is None  # shown as "-", not a crash
    html = render_page(
        group_by_model(catalog.rows), {}, user="u", has_key=False, key_note="", flagged=len(catalog.flagged)
    )
    assert 'data-flagged="2"' in html and html.count('class="bundle"') == 2
    assert "2 bundle locations could not be read" in html and "were skipped" in html
    assert "m/1/deep" not in html  # a flagged location names no DAG: it is counted, not shown


def test_xac_bundle_list_lists_by_time_and_flags_on_request(
    s3: Any, hostile_bucket: str, small_metadata_limit: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from include.cli import main as cli

    monkeypatch.setattr(cli, "_s3", lambda: s3)
    assert cli.main(["bundle", "list", "--bucket", hostile_bucket]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and not any("FLAGGED" in line for line in lines)
    assert cli.main(["bundle", "list", "--bucket", hostile_bucket, "--include-incomplete", "--json"]) == 0
    listed = {Path(b["uri"].rstrip("/")).name: b for b in json.loads(capsys.readouterr().out)}
    assert listed["deep"]["problem"] and listed["huge"]["problem"] and listed["good"]["problem"] is None
    assert cli.main(["bundle", "list", "--bucket", hostile_bucket, "--include-incomplete"]) == 0
    assert sum("FLAGGED: " in line for line in capsys.readouterr().out.splitlines()) == 2
