"""Retention: lifecycle rules and Object Lock against a real moto S3 server on 127.0.0.1.

moto 5.2 does not implement get_object_retention: the lock fields are read from head_object.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from include.compliance.retention import (
    RetentionError,
    Transition,
    add_years,
    apply_retention,
    bundle_storage_cost,
    ensure_staging_expiry,
    lifecycle_rule,
    object_lock_settings,
    retention_days,
    rule_id,
)

Unique = Callable[[str], str]


def _lock_bucket(s3: Any, name: str, default: dict[str, Any] | None = None) -> str:
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    if default is not None:
        s3.put_object_lock_configuration(
            Bucket=name,
            ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": default}},
        )
    return name


def _put(s3: Any, bucket: str, key: str, body: bytes, **extra: Any) -> str:
    # AWS requires a checksum on PUTs that carry Object Lock parameters; the publisher sends SHA-256.
    response = s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
        **extra,
    )
    return str(response["VersionId"])


def _rules(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"])


# --------------------------------------------------------------------------- pure rules


def test_retention_days_cover_leap_years() -> None:
    assert retention_days(1) == 366
    assert retention_days(4) == 1461
    assert retention_days(10) == 3653
    # Whatever the start date, the period in days is never shorter than the calendar years.
    for start in (datetime(2024, 2, 29, tzinfo=UTC), datetime(2027, 3, 1, tzinfo=UTC)):
        for years in (1, 6, 10):
            assert (add_years(start, years) - start).days <= retention_days(years)


def test_add_years_moves_29_february_forward() -> None:
    assert add_years(datetime(2028, 2, 29, 12, tzinfo=UTC), 1) == datetime(2029, 3, 1, 12, tzinfo=UTC)
    assert add_years(datetime(2026, 11, 27, tzinfo=UTC), 10) == datetime(2036, 11, 27, tzinfo=UTC)


def test_rule_expires_only_without_a_lock_mode() -> None:
    unlocked = lifecycle_rule(
        "/models/a", years=10, mode=None, transitions=[(30, "STANDARD_IA"), (90, "GLACIER")]
    )
    assert unlocked["Filter"] == {"Prefix": "models/a/"}
    assert unlocked["ID"] == rule_id("models/a/") == rule_id("models/a")
    assert unlocked["Transitions"] == [
        {"Days": 30, "StorageClass": "STANDARD_IA"},
        {"Days": 90, "StorageClass": "GLACIER"},
    ]
    assert unlocked["Expiration"] == {"Days": 3653}
    assert unlocked["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}

    locked = lifecycle_rule("models/a", years=10, mode="COMPLIANCE")
    assert "Expiration" not in locked and "NoncurrentVersionExpiration" not in locked
    assert locked["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER"}]
    assert rule_id("models/a") != rule_id("models/ab")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": "/", "years": 1, "mode": None}, "empty prefix"),
        ({"prefix": "p", "years": 0, "mode": None}, "years"),
        ({"prefix": "p", "years": 1, "mode": "LEGAL_HOLD"}, "mode"),
        ({"prefix": "p", "years": 1, "mode": None, "transitions": [(10, "STANDARD_IA")]}, "after 30 days"),
        ({"prefix": "p", "years": 1, "mode": None, "transitions": [(30, "TAPE")]}, "unknown storage class"),
        (
            {"prefix": "p", "years": 1, "mode": None, "transitions": [(90, "GLACIER"), (30, "DEEP_ARCHIVE")]},
            "increasing",
        ),
        (
            {"prefix": "p", "years": 1, "mode": None, "transitions": [(30, "GLACIER"), (90, "STANDARD_IA")]},
            "colder",
        ),
        ({"prefix": "p", "years": 1, "mode": None, "transitions": [(400, "GLACIER")]}, "must end after"),
    ],
)
def test_rule_rejects_what_s3_would_refuse_or_misapply(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RetentionError, match=message):
        lifecycle_rule(**kwargs)


def test_bundle_storage_cost_uses_binary_gigabytes() -> None:
    assert bundle_storage_cost(2**30, price_per_gb_month=0.023) == pytest.approx(0.023)
    assert bundle_storage_cost(2**29, price_per_gb_month=0.0036, months=120) == pytest.approx(0.216)
    assert bundle_storage_cost(0, price_per_gb_month=1.0) == 0.0
    with pytest.raises(ValueError):
        bundle_storage_cost(-1, price_per_gb_month=0.023)


# --------------------------------------------------------------------------- lifecycle on S3

# These start a moto server (module fixture in conftest.py).
integration = pytest.mark.integration


@integration
def test_lifecycle_rule_is_merged_idempotently(s3: Any, unique: Unique) -> None:
    bucket = unique("retention-lc")
    s3.create_bucket(Bucket=bucket)
    other = {
        "ID": "team-scratch-cleanup",
        "Filter": {"Prefix": "scratch/"},
        "Status": "Enabled",
        "Expiration": {"Days": 7},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})

    first = apply_retention(
        s3, bucket, "diagnosis-risk/kernelshap/", years=10, mode=None, transitions=[Transition(90, "GLACIER")]
    )
    assert first["changed"] is True
    assert first["expiration_days"] == 3653
    assert first["object_lock_enabled"] is False
    rules = {r["ID"]: r for r in _rules(s3, bucket)}
    assert set(rules) == {"team-scratch-cleanup", first["rule_id"]}
    assert rules["team-scratch-cleanup"]["Expiration"] == {"Days": 7}
    ours = rules[first["rule_id"]]
    assert ours["Filter"] == {"Prefix": "diagnosis-risk/kernelshap/"}
    assert ours["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER"}]
    assert ours["Expiration"] == {"Days": 3653}

    again = apply_retention(
        s3, bucket, "diagnosis-risk/kernelshap", years=10, mode=None, transitions=[(90, "GLACIER")]
    )
    assert again["changed"] is False
    assert {r["ID"]: r for r in _rules(s3, bucket)} == rules

    # A new policy for the same prefix replaces our rule in place; the other rule survives.
    changed = apply_retention(
        s3,
        bucket,
        "diagnosis-risk/kernelshap/",
        years=6,
        mode=None,
        transitions=[(30, "STANDARD_IA"), (180, "DEEP_ARCHIVE")],
    )
    assert changed["changed"] is True and changed["rule_id"] == first["rule_id"]
    after = {r["ID"]: r for r in _rules(s3, bucket)}
    assert set(after) == {"team-scratch-cleanup", first["rule_id"]}
    assert after[first["rule_id"]]["Expiration"] == {"Days": retention_days(6)}
    assert [t["StorageClass"] for t in after[first["rule_id"]]["Transitions"]] == [
        "STANDARD_IA",
        "DEEP_ARCHIVE",
    ]

    # A second config's prefix gets its own rule.
    second = apply_retention(s3, bucket, "image-classifier/", years=1, mode=None, transitions=())
    assert second["rule_id"] != first["rule_id"]
    assert len(_rules(s3, bucket)) == 3
    assert second["transitions"] == []


@integration
def test_staging_expiry_rule_sits_beside_the_bundle_rules(s3: Any, unique: Unique) -> None:
    """What failed runs leave under _staging/ expires; bundle rules and others are kept, both ways round."""
    bucket = unique("retention-staging")
    s3.create_bucket(Bucket=bucket)
    bundles = apply_retention(s3, bucket, "diagnosis-risk/kernelshap/", years=10, mode=None)
    assert ensure_staging_expiry(s3, bucket) is True
    assert ensure_staging_expiry(s3, bucket) is False  # idempotent: nothing written the second time
    rules = {r["ID"]: r for r in _rules(s3, bucket)}
    assert set(rules) == {bundles["rule_id"], "xac-staging-expiry"}
    staging = rules["xac-staging-expiry"]
    assert staging["Filter"] == {"Prefix": "_staging/"} and staging["Expiration"] == {"Days": 7}
    assert staging["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    # a later publish (apply_retention) keeps the staging rule
    apply_retention(s3, bucket, "image-classifier/", years=1, mode=None, transitions=())
    assert "xac-staging-expiry" in {r["ID"] for r in _rules(s3, bucket)}
    with pytest.raises(RetentionError, match="empty prefix"):
        ensure_staging_expiry(s3, bucket, "/")
    with pytest.raises(RetentionError, match="at least 1 day"):
        ensure_staging_expiry(s3, bucket, days=0)


@integration
def test_overlapping_rules_are_reported(s3: Any, unique: Unique) -> None:
    bucket = unique("retention-overlap")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [{"ID": "everything", "Filter": {}, "Status": "Enabled", "Expiration": {"Days": 30}}]
        },
    )
    result = apply_retention(s3, bucket, "models/", years=1, mode=None, transitions=())
    assert result["overlapping_rules"] == ["everything"]


@integration
def test_lock_mode_on_an_unlocked_bucket_is_refused(s3: Any, unique: Unique) -> None:
    bucket = unique("retention-nolock")
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(RetentionError, match="no Object Lock"):
        apply_retention(s3, bucket, "models/", years=10, mode="COMPLIANCE", transitions=())
    with pytest.raises(ClientError):
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)  # nothing was written
    assert object_lock_settings(s3, bucket, years=10, mode="COMPLIANCE") == {}


# --------------------------------------------------------------------------- Object Lock on S3


@integration
def test_compliance_retention_applies_on_put_and_blocks_deletion(s3: Any, unique: Unique) -> None:
    bucket = _lock_bucket(s3, unique("retention-lock"))
    result = apply_retention(s3, bucket, "models/a/", years=10, mode="COMPLIANCE")
    assert result["object_lock_enabled"] is True and result["expiration_days"] is None
    assert "Expiration" not in {r["ID"]: r for r in _rules(s3, bucket)}[result["rule_id"]]

    now = datetime(2026, 11, 27, 8, 30, 15, 250_000, tzinfo=UTC)
    extra = object_lock_settings(s3, bucket, years=10, mode="COMPLIANCE", now=now)
    assert extra == {
        "ObjectLockMode": "COMPLIANCE",
        "ObjectLockRetainUntilDate": datetime(2036, 11, 27, 8, 30, 16, tzinfo=UTC),
    }
    version = _put(s3, bucket, "models/a/runs/r1/manifest.json", b'{"bundle_id": "x"}', **extra)

    head = s3.head_object(Bucket=bucket, Key="models/a/runs/r1/manifest.json")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"].astimezone(UTC) == extra["ObjectLockRetainUntilDate"]

    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key="models/a/runs/r1/manifest.json", VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    body = s3.get_object(Bucket=bucket, Key="models/a/runs/r1/manifest.json", VersionId=version)[
        "Body"
    ].read()
    assert body == b'{"bundle_id": "x"}'


@integration
def test_governance_retention_blocks_deletion_without_bypass(s3: Any, unique: Unique) -> None:
    bucket = _lock_bucket(s3, unique("retention-gov"))
    extra = object_lock_settings(s3, bucket, years=1, mode="GOVERNANCE")
    assert extra["ObjectLockMode"] == "GOVERNANCE"
    until = extra["ObjectLockRetainUntilDate"]
    assert timedelta(days=365) <= until - datetime.now(UTC) <= timedelta(days=366, seconds=5)
    version = _put(s3, bucket, "k/report.html", b"<html></html>", **extra)
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key="k/report.html", VersionId=version)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@integration
def test_bucket_default_retention_is_never_weakened(s3: Any, unique: Unique) -> None:
    bucket = _lock_bucket(s3, unique("retention-default"), default={"Mode": "COMPLIANCE", "Years": 20})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    extra = object_lock_settings(s3, bucket, years=1, mode="GOVERNANCE", now=now)
    assert extra == {
        "ObjectLockMode": "COMPLIANCE",
        "ObjectLockRetainUntilDate": datetime(2046, 1, 1, 0, 0, 1, tzinfo=UTC),
    }
    # No mode asked: nothing explicit on the put, the bucket's default applies by itself.
    assert object_lock_settings(s3, bucket, years=1, mode=None) == {}
    _put(s3, bucket, "k/a.json", b"{}")
    head = s3.head_object(Bucket=bucket, Key="k/a.json")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"].astimezone(UTC) > datetime.now(UTC) + timedelta(days=19 * 365)
