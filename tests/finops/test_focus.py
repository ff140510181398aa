"""Our cost rows against the FinOps Foundation's focus-validator (FOCUS 1.0 rule set).

focus-validator 1.0.0 cannot share the project's venv (it pins numpy<2); it runs from its own
venv (.venv/focus-validator, or XAC_FOCUS_VALIDATOR). Where it is missing these tests skip, except
in CI (CI=true), where a missing validator is a failure rather than a silent skip.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from include.finops.focus import (
    FOCUS_1_0_COLUMNS,
    FocusExportError,
    ValidatorUnavailable,
    validate_focus_csv,
    validator_python,
    write_focus_csv,
)
from include.finops.meter import ResourceRequest, ResourceUsage, RunLabels, price_usage
from include.finops.pod import price_pod
from include.finops.pricing import load_catalogue

Pod = Callable[..., dict[str, Any]]
CATALOGUE = load_catalogue()
START = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)


def _need_validator() -> None:
    try:
        validator_python()
    except ValidatorUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _rows(pod_factory: Pod, container_factory: Pod) -> list[dict[str, Any]]:
    local = price_usage(
        ResourceUsage(START, START + timedelta(seconds=20), 30.0, 3 * 2**30, 0),
        ResourceRequest(0.2, 512 * 2**20),
        RunLabels("diagnosis-risk-tabular", "1", "diagnosis-risk-kernelshap", "manual__1", "risk-ml", None),
        CATALOGUE,
    )
    gpu_spot = price_pod(
        pod_factory(
            [container_factory(requests={"cpu": "4", "memory": "16Gi", "nvidia.com/mig-3g.40gb": "1"})],
            seconds=180,
            phase="Failed",
            exit_code=1,
            name="explain-1",
        ),
        CATALOGUE,
        node={
            "labels": {
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "karpenter.sh/capacity-type": "spot",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": "eu-west-1a",
            }
        },
        usage={"explain": {"cpu_cores_avg": 5.5, "memory_peak_bytes": 10 * 2**30, "gpu_utilisation": 0.7}},
    ).rows
    cpu_only = price_pod(
        pod_factory([container_factory(requests={"cpu": "500m", "memory": "1Gi"})]), CATALOGUE
    ).rows
    return [*local, *gpu_spot, *cpu_only]


def test_rows_from_pods_and_processes_pass_focus_validator(
    pod_factory: Pod, container_factory: Pod, tmp_path: Path
) -> None:
    _need_validator()
    rows = _rows(pod_factory, container_factory)
    path = write_focus_csv(rows, tmp_path / "rows.csv")
    result = validate_focus_csv(path)
    assert result.passed, result.summary()
    assert result.checks == 133  # the validator's whole FOCUS 1.0 rule set ran, none skipped
    assert result.skipped == 0


def test_validator_catches_broken_rows(pod_factory: Pod, container_factory: Pod, tmp_path: Path) -> None:
    """The passing test above means something: the same rules fail rows that break FOCUS."""
    _need_validator()
    rows = _rows(pod_factory, container_factory)
    rows[0] = {**rows[0], "BillingCurrency": "dollars", "ChargeFrequency": "Hourly"}
    rows[1] = {**rows[1], "SkuPriceId": None, "ChargePeriodStart": "27/11/2026 08:00"}
    result = validate_focus_csv(write_focus_csv(rows, tmp_path / "broken.csv"))
    assert not result.passed
    failed = {f.check for f in result.failures}
    assert {
        "BillingCurrency_IsCurrencyCode",
        "ChargeFrequency_Enum",
        "SkuPriceId_Nullable",
        "ChargePeriodStart_IsDateTime",
    } <= failed


def test_csv_layout(pod_factory: Pod, container_factory: Pod, tmp_path: Path) -> None:
    rows = _rows(pod_factory, container_factory)
    path = write_focus_csv(rows, tmp_path / "rows.csv")
    with path.open(encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    header = list(table[0])
    assert header[: len(FOCUS_1_0_COLUMNS)] == list(FOCUS_1_0_COLUMNS)
    assert all(c.startswith("x_") for c in header[len(FOCUS_1_0_COLUMNS) :])
    assert len(table) == len(rows)
    # full float precision survives the CSV; nulls are empty cells; Tags is a JSON object
    assert float(table[0]["PricingQuantity"]) == rows[0]["PricingQuantity"]
    assert table[0]["ChargeClass"] == "" and table[0]["CommitmentDiscountId"] == ""
    assert json.loads(table[-1]["Tags"])["xac.dev/model"] == "diagnosis-risk-tabular"
    spot = [r for r in table if r["x_CapacityType"] == "spot"]
    assert spot and {r["PricingCategory"] for r in spot} == {"Dynamic"}
    assert {r["RegionId"] for r in spot} == {"eu-west-1"}


def test_rows_missing_a_focus_column_or_with_unprefixed_extras_are_refused(tmp_path: Path) -> None:
    row = price_usage(
        ResourceUsage(START, START + timedelta(seconds=60), 1.0, 2**20, 0),
        ResourceRequest(1, 2**30),
        RunLabels("m", "1", "c", "r", "t", None),
        CATALOGUE,
    )[0]
    with pytest.raises(FocusExportError, match="SkuId"):
        write_focus_csv([{k: v for k, v in row.items() if k != "SkuId"}], tmp_path / "a.csv")
    with pytest.raises(FocusExportError, match="Model"):
        write_focus_csv([{**row, "Model": "m"}], tmp_path / "b.csv")
