"""A loopback S3 (moto server) and a run context for the orchestration tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from include.orchestration.run_context import PipelineRun


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from include.embedded import s3_server
    from include.storage import s3_client

    with s3_server.environment() as server:
        client = s3_client(server.endpoint_url)
        client.create_bucket(Bucket="runs")
        yield client


@pytest.fixture
def make_run() -> Any:
    return pipeline_run


def pipeline_run(run_id: str = "manual__1", **changes: Any) -> PipelineRun:
    values: dict[str, Any] = {
        "dag_id": "dag-a",
        "run_id": run_id,
        "run_key": run_id,
        "identity": {},
        "config_file": "include/configs/explainers/a.yaml",
        "config_sha256": "0" * 64,
        "config_uri": f"s3://runs/_staging/dag-a/{run_id}/config/{'0' * 64}.yaml",
        "config_name": "a",
        "defaults_applied": (),
        "model_name": "m",
        "model_version": "1",
        "feature_service": "fs",
        "explainer_type": "shap",
        "method": "KernelSHAP",
        "params": {},
        "seed": 7,
        "inference_ids": None,
        "inference_count": 2,
        "dry_run_cost_only": False,
        "bucket": "runs",
        "bundle_prefix": "bundles/m/1/r",
        "listing_prefix": "bundles/m/",
        "started_at": "2026-12-07T00:00:00+00:00",
    }
    return PipelineRun(**(values | changes))
