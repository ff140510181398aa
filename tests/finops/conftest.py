"""Pod objects shaped like ``kubectl get pod -o json`` for the cost tests (fixtures: helpers of
this folder cannot be imported with pytest's importlib import mode)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

START = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def container(
    name: str = "explain",
    *,
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    restart_policy: str | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    out: dict[str, Any] = {"name": name, "image": "xac/explainer:1", "resources": resources}
    if restart_policy:
        out["restartPolicy"] = restart_policy
    return out


def make_pod(
    containers: list[dict[str, Any]],
    *,
    seconds: float = 3600,
    phase: str = "Succeeded",
    exit_code: int = 0,
    start_time: bool = True,
    finished: bool = True,
    name: str = "explain-0",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    affinity_terms: list[list[dict[str, Any]]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    overhead: dict[str, str] | None = None,
    start: datetime = START,
) -> dict[str, Any]:
    """A finished pod whose containers ran from ``start`` for ``seconds``."""
    end = start + timedelta(seconds=seconds)
    spec: dict[str, Any] = {"nodeName": "node-a", "containers": containers, "restartPolicy": "Never"}
    if init_containers:
        spec["initContainers"] = init_containers
    if node_selector:
        spec["nodeSelector"] = node_selector
    if affinity_terms is not None:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": t} for t in affinity_terms]
                }
            }
        }
    if overhead:
        spec["overhead"] = overhead
    state: dict[str, Any]
    if finished:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": iso(start),
                "finishedAt": iso(end),
            }
        }
    else:
        state = {"running": {"startedAt": iso(start)}}
    status: dict[str, Any] = {
        "phase": phase,
        "containerStatuses": [{"name": c["name"], "state": state} for c in containers],
    }
    if start_time:
        status["startTime"] = iso(start)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ai-prod",
            "uid": f"uid-{name}",
            "labels": labels
            if labels is not None
            else {
                "xac.dev/model": "diagnosis-risk-tabular",
                "xac.dev/model-version": "3",
                "xac.dev/team": "risk-ml",
                "xac.dev/cost-center": "cc-4711",
                "xac.dev/config": "diagnosis-risk-kernelshap",
                "xac.dev/shard": "0",
            },
            "annotations": annotations
            if annotations is not None
            else {"xac.dev/run-id": "scheduled__2026-11-27T08:00:00+00:00"},
        },
        "spec": spec,
        "status": status,
    }


@pytest.fixture
def pod_factory() -> Callable[..., dict[str, Any]]:
    return make_pod


@pytest.fixture
def container_factory() -> Callable[..., dict[str, Any]]:
    return container


# --------------------------------------------------------------------------- Prometheus, Pushgateway
# Debian's binaries (packages prometheus, prometheus-pushgateway), started on 127.0.0.1 on a free port
# in a temporary folder and stopped by the fixture. Tests that need one skip when it is not installed.

PROMETHEUS_BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY_BINARY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:]
    raise RuntimeError(f"{process.args[0]} not ready at {url} after {timeout:.0f} s:\n{tail}")


@contextmanager
def _daemon(args: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, ready_url, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def prometheus_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[list[dict[str, Any]]], str]]:
    """Start a real Prometheus scraping the given scrape configs every second; returns its URL."""
    if not Path(PROMETHEUS_BINARY).exists():
        pytest.skip("Debian's prometheus binary is not installed (apt-get install prometheus)")
    stack = ExitStack()

    def start(scrape_configs: list[dict[str, Any]]) -> str:
        folder = tmp_path_factory.mktemp("prometheus")
        config = folder / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": scrape_configs,
                }
            )
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stack.enter_context(
            _daemon(
                [
                    PROMETHEUS_BINARY,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                f"{url}/-/ready",
                folder / "prometheus.log",
            )
        )
        return url

    with stack:
        yield start


@pytest.fixture(scope="module")
def pushgateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Pushgateway (no persistence) on 127.0.0.1."""
    if not Path(PUSHGATEWAY_BINARY).exists():
        pytest.skip(
            "Debian's prometheus-pushgateway binary is not installed (apt-get install prometheus-pushgateway)"
        )
    folder = tmp_path_factory.mktemp("pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _daemon(
        [
            PUSHGATEWAY_BINARY,
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-admin-api",
            "--log.level=warn",
        ],
        f"{url}/-/ready",
        folder / "pushgateway.log",
    ):
        yield url


def wait_for(
    check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or check}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def poll() -> Callable[..., Any]:
    return wait_for
