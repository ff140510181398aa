"""Price one finished Kubernetes pod (the JSON of ``kubectl get pod -o json``) as FOCUS rows.

Per container and resource the billed quantity is max(request, usage) over the pod's exact
runtime (``status.startTime``, else the earliest container start, to the latest container
finish), the allocation model of OpenCost without its scrape-interval rounding. The scheduler
reserved the requests on the node for the whole life of the pod, so every container is billed
over the pod's runtime, and a pod that failed is billed like one that succeeded.

Kubernetes semantics that change the bill:

* a container that sets a limit and no request gets request = limit (the API server defaults it);
* plain init containers run before the app containers, but the pod's effective request is
  max(sum of app containers, largest init container): an init container that asks for more
  than the app containers together is billed for the excess; native sidecars (init containers
  with ``restartPolicy: Always``) run for the pod's life and are billed like app containers;
* ``spec.overhead`` (RuntimeClass pod overhead) is added to the pod's requests by the scheduler;
* ``hugepages-*`` requests are memory taken from the node and are billed as RAM.

GPUs:

* ``nvidia.com/gpu``: whole GPUs, priced at the node's GPU model (node label
  ``nvidia.com/gpu.product``) when the catalogue knows it, else the default GPU price;
* MIG slices ``nvidia.com/mig-<g>g.<mem>gb``: g/7 of a GPU. NVIDIA's MIG user guide divides an
  A100/H100 into seven compute slices ("up to seven GPU instances") and the ``<g>g`` of a profile
  counts the slices it holds (1g.10gb = 1/7, 3g.40gb = 3/7, 7g.80gb = the whole GPU). We price
  compute, not memory (4g.40gb holds 4/8 of the memory but 4/7 of the compute). A cluster profile
  may override the fraction per resource (``migFractions``) or the slice count (``migSlices``).
  With the device plugin's "single" MIG strategy the slice is advertised as ``nvidia.com/gpu``
  and the product label ends in ``-MIG-<g>g.<mem>gb``: the same g/7 rule applies;
* time-sliced shares: a resource the cluster profile declares under ``timeSlicing`` (e.g.
  ``nvidia.com/gpu.shared: {replicas: 10}``) is 1/replicas of a GPU; so is ``nvidia.com/gpu`` on a
  node labelled ``nvidia.com/gpu.replicas`` > 1 (time slicing without renaming).

Capacity (spot vs on-demand): the node's labels when known (Karpenter, EKS, GKE, AKS), else the
pod's nodeSelector or required node affinity (spot only when every alternative term demands it,
since otherwise the scheduler may have placed it on on-demand capacity), else on-demand.

A cluster profile (a mapping, e.g. loaded from YAML)::

    defaultGpuModel: nvidia-a100-80gb        # GPU model when the node does not say
    gpuProducts: {Tesla-T4: nvidia-t4}       # node label value -> catalogue model
    migSlices: 7
    migFractions: {nvidia.com/mig-3g.40gb: 0.5}
    timeSlicing: {nvidia.com/gpu.shared: {replicas: 10}}
    nodes: {node-a: {labels: {...}}}         # node labels by node name
    capacity: spot                           # forces the capacity type (all nodes are spot)
    spotLabels: {example.com/lifecycle: spot}  # further node labels that mark spot capacity

A ``kind: ClusterProfile`` document (include/configs/clusters/*.yaml) is accepted too: see
``pricing_rules``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any

from include.finops.meter import GIB, ChargeScope, CostLine, RunLabels, cost_rows
from include.finops.pricing import PriceCatalogue, PricingError

# Node labels that mark spot capacity, per provisioner/cloud, with the value meaning "spot".
SPOT_NODE_LABELS: dict[str, str] = {
    "karpenter.sh/capacity-type": "spot",
    "eks.amazonaws.com/capacityType": "spot",  # EKS managed node groups: SPOT / ON_DEMAND
    "cloud.google.com/gke-spot": "true",
    "cloud.google.com/gke-preemptible": "true",  # GKE's older preemptible VMs, also spot-priced
    "kubernetes.azure.com/scalesetpriority": "spot",  # AKS: spot / regular
}
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_MIG_SLICES = 7
WHOLE_GPU = "nvidia.com/gpu"
_MIG_RESOURCE = re.compile(r"^nvidia\.com/mig-(\d+)g\.(\d+)gb(?:[.+][a-z0-9]+)*$")
_MIG_PRODUCT = re.compile(r"-MIG-(\d+)g\.(\d+)gb$", re.IGNORECASE)
_SHARED_PRODUCT = re.compile(r"-SHARED$", re.IGNORECASE)
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$"
)
_SUFFIX: dict[str, Decimal] = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
# x_ labels the pod may carry (as labels or, for values labels cannot hold, annotations).
XAC_KEYS = (
    "xac.dev/model",
    "xac.dev/model-version",
    "xac.dev/run-id",
    "xac.dev/shard",
    "xac.dev/team",
    "xac.dev/cost-center",
    "xac.dev/config",
)


@lru_cache(maxsize=4096)
def _parse_quantity_text(text: str) -> float:
    match = _QUANTITY.match(text.strip())
    if not match:
        raise PricingError(f"{text!r} is not a Kubernetes quantity")
    number, exponent, suffix = match.groups()
    value = Decimal(number)
    if exponent:
        value = value.scaleb(int(exponent[1:]))
    elif suffix:
        value *= _SUFFIX[suffix]
    if value < 0:
        raise PricingError(f"{text!r}: a resource quantity cannot be negative")
    return float(value)


def parse_quantity(value: object) -> float:
    """A Kubernetes resource quantity ("500m", "1.5", "512Mi", "1e3", 2) as a plain number."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PricingError(f"{value!r} is not a Kubernetes quantity")
    if isinstance(value, (int, float)):
        if value < 0:
            raise PricingError(f"{value!r}: a resource quantity cannot be negative")
        return float(value)
    return _parse_quantity_text(value)


def _timestamp(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise PricingError(f"{where}: {value!r} is not a timestamp")
    try:
        ts = datetime.fromisoformat(value)  # Python 3.11 reads Kubernetes' RFC 3339 "...Z"
    except ValueError:
        raise PricingError(f"{where}: {value!r} is not a timestamp") from None
    if ts.tzinfo is None:
        raise PricingError(f"{where}: {value!r} has no time zone")
    return ts


@dataclass(frozen=True)
class PodCost:
    """The priced pod: FOCUS rows and what they were derived from."""

    pod: str  # namespace/name
    phase: str
    started_at: datetime
    finished_at: datetime
    capacity: str  # "spot" or "on-demand"
    capacity_source: str  # node-labels, node-selector, node-affinity, cluster-profile, default
    gpu_model: str | None
    usage_source: str  # usage-file, prometheus, metrics-api (or a+b), requests-only, partial
    currency: str
    rows: list[dict[str, Any]]
    ignored_resources: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def runtime_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def total(self) -> float:
        return float(sum(Decimal(repr(r["BilledCost"])) for r in self.rows))

    def to_json(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "phase": self.phase,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "runtime_seconds": self.runtime_seconds,
            "capacity": self.capacity,
            "capacity_source": self.capacity_source,
            "gpu_model": self.gpu_model,
            "usage_source": self.usage_source,
            "currency": self.currency,
            "total": self.total,
            "ignored_resources": list(self.ignored_resources),
            "notes": list(self.notes),
            "rows": self.rows,
        }


def _node_labels(pod: dict[str, Any], node: dict[str, Any] | None, profile: dict[str, Any]) -> dict | None:
    if node is None:
        name = (pod.get("spec") or {}).get("nodeName")
        node = (profile.get("nodes") or {}).get(name) if name else None
    if node is None:
        return None
    if "metadata" in node:  # a V1Node object
        return dict((node.get("metadata") or {}).get("labels") or {})
    if "labels" in node:
        return dict(node.get("labels") or {})
    return dict(node)


def _capacity(pod: dict[str, Any], node_labels: dict | None, profile: dict[str, Any]) -> tuple[str, str]:
    if profile.get("capacity") in ("spot", "on-demand"):
        return profile["capacity"], "cluster-profile"
    spot_labels = SPOT_NODE_LABELS
    if profile.get("spotLabels"):
        spot_labels = {**SPOT_NODE_LABELS, **{k: str(v).lower() for k, v in profile["spotLabels"].items()}}

    def is_spot(key: str, value: object) -> bool:
        return str(value).lower() == spot_labels[key]

    if node_labels is not None:
        for key in spot_labels:
            if key in node_labels:
                return ("spot" if is_spot(key, node_labels[key]) else "on-demand"), "node-labels"
    spec = pod.get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    for key in spot_labels:
        if key in selector:
            return ("spot" if is_spot(key, selector[key]) else "on-demand"), "node-selector"
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms") or []
    if required:
        # Terms are ORed: the pod is on spot only if every term it may have matched demands spot.
        # (Preferred affinity proves nothing: the scheduler may have fallen back to on-demand.)
        def demands_spot(term: dict[str, Any]) -> bool:
            for expr in term.get("matchExpressions") or []:
                key, values = expr.get("key"), expr.get("values") or []
                if key in spot_labels and expr.get("operator") == "In" and values:
                    if all(is_spot(key, v) for v in values):
                        return True
            return False

        if all(demands_spot(t) for t in required):
            return "spot", "node-affinity"
    return "on-demand", "default"


def pricing_rules(profile: dict[str, Any] | None) -> dict[str, Any]:
    """The pricing keys of a cluster profile, from either shape it may come in.

    A plain mapping with the keys listed in this module's docstring is used as it is. A
    ``kind: ClusterProfile`` document (include/configs/clusters/*.yaml) is translated: its
    time-slicing GPU types give ``timeSlicing`` (resource -> replicas), its MIG profiles give
    ``migFractions`` (resource -> fraction, e.g. "1/7"), its spot node label gives ``spotLabels``.
    """
    if not profile:
        return {}
    spec = profile.get("spec")
    if profile.get("kind") != "ClusterProfile" or not isinstance(spec, dict):
        return profile
    rules: dict[str, Any] = {"timeSlicing": {}, "migFractions": {}}
    for gpu_type in ((spec.get("gpu") or {}).get("types") or {}).values():
        sharing = (gpu_type or {}).get("sharing") or {}
        if sharing.get("mode") == "time-slicing" and sharing.get("resource"):
            rules["timeSlicing"][sharing["resource"]] = {"replicas": int(sharing.get("replicas", 1))}
        elif sharing.get("mode") == "mig":
            for mig in sharing.get("profiles") or []:
                if mig.get("resource") and mig.get("fraction") is not None:
                    rules["migFractions"][mig["resource"]] = float(Fraction(str(mig["fraction"]).strip()))
    spot = spec.get("spot") or {}
    if spot.get("supported") and spot.get("nodeLabel"):
        rules["spotLabels"] = {spot["nodeLabel"]: str(spot.get("spotValue", "spot"))}
    for key in ("nodes", "defaultGpuModel", "gpuProducts", "migSlices", "idleShare"):
        if key in profile:
            rules[key] = profile[key]
    return rules


def gpu_model_for(product: str | None, catalogue: PriceCatalogue, profile: dict[str, Any]) -> str | None:
    """The catalogue's GPU model for a node's ``nvidia.com/gpu.product`` label, when it has one.

    GPU feature discovery writes names like ``NVIDIA-H100-80GB-HBM3`` or ``NVIDIA-A100-SXM4-80GB``
    (with ``-MIG-1g.10gb`` / ``-SHARED`` suffixes for MIG single strategy and time slicing); a
    catalogue model matches when all its dash-separated words appear in the product name
    (``nvidia-h100-80gb``), the most specific match winning. ``gpuProducts`` maps names explicitly.
    """
    explicit = profile.get("gpuProducts") or {}
    if product is None:
        return profile.get("defaultGpuModel")
    if product in explicit:
        return str(explicit[product])
    base = _SHARED_PRODUCT.sub("", _MIG_PRODUCT.sub("", product))
    words = set(base.lower().replace("_", "-").split("-"))
    best: str | None = None
    best_size = 0
    for model in catalogue.gpu_models:
        needed = set(model.lower().split("-"))
        if needed <= words and len(needed) > best_size:
            best, best_size = model, len(needed)
    return best if best is not None else profile.get("defaultGpuModel")


def _gpu_fraction(
    resource: str, node_labels: dict | None, profile: dict[str, Any]
) -> tuple[float, str] | None:
    """The fraction of one GPU that one unit of ``resource`` stands for, and why; None if not a GPU."""
    shared = profile.get("timeSlicing") or {}
    if resource in shared:
        replicas = int((shared[resource] or {}).get("replicas", 0))
        if replicas < 1:
            raise PricingError(f"cluster profile: timeSlicing.{resource}.replicas must be >= 1")
        return 1 / replicas, f"time-sliced 1/{replicas} GPU"
    slices = int(profile.get("migSlices", DEFAULT_MIG_SLICES))
    mig = _MIG_RESOURCE.match(resource)
    if mig:
        explicit = (profile.get("migFractions") or {}).get(resource)
        if explicit is not None:
            return float(explicit), f"MIG {resource.split('/', 1)[1]} = {explicit} GPU (cluster profile)"
        g = int(mig.group(1))
        if not 1 <= g <= slices:
            raise PricingError(f"{resource}: a MIG profile of {g} slices does not fit a {slices}-slice GPU")
        return g / slices, f"MIG {g}g = {g}/{slices} GPU"
    if resource == WHOLE_GPU:
        labels = node_labels or {}
        product = str(labels.get(GPU_PRODUCT_LABEL, ""))
        single = _MIG_PRODUCT.search(product)
        if single:
            g = int(single.group(1))
            return g / slices, f"MIG (single strategy) {g}g = {g}/{slices} GPU"
        replicas = int(labels.get(GPU_REPLICAS_LABEL, 1) or 1)
        if replicas > 1:
            return 1 / replicas, f"time-sliced 1/{replicas} GPU (node label)"
        return 1.0, "whole GPU"
    if "gpu" in resource.lower() or resource.startswith("nvidia.com/"):
        raise PricingError(
            f"GPU resource {resource!r} has no price: declare it in the cluster profile "
            "(timeSlicing or migFractions)"
        )
    return None


def _resources(container: dict[str, Any]) -> dict[str, float]:
    """Requests, with limits standing in for requests a container does not set (Kubernetes)."""
    resources = container.get("resources") or {}
    merged = dict(resources.get("limits") or {})
    merged.update(resources.get("requests") or {})
    return {name: parse_quantity(value) for name, value in merged.items()}


def _usage_for(usage: dict[str, Any] | None, name: str) -> tuple[dict[str, float], str] | None:
    """The container's usage entry and the source that measured it (``source`` of the entry, else
    of the usage document, else "usage-file": a file handed to ``xac cost --usage``)."""
    if usage is None:
        return None
    containers = usage.get("containers", usage)
    entry = containers.get(name) if isinstance(containers, dict) else None
    if entry is None:
        return None
    source = entry.get("source") or (usage.get("source") if "containers" in usage else None) or "usage-file"
    out: dict[str, float] = {}
    for key in ("cpu_cores_avg", "memory_peak_bytes", "gpu_utilisation"):
        if key in entry and entry[key] is not None:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise PricingError(f"usage: containers.{name}.{key}: {value!r} is not a non-negative number")
            out[key] = float(value)
    if out.get("gpu_utilisation", 0.0) > 1:
        raise PricingError(f"usage: containers.{name}.gpu_utilisation is a fraction in [0, 1]")
    return out, str(source)


def _run_labels(pod: dict[str, Any], capacity: str) -> tuple[RunLabels, dict[str, str]]:
    meta = pod.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    annotations = meta.get("annotations") or {}
    # Annotations win: label values are limited to 63 characters (Airflow's run ids are not).
    xac = {k: str(annotations[k]) if k in annotations else labels.get(k) for k in XAC_KEYS}
    tags = dict(labels)
    tags.update({k: v for k, v in xac.items() if v is not None})
    shard_text = xac["xac.dev/shard"] or labels.get("map_index") or "0"
    try:
        shard = int(shard_text)
    except ValueError:
        raise PricingError(f"pod label xac.dev/shard={shard_text!r} is not an integer") from None
    name = str(meta.get("name") or "unnamed")
    return (
        RunLabels(
            model=xac["xac.dev/model"] or "unknown",
            model_version=xac["xac.dev/model-version"] or "unknown",
            # Airflow's KubernetesPodOperator labels its pods with dag_id and run_id (sanitised).
            config_name=xac["xac.dev/config"] or labels.get("dag_id") or name,
            run_id=xac["xac.dev/run-id"] or labels.get("run_id") or str(meta.get("uid") or name),
            team=xac["xac.dev/team"] or "unknown",
            cost_center=xac["xac.dev/cost-center"],
            shard=shard,
            backend="kubernetes",
            capacity=capacity,
        ),
        tags,
    )


def _idle_share(
    pod: dict[str, Any],
    node: dict[str, Any] | None,
    profile: dict[str, Any],
    lines: list[CostLine],
    node_requested: dict[str, Any] | None,
    node_labels: dict | None,
    spot: bool,
    gpu_model: str | None,
    notes: list[str],
) -> list[CostLine]:
    from include.finops.idle import idle_share_lines, idle_share_settings

    settings = idle_share_settings(profile.get("idleShare"))
    if not settings.enabled:
        return []
    name = str((pod.get("spec") or {}).get("nodeName") or "")
    entry = node if node is not None else (profile.get("nodes") or {}).get(name) or {}
    allocatable = (entry.get("status") or {}).get("allocatable") or entry.get("allocatable")
    requested = node_requested if node_requested is not None else entry.get("requested")
    if not allocatable or requested is None:
        notes.append(
            f"idle share configured but node {name or '(unknown)'}'s allocatable or requested resources "
            "are unknown: not applied"
        )
        return []
    if "metadata" in entry:
        name = str((entry.get("metadata") or {}).get("name") or name)
    return idle_share_lines(
        lines,
        settings=settings,
        allocatable=allocatable,
        requested=requested,
        node_name=name or "(unknown)",
        node_labels=node_labels,
        profile=profile,
        spot=spot,
        gpu_model=gpu_model,
    )


def pod_lifetime(pod: dict[str, Any]) -> tuple[datetime, datetime]:
    """The window a finished pod is billed for: its start to its last container's finish."""
    meta = pod.get("metadata") or {}
    return _runtime(pod, f"pod {meta.get('namespace') or 'default'}/{meta.get('name') or 'unnamed'}")


def _runtime(pod: dict[str, Any], where: str) -> tuple[datetime, datetime]:
    status = pod.get("status") or {}
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    terminated = [((s.get("state") or {}).get("terminated") or {}) for s in statuses]
    if status.get("startTime"):
        start = _timestamp(status["startTime"], f"{where}: status.startTime")
    else:
        starts = [_timestamp(t["startedAt"], f"{where}: startedAt") for t in terminated if t.get("startedAt")]
        if not starts:
            raise PricingError(
                f"{where}: no start time (status.startTime and container startedAt are absent)"
            )
        start = min(starts)
    finishes = [
        _timestamp(t["finishedAt"], f"{where}: finishedAt") for t in terminated if t.get("finishedAt")
    ]
    if not finishes:
        raise PricingError(
            f"{where}: has not finished (no container has state.terminated.finishedAt; "
            f"phase {status.get('phase', 'unknown')})"
        )
    finish = max(finishes)
    if finish < start:
        raise PricingError(f"{where}: finishes ({finish.isoformat()}) before it starts ({start.isoformat()})")
    return start, finish


def price_pod(
    pod: dict[str, Any],
    catalogue: PriceCatalogue,
    *,
    usage: dict[str, Any] | None = None,
    cluster_profile: dict[str, Any] | None = None,
    node: dict[str, Any] | None = None,
    node_requested: dict[str, Any] | None = None,
) -> PodCost:
    """Price one finished pod; ``node`` is its V1Node (or node labels) when the caller has it.

    ``node_requested``: what all pods on the node requested (resource -> quantity, this pod
    included; see ``idle.requested_on_node``), for the optional idle share (include/finops/idle.py,
    ``idleShare`` in the cluster profile, off by default).

    Raises ``PricingError`` for a pod that cannot be priced: no start or finish time, no
    resources at all, a GPU resource without a price, a malformed quantity or usage entry.
    """
    if pod.get("kind") == "List":
        items = pod.get("items") or []
        if len(items) != 1:
            raise PricingError(f"expected one pod, got a List of {len(items)}")
        pod = items[0]
    profile = pricing_rules(cluster_profile)
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "unnamed")
    where = f"pod {namespace}/{name}"
    started_at, finished_at = _runtime(pod, where)
    node_labels = _node_labels(pod, node, profile)
    capacity, capacity_source = _capacity(pod, node_labels, profile)
    labels, tags = _run_labels(pod, capacity)
    spot = capacity == "spot"
    cpu_key, ram_key, gpu_key = ("spotCPU", "spotRAM", "spotGPU") if spot else ("CPU", "RAM", "GPU")
    product = (
        str(node_labels[GPU_PRODUCT_LABEL]) if node_labels and GPU_PRODUCT_LABEL in node_labels else None
    )

    lines: list[CostLine] = []
    ignored: set[str] = set()
    sources: set[str] = set()
    gpu_model: str | None = None
    gpu_model_resolved = False

    def container_lines(
        container_name: str, resources: dict[str, float], measured: tuple[dict[str, float], str] | None
    ) -> None:
        nonlocal gpu_model, gpu_model_resolved
        used, source = (None, "requests-only") if measured is None else measured
        cpu = resources.get("cpu", 0.0)
        memory = resources.get("memory", 0.0) + sum(
            v for k, v in resources.items() if k.startswith("hugepages-")
        )
        used_cpu = used.get("cpu_cores_avg") if used else None
        used_mem = used.get("memory_peak_bytes") if used else None
        emitted = False
        if cpu > 0 or (used_cpu or 0) > 0:
            lines.append(
                CostLine("CPU", cpu, used_cpu, cpu_key, container=container_name, usage_source=source)
            )
            emitted = True
        if memory > 0 or (used_mem or 0) > 0:
            lines.append(
                CostLine(
                    "RAM",
                    memory / GIB,
                    None if used_mem is None else used_mem / GIB,
                    ram_key,
                    container=container_name,
                    usage_source=source,
                )
            )
            emitted = True
        # All GPU resources of a container sit on one node, so one GPU model and one price:
        # they make one GPU row (whole GPUs, MIG slices and shares added up as GPU fractions).
        gpus = 0.0
        details = []
        for resource, count in resources.items():
            if resource in ("cpu", "memory") or resource.startswith("hugepages-") or count == 0:
                continue
            fraction = _gpu_fraction(resource, node_labels, profile)
            if fraction is None:
                ignored.add(resource)  # ephemeral-storage, non-GPU extended resources: not priced
                continue
            share, why = fraction
            gpus += count * share
            details.append(f"{count:g} x {resource}: {why}")
        if details:
            if not gpu_model_resolved:
                gpu_model, gpu_model_resolved = gpu_model_for(product, catalogue, profile), True
            try:
                catalogue.price(gpu_key, gpu_model=gpu_model)
            except PricingError as exc:
                raise PricingError(
                    f"{where}: container {container_name}: {'; '.join(details)}: {exc}"
                ) from None
            util = used.get("gpu_utilisation") if used else None
            lines.append(
                CostLine(
                    "GPU",
                    gpus,
                    # a GPU cannot be used beyond its allocation: utilisation is recorded, not billed
                    None if util is None else util * gpus,
                    gpu_key,
                    gpu_model=gpu_model,
                    container=container_name,
                    detail="; ".join(details),
                    usage_source=source,
                )
            )
            emitted = True
        if emitted:
            sources.add(source)

    init_containers = spec.get("initContainers") or []
    steady: dict[str, float] = {}  # app containers + native sidecars: reserved for the pod's life
    for container in [
        *(c for c in init_containers if c.get("restartPolicy") == "Always"),
        *(spec.get("containers") or []),
    ]:
        cname = str(container.get("name") or "unnamed")
        resources = _resources(container)
        for k, v in resources.items():
            steady[k] = steady.get(k, 0.0) + v
        container_lines(cname, resources, _usage_for(usage, cname))
    # Plain init containers run one at a time beside the sidecars declared before them; the pod
    # reserves max(steady, max_i(init_i + sidecars before i)) per resource (KEP-753's effective
    # request) for its whole life. Only the peak above the steady reservation adds to the bill,
    # once per resource, charged to the init container that sets the peak.
    sidecars_before: dict[str, float] = {}
    peak: dict[str, tuple[float, str]] = {}
    for container in init_containers:
        resources = _resources(container)
        if container.get("restartPolicy") == "Always":
            for k, v in resources.items():
                sidecars_before[k] = sidecars_before.get(k, 0.0) + v
            continue
        cname = str(container.get("name") or "unnamed")
        for k, v in resources.items():
            need = v + sidecars_before.get(k, 0.0)
            if need - steady.get(k, 0.0) > 1e-12 and need > peak.get(k, (0.0, ""))[0]:
                peak[k] = (need, cname)
    excess_by_container: dict[str, dict[str, float]] = {}
    for k, (need, cname) in peak.items():
        excess_by_container.setdefault(cname, {})[k] = need - steady.get(k, 0.0)
    for cname, excess in excess_by_container.items():
        container_lines(f"{cname} (init, above app requests)", excess, None)
    overhead = {k: parse_quantity(v) for k, v in (spec.get("overhead") or {}).items()}
    if overhead:
        container_lines("pod overhead", overhead, None)
    if not lines:
        raise PricingError(
            f"{where}: no resources to price (no container sets requests or limits and no usage was given)"
        )
    idle_notes: list[str] = []
    if profile.get("idleShare"):
        lines += _idle_share(
            pod, node, profile, lines, node_requested, node_labels, spot, gpu_model, idle_notes
        )

    if len(sources) == 1:
        usage_source = sources.pop()
    elif "requests-only" in sources:
        usage_source = "partial"
    else:  # every container measured, by different sources (e.g. prometheus and metrics-api)
        usage_source = "+".join(sorted(sources))
    uid = meta.get("uid")
    scope = ChargeScope(
        resource_id=f"kubernetes/{namespace}/pods/{name}" + (f"/{uid}" if uid else ""),
        resource_name=name,
        resource_type="Kubernetes Pod",
        usage_source=usage_source,
        region=node_labels.get(REGION_LABEL) if node_labels else None,
        zone=node_labels.get(ZONE_LABEL) if node_labels else None,
        sub_account=namespace,
        tags=tags,
        extra={
            "x_PodPhase": (pod.get("status") or {}).get("phase"),
            "x_Node": spec.get("nodeName"),
            "x_CapacitySource": capacity_source,
        },
    )
    rows = cost_rows(
        lines,
        started_at=started_at,
        finished_at=finished_at,
        labels=labels,
        scope=scope,
        catalogue=catalogue,
    )
    notes = list(idle_notes)
    if usage_source in ("requests-only", "partial"):
        notes.append("no usage data for some or all containers: their requests are billed")
    if any(line.resource == "GPU" for line in lines) and gpu_model is None:
        notes.append("the node's GPU model is unknown: the catalogue's default GPU price applies")
    return PodCost(
        pod=f"{namespace}/{name}",
        phase=str((pod.get("status") or {}).get("phase") or "Unknown"),
        started_at=started_at,
        finished_at=finished_at,
        capacity=capacity,
        capacity_source=capacity_source,
        gpu_model=gpu_model,
        usage_source=usage_source,
        currency=catalogue.currency,
        rows=rows,
        ignored_resources=tuple(sorted(ignored)),
        notes=tuple(notes),
    )
