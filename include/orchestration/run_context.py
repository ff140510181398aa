"""What every stage of one run knows about it, typed, and the small results tasks hand each other.

They travel between tasks as XCom in their JSON form (:meth:`to_json` / :meth:`from_json`); the
artifacts they point to live under the run's staging prefix (:mod:`include.orchestration.staging`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from include.orchestration.staging import RunStaging, StageFailed, staging_prefix_for

if TYPE_CHECKING:
    from include.configuration import LoadedConfig


class _Json:
    """JSON form for XCom: fields as they are; tuples become lists and back."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        values = {}
        for name, value in data.items():
            if name not in known:
                continue  # a field an older or newer version of the DAG added: ignored
            if isinstance(value, list) and "tuple" in str(known[name].type):
                value = tuple(value)
            values[name] = value
        return cls(**values)


@dataclass(frozen=True)
class PipelineRun(_Json):
    """One run of an explainer DAG: identity, the config it runs (by digest), what it explains."""

    dag_id: str
    run_id: str
    run_key: str  # run_id made safe for object keys
    identity: dict[str, Any]  # who or what triggered it, and the DAG code's version
    config_file: str  # where the config was in the DAG folder when the run started (for the record)
    config_sha256: str
    config_uri: str  # the copy every stage reads: s3://<bucket>/_staging/<dag>/<run>/config/<sha256>.yaml
    config_name: str
    defaults_applied: tuple[str, ...]
    model_name: str
    model_version: str
    feature_service: str
    explainer_type: str
    method: str
    params: dict[str, Any]
    seed: int
    inference_ids: tuple[str, ...] | None
    inference_count: int
    dry_run_cost_only: bool
    bucket: str
    bundle_prefix: str
    listing_prefix: str
    started_at: str

    @property
    def staging_prefix(self) -> str:
        return staging_prefix_for(self.dag_id, self.run_key)

    def staging(self, s3_client: Any) -> RunStaging:
        return RunStaging(s3_client, self.bucket, self.staging_prefix)


@dataclass(frozen=True)
class StagedProvenance(_Json):
    """The provenance stage's outcome: validated frames staged for the explainer, and their record."""

    inference_uri: str
    background_uri: str
    inference_sha256: str
    background_sha256: str
    provenance_uri: str
    validation_uri: str
    inference_ids: tuple[str, ...]
    previous_bundle: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExplainResult(_Json):
    """The join's outcome: every shard merged in ``explain_uri``, and what the cost stage prices."""

    explain_uri: str  # s3://.../explain.tar (explanations/, fidelity.json, summary.json, run_summary.json)
    fidelity_uri: str  # s3://.../fidelity.json, the gate's input, beside the archive
    explained: int
    params: dict[str, Any]
    backend: str
    shards: int
    log_uri: str  # the explainer processes' or pods' logs, concatenated
    pods: tuple[str, ...] | None = None  # kubernetes: staged names of the finished pod records
    cluster_profile: str | None = None
    usages: tuple[dict[str, Any], ...] = ()  # local: each shard's measured process
    usage: dict[str, Any] | None = None  # local: all shards as one
    failed_tries: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def run_config(run: PipelineRun, s3_client: Any) -> LoadedConfig:
    """The run's config: the copy staged when the run started, its digest checked."""
    staging = run.staging(s3_client)
    return _parse_staged_config(
        staging.get_bytes(staging.name_of(run.config_uri)), run.config_sha256, run.config_file
    )


@functools.lru_cache(maxsize=16)
def _parse_staged_config(raw: bytes, expected_sha256: str, shown_as: str) -> LoadedConfig:
    from include.configuration.loader import parse_config_text

    found = hashlib.sha256(raw).hexdigest()
    if found != expected_sha256:
        raise StageFailed(
            f"the staged config of this run has sha256 {found}, but the run started with {expected_sha256}"
        )
    return parse_config_text(raw.decode("utf-8"), shown_as)
