"""FOCUS 1.0 export of cost rows, and validation with the FinOps Foundation's ``focus-validator``.

Which FOCUS 1.0 columns a per-run record fills, and why (``FOCUS_1_0_COLUMNS``):

* filled from the run: the costs (Billed/Effective/List/ContractedCost, all equal: a catalogue
  price with no negotiated discount), the unit prices, Pricing/ConsumedQuantity and their units,
  the charge and billing periods (the run's start/finish; the calendar month it started in),
  ChargeCategory ``Usage``, ChargeFrequency ``Usage-Based``, PricingCategory (``Standard``, or
  ``Dynamic`` for spot capacity), BillingCurrency, Resource*, Service*, the catalogue SKU
  (SkuId = what is priced, SkuPriceId = which catalogue price applied), Tags (the run's labels);
* filled when known: RegionId/RegionName/AvailabilityZone (the node's topology labels),
  SubAccountId/SubAccountName (the Kubernetes namespace);
* billing account: BillingAccountId is the cost center the run is charged to (the team when the
  config names none), BillingAccountName the team: in an internal show/chargeback these are
  the accounts that pay;
* honestly null: ChargeClass (a run record is never a correction) and the five
  CommitmentDiscount* columns (no commitment discount applies to a catalogue price).
  ProviderName/PublisherName/InvoiceIssuerName are ``self-hosted``: nobody invoices the run.

Validator: ``focus-validator==1.0.0`` (the only release on PyPI) pins ``numpy<2`` and
``pytz<2024``, which the project's venv cannot satisfy (numpy 2.4.6), so it lives in a venv of its
own (``.venv/focus-validator`` by default; ``XAC_FOCUS_VALIDATOR`` overrides) and runs as a child
process. Its "1.0" rule set still uses four column IDs of the 1.0 *preview* draft (``Provider``,
``Publisher``, ``InvoiceIssuer``, ``ResourceID``) where ratified FOCUS 1.0 says ``ProviderName``,
``PublisherName``, ``InvoiceIssuerName``, ``ResourceId``. Our rows use the ratified IDs; the
validation copy renames those four headers (``VALIDATOR_1_0_0_ALIASES``) and nothing else.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from include.paths import REPO_ROOT

# FOCUS 1.0 column IDs in the order of the specification's column index.
FOCUS_1_0_COLUMNS: tuple[str, ...] = (
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)
# Columns a run record leaves null on purpose (see the module docstring).
NULL_BY_DESIGN = frozenset(
    {
        "ChargeClass",
        "CommitmentDiscountCategory",
        "CommitmentDiscountId",
        "CommitmentDiscountName",
        "CommitmentDiscountStatus",
        "CommitmentDiscountType",
    }
)
VALIDATOR_1_0_0_ALIASES = {
    "ProviderName": "Provider",
    "PublisherName": "Publisher",
    "InvoiceIssuerName": "InvoiceIssuer",
    "ResourceId": "ResourceID",
}
DEFAULT_VALIDATOR_VENV = REPO_ROOT / ".venv" / "focus-validator"


class FocusExportError(ValueError):
    """Rows that cannot be written as FOCUS (a FOCUS column is missing)."""


class ValidatorUnavailable(RuntimeError):
    """``focus-validator`` is not installed where we look for it."""


def _json(value: dict[str, Any]) -> str:
    # Tags: FOCUS wants a JSON object; sorted keys keep the file byte-stable per run.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def columns_for(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """FOCUS columns first (specification order), then the x_ columns in first-seen order."""
    extra: dict[str, None] = {}
    for row in rows:
        missing = [c for c in FOCUS_1_0_COLUMNS if c not in row]
        if missing:
            raise FocusExportError(f"row lacks FOCUS column(s): {', '.join(missing)}")
        for key in row:
            if key not in FOCUS_1_0_COLUMNS:
                if not key.startswith("x_"):
                    # FOCUS reserves unprefixed names; anything of ours must be an x_ column.
                    raise FocusExportError(f"column {key!r} is neither FOCUS 1.0 nor x_-prefixed")
                extra.setdefault(key, None)
    return [*FOCUS_1_0_COLUMNS, *extra]


def write_focus_csv(rows: list[Mapping[str, Any]], path: Path | str) -> Path:
    """Write rows as a FOCUS 1.0 CSV (UTF-8, one header line, nulls as empty cells)."""
    path = Path(path)
    if not rows:
        raise FocusExportError("no rows to write")
    columns = columns_for(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        # csv writes None as an empty cell and a float as its shortest round-tripping text
        # (str == repr): no precision is lost; only JSON objects (Tags) need converting.
        writer.writerow([_json(v) if type(v) is dict else v for v in map(row.get, columns)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


@dataclass(frozen=True)
class ValidationFailure:
    check: str
    column: str
    message: str


@dataclass(frozen=True)
class FocusValidation:
    """The validator's verdict on one file."""

    passed: bool
    checks: int
    failures: list[ValidationFailure] = field(default_factory=list)
    errors: list[ValidationFailure] = field(default_factory=list)
    skipped: int = 0
    validator: str = ""

    def summary(self) -> str:
        if self.passed:
            return f"FOCUS 1.0: {self.checks} checks passed ({self.validator})"
        lines = [f"FOCUS 1.0: {len(self.failures)} failed, {len(self.errors)} errored of {self.checks}"]
        lines += [f"  {f.check} [{f.column}]: {f.message}" for f in [*self.failures, *self.errors]]
        return "\n".join(lines)


def validator_python() -> Path:
    """The interpreter of the venv that holds focus-validator.

    ``XAC_FOCUS_VALIDATOR`` may name that venv, its ``bin/focus-validator`` script or its python.
    """
    configured = os.environ.get("XAC_FOCUS_VALIDATOR")
    candidate = Path(configured) if configured else DEFAULT_VALIDATOR_VENV
    if candidate.is_dir():
        python = candidate / "bin" / "python"
    elif candidate.name.startswith("python"):
        python = candidate
    else:
        python = candidate.parent / "python"
    if not python.exists():
        raise ValidatorUnavailable(
            f"focus-validator not found (looked for {python}); install it in its own venv: "
            f"python3.11 -m venv {DEFAULT_VALIDATOR_VENV} && "
            f"{DEFAULT_VALIDATOR_VENV}/bin/pip install focus-validator==1.0.0 multimethod==1.12 "
            "numpy==1.26.4 pytz==2023.4, or set XAC_FOCUS_VALIDATOR"
        )
    return python


# The validator reads its ISO 4217 list from the relative path focus_validator/utils/
# currency_codes.csv, so it must run with its site-packages folder as the working directory.
_DRIVER = """
import os, sys
import focus_validator
os.chdir(os.path.dirname(os.path.dirname(focus_validator.__file__)))
from focus_validator.validator import Validator
Validator(data_filename=sys.argv[1], output_destination=sys.argv[2], output_type="unittest",
          rules_version=sys.argv[3]).validate()
"""


def _parse_junit(path: Path) -> tuple[int, int, list[ValidationFailure], list[ValidationFailure]]:
    root = ET.parse(path).getroot()
    failures: list[ValidationFailure] = []
    errors: list[ValidationFailure] = []
    skipped = 0
    for suite in root.iter("testsuite"):
        column = suite.get("name", "").rsplit("-", 1)[-1]
        for case in suite.iter("testcase"):
            check = case.get("name", "").split(" :: ")[0]
            for tag, bucket in (("failure", failures), ("error", errors)):
                for item in case.iter(tag):
                    bucket.append(ValidationFailure(check, column, item.get("message", "")))
            skipped += sum(1 for _ in case.iter("skipped"))
    return int(root.get("tests", "0")), skipped, failures, errors


def _validation_copy(text: str) -> str:
    """The CSV as focus-validator 1.0.0 can read it: same cells, the validator's column names.

    Four headers get the preview-draft IDs the validator expects (``VALIDATOR_1_0_0_ALIASES``);
    and its SkuPriceId_Nullable rule (SkuPriceId must be set on Usage/Purchase/Refund rows) is
    written against ``ChargeType``, the preview name of what 1.0 calls ChargeCategory, so the copy
    carries ChargeCategory's values under that name too: otherwise that rule fails on every 1.0
    file for a missing column instead of checking SkuPriceId.
    """
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise FocusExportError("empty CSV")
    header = rows[0]
    category = header.index("ChargeCategory") if "ChargeCategory" in header else None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [VALIDATOR_1_0_0_ALIASES.get(c, c) for c in header] + (["ChargeType"] if category is not None else [])
    )
    for row in rows[1:]:
        writer.writerow(row + ([row[category]] if category is not None else []))
    return out.getvalue()


def validate_focus_csv(path: Path | str, *, version: str = "1.0", timeout_s: float = 120) -> FocusValidation:
    """Run focus-validator on a CSV written by ``write_focus_csv`` and return its verdict.

    The validator's console output always exits 0, so the verdict is read from its JUnit report.
    """
    python = validator_python()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="xac-focus-") as tmp:
        copy = Path(tmp) / "rows.csv"
        copy.write_text(_validation_copy(path.read_text(encoding="utf-8")), encoding="utf-8")
        report = Path(tmp) / "report.xml"
        proc = subprocess.run(
            [str(python), "-c", _DRIVER, str(copy), str(report), version],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0 or not report.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ValidatorUnavailable(
                f"focus-validator ({python}) did not run: exit {proc.returncode}: " + " | ".join(tail)
            )
        checks, skipped, failures, errors = _parse_junit(report)
    return FocusValidation(
        passed=not failures and not errors and checks > 0,
        checks=checks,
        failures=failures,
        errors=errors,
        skipped=skipped,
        validator=f"focus-validator 1.0.0 at {python.parent.parent}",
    )
