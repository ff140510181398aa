"""Walking a model's hash chain: every predecessor verified, every link checked, failures named.

Also the streamed S3 verification (objects hashed as they download, ranged GETs for large ones).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.compliance import (
    MANIFEST_NAME,
    STATEMENT_NAME,
    build_bundle,
    download_bundle,
    public_key_pem,
    publish_bundle,
    verify_bundle,
)

from .conftest import sample_run, write_sample_files

pytestmark = pytest.mark.integration

Chain = list[tuple[str, str]]  # (uri, bundle_id), oldest first


def _chain(
    s3: Any,
    signer: Any,
    tmp_path: Path,
    bucket: str,
    count: int = 4,
    *,
    model: str = "diagnosis-risk-tabular",
    big_bytes: int = 0,
    signers: list[Any] | None = None,
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
) -> Chain:
    """``count`` bundles of one model a day apart, each linking to the one before, published to
    ``bucket``; with ``signers``, one bundle per signer (key rotations), signed by it."""
    chain: Chain = []
    for i, signed_by in enumerate(signers or [signer] * count):
        staging = tmp_path / f"{bucket}-{i}"
        write_sample_files(staging, seed=f"run{i}", big_bytes=big_bytes)
        previous = {"uri": chain[-1][0], "bundle_id": chain[-1][1]} if chain else None
        manifest = build_bundle(
            staging,
            run=sample_run(model=model, run_id=f"r{i}"),
            signer=signed_by,
            previous=previous,
            created_at=start + timedelta(days=i),
        )
        uri = publish_bundle(
            staging,
            s3_client=s3,
            bucket=bucket,
            prefix=f"{model}/1/runs/r{i}",
            public_key_pem=public_key_pem(signed_by),
        )
        chain.append((uri, manifest.bundle_id))
    return chain


def _prefix(uri: str) -> str:
    return uri.split("/", 3)[3].rstrip("/")


def _delete_bundle(s3: Any, bucket: str, uri: str) -> None:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=_prefix(uri) + "/")
    for item in listed.get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"])


def _copy_bundle(s3: Any, bucket: str, source_uri: str, target_uri: str) -> None:
    _delete_bundle(s3, bucket, target_uri)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=_prefix(source_uri) + "/")
    for item in listed.get("Contents", []):
        name = item["Key"][len(_prefix(source_uri)) + 1 :]
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        s3.put_object(Bucket=bucket, Key=f"{_prefix(target_uri)}/{name}", Body=body)


def test_a_four_bundle_chain_verifies_back_to_the_first(
    s3: Any, signer: Any, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    bucket = unique("walk")
    chain = _chain(s3, signer, tmp_path, bucket)
    single = verify_bundle(chain[-1][0], public_key_pem=public_key_pem(signer), s3_client=s3)
    report = verify_bundle(chain[-1][0], public_key_pem=public_key_pem(signer), s3_client=s3, chain=True)
    assert report.ok, report.problems
    assert [(link["uri"], link["bundle_id"]) for link in report.chain] == chain[::-1]
    assert all(link["ok"] for link in report.chain) and report.chain_complete
    assert report.files_checked == 4 * single.files_checked
    assert report.bytes_checked > 3 * single.bytes_checked
    assert report.to_dict()["chain"] == report.chain

    limited = verify_bundle(
        chain[-1][0], public_key_pem=public_key_pem(signer), s3_client=s3, chain=True, max_depth=1
    )
    assert limited.ok and len(limited.chain) == 2 and not limited.chain_complete

    # A downloaded copy walks the same chain (its link points into S3).
    local = download_bundle(s3, chain[-1][0], tmp_path / "downloaded")
    assert verify_bundle(local, public_key_pem=public_key_pem(signer), s3_client=s3, chain=True).ok
    without_s3 = verify_bundle(local, public_key_pem=public_key_pem(signer), chain=True)
    assert not without_s3.ok and "needs access to S3" in without_s3.problems[0]


def test_a_missing_bundle_in_the_middle_is_named(
    s3: Any, signer: Any, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    bucket = unique("walk-missing")
    chain = _chain(s3, signer, tmp_path, bucket)
    _delete_bundle(s3, bucket, chain[1][0])
    key = public_key_pem(signer)
    # The head alone still verifies: its own link (to bundle 3) is intact. Only the walk sees the gap.
    assert verify_bundle(chain[-1][0], public_key_pem=key, s3_client=s3).ok
    report = verify_bundle(chain[-1][0], public_key_pem=key, s3_client=s3, chain=True)
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    assert report.problems[0].startswith(f"chain broken at chain link 2 ({chain[2][0]} -> {chain[1][0]})")
    assert "missing or incomplete" in report.problems[0]
    assert [link["ok"] for link in report.chain] == [True, True, False]


def test_a_replaced_bundle_is_named(
    s3: Any, signer: Any, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    bucket = unique("walk-replaced")
    chain = _chain(s3, signer, tmp_path, bucket)
    # Someone holding the signing key rebuilds bundle 1 with other content at the same place.
    staging = tmp_path / "forged"
    write_sample_files(staging, seed="forged")
    forged = build_bundle(
        staging,
        run=sample_run(run_id="r1"),
        signer=signer,
        previous={"uri": chain[0][0], "bundle_id": chain[0][1]},
        created_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    _delete_bundle(s3, bucket, chain[1][0])
    publish_bundle(
        staging,
        s3_client=s3,
        bucket=bucket,
        prefix=_prefix(chain[1][0]),
        public_key_pem=public_key_pem(signer),
    )
    report = verify_bundle(chain[-1][0], public_key_pem=public_key_pem(signer), s3_client=s3, chain=True)
    assert not report.ok
    assert report.problems == [
        f"chain broken at chain link 2 ({chain[2][0]} -> {chain[1][0]}): the previous bundle is "
        f"{forged.bundle_id}, but {chain[2][0]} was signed after {chain[1][1]} (replaced?)"
    ]
    # The walk goes on past the replaced bundle: the first one is still checked.
    assert len(report.chain) == 4


def test_swapped_bundles_are_detected_where_the_order_breaks(
    s3: Any, signer: Any, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    bucket = unique("walk-swapped")
    chain = _chain(s3, signer, tmp_path, bucket)
    saved = tmp_path / "swap"
    # Re-order two bundles: bundle 1's objects now sit where bundle 2 was, and the other way round.
    download_bundle(s3, chain[1][0], saved)
    _copy_bundle(s3, bucket, chain[2][0], chain[1][0])
    _delete_bundle(s3, bucket, chain[2][0])
    publish_bundle(
        saved, s3_client=s3, bucket=bucket, prefix=_prefix(chain[2][0]), public_key_pem=public_key_pem(signer)
    )
    report = verify_bundle(chain[-1][0], public_key_pem=public_key_pem(signer), s3_client=s3, chain=True)
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"chain broken at chain link 1 ({chain[3][0]} -> {chain[2][0]})" in text
    assert f"{chain[3][0]} was signed after {chain[2][1]} (replaced?)" in text


def test_out_of_order_and_mixed_model_links_are_refused(
    s3: Any, signer: Any, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    bucket = unique("walk-order")
    chain = _chain(s3, signer, tmp_path, bucket, count=2)
    key = public_key_pem(signer)
    # A bundle that claims to follow bundle 1 but is dated before it.
    staging = tmp_path / "backdated"
    write_sample_files(staging, seed="backdated")
    build_bundle(
        staging,
        run=sample_run(run_id="r-back"),
        signer=signer,
        previous={"uri": chain[1][0], "bundle_id": chain[1][1]},
        created_at=datetime(2025, 12, 1, tzinfo=UTC),
    )
    back = publish_bundle(
        staging, s3_client=s3, bucket=bucket, prefix="diagnosis-risk-tabular/1/runs/back", public_key_pem=key
    )
    report = verify_bundle(back, public_key_pem=key, s3_client=s3, chain=True)
    assert [p for p in report.problems if p.startswith("chain out of order")] == [
        f"chain out of order at chain link 1 ({back} -> {chain[1][0]}): the previous bundle was created "
        f"2026-01-02T00:00:00.000000Z, not before its successor (2025-12-01T00:00:00.000000Z)"
    ]
    # A bundle of another model linking into this chain.
    staging = tmp_path / "other-model"
    write_sample_files(staging, seed="other")
    build_bundle(
        staging,
        run=sample_run(model="multimodal-image-classifier-v3", run_id="x"),
        signer=signer,
        previous={"uri": chain[1][0], "bundle_id": chain[1][1]},
    )
    other = publish_bundle(
        staging, s3_client=s3, bucket=bucket, prefix="multimodal/1/runs/x", public_key_pem=key
    )
    report = verify_bundle(other, public_key_pem=key, s3_client=s3, chain=True)
    assert any(p.startswith("chain mixes models at chain link 1") for p in report.problems), report.problems


def test_tampering_in_a_predecessor_is_found_only_by_the_walk(
    s3: Any, signer: Any, other_signer: Any, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    bucket = unique("walk-tamper")
    chain = _chain(s3, signer, tmp_path, bucket, count=3)
    key = public_key_pem(signer)
    first = _prefix(chain[0][0])
    original = s3.get_object(Bucket=bucket, Key=f"{first}/validation.json")["Body"].read()
    s3.put_object(Bucket=bucket, Key=f"{first}/validation.json", Body=b'{"success": false}\n')
    assert verify_bundle(chain[-1][0], public_key_pem=key, s3_client=s3).ok
    report = verify_bundle(chain[-1][0], public_key_pem=key, s3_client=s3, chain=True)
    assert report.problems == [
        f"{chain[0][0]}: validation.json: size mismatch (manifest {len(original)} bytes, file 19 bytes)"
    ]
    # The wrong key fails every bundle of the chain, each named.
    report = verify_bundle(
        chain[-1][0], public_key_pem=public_key_pem(other_signer), s3_client=s3, chain=True
    )
    failing = [p for p in report.problems if "signature does not verify" in p]
    assert len(failing) == 3 and sum(p.startswith(chain[1][0]) for p in failing) == 1


def test_large_objects_are_verified_from_parallel_ranged_gets(
    s3: Any, signer: Any, tmp_path: Path, unique: Callable[[str], str]
) -> None:
    bucket = unique("ranged")
    [(uri, _)] = _chain(s3, signer, tmp_path, bucket, count=1, big_bytes=3 * 1024 * 1024 + 17)
    key = public_key_pem(signer)
    ranged = {"range_threshold": 1024 * 1024, "part_size": 256 * 1024, "workers": 3}
    report = verify_bundle(uri, public_key_pem=key, s3_client=s3, **ranged)
    streamed = verify_bundle(uri, public_key_pem=key, s3_client=s3)
    assert report.ok and streamed.ok, report.problems
    assert report.bytes_checked == streamed.bytes_checked

    big = f"{_prefix(uri)}/plots/big.bin"
    data = bytearray(s3.get_object(Bucket=bucket, Key=big)["Body"].read())
    before = hashlib.sha256(data).hexdigest()
    data[2 * 1024 * 1024 + 5] ^= 0x01  # one bit, in a part in the middle
    s3.put_object(Bucket=bucket, Key=big, Body=bytes(data))
    for options in (ranged, {}):
        report = verify_bundle(uri, public_key_pem=key, s3_client=s3, **options)
        after = hashlib.sha256(data).hexdigest()
        assert report.problems == [
            f"plots/big.bin: sha256 mismatch (manifest {before[:12]}…, file {after[:12]}…)"
        ]
    s3.put_object(Bucket=bucket, Key=big, Body=bytes(data[:-100]))  # truncated
    report = verify_bundle(uri, public_key_pem=key, s3_client=s3, **ranged)
    assert report.problems == [
        f"plots/big.bin: size mismatch (manifest {len(data)} bytes, file {len(data) - 100} bytes)"
    ]
    s3.delete_object(Bucket=bucket, Key=big)
    report = verify_bundle(uri, public_key_pem=key, s3_client=s3, **ranged)
    assert report.problems == ["plots/big.bin: missing (listed in manifest)"]


def test_cli_verify_chain_exit_codes_and_messages(
    s3_server: Any,
    s3: Any,
    signer: Any,
    tmp_path: Path,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from include.cli.main import EXIT_CHECK_FAILED, EXIT_OK, main

    bucket = unique("walk-cli")
    chain = _chain(s3, signer, tmp_path, bucket, count=3)
    key_file = tmp_path / "bundle-signing.pub.pem"
    key_file.write_bytes(public_key_pem(signer))
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint_url)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    head = chain[-1][0]
    assert main(["bundle", "verify", head, "--public-key", str(key_file), "--chain"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "chain of 3 bundle(s)" in out and f"chain[2] ok {chain[0][0]}" in out

    s3.delete_object(Bucket=bucket, Key=f"{_prefix(chain[0][0])}/{STATEMENT_NAME}")
    # Without --chain the head and its direct link still verify; with it, the missing first bundle fails.
    assert main(["bundle", "verify", head, "--public-key", str(key_file)]) == EXIT_OK
    capsys.readouterr()
    assert main(["bundle", "verify", head, "--public-key", str(key_file), "--chain"]) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert f"FAIL chain broken at chain link 2 ({chain[1][0]} -> {chain[0][0]})" in out
    assert "NOT verified" in out
    assert (
        main(["bundle", "verify", head, "--public-key", str(key_file), "--chain", "--max-depth", "1"])
        == EXIT_OK
    )
    assert "--max-depth" in capsys.readouterr().out
    assert os.environ["S3_ENDPOINT_URL"] == s3_server.endpoint_url
    assert MANIFEST_NAME == "manifest.json"
