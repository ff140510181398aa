"""Usage sources for pod pricing.

(a) Prometheus: a real Prometheus (Debian's binary, 127.0.0.1, a free port, scraping every second)
scrapes a tiny exporter served by this test with synthetic cAdvisor and DCGM series labelled like
the real ones (namespace, pod, container, id; DCGM: gpu, UUID). The exporter records every sample
it served; the usage computed from Prometheus must equal what follows from those samples. The
exporter serves explicit timestamps, as the kubelet's cAdvisor endpoint does, so both sides know
each sample's exact time.

(b) The metrics API: a loopback HTTP server that stands in for metrics-server, serving
``/apis/metrics.k8s.io/v1beta1/namespaces/<ns>/pods/<name>`` PodMetrics JSON, reached through the
real kubernetes client, as KubernetesPodOperator's hook reaches a cluster.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from include.finops.pod import price_pod
from include.finops.pricing import load_catalogue
from include.finops.usage_sources import (
    MetricsApiSampler,
    PrometheusSource,
    UsageSourceError,
    collect_usage,
    counter_increase,
    sources_from_environment,
)

CATALOGUE = load_catalogue()
GIB = 2**30
NAMESPACE = "ai-prod"
POD = "explain-run-0"
SCRAPE_JOBS = ("kubelet-cadvisor", "cadvisor-daemonset")
LIFETIME = 6  # seconds of the synthetic pod's life (whole seconds: pod timestamps have no fraction)


# --------------------------------------------------------------------------- the synthetic exporter


@dataclass
class Exporter:
    """Serves cAdvisor/DCGM-shaped series for pod POD while it "runs" (start <= t < finish)."""

    start: float
    finish: float
    served: list[tuple[str, str, dict[str, str], float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def series(self, t: float) -> list[tuple[str, dict[str, str], float]]:
        age = t - self.start
        pod = {"namespace": NAMESPACE, "pod": POD}
        out: list[tuple[str, dict[str, str], float]] = []
        if 0 <= age and t < self.finish:
            explain = {**pod, "container": "explain", "id": "/kubepods/pod1/c-explain"}
            out.append(("container_cpu_usage_seconds_total", explain, 1.5 * age))
            # working set rises to a peak of 3 GiB at 2 s, then falls back
            out.append(("container_memory_working_set_bytes", explain, (3 - abs(age - 2) / 4) * GIB))
            # the sidecar restarted after 3 s: a new cgroup whose counter starts again at zero
            restarted = age >= 3
            sidecar = {
                **pod,
                "container": "sidecar",
                "id": "/kubepods/pod1/c-sidecar-2" if restarted else "/kubepods/pod1/c-sidecar-1",
            }
            out.append(("container_cpu_usage_seconds_total", sidecar, 0.25 * (age - 3 if restarted else age)))
            out.append(("container_memory_working_set_bytes", sidecar, 64 * 2**20 + 2**20 * int(age)))
            # series that must not count: the pod's cgroup (container="") and the pause container
            out.append(
                (
                    "container_cpu_usage_seconds_total",
                    {**pod, "container": "", "id": "/kubepods/pod1"},
                    99 * age,
                )
            )
            out.append(
                ("container_cpu_usage_seconds_total", {**pod, "container": "POD", "id": "/p"}, 50 * age)
            )
            # two GPUs held by the explain container (dcgm-exporter's kubernetes labels)
            for gpu, level in (("0", 40.0), ("1", 80.0)):
                labels = {**pod, "container": "explain", "gpu": gpu, "UUID": f"GPU-000{gpu}"}
                out.append(("DCGM_FI_DEV_GPU_UTIL", labels, level + 10 * math.sin(age)))
        # another pod of the same name in another namespace, and another pod in the same one
        out.append(
            (
                "container_cpu_usage_seconds_total",
                {"namespace": "other", "pod": POD, "container": "explain"},
                7 * t,
            )
        )
        out.append(
            (
                "container_cpu_usage_seconds_total",
                {"namespace": NAMESPACE, "pod": "explain-run-1", "container": "explain"},
                5 * t,
            )
        )
        return out

    def render(self, path: str) -> str:
        t = round(time.time(), 3)  # Prometheus keeps millisecond timestamps
        lines = []
        with self.lock:
            for name, labels, value in self.series(t):
                text = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{text}}} {value!r} {round(t * 1000)}")
                self.served.append((path, name, labels, t, value))
        return "\n".join(lines) + "\n"

    def last_served(self, path: str) -> float:
        """The time of the last sample of the pod served to the scraper of ``path``."""
        with self.lock:
            return max(
                t
                for p, n, labels, t, _ in self.served
                if p == path
                and n == "container_cpu_usage_seconds_total"
                and labels.get("pod") == POD
                and labels.get("namespace") == NAMESPACE
                and labels.get("container") == "explain"
            )

    def samples(self, name: str, **match: str) -> list[tuple[dict[str, str], float, float]]:
        """(labels, t, value) served (to either scraper) for the pod's lifetime window (start, finish]."""
        with self.lock:
            return [
                (labels, t, value)
                for _, n, labels, t, value in self.served
                if n == name
                and self.start < t <= self.finish
                and all(labels.get(k) == v for k, v in match.items())
            ]


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def exporter() -> Iterator[tuple[Exporter, str]]:
    # The pod's life is scheduled once Prometheus scrapes (see ``prometheus``); until then none.
    state = Exporter(start=math.inf, finish=math.inf)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = state.render(self.path).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server, address = _serve(Handler)
    yield state, address
    server.shutdown()


@pytest.fixture(scope="module")
def prometheus(
    exporter: tuple[Exporter, str],
    prometheus_factory: Callable[[list[dict[str, Any]]], str],
    poll: Callable[..., Any],
) -> tuple[Exporter, str]:
    state, address = exporter
    # Two jobs scrape the same target, as when a cluster runs both the kubelet's cAdvisor job and a
    # cAdvisor DaemonSet: the same cgroup's samples must be merged, not added up.
    url = prometheus_factory(
        [
            {"job_name": job, "metrics_path": f"/{job}", "static_configs": [{"targets": [address]}]}
            for job in SCRAPE_JOBS
        ]
    )
    # Prometheus's service discovery hands targets to the scrapers a few seconds after start:
    # the pod starts (on a whole second: pod timestamps have none) once both jobs scrape.
    source = PrometheusSource(url)
    poll(
        lambda: len(source.query("up == 1", datetime.now(UTC))) == len(SCRAPE_JOBS),
        what="both scrape jobs to be up",
    )
    start = math.ceil(time.time()) + 1
    state.start, state.finish = start, start + LIFETIME
    return state, url


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def finished_pod(start: float, finish: float, *, name: str = POD, sidecar_request: str = "500m") -> dict:
    containers = [
        {"name": "explain", "resources": {"requests": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "2"}}},
        {"name": "sidecar", "resources": {"requests": {"cpu": sidecar_request, "memory": "128Mi"}}},
    ]
    state = {"terminated": {"exitCode": 0, "startedAt": iso(start), "finishedAt": iso(finish)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"xac.dev/model": "m", "xac.dev/shard": "0"},
        },
        "spec": {"nodeName": "node-a", "containers": containers},
        "status": {
            "phase": "Succeeded",
            "startTime": iso(start),
            "containerStatuses": [{"name": c["name"], "state": state} for c in containers],
        },
    }


@pytest.fixture(scope="module")
def ingested(prometheus: tuple[Exporter, str]) -> tuple[Exporter, str, dict]:
    """Wait until the pod has finished and Prometheus holds the last samples served before its finish."""
    state, url = prometheus
    time.sleep(max(state.finish - time.time(), 0) + 0.1)
    pod = finished_pod(state.start, state.finish)
    source = PrometheusSource(url)
    expected = {job: state.last_served(f"/{job}") for job in SCRAPE_JOBS}
    query = f'container_cpu_usage_seconds_total{{pod="{POD}",container="explain",namespace="{NAMESPACE}"}}'
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = source.query(f"timestamp({query})", datetime.fromtimestamp(state.finish, UTC))
        last = {r["metric"]["job"]: float(r["value"][1]) for r in found}
        if last.keys() == expected.keys() and all(abs(last[j] - expected[j]) < 1e-3 for j in expected):
            break
        time.sleep(0.25)
    else:
        pytest.fail("Prometheus did not ingest the exporter's last samples within 30 s")
    return state, url, pod


# --------------------------------------------------------------------------- (a) Prometheus


def test_prometheus_usage_equals_what_the_exporter_served(ingested: tuple[Exporter, str, dict]) -> None:
    state, url, pod = ingested
    usage = PrometheusSource(url).pod_usage(pod)
    assert usage is not None and usage.source == "prometheus"
    assert set(usage.containers) == {"explain", "sidecar"}  # not "", not "POD"
    lifetime = state.finish - state.start

    # CPU of "explain": one cgroup, counter from zero at the container's start -> its last value
    explain_cpu = state.samples("container_cpu_usage_seconds_total", container="explain")
    last_explain = max(explain_cpu, key=lambda s: s[1])[2]
    assert usage.containers["explain"].cpu_seconds == pytest.approx(last_explain, rel=1e-9)
    assert usage.containers["explain"].cpu_cores_avg == pytest.approx(last_explain / lifetime, rel=1e-9)
    # it ran at 1.5 cores; only the work after the last scrape (< 1 s of 6) is unseen
    assert 1.5 * (lifetime - 1.5) / lifetime <= usage.containers["explain"].cpu_cores_avg <= 1.5

    # CPU of "sidecar": two cgroups (restart after 3 s), each counted from zero -> sum of their last values
    sidecar_cpu = state.samples("container_cpu_usage_seconds_total", container="sidecar")
    by_id: dict[str, float] = {}
    for labels, _, value in sorted(sidecar_cpu, key=lambda s: s[1]):
        by_id[labels["id"]] = value
    assert len(by_id) == 2
    assert usage.containers["sidecar"].cpu_seconds == pytest.approx(sum(by_id.values()), rel=1e-9)

    # memory: the largest working set served
    for container in ("explain", "sidecar"):
        peak = max(v for _, _, v in state.samples("container_memory_working_set_bytes", container=container))
        assert usage.containers[container].memory_peak_bytes == pytest.approx(peak, rel=1e-12)

    # GPU: mean of each GPU's samples, averaged over the two GPUs, as a fraction
    gpu = state.samples("DCGM_FI_DEV_GPU_UTIL", container="explain")
    means = []
    for index in ("0", "1"):
        values = [v for labels, _, v in gpu if labels["gpu"] == index]
        means.append(sum(values) / len(values))
    assert usage.containers["explain"].gpu_utilisation == pytest.approx(sum(means) / 2 / 100, rel=1e-9)
    assert usage.containers["sidecar"].gpu_utilisation is None


def test_prometheus_usage_prices_the_pod_with_max_of_request_and_usage(
    ingested: tuple[Exporter, str, dict],
) -> None:
    state, url, pod = ingested
    collected = collect_usage(pod, [PrometheusSource(url)])
    assert collected.sources == {"explain": "prometheus", "sidecar": "prometheus"}
    cost = price_pod(pod, CATALOGUE, usage=collected.usage)
    assert cost.usage_source == "prometheus" and not any("requests are billed" in n for n in cost.notes)
    rows = {(r["x_Container"], r["x_Resource"]): r for r in cost.rows}
    assert {r["x_UsageSource"] for r in cost.rows} == {"prometheus"}
    hours = (state.finish - state.start) / 3600
    explain_cores = max(
        state.samples("container_cpu_usage_seconds_total", container="explain"), key=lambda s: s[1]
    )[2] / (state.finish - state.start)
    # explain: usage (~1.4 cores) above its 1-core request is billed; its 3 GiB peak above 2 GiB too
    assert explain_cores > 1
    assert rows[("explain", "CPU")]["BilledCost"] == pytest.approx(
        explain_cores * hours * 0.031611, abs=2e-10
    )
    peak = max(v for _, _, v in state.samples("container_memory_working_set_bytes", container="explain"))
    assert rows[("explain", "RAM")]["BilledCost"] == pytest.approx(peak / GIB * hours * 0.004237, abs=2e-10)
    # sidecar: 0.25 cores and ~70 MiB used, below the 500m / 128Mi requested -> requests billed
    assert rows[("sidecar", "CPU")]["BilledCost"] == pytest.approx(0.5 * hours * 0.031611, abs=2e-10)
    assert rows[("sidecar", "CPU")]["x_UsageQuantity"] < 0.5
    assert rows[("sidecar", "RAM")]["BilledCost"] == pytest.approx(0.125 * hours * 0.004237, abs=2e-10)
    # GPUs: both held GPUs billed whole (default GPU price, no node labels); utilisation recorded
    assert rows[("explain", "GPU")]["BilledCost"] == pytest.approx(2 * hours * 2.5, abs=2e-10)
    assert 0.4 < rows[("explain", "GPU")]["x_UsageQuantity"] / 2 < 0.8


def test_prometheus_without_data_for_the_pod_falls_back_to_requests(
    ingested: tuple[Exporter, str, dict],
) -> None:
    state, url, _ = ingested
    unknown = finished_pod(state.start, state.finish, name="never-scraped")
    assert PrometheusSource(url).pod_usage(unknown) is None
    collected = collect_usage(unknown, [PrometheusSource(url)])
    assert collected.usage is None and any("no data for this pod" in n for n in collected.notes)
    cost = price_pod(unknown, CATALOGUE, usage=collected.usage)
    assert cost.usage_source == "requests-only" and any("requests are billed" in n for n in cost.notes)


def test_unreachable_prometheus_is_skipped_and_says_why(pod_factory: Callable[..., dict]) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = PrometheusSource(f"http://127.0.0.1:{port}", timeout=2)
    pod = pod_factory([{"name": "explain", "resources": {"requests": {"cpu": "1"}}}])
    with pytest.raises(UsageSourceError, match="prometheus"):
        source.pod_usage(pod)
    collected = collect_usage(pod, [source])
    assert collected.usage is None
    assert any(n.startswith("usage source prometheus skipped") for n in collected.notes)


def test_a_query_prometheus_rejects_is_an_error(ingested: tuple[Exporter, str, dict]) -> None:
    _, url, _ = ingested
    with pytest.raises(UsageSourceError, match="parse error"):
        PrometheusSource(url).query("sum(", datetime.now(UTC))


def test_counter_increase_reads_drops_as_resets() -> None:
    assert counter_increase([]) == 0
    assert counter_increase([2.0, 3.0, 5.0]) == 5.0  # from zero at the container start
    assert counter_increase([2.0, 3.0, 1.0, 4.0]) == 3.0 + 1.0 + 3.0  # reset after 3.0


def test_sources_from_environment() -> None:
    assert sources_from_environment({}) == []
    (source,) = sources_from_environment(
        {"XAC_PROMETHEUS_URL": "http://prometheus:9090/", "XAC_PROMETHEUS_BEARER_TOKEN": "t0k"}
    )
    assert isinstance(source, PrometheusSource)
    assert source.url == "http://prometheus:9090" and source.headers == {"Authorization": "Bearer t0k"}


# --------------------------------------------------------------------------- (b) the metrics API


class _MetricsServer:
    """A stand-in for metrics-server: serves the PodMetrics of one pod from a list of samples
    (one per "refresh"), advancing to the next sample every ``per_sample`` requests."""

    def __init__(self, samples: list[dict[str, Any]], per_sample: int = 2) -> None:
        self.samples = samples
        self.per_sample = per_sample
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                wanted = f"/apis/metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods/{POD}"
                index = (len(outer.requests) - 1) // outer.per_sample
                if self.path.split("?")[0] != wanted or index >= len(outer.samples):
                    body, status = (
                        {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404},
                        404,
                    )
                else:
                    body, status = outer.samples[index], 200
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server, address = _serve(Handler)
        self.url = f"http://{address}"

    def close(self) -> None:
        self.server.shutdown()


def pod_metrics(ts: datetime, explain_cpu: str, explain_memory: str, sidecar_cpu: str) -> dict[str, Any]:
    return {
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": POD, "namespace": NAMESPACE, "creationTimestamp": ts.isoformat()},
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window": "15.012s",
        "containers": [
            {"name": "explain", "usage": {"cpu": explain_cpu, "memory": explain_memory}},
            {"name": "sidecar", "usage": {"cpu": sidecar_cpu, "memory": "70Mi"}},
        ],
    }


def test_metrics_api_sampled_through_the_kubernetes_client() -> None:
    from kubernetes.client import ApiClient, Configuration

    start = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
    finish = start + timedelta(seconds=60)
    samples = [
        pod_metrics(start + timedelta(seconds=15), "1500m", "2Gi", "100m"),
        pod_metrics(start + timedelta(seconds=30), "2500000000n", "3Gi", "200m"),
        pod_metrics(start + timedelta(seconds=45), "2", "2560Mi", "300m"),
        # a sample after the pod's finish (a later pod of the same name) must not count
        pod_metrics(finish + timedelta(seconds=15), "64", "64Gi", "64"),
    ]
    server = _MetricsServer(samples)
    try:
        config = Configuration(host=server.url)
        with ApiClient(config) as client:
            sampler = MetricsApiSampler.from_kubernetes(client, NAMESPACE, POD, interval_seconds=0.05)
            sampler.start()
            # each sample is served twice (metrics-server answers the same window until it refreshes)
            deadline = time.monotonic() + 20
            while len(server.requests) < 2 * len(samples) + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            sampler.stop()
    finally:
        server.close()
    assert sampler.samples == 4  # distinct timestamps only
    assert sampler.errors == 0  # 404s (no metrics any more) are "no sample", not errors
    pod = finished_pod(start.timestamp(), finish.timestamp())
    usage = sampler.pod_usage(pod)
    assert usage is not None and usage.source == "metrics-api"
    # explain: mean of 1.5, 2.5, 2 cores = 2.0 ; peak of 2, 3, 2.5 GiB = 3 GiB
    assert usage.containers["explain"].cpu_cores_avg == pytest.approx(2.0)
    assert usage.containers["explain"].memory_peak_bytes == 3 * GIB
    assert usage.containers["sidecar"].cpu_cores_avg == pytest.approx(0.2)
    cost = price_pod(pod, CATALOGUE, usage=usage.as_pricing_input())
    rows = {(r["x_Container"], r["x_Resource"]): r for r in cost.rows}
    assert cost.usage_source == "metrics-api"
    # 60 s = 1/60 h ; explain CPU max(1, 2.0) x 1/60 x 0.031611 = 0.0010537 ; RAM max(2, 3) x 1/60 x 0.004237
    assert rows[("explain", "CPU")]["BilledCost"] == pytest.approx(0.0010537)
    assert rows[("explain", "RAM")]["BilledCost"] == pytest.approx(3 / 60 * 0.004237)
    # sidecar: 0.2 cores < 0.5 requested -> the request: 0.5 / 60 x 0.031611 = 0.00026342...
    assert rows[("sidecar", "CPU")]["BilledCost"] == pytest.approx(0.5 / 60 * 0.031611)
    assert rows[("sidecar", "CPU")]["x_UsageQuantity"] == pytest.approx(0.2)


def test_sources_in_order_of_preference_per_container(pod_factory: Callable[..., dict]) -> None:
    start = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
    pod = finished_pod(start.timestamp(), (start + timedelta(seconds=60)).timestamp())

    def serve(body: dict[str, Any] | None) -> Callable[[], dict[str, Any] | None]:
        return lambda: body

    only_explain = pod_metrics(start + timedelta(seconds=20), "3", "1Gi", "1")
    del only_explain["containers"][1]
    first = MetricsApiSampler(serve(only_explain))
    first.sample()
    second = MetricsApiSampler(serve(pod_metrics(start + timedelta(seconds=20), "9", "9Gi", "700m")))
    second.sample()
    first.name = second.name = "metrics-api"
    collected = collect_usage(pod, [first, second])
    # explain from the first source, sidecar (absent there) from the second
    assert collected.usage is not None
    assert collected.usage["containers"]["explain"]["cpu_cores_avg"] == 3.0
    assert collected.usage["containers"]["sidecar"]["cpu_cores_avg"] == pytest.approx(0.7)
    cost = price_pod(pod, CATALOGUE, usage=collected.usage)
    assert cost.usage_source == "metrics-api"
    # a pod with no usage anywhere: requests, and the pod says so
    empty = MetricsApiSampler(serve(None))
    empty.sample()
    assert collect_usage(pod, [empty]).usage is None


def test_metrics_api_rejects_malformed_pod_metrics() -> None:
    sampler = MetricsApiSampler(lambda: {"timestamp": "yesterday", "containers": []})
    with pytest.raises(UsageSourceError, match="timestamp"):
        sampler.sample()
    bad = pod_metrics(datetime(2026, 11, 27, tzinfo=UTC), "lots", "1Gi", "1")
    with pytest.raises(UsageSourceError, match="explain"):
        MetricsApiSampler(lambda: bad).sample()


def test_xac_cost_asks_prometheus_when_configured(
    ingested: tuple[Exporter, str, dict],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from include.finops.cli import run_cost_command

    _, url, pod = ingested
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    monkeypatch.setenv("XAC_PROMETHEUS_URL", url)
    assert run_cost_command(tmp_path / "pod.json", None, None) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["x_UsageSource"] for r in rows} == {"prometheus"}
    monkeypatch.delenv("XAC_PROMETHEUS_URL")
    assert run_cost_command(tmp_path / "pod.json", None, None) == 0
    assert {r["x_UsageSource"] for r in json.loads(capsys.readouterr().out)} == {"requests-only"}


def test_the_dag_prices_saved_pods_with_prometheus_usage_when_configured(
    ingested: tuple[Exporter, str, dict], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The meter step's pod pricing (include.orchestration.shards.price_pods) asks the configured source."""
    from include.orchestration.shards import price_pods

    _, url, pod = ingested
    record = {"pod": pod}  # as the join staged it
    monkeypatch.setenv("XAC_PROMETHEUS_URL", url)
    rows, _ = price_pods([record], "default")
    assert {r["x_UsageSource"] for r in rows} == {"prometheus"}
    monkeypatch.delenv("XAC_PROMETHEUS_URL")
    rows, _ = price_pods([record], "default")
    assert {r["x_UsageSource"] for r in rows} == {"requests-only"}
