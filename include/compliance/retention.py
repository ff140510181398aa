"""Retention of compliance bundles in S3: a lifecycle rule on the bundle prefix, Object Lock on each put.

Two mechanisms, two jobs:

* **Object Lock** (WORM) makes every object version undeletable and unchangeable until its
  retain-until date. ``COMPLIANCE`` mode binds everyone, the root account included; ``GOVERNANCE``
  can be lifted by principals holding ``s3:BypassGovernanceRetention``. It must be enabled on the
  bucket (which forces versioning); :func:`object_lock_settings` returns the per-put arguments.
* A **lifecycle rule** moves objects to cheaper storage classes as they age and, when no lock mode is
  used, expires them once the retention period is over (data minimisation: keeping evidence that
  holds personal data longer than needed is a GDPR problem of its own). With a lock mode there is no
  expiration: S3 refuses to delete a locked version anyway, and an expiration would only add delete
  markers that hide bundles which are still retained and still billed.

The rule is keyed by prefix (``xac-retention-<sha256(prefix)[:16]>``), so applying it again replaces
our rule in place and leaves every other rule of the bucket untouched. Apply it to a config's listing
prefix (all its bundles), not to one run's prefix: S3 allows at most 1,000 rules per bucket.

The AI Act's minimums for context: logs at least six months (Art. 19(1), 26(6)); technical
documentation 10 years after the system is placed on the market (Art. 18(1)). Sector law often
requires longer. Which applies is a policy decision; this module only enforces the chosen period.

S3 facts the defaults rely on (AWS documentation, 2024-2026):

* Since September 2024 lifecycle rules do not transition objects smaller than 128 KiB by default
  (``TransitionDefaultMinimumObjectSize``); most JSON files of a bundle therefore stay in their first
  class, which is also cheaper for them: every object archived to GLACIER or DEEP_ARCHIVE is billed
  32 KiB of index at the archive rate plus 8 KiB of metadata at the STANDARD rate, and GLACIER_IR
  bills at least 128 KiB per object.
* Lifecycle transitions to STANDARD_IA or ONEZONE_IA need objects at least 30 days old.
* PUTs carrying Object Lock parameters need a content checksum (Content-MD5 or an
  ``x-amz-checksum-*``); :func:`include.compliance.store.publish_bundle` already sends SHA-256.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

RETENTION_MODES = ("GOVERNANCE", "COMPLIANCE")
# S3's lifecycle "waterfall": a rule may only move objects down this list, never back up.
TRANSITION_CLASSES = (
    "STANDARD_IA",
    "INTELLIGENT_TIERING",
    "ONEZONE_IA",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
)
_MIN_TRANSITION_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30}
RULE_ID_PREFIX = "xac-retention-"
# Parts of an abandoned multipart upload are billed until aborted; a week covers any real retry.
ABORT_INCOMPLETE_MULTIPART_DAYS = 7
# AWS bills S3 storage per "GB-month" with GB = 2**30 bytes.
BYTES_PER_BILLED_GB = 2**30


class Transition(NamedTuple):
    """Move objects to ``storage_class`` once they are ``days`` old."""

    days: int
    storage_class: str


DEFAULT_TRANSITIONS: tuple[Transition, ...] = (Transition(90, "GLACIER"),)


class RetentionError(ValueError):
    """The requested retention cannot be expressed or enforced on this bucket."""


# --------------------------------------------------------------------------- pure helpers


def retention_days(years: int) -> int:
    """Whole days that cover ``years`` calendar years from any start date (leap days included)."""
    _check_years(years)
    return 365 * years + math.ceil(years / 4)


def add_years(moment: datetime, years: int) -> datetime:
    """``moment`` plus ``years`` calendar years; 29 February moves to 1 March (never earlier)."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return moment.replace(year=moment.year + years, month=3, day=1)


def rule_id(prefix: str) -> str:
    """The ID of our lifecycle rule for ``prefix`` (stable, under S3's 255-character limit)."""
    return RULE_ID_PREFIX + hashlib.sha256(_normalise_prefix(prefix).encode("utf-8")).hexdigest()[:16]


def _check_years(years: int) -> None:
    if isinstance(years, bool) or not isinstance(years, int) or years < 1:
        raise RetentionError(f"years must be a whole number of at least 1, not {years!r}")


def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in RETENTION_MODES:
        raise RetentionError(f"mode must be one of {', '.join(RETENTION_MODES)} or None, not {mode!r}")


def _normalise_prefix(prefix: str) -> str:
    cleaned = prefix.strip("/")
    if not cleaned:
        # A bucket-wide rule would also expire the published public keys (_keys/) and other tenants.
        raise RetentionError("refusing a retention rule on an empty prefix (the whole bucket)")
    # The trailing slash keeps "models/a" from also matching "models/ab...".
    return cleaned + "/"


def _as_transitions(transitions: Iterable[Transition | tuple[int, str]]) -> list[Transition]:
    result = []
    for item in transitions:
        days, storage_class = item
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise RetentionError(f"transition days must be a whole number >= 0, not {days!r}")
        if storage_class not in TRANSITION_CLASSES:
            raise RetentionError(
                f"unknown storage class {storage_class!r}; lifecycle transitions go to "
                + ", ".join(TRANSITION_CLASSES)
            )
        minimum = _MIN_TRANSITION_DAYS.get(storage_class, 0)
        if days < minimum:
            raise RetentionError(f"S3 moves objects to {storage_class} only after {minimum} days, not {days}")
        result.append(Transition(days, storage_class))
    for before, after in itertools.pairwise(result):
        if after.days <= before.days:
            raise RetentionError("transitions must be listed with strictly increasing days")
        if TRANSITION_CLASSES.index(after.storage_class) <= TRANSITION_CLASSES.index(before.storage_class):
            raise RetentionError(
                f"cannot transition from {before.storage_class} to {after.storage_class}: "
                "S3 only moves objects to colder classes (" + " > ".join(TRANSITION_CLASSES) + ")"
            )
    return result


def lifecycle_rule(
    prefix: str,
    *,
    years: int,
    mode: str | None,
    transitions: Sequence[Transition | tuple[int, str]] = DEFAULT_TRANSITIONS,
) -> dict[str, Any]:
    """The lifecycle rule for ``prefix``, in the shape ``put_bucket_lifecycle_configuration`` takes."""
    _check_years(years)
    _check_mode(mode)
    steps = _as_transitions(transitions)
    normalised = _normalise_prefix(prefix)
    rule: dict[str, Any] = {
        "ID": rule_id(normalised),
        "Filter": {"Prefix": normalised},
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_MULTIPART_DAYS},
    }
    if steps:
        rule["Transitions"] = [{"Days": s.days, "StorageClass": s.storage_class} for s in steps]
    if mode is None:
        days = retention_days(years)
        if steps and days <= steps[-1].days:
            raise RetentionError(
                f"the retention period ({days} days) must end after the last transition "
                f"({steps[-1].days} days)"
            )
        rule["Expiration"] = {"Days": days}
        # On a versioned bucket an expiration only adds a delete marker; this removes the data itself
        # a day later. On an unversioned bucket S3 accepts it and it has nothing to do.
        rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": 1}
    return rule


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _overlaps(rule: dict[str, Any], prefix: str) -> bool:
    """Whether another rule may act on objects under ``prefix`` (so S3 would combine their actions)."""
    filt = rule.get("Filter")
    if filt is None:
        other = rule.get("Prefix", "")  # the legacy top-level Prefix form
    else:
        other = filt.get("Prefix", filt.get("And", {}).get("Prefix", ""))
    other = other or ""
    return prefix.startswith(other) or other.startswith(prefix)


# --------------------------------------------------------------------------- S3


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _lifecycle_rules(s3_client: Any, bucket: str) -> list[dict[str, Any]]:
    from botocore.exceptions import ClientError

    try:
        return list(s3_client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", []))
    except ClientError as exc:
        if _error_code(exc) == "NoSuchLifecycleConfiguration":
            return []
        raise


def _lock_configuration(s3_client: Any, bucket: str) -> dict[str, Any] | None:
    """The bucket's Object Lock configuration, or None when Object Lock is not enabled."""
    from botocore.exceptions import ClientError

    try:
        config = s3_client.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration", {})
    except ClientError as exc:
        if _error_code(exc) == "ObjectLockConfigurationNotFoundError":
            return None
        raise
    return dict(config) if config.get("ObjectLockEnabled") == "Enabled" else None


def _put_rule(s3_client: Any, bucket: str, rule: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
    """Put (or replace) one rule by its ID, keeping the bucket's other rules; no write when unchanged.

    Returns whether it wrote, and the rules the bucket had before.
    """
    existing = _lifecycle_rules(s3_client, bucket)
    ours = next((r for r in existing if r.get("ID") == rule["ID"]), None)
    changed = ours is None or _canonical(ours) != _canonical(rule)
    if changed:
        merged = [rule if r.get("ID") == rule["ID"] else r for r in existing]
        if ours is None:
            merged.append(rule)
        s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": merged})
    return changed, existing


STAGING_RULE_ID = "xac-staging-expiry"
STAGING_EXPIRY_DAYS = 7


def ensure_staging_expiry(
    s3_client: Any, bucket: str, prefix: str = "_staging/", *, days: int = STAGING_EXPIRY_DAYS
) -> bool:
    """Expire what runs stage for the explainer (validated frames, shard outputs, pod records) after
    ``days``: a run removes its staging folder when it publishes, but a run that fails or is abandoned
    after staging would otherwise leave it forever. Idempotent; returns whether the rule was written.
    Never applied to bundle prefixes (bundles have their own retention rule)."""
    if days < 1:
        raise RetentionError(f"staging expiry must be at least 1 day, got {days}")
    rule = {
        "ID": STAGING_RULE_ID,
        "Filter": {"Prefix": _normalise_prefix(prefix)},
        "Status": "Enabled",
        "Expiration": {"Days": days},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_MULTIPART_DAYS},
    }
    changed, _ = _put_rule(s3_client, bucket, rule)
    return changed


def apply_retention(
    s3_client: Any,
    bucket: str,
    prefix: str,
    *,
    years: int,
    mode: str | None,
    transitions: Sequence[Transition | tuple[int, str]] = DEFAULT_TRANSITIONS,
) -> dict[str, Any]:
    """Put (or replace) our lifecycle rule on ``prefix``, keeping every other rule of the bucket.

    ``mode`` is the Object Lock mode the bundles are written with (``GOVERNANCE``/``COMPLIANCE``), or
    None for no lock, in which case the rule also expires objects after ``years``. A lock mode on a
    bucket without Object Lock raises :class:`RetentionError`: the retention would silently not hold.
    Idempotent: when our rule is already in place nothing is written (``changed`` is False).

    Lifecycle configuration is one document per bucket, replaced as a whole; two writers racing on
    the same bucket can lose each other's rules. Run it from one place (the DAG's publish step).
    """
    rule = lifecycle_rule(prefix, years=years, mode=mode, transitions=transitions)
    locked = _lock_configuration(s3_client, bucket) is not None
    if mode is not None and not locked:
        raise RetentionError(
            f"retention mode {mode} requested but bucket {bucket} has no Object Lock; create the bucket "
            "with ObjectLockEnabledForBucket=True (or enable Object Lock on it), or use mode None"
        )
    changed, existing = _put_rule(s3_client, bucket, rule)
    prefix_key = rule["Filter"]["Prefix"]
    return {
        "bucket": bucket,
        "prefix": prefix_key,
        "rule_id": rule["ID"],
        "changed": changed,
        "years": years,
        "mode": mode,
        "object_lock_enabled": locked,
        "expiration_days": rule.get("Expiration", {}).get("Days"),
        "transitions": [f"{t['StorageClass']} after {t['Days']} days" for t in rule.get("Transitions", [])],
        # Other rules whose filter covers the same objects: S3 applies them too (expiration wins).
        "overlapping_rules": [
            str(r.get("ID")) for r in existing if r.get("ID") != rule["ID"] and _overlaps(r, prefix_key)
        ],
    }


def object_lock_settings(
    s3_client: Any,
    bucket: str,
    *,
    years: int,
    mode: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``ObjectLockMode`` and ``ObjectLockRetainUntilDate`` for the puts of one bundle, or ``{}``.

    ``{}`` when the bucket has no Object Lock, or when ``mode`` is None (the bucket's default
    retention, if any, then applies by itself). The date is computed once, so every object of a
    bundle shares it, and rounded up to the next second. When the bucket's default retention is
    longer or stricter, that wins: an explicit setting overrides the default on each put, and a
    bundle must never be protected less than the bucket promises.
    """
    _check_years(years)
    _check_mode(mode)
    if mode is None:
        return {}
    config = _lock_configuration(s3_client, bucket)
    if config is None:
        return {}
    start = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    until = add_years(start, years)
    default = config.get("Rule", {}).get("DefaultRetention", {})
    if default:
        if default.get("Days"):
            default_until = start + timedelta(days=int(default["Days"]))
        else:
            default_until = add_years(start, int(default.get("Years", 0)))
        until = max(until, default_until)
        if default.get("Mode") == "COMPLIANCE":
            mode = "COMPLIANCE"
    return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": until}


def bundle_storage_cost(size_bytes: int, *, price_per_gb_month: float, months: float = 1.0) -> float:
    """Cost of storing ``size_bytes`` for ``months`` (GB = 2**30 bytes, as AWS bills GB-months).

    Storage only: requests, transitions, retrievals and the per-object archive overhead of GLACIER
    classes are billed separately.
    """
    if size_bytes < 0 or price_per_gb_month < 0 or months < 0:
        raise ValueError("size, price and months must not be negative")
    return size_bytes / BYTES_PER_BILLED_GB * price_per_gb_month * months
