"""Faults between tasks, through the same stage functions the DAG's tasks call (real Feast, GX, the
explainer process and S3 on loopback): what a later task needs is gone, or a publish dies part-way."""

from __future__ import annotations

from typing import Any

import pytest

from include.paths import CONFIGS_DIR

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = CONFIGS_DIR / "explainers" / "diagnosis-risk-kernelshap.yaml"


@pytest.fixture(scope="module")
def prepared() -> None:
    from examples.prepare import prepare_samples

    for _ in prepare_samples():
        pass


def _quiet(_: str) -> None:
    pass


def test_an_object_deleted_between_tasks_fails_the_next_task_by_name(prepared: None, s3: Any) -> None:
    from include.compliance import list_bundles, load_or_create_signing_key
    from include.orchestration.pipeline import (
        StagedObjectMissing,
        explain_step,
        fidelity_step,
        meter_step,
        plan_step,
        provenance_step,
        publish_step,
        start_run,
    )
    from include.storage import default_signing_key_path

    run = start_run(
        str(CONFIG),
        dag_id="diagnosis-risk-kernelshap",
        run_id="manual__faults",
        params={"sample_budget": 60, "inference_ids": None},
        identity={},
        s3_client=s3,
        log=_quiet,
    )
    staging = run.staging(s3)
    provenance = provenance_step(run, s3, log=_quiet)
    config_name = staging.name_of(run.config_uri)
    config = staging.get_bytes(config_name)
    s3.delete_object(Bucket=run.bucket, Key=staging.key(config_name))
    with pytest.raises(StagedObjectMissing, match=rf"{run.config_uri} is missing: an earlier task"):
        plan_step(run, provenance, s3, log=_quiet)
    staging.put_bytes(config_name, config)
    plan = plan_step(run, provenance, s3, log=_quiet)
    explained = explain_step(run, provenance, plan, s3, log=_quiet)
    meter_step(run, explained, plan, s3, log=_quiet)
    gate = fidelity_step(run, explained, provenance, s3, log=_quiet)

    s3.delete_object(Bucket=run.bucket, Key=staging.key("cost.json"))
    signer = load_or_create_signing_key(default_signing_key_path())
    with pytest.raises(StagedObjectMissing, match=r"_staging/.*/cost\.json is missing"):
        publish_step(run, explained, provenance, gate, s3_client=s3, signer=signer, log=_quiet)
    # nothing half-written became visible, and nothing was signed or claimed
    assert list_bundles(s3, run.bucket, prefix=run.bundle_prefix) == []
    assert s3.list_objects_v2(Bucket=run.bucket, Prefix=run.bundle_prefix)["KeyCount"] == 0
