"""What a finished pod's containers used: the ``usage`` input of ``pod.price_pod``.

Sources, in order of preference; each is optional and a pod priced without any of them is billed
its requests (``x_UsageSource: requests-only``):

1. **Prometheus** (``PrometheusSource``): cAdvisor's ``container_cpu_usage_seconds_total`` and
   ``container_memory_working_set_bytes`` and DCGM's ``DCGM_FI_DEV_GPU_UTIL``, for the pod's
   containers over the pod's exact lifetime (``status.startTime`` to the last container's
   ``finishedAt``, the same window the pod is billed for).
2. **The Kubernetes metrics API** (``MetricsApiSampler``): ``metrics.k8s.io/v1beta1`` PodMetrics
   (metrics-server). It only knows running pods and only their latest window, so it has to be
   sampled while the pod runs; after the pod finished, the samples are summarised.
3. **The pod object alone**: no usage; ``price_pod`` bills requests x lifetime and says so.

``collect_usage`` asks the sources in order and takes, per container, the first that measured it.

How the Prometheus figures are computed, and why not with ``rate()``/``increase()`` over a step:
the queries are instant queries of a *range vector* evaluated at the pod's finish, with the range
equal to its lifetime (``metric{pod=..,namespace=..}[<lifetime>s]`` at ``time=finish``). Prometheus
returns every raw sample in the window, so there is no step to choose and nothing is aliased or
extrapolated (``increase()`` extrapolates to the window's edges, and a ``query_range`` step longer
than the scrape interval skips samples; a 20-second pod is shorter than most steps).

* CPU: cAdvisor's counter starts at zero when the container starts, which is inside the pod's
  lifetime, so the CPU seconds used are the first sample plus every increase after it (a drop is a
  counter reset: a restarted container, whose new value counts from zero). CPU used after the last
  scrape is not seen: the figure is a lower bound, short by at most one scrape interval's work,
  and max(request, usage) keeps the bill at or above the request. Cores = CPU seconds / lifetime.
* Memory: the largest working-set sample (what the OOM killer compares with the limit).
* GPU: the mean of the utilisation samples (percent, /100) of every GPU the container held. It is
  recorded, never billed (a held GPU is billed whole). Time-sliced GPUs report the whole GPU's
  utilisation, shared with the other tenants.

Series with the same container label but different cgroups (``id``) are separate container
instances (restarts) and are added up; the same cgroup scraped by two jobs is counted once.
"""

from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, Protocol

from include.finops.pod import parse_quantity, pod_lifetime
from include.finops.pricing import PricingError

CPU_METRIC = "container_cpu_usage_seconds_total"
MEMORY_METRIC = "container_memory_working_set_bytes"
GPU_METRIC = "DCGM_FI_DEV_GPU_UTIL"
# dcgm-exporter labels GPUs with the pod that holds them; scraped through a ServiceMonitor without
# honorLabels, Prometheus renames them exported_*. Both spellings are tried, in this order.
GPU_LABEL_SETS: tuple[tuple[str, str, str], ...] = (
    ("namespace", "pod", "container"),
    ("exported_namespace", "exported_pod", "exported_container"),
)
# Labels that name the scrape rather than the container: two jobs scraping one cgroup differ only here.
_SCRAPE_LABELS = frozenset(
    {"__name__", "job", "instance", "endpoint", "service", "metrics_path", "prometheus", "prometheus_replica"}
)


class UsageSourceError(RuntimeError):
    """A usage source could not be asked (unreachable, refused the query, answered nonsense)."""


@dataclass(frozen=True)
class ContainerUsage:
    """What one container used over the pod's lifetime (None: not measured)."""

    cpu_cores_avg: float | None = None
    memory_peak_bytes: float | None = None
    gpu_utilisation: float | None = None
    cpu_seconds: float | None = None
    samples: int = 0

    def pricing_entry(self) -> dict[str, float]:
        out = {
            "cpu_cores_avg": self.cpu_cores_avg,
            "memory_peak_bytes": self.memory_peak_bytes,
            "gpu_utilisation": self.gpu_utilisation,
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class PodUsage:
    """One source's measurements of one pod's containers."""

    source: str
    pod: str  # namespace/name
    started_at: datetime
    finished_at: datetime
    containers: dict[str, ContainerUsage]
    notes: tuple[str, ...] = ()

    def as_pricing_input(self) -> dict[str, Any]:
        """The ``usage`` argument of ``price_pod``: its rows then say ``x_UsageSource: <source>``."""
        return {
            "source": self.source,
            "containers": {
                name: {**c.pricing_entry(), "source": self.source}
                for name, c in self.containers.items()
                if c.pricing_entry()
            },
        }


class UsageSource(Protocol):
    name: str

    def pod_usage(self, pod: Mapping[str, Any]) -> PodUsage | None: ...


def _pod_identity(pod: Mapping[str, Any]) -> tuple[str, str, datetime, datetime]:
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")
    if not name:
        raise PricingError("the pod has no metadata.name: its usage cannot be looked up")
    start, finish = pod_lifetime(dict(pod))
    return namespace, name, start, finish


def _promql_string(value: str) -> str:
    # PromQL string literals follow Go's escaping; json.dumps produces a valid double-quoted one.
    return json.dumps(value)


def counter_increase(values: Sequence[float]) -> float:
    """Increase of a counter that started at zero within the window: first value plus every rise,
    with a drop read as a reset (the new value counted from zero), as Prometheus's increase() does."""
    if not values:
        return 0.0
    total = values[0]
    for previous, current in pairwise(values):
        total += current - previous if current >= previous else current
    return total


class PrometheusSource:
    """Pod usage from a Prometheus server's HTTP API (``/api/v1/query``)."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        cpu_metric: str = CPU_METRIC,
        memory_metric: str = MEMORY_METRIC,
        gpu_metric: str | None = GPU_METRIC,
        gpu_label_sets: Sequence[tuple[str, str, str]] = GPU_LABEL_SETS,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.cpu_metric = cpu_metric
        self.memory_metric = memory_metric
        self.gpu_metric = gpu_metric
        self.gpu_label_sets = tuple(gpu_label_sets)

    def query(self, promql: str, at: datetime) -> list[dict[str, Any]]:
        """One instant query; the ``result`` list of the answer (vector or matrix)."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at.timestamp():.3f}"})
        request = urllib.request.Request(
            f"{self.url}/api/v1/query?{params}", headers={"Accept": "application/json", **self.headers}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            # Prometheus answers 400/422 with a JSON error body naming the problem.
            try:
                detail = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                detail = exc.reason
            raise UsageSourceError(f"prometheus {self.url}: {promql}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise UsageSourceError(f"prometheus {self.url}: {exc}") from None
        if body.get("status") != "success":
            raise UsageSourceError(f"prometheus {self.url}: {promql}: {body.get('error', body)}")
        return list((body.get("data") or {}).get("result") or [])

    def _raw_samples(
        self, metric: str, matchers: str, start: datetime, finish: datetime
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        # The range covers the whole lifetime (rounded up to a whole millisecond, Prometheus's
        # resolution): every raw sample from the pod's start to its finish.
        window_ms = max(math.ceil((finish - start).total_seconds() * 1000), 1)
        result = self.query(f"{metric}{{{matchers}}}[{window_ms}ms]", finish)
        series = []
        for item in result:
            values = [(float(t), float(v)) for t, v in item.get("values") or []]
            values = [(t, v) for t, v in values if math.isfinite(v)]
            if values:
                series.append((dict(item.get("metric") or {}), values))
        return series

    @staticmethod
    def _instances(
        series: list[tuple[dict[str, str], list[tuple[float, float]]]], container_label: str
    ) -> dict[str, dict[frozenset, list[tuple[float, float]]]]:
        """Series by container, then by container instance (cgroup, GPU). The same instance scraped
        by several jobs is one stream of samples of one counter/gauge: the samples are merged in
        time order (one per timestamp), never added up."""
        merged: dict[str, dict[frozenset, dict[float, float]]] = {}
        for labels, values in series:
            container = labels.get(container_label)
            if not container:
                continue
            identity = frozenset((k, v) for k, v in labels.items() if k not in _SCRAPE_LABELS)
            merged.setdefault(container, {}).setdefault(identity, {}).update(values)
        return {
            container: {identity: sorted(samples.items()) for identity, samples in instances.items()}
            for container, instances in merged.items()
        }

    def pod_usage(self, pod: Mapping[str, Any]) -> PodUsage | None:
        """Usage of the pod's containers, or None when Prometheus has no sample of any of them."""
        namespace, name, start, finish = _pod_identity(pod)
        lifetime = (finish - start).total_seconds()
        base = f"namespace={_promql_string(namespace)},pod={_promql_string(name)}"
        # container="" is the pod's cgroup (the sum of its containers), "POD" the pause container.
        cadvisor = base + ',container!="",container!="POD"'
        cpu: dict[str, tuple[float, int, float]] = {}  # container -> (cpu seconds, samples, last ts)
        for container, instances in self._instances(
            self._raw_samples(self.cpu_metric, cadvisor, start, finish), "container"
        ).items():
            seconds = sum(counter_increase([v for _, v in values]) for values in instances.values())
            count = sum(len(values) for values in instances.values())
            last = max(values[-1][0] for values in instances.values())
            cpu[container] = (seconds, count, last)
        memory: dict[str, tuple[float, int]] = {}
        for container, instances in self._instances(
            self._raw_samples(self.memory_metric, cadvisor, start, finish), "container"
        ).items():
            peak = max(v for values in instances.values() for _, v in values)
            memory[container] = (peak, sum(len(values) for values in instances.values()))
        gpu: dict[str, tuple[float, int]] = {}
        if self.gpu_metric:
            for ns_label, pod_label, container_label in self.gpu_label_sets:
                matchers = f"{ns_label}={_promql_string(namespace)},{pod_label}={_promql_string(name)}"
                found = self._instances(
                    self._raw_samples(self.gpu_metric, matchers, start, finish), container_label
                )
                if found:
                    for container, gpus in found.items():
                        # mean per GPU, then over the GPUs the container held
                        means = [sum(v for _, v in values) / len(values) for values in gpus.values()]
                        util = min(max(sum(means) / len(means) / 100.0, 0.0), 1.0)
                        gpu[container] = (util, sum(len(values) for values in gpus.values()))
                    break
        names = sorted(set(cpu) | set(memory) | set(gpu))
        if not names:
            return None
        containers = {}
        notes = []
        for container in names:
            seconds, cpu_count, last = cpu.get(container, (None, 0, None))
            peak, memory_count = memory.get(container, (None, 0))
            util, gpu_count = gpu.get(container, (None, 0))
            containers[container] = ContainerUsage(
                cpu_cores_avg=None if seconds is None or lifetime <= 0 else seconds / lifetime,
                memory_peak_bytes=peak,
                gpu_utilisation=util,
                cpu_seconds=seconds,
                samples=cpu_count + memory_count + gpu_count,
            )
            if last is not None:
                unseen = finish.timestamp() - last
                if unseen > 0:
                    notes.append(
                        f"container {container}: CPU after the last sample ({unseen:.1f} s before the "
                        "finish) is not seen; max(request, usage) is billed"
                    )
        return PodUsage(self.name, f"{namespace}/{name}", start, finish, containers, tuple(notes))


def _parse_timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _parse_window(value: object) -> float | None:
    """metrics-server's window, a Go duration such as "30s", "1m0s" or "20.5s", in seconds."""
    if not isinstance(value, str) or not value:
        return None
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total, number = 0.0, ""
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = next((u for u in ("ms", "us", "µs", "ns", "h", "m", "s") if value.startswith(u, i)), None)
        if unit is None or not number:
            return None
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    return total if not number else None


@dataclass
class _Sample:
    timestamp: datetime
    window_seconds: float | None
    cpu: dict[str, float] = field(default_factory=dict)  # container -> cores
    memory: dict[str, float] = field(default_factory=dict)  # container -> bytes


class MetricsApiSampler:
    """Samples a running pod's ``metrics.k8s.io/v1beta1`` PodMetrics and summarises them.

    ``fetch`` returns the PodMetrics object as a dict, or None when the API has none for the pod
    (not started yet, finished, or not scraped yet). ``MetricsApiSampler.from_kubernetes`` builds it
    from a kubernetes ``ApiClient`` (the same client and credentials KubernetesPodOperator uses).
    Call ``start()`` when the pod is created and ``stop()`` when it finished (or ``sample()`` from
    your own loop); then ``pod_usage(pod)`` gives the usage over the samples taken.

    CPU is the mean of the distinct samples' cores (each is metrics-server's rate over its window,
    15-60 s), memory the largest working set sampled. Samples cover only part of the lifetime (the
    first window starts after the pod does): the summary says how much was covered.
    """

    name = "metrics-api"

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any] | None],
        *,
        interval_seconds: float = 15.0,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self.interval_seconds = interval_seconds
        self._on_error = on_error
        self._samples: dict[datetime, _Sample] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    @classmethod
    def from_kubernetes(
        cls, api_client: Any, namespace: str, pod_name: str, **kwargs: Any
    ) -> MetricsApiSampler:
        from kubernetes.client import CustomObjectsApi
        from kubernetes.client.exceptions import ApiException

        api = CustomObjectsApi(api_client)

        def fetch() -> Mapping[str, Any] | None:
            try:
                return api.get_namespaced_custom_object(
                    "metrics.k8s.io", "v1beta1", namespace, "pods", pod_name, _request_timeout=10
                )
            except ApiException as exc:
                if exc.status == 404:  # no metrics (yet, or any more) for this pod
                    return None
                raise

        return cls(fetch, **kwargs)

    def sample(self) -> bool:
        """Take one sample; True when it was a new one (metrics-server refreshes once per window)."""
        body = self._fetch()
        if not body:
            return False
        timestamp = _parse_timestamp(body.get("timestamp"))
        if timestamp is None:
            raise UsageSourceError(f"PodMetrics without a valid timestamp: {body.get('timestamp')!r}")
        sample = _Sample(timestamp, _parse_window(body.get("window")))
        for container in body.get("containers") or []:
            usage = container.get("usage") or {}
            name = str(container.get("name") or "")
            try:
                if "cpu" in usage:
                    sample.cpu[name] = parse_quantity(usage["cpu"])
                if "memory" in usage:
                    sample.memory[name] = parse_quantity(usage["memory"])
            except PricingError as exc:
                raise UsageSourceError(f"PodMetrics container {name}: {exc}") from None
        with self._lock:
            if timestamp in self._samples:
                return False
            self._samples[timestamp] = sample
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # a sampling thread must not die on one bad answer
                self.errors += 1
                if self._on_error is not None:
                    self._on_error(exc)
            self._stop.wait(self.interval_seconds)

    def start(self) -> MetricsApiSampler:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="xac-metrics-api-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_seconds + 15)
            self._thread = None

    @property
    def samples(self) -> int:
        with self._lock:
            return len(self._samples)

    def pod_usage(self, pod: Mapping[str, Any]) -> PodUsage | None:
        namespace, name, start, finish = _pod_identity(pod)
        with self._lock:
            # samples of this pod's lifetime only (a window ends within it)
            samples = [s for t, s in sorted(self._samples.items()) if start < t <= finish]
        if not samples:
            return None
        names = sorted({c for s in samples for c in (*s.cpu, *s.memory)})
        containers = {}
        for container in names:
            cpu = [s.cpu[container] for s in samples if container in s.cpu]
            memory = [s.memory[container] for s in samples if container in s.memory]
            containers[container] = ContainerUsage(
                cpu_cores_avg=sum(cpu) / len(cpu) if cpu else None,
                memory_peak_bytes=max(memory) if memory else None,
                samples=len(cpu) + len(memory),
            )
        lifetime = (finish - start).total_seconds()
        covered = sum(min(s.window_seconds or self.interval_seconds, lifetime) for s in samples)
        notes = (
            f"metrics API: {len(samples)} sample(s) covering about {min(covered, lifetime):.0f} of "
            f"{lifetime:.0f} s; CPU is their mean, memory their peak",
        )
        return PodUsage(self.name, f"{namespace}/{name}", start, finish, containers, notes)


@dataclass(frozen=True)
class CollectedUsage:
    """The merged usage of a pod: per container, the first source that measured it."""

    usage: dict[str, Any] | None  # the ``usage`` argument of price_pod (None: requests only)
    sources: dict[str, str]  # container -> source name
    notes: tuple[str, ...]


def collect_usage(pod: Mapping[str, Any], sources: Iterable[UsageSource]) -> CollectedUsage:
    """Ask the sources in order of preference; a source that fails is skipped (and noted)."""
    merged: dict[str, dict[str, Any]] = {}
    chosen: dict[str, str] = {}
    notes: list[str] = []
    for source in sources:
        try:
            found = source.pod_usage(pod)
        except (UsageSourceError, OSError) as exc:
            notes.append(f"usage source {source.name} skipped: {exc}")
            continue
        if found is None:
            notes.append(f"usage source {source.name}: no data for this pod")
            continue
        entries = found.as_pricing_input()["containers"]
        for container, entry in entries.items():
            if container not in merged:
                merged[container] = entry
                chosen[container] = found.source
        notes.extend(found.notes)
    if not merged:
        return CollectedUsage(None, {}, tuple(notes))
    return CollectedUsage({"containers": merged}, chosen, tuple(notes))


def sources_from_environment(environ: Mapping[str, str] | None = None) -> list[UsageSource]:
    """The usage sources configured by environment: ``XAC_PROMETHEUS_URL`` (and, for a Prometheus
    behind authentication, ``XAC_PROMETHEUS_BEARER_TOKEN``). The metrics API needs sampling while
    the pod runs, so it is not built from the environment but by whoever watches the pod."""
    import os

    env = os.environ if environ is None else environ
    sources: list[UsageSource] = []
    url = env.get("XAC_PROMETHEUS_URL")
    if url:
        token = env.get("XAC_PROMETHEUS_BEARER_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        sources.append(PrometheusSource(url, headers=headers))
    return sources
