"""The price catalogue (``include/configs/pricing.yaml``) or an OpenCost custom-pricing file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

from include.paths import CONFIGS_DIR

DEFAULT_CATALOGUE = CONFIGS_DIR / "pricing.yaml"
PRICE_KEYS = ("CPU", "spotCPU", "RAM", "spotRAM", "GPU", "spotGPU")


class PricingError(ValueError):
    """The catalogue is missing a price or is malformed."""


@dataclass(frozen=True)
class PriceCatalogue:
    currency: str
    effective_date: str
    prices: dict[str, Decimal]
    gpu_models: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    source: str = ""
    storage_gib_month: dict[str, Decimal] = field(default_factory=dict)

    def price(self, key: str, *, gpu_model: str | None = None) -> Decimal:
        if gpu_model and gpu_model in self.gpu_models and key in self.gpu_models[gpu_model]:
            return self.gpu_models[gpu_model][key]
        if key not in self.prices:
            raise PricingError(f"the price catalogue has no {key!r} price")
        return self.prices[key]


def _decimal(value: object, where: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise PricingError(f"{where}: {value!r} is not a price") from None
    if not amount.is_finite() or amount < 0:
        raise PricingError(f"{where}: {value!r} is not a price")
    return amount


def load_catalogue(path: Path | str = DEFAULT_CATALOGUE) -> PriceCatalogue:
    """Load the project's catalogue (YAML) or an OpenCost custom-pricing JSON file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PricingError(f"{path}: expected a mapping of prices")
    if "prices" in data:
        raw_prices = data["prices"]
        if not isinstance(raw_prices, dict):
            raise PricingError(f"{path}: prices: expected a mapping of resource to an hourly price")
        currency = str(data.get("currency", "USD"))
        effective = str(data.get("effectiveDate", ""))
    else:  # OpenCost custom pricing: flat keys, hourly prices as strings
        raw_prices = {k: v for k, v in data.items() if k in PRICE_KEYS}
        currency = str(data.get("currencyCode", "USD"))
        effective = ""
    prices = {k: _decimal(v, f"{path}: {k}") for k, v in raw_prices.items() if k in PRICE_KEYS}
    missing = [k for k in ("CPU", "RAM") if k not in prices]
    if missing:
        raise PricingError(f"{path}: missing price(s) {', '.join(missing)}")
    raw_gpu_models = data.get("gpuModels") or {}
    if not isinstance(raw_gpu_models, dict) or not all(isinstance(e, dict) for e in raw_gpu_models.values()):
        raise PricingError(f"{path}: gpuModels: expected a mapping of GPU model to a mapping of prices")
    gpu_models = {
        model: {k: _decimal(v, f"{path}: gpuModels.{model}.{k}") for k, v in entry.items()}
        for model, entry in raw_gpu_models.items()
    }
    # OpenCost's flat "storage" is a persistent-volume price per GB-hour (its default file has one), not
    # the object-storage prices per storage class and GiB-month that bundles are priced with: not read.
    raw_storage = (data.get("storage") or {}) if "prices" in data else {}
    if not isinstance(raw_storage, dict):
        raise PricingError(f"{path}: storage: expected a mapping of storage class to a price per GiB-month")
    storage = {k: _decimal(v, f"{path}: storage.{k}") for k, v in raw_storage.items()}
    return PriceCatalogue(
        currency, effective, prices, gpu_models, str(data.get("source", path.name)), storage
    )
