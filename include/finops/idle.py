"""Idle share: part of a node's unrequested capacity charged to the pods that ran on it (off by default).

A node is paid for whole, but the pods on it request only part of it; the rest is idle. With an
idle share configured, each pod is also charged, per resource (CPU, RAM, GPU), for

    fraction x idle x weight x pod runtime x the pod's unit price (spot or on-demand, GPU model)

where idle = max(allocatable - requested by all pods on the node, 0) and the weight is the pod's
share of the node:

* ``basis: allocatable`` (the default): pod request / node allocatable. A pod holding a quarter of
  the node carries a quarter of its idle capacity; idle capacity nobody holds stays unattributed.
* ``basis: requested``: pod request / everything requested on the node (OpenCost's "share idle"):
  with ``fraction: 1`` the whole idle cost is spread over the pods.

Configured in the cluster profile (``idleShare: {fraction: 0.5, basis: allocatable}``; a bare number
is the fraction); ``fraction: 0`` or no entry turns it off. The node's allocatable comes from its
V1Node (``status.allocatable``) or the profile's ``nodes.<name>.allocatable``; what the pods on the
node requested from ``nodes.<name>.requested`` or the caller (``requested_on_node`` sums the pods of
``kubectl get pods -A --field-selector spec.nodeName=<node> -o json``). Both are a snapshot taken
for the pod's runtime: a node whose load changed during a long pod is approximated.

The rows are ordinary FOCUS rows of the pod (container ``node idle share``, ``x_UsageSource``
``idle-share``) so totals, the cost store and budgets include them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from include.finops.meter import GIB, CostLine
from include.finops.pod import _gpu_fraction, _resources, parse_quantity
from include.finops.pricing import PricingError

IDLE_CONTAINER = "node idle share"
BASES = ("allocatable", "requested")


@dataclass(frozen=True)
class IdleShare:
    fraction: float = 0.0
    basis: str = "allocatable"

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise PricingError(f"idleShare.fraction must be within [0, 1], got {self.fraction!r}")
        if self.basis not in BASES:
            raise PricingError(f"idleShare.basis must be one of {', '.join(BASES)}, got {self.basis!r}")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


def idle_share_settings(value: object) -> IdleShare:
    """The ``idleShare`` entry of a cluster profile: a mapping, a bare fraction, or absent (off)."""
    if value is None or value is False:
        return IdleShare()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return IdleShare(float(value))
    if isinstance(value, Mapping):
        return IdleShare(float(value.get("fraction", 0.0)), str(value.get("basis", "allocatable")))
    raise PricingError(f"idleShare: expected a fraction or {{fraction, basis}}, got {value!r}")


def requested_on_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """What the given pods request, summed per resource (effective requests, as the scheduler
    counts them: max(app containers + sidecars, largest init container) + overhead). Pods that
    finished before the priced one started should not be passed."""
    total: dict[str, float] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        steady: dict[str, float] = {}
        init_peak: dict[str, float] = {}
        sidecars: dict[str, float] = {}
        for container in spec.get("initContainers") or []:
            resources = _resources(dict(container))
            if container.get("restartPolicy") == "Always":
                for k, v in resources.items():
                    sidecars[k] = sidecars.get(k, 0.0) + v
                    steady[k] = steady.get(k, 0.0) + v
            else:
                for k, v in resources.items():
                    init_peak[k] = max(init_peak.get(k, 0.0), v + sidecars.get(k, 0.0))
        for container in spec.get("containers") or []:
            for k, v in _resources(dict(container)).items():
                steady[k] = steady.get(k, 0.0) + v
        effective = {k: max(steady.get(k, 0.0), init_peak.get(k, 0.0)) for k in {*steady, *init_peak}}
        for k, v in (spec.get("overhead") or {}).items():
            effective[k] = effective.get(k, 0.0) + parse_quantity(v)
        for k, v in effective.items():
            total[k] = total.get(k, 0.0) + v
    return total


def _in_pricing_units(
    resources: Mapping[str, Any], node_labels: dict | None, profile: dict[str, Any]
) -> dict[str, float]:
    """Kubernetes resources (quantities) as CPU cores, RAM GiB and GPU equivalents."""
    out = {"CPU": 0.0, "RAM": 0.0, "GPU": 0.0}
    for name, raw in resources.items():
        value = parse_quantity(raw)
        if name == "cpu":
            out["CPU"] += value
        elif name == "memory" or name.startswith("hugepages-"):
            out["RAM"] += value / GIB
        else:
            try:
                fraction = _gpu_fraction(name, node_labels, profile)
            except PricingError:
                fraction = None  # a GPU resource the profile cannot price is left out of the idle share
            if fraction is not None:
                out["GPU"] += value * fraction[0]
    return out


def idle_share_lines(
    pod_lines: list[CostLine],
    *,
    settings: IdleShare,
    allocatable: Mapping[str, Any],
    requested: Mapping[str, Any],
    node_name: str,
    node_labels: dict | None,
    profile: dict[str, Any],
    spot: bool,
    gpu_model: str | None,
) -> list[CostLine]:
    """The idle-share lines of one pod (priced like the pod's own lines by ``meter.cost_rows``).

    ``pod_lines`` are the pod's priced lines; their ``requested`` quantities (cores, GiB, GPUs) are
    the pod's share of the node. ``allocatable``/``requested`` are Kubernetes resource maps.
    """
    if not settings.enabled:
        return []
    node_alloc = _in_pricing_units(allocatable, node_labels, profile)
    node_req = _in_pricing_units(requested, node_labels, profile)
    pod_req = {"CPU": 0.0, "RAM": 0.0, "GPU": 0.0}
    for line in pod_lines:
        pod_req[line.resource] += line.requested
    keys = {"CPU": "spotCPU" if spot else "CPU", "RAM": "spotRAM" if spot else "RAM"}
    keys["GPU"] = "spotGPU" if spot else "GPU"
    lines = []
    for resource in ("CPU", "RAM", "GPU"):
        alloc, taken, mine = node_alloc[resource], node_req[resource], pod_req[resource]
        idle = max(alloc - taken, 0.0)
        base = alloc if settings.basis == "allocatable" else taken
        if idle <= 0 or mine <= 0 or base <= 0:
            continue
        weight = min(mine / base, 1.0)
        quantity = settings.fraction * idle * weight
        unit = {"CPU": "vCPU", "RAM": "GiB", "GPU": "GPU"}[resource]
        lines.append(
            CostLine(
                resource,
                quantity,
                None,
                keys[resource],
                gpu_model=gpu_model if resource == "GPU" else None,
                container=IDLE_CONTAINER,
                detail=(
                    f"{settings.fraction:g} x node {node_name} idle {idle:g} {unit} "
                    f"(allocatable {alloc:g}, requested {taken:g}) x pod share {mine:g}/{base:g} "
                    f"of {settings.basis}"
                ),
                usage_source="idle-share",
            )
        )
    return lines
