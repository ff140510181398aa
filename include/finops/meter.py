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
from functools import lru_cache
from typing import Any

from include.finops.pricing import PriceCatalogue

GIB = 2**30
_CENT_PRECISION = Decimal("0.0000000001")
_HOUR = Decimal(3600)


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
    failed_try: int | None = None  # a local shard's crashed process, retried: the n-th failure


def _money(value: Decimal) -> float:
    return float(value.quantize(_CENT_PRECISION, rounding=ROUND_HALF_UP))


def _iso(ts: datetime) -> str:
    t = ts.astimezone(UTC)
    # the same text as strftime("%Y-%m-%dT%H:%M:%SZ"), at a third of its cost (hot in bulk pricing)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


@lru_cache(maxsize=256)
def _period_texts(year: int, month: int) -> tuple[str, str]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) if month == 12 else datetime(year, month + 1, 1, tzinfo=UTC)
    return _iso(start), _iso(end)


# CostLine and ChargeScope are built once per container/pod in bulk pricing: plain slotted
# dataclasses construct several times faster than frozen ones (no object.__setattr__ per field).
@dataclass(slots=True)
class CostLine:
    """One priced quantity: a resource (CPU, RAM or GPU) of one container/process over the runtime.

    ``requested`` and ``used`` are in pricing units (cores, GiB, GPUs); ``used`` is None when no
    measurement exists, and then the request alone is billed.
    """

    resource: str
    requested: float
    used: float | None
    price_key: str
    gpu_model: str | None = None
    container: str | None = None
    detail: str | None = None
    usage_source: str | None = None  # overrides the scope's (per container for pods)


@dataclass(slots=True)
class ChargeScope:
    """What the rows are about: the FOCUS resource and the facts the price does not depend on."""

    resource_id: str
    resource_name: str
    resource_type: str
    usage_source: str  # "measured" (local process), "usage-file", "requests-only"
    region: str | None = None
    zone: str | None = None
    sub_account: str | None = None  # the Kubernetes namespace
    tags: dict[str, str] | None = None
    extra: dict[str, Any] | None = None  # further x_ columns


UNITS = {"CPU": "vCPU-Hours", "RAM": "GiB-Hours", "GPU": "GPU-Hours"}


def run_tags(labels: RunLabels) -> dict[str, str]:
    """FOCUS ``Tags`` of a run: the same keys a pod carries as labels/annotations."""
    tags = {
        "xac.dev/model": labels.model,
        "xac.dev/model-version": labels.model_version,
        "xac.dev/config": labels.config_name,
        "xac.dev/run-id": labels.run_id,
        "xac.dev/shard": str(labels.shard),
        "xac.dev/team": labels.team,
    }
    if labels.cost_center:
        tags["xac.dev/cost-center"] = labels.cost_center
    return tags


def cost_rows(
    lines: list[CostLine],
    *,
    started_at: datetime,
    finished_at: datetime,
    labels: RunLabels,
    scope: ChargeScope,
    catalogue: PriceCatalogue,
) -> list[dict[str, Any]]:
    """FOCUS 1.0 rows, one per line: billed quantity max(request, usage) × runtime × unit price.

    The one row builder of the project (local processes and Kubernetes pods). Columns that a
    per-run record cannot fill honestly are present and null (see include/finops/focus.py).
    """
    wall = max((finished_at - started_at).total_seconds(), 0.0)
    hours = Decimal(repr(wall)) / _HOUR
    spot = labels.capacity == "spot"
    start, end = started_at.astimezone(UTC), finished_at.astimezone(UTC)
    period_start_text, period_end_text = _period_texts(start.year, start.month)
    # Everything that does not depend on the line is computed once per run/pod (the pod
    # benchmark prices 10,000 pods a second; per-row work is what costs).
    base: dict[str, Any] = {
        "BillingCurrency": catalogue.currency,
        "BillingAccountId": labels.cost_center or labels.team,
        "BillingAccountName": labels.team,
        "BillingPeriodStart": period_start_text,
        "BillingPeriodEnd": period_end_text,
        "ChargePeriodStart": _iso(start),
        "ChargePeriodEnd": _iso(end),
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeFrequency": "Usage-Based",
        "PricingCategory": "Dynamic" if spot else "Standard",
        "CommitmentDiscountCategory": None,
        "CommitmentDiscountId": None,
        "CommitmentDiscountName": None,
        "CommitmentDiscountStatus": None,
        "CommitmentDiscountType": None,
        "ResourceId": scope.resource_id,
        "ResourceName": scope.resource_name,
        "ResourceType": scope.resource_type,
        "RegionId": scope.region,
        "RegionName": scope.region,
        "AvailabilityZone": scope.zone,
        "SubAccountId": scope.sub_account,
        "SubAccountName": scope.sub_account,
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": "Explainability-as-Code",
        "ProviderName": "self-hosted",
        "PublisherName": "self-hosted",
        "InvoiceIssuerName": "self-hosted",
        "Tags": scope.tags if scope.tags is not None else run_tags(labels),
        "x_Model": labels.model,
        "x_ModelVersion": labels.model_version,
        "x_ConfigName": labels.config_name,
        "x_RunId": labels.run_id,
        "x_Shard": labels.shard,
        "x_Team": labels.team,
        "x_CostCenter": labels.cost_center,
        "x_RuntimeSeconds": wall,
        "x_Backend": labels.backend,
        "x_CapacityType": labels.capacity,
    }
    if scope.extra:
        base.update(scope.extra)
    who = f"explainer run {labels.run_id} shard {labels.shard}"
    rows = []
    for line in lines:
        billed = line.requested if line.used is None or line.used < line.requested else line.used
        billed_quantity = Decimal(repr(billed)) * hours
        unit_price = catalogue.price(line.price_key, gpu_model=line.gpu_model)
        cost = _money(billed_quantity * unit_price)
        unit = UNITS[line.resource]
        sku = line.resource if line.gpu_model is None else f"{line.resource}/{line.gpu_model}"
        rows.append(
            {
                **base,
                "BilledCost": cost,
                "EffectiveCost": cost,
                "ListCost": cost,
                "ContractedCost": cost,
                "ChargeDescription": (
                    f"{line.resource} for {who}"
                    if line.container is None
                    else f"{line.resource} of container {line.container} for {who}"
                ),
                "PricingQuantity": float(billed_quantity),
                "PricingUnit": unit,
                "ConsumedQuantity": float(billed_quantity),
                "ConsumedUnit": unit,
                "ListUnitPrice": float(unit_price),
                "ContractedUnitPrice": float(unit_price),
                "SkuId": f"xac/{sku}",
                "SkuPriceId": f"xac/{line.price_key}"
                + (f"/{line.gpu_model}" if line.gpu_model else "")
                + f"@{catalogue.effective_date or 'undated'}",
                "x_Resource": line.resource,
                "x_Container": line.container,
                "x_RequestQuantity": line.requested,
                "x_UsageQuantity": line.used,
                "x_PriceKey": line.price_key,
                "x_GpuModel": line.gpu_model,
                "x_QuantityDetail": line.detail,
                "x_UsageSource": line.usage_source or scope.usage_source,
            }
        )
    return rows


def price_usage(
    usage: ResourceUsage, request: ResourceRequest, labels: RunLabels, catalogue: PriceCatalogue
) -> list[dict[str, Any]]:
    """FOCUS-aligned cost rows, one per resource, for one measured process."""
    spot = labels.capacity == "spot"
    used_cores = usage.cpu_seconds / usage.wall_seconds if usage.wall_seconds > 0 else 0.0
    lines = [
        CostLine("CPU", request.cpu_cores, used_cores, "spotCPU" if spot else "CPU"),
        CostLine(
            "RAM", request.memory_bytes / GIB, usage.peak_memory_bytes / GIB, "spotRAM" if spot else "RAM"
        ),
    ]
    if usage.gpu_count > 0:
        lines.append(CostLine("GPU", usage.gpu_count, usage.gpu_count, "spotGPU" if spot else "GPU"))
    failed = f"/failed-{labels.failed_try}" if labels.failed_try else ""
    scope = ChargeScope(
        resource_id=f"{labels.backend}/{labels.config_name}/{labels.run_id}/shard-{labels.shard}{failed}",
        resource_name=f"{labels.config_name} shard {labels.shard}"
        + (f" (failed try {labels.failed_try})" if labels.failed_try else ""),
        resource_type="Kubernetes Pod" if labels.backend == "kubernetes" else "Local Process",
        usage_source="measured",
    )
    return cost_rows(
        lines,
        started_at=usage.started_at,
        finished_at=usage.finished_at,
        labels=labels,
        scope=scope,
        catalogue=catalogue,
    )


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
