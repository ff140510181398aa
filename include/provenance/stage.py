"""The provenance stage: retrieve features point-in-time, validate them, record where they came from.

One entry point, :func:`run_provenance`, is shared by the Airflow DAG and the ``xac`` CLI. It
writes into ``out_dir``:

* ``inference.parquet`` / ``background.parquet`` — entity key, ``event_timestamp``, features in
  the feature service's order (no target);
* ``validation.json`` — the full Great Expectations result of every validated frame;
* ``provenance.json`` — registry, feature views, source digests, Git state of the definitions,
  retrieval parameters and frame digests. Entity ids appear there only as HMAC-SHA256 hashes
  keyed with the run's salt.

Data problems (nulls, out-of-range values, stale rows, missing columns) give ``passed=False``
and a readable summary; only configuration errors (unknown feature service or ids, bad
parameters) raise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.digests import sha256_file
from include.paths import REPO_ROOT
from include.provenance.feature_data import feature_repo_dir

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

    from include.provenance.retrieval import RetrievalResult, ServiceSpec

log = logging.getLogger(__name__)

PROVENANCE_SCHEMA_VERSION = 1
INFERENCE_FILE = "inference.parquet"
BACKGROUND_FILE = "background.parquet"
PROVENANCE_FILE = "provenance.json"
VALIDATION_FILE = "validation.json"


@dataclass
class ProvenanceResult:
    """What the stage produced; ``passed`` is False when any expectation failed."""

    passed: bool
    inference_path: Path
    background_path: Path
    provenance_path: Path
    validation_path: Path
    summary: str
    # The resolved inference ids, raw: downstream file names need them. They are personal
    # identifiers for the tabular model, so do not log or publish them as they are.
    inference_ids: list[str] = field(default_factory=list)


def entity_hash(salt: str, entity_id: str) -> str:
    """HMAC-SHA256 of an entity id keyed with the run salt (hex)."""
    return hmac.new(salt.encode("utf-8"), str(entity_id).encode("utf-8"), hashlib.sha256).hexdigest()


def _sha256_source(path: Path) -> str:
    """Digest of a batch source: a file, or (Feast allows it) a folder of Parquet parts."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for part in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(part.relative_to(path)).encode() + b"\0" + sha256_file(part).encode())
    return digest.hexdigest()


def _entity_frame_digest(hashes: Iterable[str], at: datetime) -> str:
    """SHA-256 of the entity frame as Feast received it, with keys replaced by their salted hashes.

    Hashing the raw frame would let anyone who can enumerate the (small, structured) id space
    recover which ids were requested; the keyed hashes keep the digest useful for comparing
    runs that share a salt without that leak.
    """
    stamp = at.isoformat()
    digest = hashlib.sha256()
    for h in hashes:
        digest.update(f"{h}\t{stamp}\n".encode())
    return digest.hexdigest()


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        # Feast keeps registry timestamps as naive UTC.
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folder: Path) -> dict[str, Any]:
    """Commit of the Git checkout holding ``folder`` and whether the folder has local changes.

    Both are null outside a Git checkout; ``commit`` is also null in a repository without
    commits yet (and then everything in the folder is uncommitted, so ``dirty`` is true).
    """
    top = _git(["rev-parse", "--show-toplevel"], folder)
    if top is None:
        return {"in_git_checkout": False, "commit": None, "dirty": None}
    commit = _git(["rev-parse", "--verify", "--quiet", "HEAD"], folder)
    status = _git(["status", "--porcelain", "--untracked-files=all", "--", "."], folder)
    return {
        "in_git_checkout": True,
        "commit": commit or None,
        "dirty": None if status is None else (commit is None or bool(status)),
    }


def _definition_digests(repo: Path) -> dict[str, str]:
    """SHA-256 of each definitions file: identifies uncommitted definitions too."""
    files = [repo / "feature_store.yaml", *sorted(repo.glob("*.py"))]
    return {p.name: sha256_file(p) for p in files if p.is_file()}


def _validation_frame(frame: pd.DataFrame, spec: ServiceSpec, ages: pd.DataFrame, salt: str) -> pd.DataFrame:
    """The frame GX sees: keys hashed (GX lists unexpected values), feature ages appended."""
    checked = frame.copy()
    key = spec.entity_key
    if key in checked.columns:
        checked[key] = checked[key].map(lambda value: entity_hash(salt, value)).astype(object)
    for column in ages.columns:
        checked[column] = ages[column].to_numpy()
    return checked


def _feature_view_record(
    store: FeatureStore, spec: ServiceSpec, previous_digests: Mapping[str, str] | None
) -> list[dict[str, Any]]:
    records = []
    for view_spec in spec.views:
        view = view_spec.view
        source = view.batch_source
        # A local Parquet source is pinned by its bytes; a table, a query or an object in another
        # store is named as its store names it (its content is pinned by the retrieved frames).
        path = view_spec.local_file
        digest = _sha256_source(path) if path is not None and path.exists() else None
        record: dict[str, Any] = {
            "name": view.name,
            "description": view.description,
            "owner": view.owner,
            "tags": dict(sorted(view.tags.items())),
            "entities": list(view.entities),
            "features": list(view_spec.features),
            "ttl_seconds": view_spec.ttl.total_seconds() if view_spec.ttl else None,
            "online": view.online,
            "created_timestamp": _iso(view.created_timestamp),
            "last_updated_timestamp": _iso(view.last_updated_timestamp),
            "materialization_intervals": [
                {"start": _iso(start), "end": _iso(end)} for start, end in view.materialization_intervals
            ],
            "batch_source": {
                "name": source.name,
                "type": type(source).__name__,
                "path": view_spec.source_location,
                "timestamp_field": source.timestamp_field,
                "sha256": digest,
                "size_bytes": path.stat().st_size if path is not None and path.is_file() else None,
            },
        }
        if previous_digests is not None:
            before = previous_digests.get(view.name)
            record["batch_source"]["previous_sha256"] = before
            record["batch_source"]["digest_changed"] = None if before is None else before != digest
        records.append(record)
    return records


def _previous_digests(previous: Mapping[str, Any] | None) -> dict[str, str] | None:
    if previous is None:
        return None
    digests = {}
    for record in previous.get("feature_views", []):
        sha = (record.get("batch_source") or {}).get("sha256")
        if record.get("name") and sha:
            digests[record["name"]] = sha
    return digests


def _frame_record(path: Path, frame: pd.DataFrame, hashes: list[str] | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "file": path.name,
        "sha256": sha256_file(path),
        "rows": len(frame),
        "columns": len(frame.columns),
    }
    if hashes is not None:
        record["entity_hashes"] = hashes
    return record


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def run_provenance(
    *,
    feature_service: str,
    out_dir: Path,
    inference_ids: list[str] | None,
    inference_count: int,
    background_strategy: str,
    background_size: int,
    seed: int,
    salt: str,
    previous: Mapping[str, Any] | None = None,
) -> ProvenanceResult:
    """Retrieve, validate and document the inference and background sets of a feature service.

    ``previous`` (a former provenance.json, parsed) adds per-source ``digest_changed`` flags
    and a ``drift`` section. The feature repository must have been applied before
    (``feast apply``; the samples' by ``xac samples prepare``).
    """
    from include.provenance.feature_data import get_store
    from include.provenance.retrieval import feature_ages, retrieve_sets
    from include.provenance.suites import validate_frames

    if not salt:
        raise ValueError("salt must not be empty: entity ids are recorded as HMACs keyed with it")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    repo = feature_repo_dir()
    store = get_store(repo)
    from include.provenance.retrieval import service_spec
    from include.provenance.suites import suite_expectations

    suite_expectations(service_spec(store, feature_service))  # a bad suite is refused before any data is read
    at = datetime.now(UTC)
    retrieved: RetrievalResult = retrieve_sets(
        store,
        feature_service,
        inference_ids=inference_ids,
        inference_count=inference_count,
        background_strategy=background_strategy,
        background_size=background_size,
        seed=seed,
        at=at,
    )
    spec = retrieved.spec
    frames = {"inference": retrieved.inference, "background": retrieved.background}
    ids = {"inference": retrieved.inference_ids, "background": retrieved.background_ids}
    hashes = {name: [entity_hash(salt, i) for i in ids[name]] for name in frames}

    validated = {
        name: _validation_frame(frame, spec, feature_ages(spec, ids[name], at), salt)
        for name, frame in frames.items()
    }
    outcome = validate_frames(spec, validated)

    paths = {"inference": out_dir / INFERENCE_FILE, "background": out_dir / BACKGROUND_FILE}
    for name, frame in frames.items():
        frame.to_parquet(paths[name], index=False)
    validation_path = out_dir / VALIDATION_FILE
    _write_json(
        validation_path,
        {
            "feature_service": spec.name,
            "passed": outcome.passed,
            "entity_key": f"{spec.entity_key} (HMAC-SHA256 with the run salt)",
            "frames": outcome.results,
        },
    )

    previous_digests = _previous_digests(previous)
    view_records = _feature_view_record(store, spec, previous_digests)
    project = store.registry.get_project(store.config.project, allow_cache=False)
    provenance: dict[str, Any] = {
        "schema_version": PROVENANCE_SCHEMA_VERSION,
        "feature_service": {
            "name": spec.name,
            "description": spec.service.description,
            "owner": spec.service.owner,
            "tags": dict(sorted(spec.service.tags.items())),
            "created_timestamp": _iso(spec.service.created_timestamp),
            "last_updated_timestamp": _iso(spec.service.last_updated_timestamp),
        },
        "registry": {
            "type": store.config.registry.registry_type,
            "path": store.config.registry.path,
            "project": store.config.project,
            "last_updated": _iso(project.last_updated_timestamp),
        },
        "feature_repo": {
            "path": repo.relative_to(REPO_ROOT).as_posix() if repo.is_relative_to(REPO_ROOT) else str(repo),
            "git": git_state(repo),
            "definitions_sha256": _definition_digests(repo),
        },
        "feature_views": view_records,
        "entity": {
            "name": spec.entity_name,
            "join_key": spec.entity_key,
            "id_hashing": "HMAC-SHA256 keyed with the run salt; raw ids are never recorded",
        },
        "retrieval": {
            "method": "feast.FeatureStore.get_historical_features (point-in-time join)",
            "timestamp": _iso(at),
            "feature_refs": spec.feature_refs,
            "missing_source_features": retrieved.missing_features,
            "entity_frame_sha256": {name: _entity_frame_digest(hashes[name], at) for name in frames},
            "inference": (
                {"selection": "explicit", "requested": len(inference_ids)}
                if inference_ids is not None
                else {"selection": "most_recent", "requested": inference_count}
            ),
            "background": {
                "strategy": background_strategy,
                "size": background_size,
                "seed": seed,
            },
        },
        "frames": {
            "inference": _frame_record(paths["inference"], frames["inference"], hashes["inference"]),
            "background": _frame_record(paths["background"], frames["background"], None),
        },
        "validation": {
            "passed": outcome.passed,
            "file": validation_path.name,
            "sha256": sha256_file(validation_path),
            "failures": outcome.failures,
        },
    }
    if previous_digests is not None:
        provenance["drift"] = {
            "compared_with_retrieval": ((previous or {}).get("retrieval") or {}).get("timestamp"),
            "changed_sources": [
                r["name"] for r in view_records if r["batch_source"].get("digest_changed") is True
            ],
            "new_sources": [
                r["name"] for r in view_records if r["batch_source"].get("previous_sha256") is None
            ],
        }
    provenance_path = out_dir / PROVENANCE_FILE
    _write_json(provenance_path, provenance)

    summary = outcome.summary
    if outcome.passed:
        log.info("provenance of %s passed: %s", spec.name, summary)
    else:
        log.warning("provenance of %s failed:\n%s", spec.name, summary)
    return ProvenanceResult(
        passed=outcome.passed,
        inference_path=paths["inference"],
        background_path=paths["background"],
        provenance_path=provenance_path,
        validation_path=validation_path,
        summary=summary,
        inference_ids=list(retrieved.inference_ids),
    )
