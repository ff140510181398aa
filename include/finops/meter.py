"""Price one explainer process (or pod) from what it reserved and what it used.

Per resource the billed quantity is max(request, usage) over the exact runtime, the model that
OpenCost uses, without its scrape-interval rounding: the start and finish times come from the
process (or the pod status) itself. Rows use FOCUS 1.0 column names; ``x_`` columns carry the
model, run and usage figures that FOCUS has no column for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from include.finops.pricing import PriceCatalogue

GIB = 2**30
_CENT_PRECISION = Decimal("0.0000000001")


@dataclass(frozen=True)
class ResourceUsage:
    """What one process/pod used, measured over its life."""

    started_at: datetime
    finished_at: datetime
    cpu_seconds: float
    peak_memory_bytes: int
    exit_code: int
    gpu_count: float = 0.0  # GPUs actually allocated (a local process has none)

    @property
    def wall_seconds(self) -> float:
        return max((self.finished_at - self.started_at).total_seconds(), 0.0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        data["wall_seconds"] = self.wall_seconds
        return data


@dataclass(frozen=True)
class ResourceRequest:
    cpu_cores: float
    memory_bytes: int
    gpu_count: float = 0.0


@dataclass(frozen=True)
class RunLabels:
    model: str
    model_version: str
    config_name: str
    run_id: str
    team: str
    cost_center: str | None
    shard: int = 0
    backend: str = "local"
    capacity: str = "on-demand"  # or "spot"


def _money(value: Decimal) -> float:
    return float(value.quantize(_CENT_PRECISION, rounding=ROUND_HALF_UP))


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def price_usage(
    usage: ResourceUsage, request: ResourceRequest, labels: RunLabels, catalogue: PriceCatalogue
) -> list[dict[str, Any]]:
    """FOCUS-aligned cost rows, one per resource, for one process/pod."""
    hours = Decimal(str(usage.wall_seconds)) / Decimal(3600)
    spot = labels.capacity == "spot"
    used_cores = usage.cpu_seconds / usage.wall_seconds if usage.wall_seconds > 0 else 0.0
    lines = [
        ("CPU", "vCPU-Hours", request.cpu_cores, used_cores, "spotCPU" if spot else "CPU"),
        (
            "RAM",
            "GiB-Hours",
            request.memory_bytes / GIB,
            usage.peak_memory_bytes / GIB,
            "spotRAM" if spot else "RAM",
        ),
    ]
    if usage.gpu_count > 0:
        lines.append(("GPU", "GPU-Hours", usage.gpu_count, usage.gpu_count, "spotGPU" if spot else "GPU"))
    start, end = usage.started_at.astimezone(UTC), usage.finished_at.astimezone(UTC)
    period_start = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (
        period_start.replace(year=period_start.year + 1, month=1)
        if period_start.month == 12
        else period_start.replace(month=period_start.month + 1)
    )
    resource_id = f"{labels.backend}/{labels.config_name}/{labels.run_id}/shard-{labels.shard}"
    rows = []
    for resource, unit, requested, used, price_key in lines:
        billed_quantity = Decimal(str(max(requested, used))) * hours
        unit_price = catalogue.price(price_key)
        cost = billed_quantity * unit_price
        rows.append(
            {
                "BilledCost": _money(cost),
                "EffectiveCost": _money(cost),
                "ListCost": _money(cost),
                "ContractedCost": _money(cost),
                "BillingCurrency": catalogue.currency,
                "BillingPeriodStart": _iso(period_start),
                "BillingPeriodEnd": _iso(next_month),
                "ChargePeriodStart": _iso(start),
                "ChargePeriodEnd": _iso(end),
                "ChargeCategory": "Usage",
                "ChargeFrequency": "Usage-Based",
                "ChargeDescription": f"{resource} for explainer run {labels.run_id} shard {labels.shard}",
                "PricingCategory": "Dynamic" if spot else "Standard",
                "PricingQuantity": float(billed_quantity),
                "PricingUnit": unit,
                "ConsumedQuantity": float(billed_quantity),
                "ConsumedUnit": unit,
                "ListUnitPrice": float(unit_price),
                "ContractedUnitPrice": float(unit_price),
                "ResourceId": resource_id,
                "ResourceName": f"{labels.config_name} shard {labels.shard}",
                "ResourceType": "Kubernetes Pod" if labels.backend == "kubernetes" else "Local Process",
                "ServiceCategory": "AI and Machine Learning",
                "ServiceName": "Explainability-as-Code",
                "ProviderName": "self-hosted",
                "PublisherName": "self-hosted",
                "InvoiceIssuerName": "self-hosted",
                "x_Model": labels.model,
                "x_ModelVersion": labels.model_version,
                "x_ConfigName": labels.config_name,
                "x_RunId": labels.run_id,
                "x_Shard": labels.shard,
                "x_Team": labels.team,
                "x_CostCenter": labels.cost_center,
                "x_Resource": resource,
                "x_RequestQuantity": requested,
                "x_UsageQuantity": used,
                "x_RuntimeSeconds": usage.wall_seconds,
                "x_PriceKey": price_key,
                "x_Backend": labels.backend,
            }
        )
    return rows


def summarise(
    rows: list[dict[str, Any]], *, explanations: int, budget: float | None, currency: str
) -> dict[str, Any]:
    """Per-run totals: overall, per resource, per shard, per 1,000 explanations, against the budget."""
    total = sum(Decimal(str(r["BilledCost"])) for r in rows)
    per_resource: dict[str, Decimal] = {}
    per_shard: dict[str, Decimal] = {}
    for r in rows:
        per_resource[r["x_Resource"]] = per_resource.get(r["x_Resource"], Decimal(0)) + Decimal(
            str(r["BilledCost"])
        )
        key = str(r["x_Shard"])
        per_shard[key] = per_shard.get(key, Decimal(0)) + Decimal(str(r["BilledCost"]))
    per_thousand = total / explanations * 1000 if explanations else None
    return {
        "currency": currency,
        "total": _money(total),
        "per_resource": {k: _money(v) for k, v in sorted(per_resource.items())},
        "per_shard": {k: _money(v) for k, v in sorted(per_shard.items())},
        "explanations": explanations,
        "cost_per_1000_explanations": _money(per_thousand) if per_thousand is not None else None,
        "budget": budget,
        "within_budget": None if budget is None else float(total) <= budget,
    }
