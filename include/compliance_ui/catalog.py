"""What the compliance page shows: the bundles of every configured model, and their verification status.

Plain Python (no Airflow, no FastAPI): the page, the plugin and the tests call these functions. Every
value comes from a bundle's manifest, which is untrusted until the bundle verifies; the page escapes it
and says whether it verified.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.compliance.keys import Keyring


@dataclass(frozen=True)
class BundleRow:
    """One complete bundle, as a row of the page."""

    uri: str
    bundle_id: str | None
    model: str | None
    model_version: str | None
    dag_id: str | None
    run_id: str | None
    created_at: datetime | None
    method: str | None
    cost_total: float | None
    currency: str | None
    fidelity_score: float | None
    fidelity_metric: str | None
    triggering_user: str | None
    bundle_version: str | None
    file_count: int | None
    total_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "bundle_id": self.bundle_id,
            "model": self.model,
            "model_version": self.model_version,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "method": self.method,
            "cost_total": self.cost_total,
            "currency": self.currency,
            "fidelity_score": self.fidelity_score,
            "fidelity_metric": self.fidelity_metric,
            "triggering_user": self.triggering_user,
            "bundle_version": self.bundle_version,
            "file_count": self.file_count,
            "total_bytes": self.total_bytes,
        }


def _number(value: Any) -> float | None:
    """A manifest is untrusted: a non-number, a non-finite one or one past a float's range (a
    400-digit integer) is shown as "-", not a crash."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def row_from_summary(summary: Any) -> BundleRow:
    """A :class:`include.compliance.BundleSummary` as a page row."""
    run = summary.run if isinstance(summary.run, dict) else {}
    identity = run.get("identity") if isinstance(run.get("identity"), dict) else {}
    folder_git = identity.get("dag_folder_git") if isinstance(identity.get("dag_folder_git"), dict) else {}
    # Airflow's bundle version (GitDagBundle: the commit) when the DAG bundle is versioned, else the
    # commit of the DAG folder's checkout (git-sync), so the page always says which code produced it.
    version = identity.get("bundle_version") or folder_git.get("commit")
    return BundleRow(
        uri=summary.uri,
        bundle_id=summary.bundle_id,
        model=summary.model,
        model_version=summary.version,
        dag_id=summary.dag_id,
        run_id=summary.run_id,
        created_at=summary.created_at,
        method=_text(run.get("method")),
        cost_total=_number(run.get("cost_total")),
        currency=_text(run.get("currency")),
        fidelity_score=_number(run.get("fidelity_score")),
        fidelity_metric=_text(run.get("fidelity_metric")),
        triggering_user=_text(identity.get("triggering_user")),
        bundle_version=_text(version),
        file_count=summary.file_count,
        total_bytes=summary.total_bytes,
    )


def configs_dir() -> Path:
    """The folder of ExplainerConfigurations, as the DAG file reads it (``XAC_CONFIGS_DIR`` overrides)."""
    from include.configuration.loader import EXPLAINER_CONFIGS_DIR

    return Path(os.environ.get("XAC_CONFIGS_DIR") or EXPLAINER_CONFIGS_DIR)


def bundle_locations(directory: Path | None = None) -> dict[str, list[str]]:
    """bucket -> the listing prefixes of every valid config in ``directory`` (nested prefixes merged).

    Invalid configs are skipped: they have no DAG that publishes, and their DAG (``xac-invalid-*``)
    already shows the error.
    """
    from include.configuration import ConfigError, discover_config_files, load_config
    from include.configuration.layout import model_listing_prefix

    prefixes: dict[str, set[str]] = {}
    for path in discover_config_files(directory or configs_dir()):
        try:
            config = load_config(path).config
        except ConfigError:
            continue
        prefixes.setdefault(config.spec.storage.bucket, set()).add(model_listing_prefix(config))
    merged: dict[str, list[str]] = {}
    for bucket, found in sorted(prefixes.items()):
        # A prefix below another one would list the same bundles twice.
        merged[bucket] = sorted(p for p in found if not any(q != p and p.startswith(q) for q in found))
    return merged


@dataclass(frozen=True)
class FlaggedObject:
    """A bundle location whose manifest could not be read (hostile, oversized or broken)."""

    uri: str
    problem: str


@dataclass(frozen=True)
class Catalog:
    rows: list[BundleRow]  # complete bundles, newest first
    flagged: list[FlaggedObject]  # skipped, so that one bad object never takes the page down


def collect_catalog(s3_client: Any, locations: dict[str, list[str]]) -> Catalog:
    """Every complete bundle under ``locations``, newest first, and the flagged locations (no
    verification here)."""
    from include.compliance import list_bundles

    rows: dict[str, BundleRow] = {}
    flagged: dict[str, FlaggedObject] = {}
    for bucket, prefixes in locations.items():
        for prefix in prefixes:
            for summary in list_bundles(s3_client, bucket, prefix=prefix, include_incomplete=True):
                if summary.problem:
                    flagged.setdefault(summary.uri, FlaggedObject(summary.uri, summary.problem))
                elif summary.complete:
                    rows.setdefault(summary.uri, row_from_summary(summary))
    epoch = datetime.min
    ordered = sorted(
        rows.values(),
        key=lambda r: (r.created_at.replace(tzinfo=None) if r.created_at else epoch, r.uri),
        reverse=True,
    )
    return Catalog(ordered, sorted(flagged.values(), key=lambda f: f.uri))


def collect_bundles(s3_client: Any, locations: dict[str, list[str]]) -> list[BundleRow]:
    """Every complete bundle under ``locations``, newest first (no verification here)."""
    return collect_catalog(s3_client, locations).rows


def group_by_model(rows: Iterable[BundleRow]) -> dict[str, list[BundleRow]]:
    """model name -> its bundles (newest first), models sorted by name."""
    groups: dict[str, list[BundleRow]] = {}
    for row in rows:
        groups.setdefault(row.model or "(unknown model)", []).append(row)
    return dict(sorted(groups.items()))


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    ok: bool
    problems: list[str]
    checked_at: float
    seconds: float
    key_id: str | None
    files_checked: int = 0
    bytes_checked: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "checked_at": self.checked_at,
            "seconds": round(self.seconds, 3),
            "key_id": self.key_id,
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
        }


@dataclass
class VerificationCache:
    """Results of :func:`include.compliance.verify_bundle`, kept per (URI, bundle id).

    A bundle is write-once and content-addressed, so a verified result stays true for its content; the
    hash-chain check (the previous bundle still exists, unchanged) can change later, hence ``max_age``.
    """

    max_age_seconds: float = 3600.0
    _results: dict[tuple[str, str | None], Verification] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, uri: str, bundle_id: str | None) -> Verification | None:
        with self._lock:
            found = self._results.get((uri, bundle_id))
        if found is None or time.time() - found.checked_at > self.max_age_seconds:
            return None
        return found

    def verify(self, s3_client: Any, uri: str, bundle_id: str | None, keyring: Keyring) -> Verification:
        from include.compliance import verify_bundle

        began = time.perf_counter()
        report = verify_bundle(uri, keyring=keyring, s3_client=s3_client)
        problems = list(report.problems)
        if bundle_id is not None and report.bundle_id not in (None, bundle_id):
            problems.append(f"listed as {bundle_id} but verified {report.bundle_id}: changed while listing")
        result = Verification(
            ok=report.ok and not problems,
            problems=problems,
            checked_at=time.time(),
            seconds=time.perf_counter() - began,
            key_id=report.key_id,
            files_checked=report.files_checked,
            bytes_checked=report.bytes_checked,
        )
        with self._lock:
            self._results[(uri, bundle_id)] = result
        return result
