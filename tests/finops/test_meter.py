"""Cost of a measured process against hand-computed figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.finops.meter import ResourceRequest, ResourceUsage, RunLabels, price_usage, summarise
from include.finops.pricing import PricingError, load_catalogue

START = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
LABELS = RunLabels("m", "1", "cfg", "manual__1", "team-a", "cc-1")


def usage(seconds: float, cpu_seconds: float, peak_gib: float, gpu: float = 0.0) -> ResourceUsage:
    return ResourceUsage(
        START, START + timedelta(seconds=seconds), cpu_seconds, int(peak_gib * 2**30), 0, gpu
    )


def by_resource(rows: list[dict]) -> dict[str, dict]:
    return {r["x_Resource"]: r for r in rows}


def test_request_above_usage_bills_the_request() -> None:
    catalogue = load_catalogue()
    # 1 hour, 0.5 cores used of 2 requested, 1 GiB peak of 4 GiB requested
    rows = by_resource(
        price_usage(usage(3600, 1800, 1.0), ResourceRequest(2.0, 4 * 2**30), LABELS, catalogue)
    )
    assert rows["CPU"]["BilledCost"] == pytest.approx(2 * 0.031611)
    assert rows["RAM"]["BilledCost"] == pytest.approx(4 * 0.004237)
    assert "GPU" not in rows


def test_usage_above_request_bills_the_usage() -> None:
    catalogue = load_catalogue()
    # 20 seconds, 40 CPU-seconds (2 cores) against a 200m request; 3 GiB peak against 512Mi
    rows = by_resource(price_usage(usage(20, 40, 3.0), ResourceRequest(0.2, 512 * 2**20), LABELS, catalogue))
    assert rows["CPU"]["PricingQuantity"] == pytest.approx(2 * 20 / 3600)
    assert rows["CPU"]["BilledCost"] == pytest.approx(2 * 20 / 3600 * 0.031611)
    assert rows["RAM"]["BilledCost"] == pytest.approx(3 * 20 / 3600 * 0.004237)
    assert rows["CPU"]["ChargePeriodStart"] == "2026-11-27T08:00:00Z"
    assert rows["CPU"]["ChargePeriodEnd"] == "2026-11-27T08:00:20Z"
    assert rows["CPU"]["BillingPeriodStart"] == "2026-11-01T00:00:00Z"
    assert rows["CPU"]["BillingPeriodEnd"] == "2026-12-01T00:00:00Z"


def test_spot_and_fractional_gpu() -> None:
    catalogue = load_catalogue()
    spot = RunLabels("m", "1", "cfg", "r", "t", None, capacity="spot")
    rows = by_resource(
        price_usage(usage(1800, 0, 0.5, gpu=0.1), ResourceRequest(1, 2**30, 0.1), spot, catalogue)
    )
    assert rows["GPU"]["BilledCost"] == pytest.approx(0.1 * 0.5 * 0.95)
    assert rows["CPU"]["ListUnitPrice"] == pytest.approx(0.009483)


def test_summary_totals_and_budget() -> None:
    catalogue = load_catalogue()
    rows = price_usage(usage(3600, 3600, 1.0), ResourceRequest(1, 2**30), LABELS, catalogue)
    summary = summarise(rows, explanations=10, budget=0.01, currency="USD")
    assert summary["total"] == pytest.approx(0.031611 + 0.004237)
    assert summary["cost_per_1000_explanations"] == pytest.approx((0.031611 + 0.004237) * 100)
    assert summary["within_budget"] is False


def test_opencost_custom_pricing_file(tmp_path: Path) -> None:
    path = tmp_path / "opencost.json"
    path.write_text(
        json.dumps(
            {
                "CPU": "0.05",
                "spotCPU": "0.01",
                "RAM": "0.01",
                "spotRAM": "0.002",
                "GPU": "3.0",
                "spotGPU": "1.0",
                "description": "mine",
            }
        )
    )
    catalogue = load_catalogue(path)
    rows = by_resource(price_usage(usage(3600, 0, 0.1), ResourceRequest(1, 2**30), LABELS, catalogue))
    assert rows["CPU"]["BilledCost"] == pytest.approx(0.05)


def test_opencosts_own_default_file_loads(tmp_path: Path) -> None:
    """Issue 18, item 14: OpenCost's default custom-pricing file has a flat "storage" price (per GB-hour
    of persistent volumes, a string), which crashed `xac cost` with AttributeError."""
    path = tmp_path / "default.json"
    path.write_text(
        json.dumps(
            {
                "provider": "custom",
                "description": "Default prices based on GCP us-central1",
                "CPU": "0.031611",
                "spotCPU": "0.006655",
                "RAM": "0.004237",
                "spotRAM": "0.000892",
                "GPU": "0.95",
                "storage": "0.00005479452",
                "zoneNetworkEgress": "0.01",
                "regionNetworkEgress": "0.01",
                "internetNetworkEgress": "0.12",
            }
        )
    )
    catalogue = load_catalogue(path)
    assert catalogue.storage_gib_month == {}
    rows = by_resource(price_usage(usage(3600, 0, 0.1), ResourceRequest(1, 2**30), LABELS, catalogue))
    assert rows["CPU"]["BilledCost"] == pytest.approx(0.031611)
    ours = tmp_path / "catalogue.yaml"
    ours.write_text("currency: USD\nprices: {CPU: '0.05', RAM: '0.01'}\nstorage: '0.1'\n")
    with pytest.raises(PricingError, match="storage: expected a mapping"):
        load_catalogue(ours)


def test_catalogue_without_cpu_price_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"RAM": "0.01"}))
    with pytest.raises(PricingError, match="missing price"):
        load_catalogue(path)
