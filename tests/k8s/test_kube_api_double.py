"""The Kubernetes API test double, driven by the official clients (``kubernetes`` and ``kubernetes_asyncio``).

The double is what the KubernetesPodOperator talks to in tests/dags/test_kpo_runs.py; these tests pin
the behaviour the operator relies on: phases, exit codes, times, node placement, logs (follow,
timestamps, since/tail), events (list and watch), selectors, patch and delete (which kills the process).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.embedded import kube_api

NS = "ai-prod"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube_api.KubeApiDouble]:
    with kube_api.start(
        command_map={"python": sys.executable},
        service_account_env={"xac-explainer": {"INJECTED_CREDENTIAL": "from-pod-identity"}},
        namespaces=[NS, "default"],
        max_grace_seconds=2.0,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def core(api: kube_api.KubeApiDouble, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from kubernetes import client, config

    path = api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config", namespace=NS)
    return client.CoreV1Api(config.new_client_from_config(config_file=str(path)))


def _pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "t", "case": name}},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "xac-explainer",
            "containers": [
                {
                    "name": "base",
                    "image": "registry.example.com/t:1",
                    "command": ["python", "-u", "-c", script],
                    "env": [
                        {"name": "SCRATCH", "value": "/scratch/xac"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    ],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "64Mi"},
                        "limits": {"memory": "64Mi"},
                    },
                }
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            **spec,
        },
    }


def _log(core: Any, name: str, **kwargs: Any) -> str:
    # _preload_content=False as the operator reads logs: this client turns a preloaded text/plain
    # body into the repr of its bytes (a client quirk, the same against a real API server)
    return core.read_namespaced_pod_log(name, NS, _preload_content=False, **kwargs).data.decode()


def _wait_phase(core: Any, name: str, phases: tuple[str, ...], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, NS)
        if pod.status.phase in phases:
            return pod
        time.sleep(0.05)
    raise AssertionError(f"pod {name} did not reach {phases}: {pod.status.phase}")


def test_a_pod_runs_its_command_with_its_env_and_reports_success(core: Any) -> None:
    script = (
        "import os, pathlib; p = pathlib.Path(os.environ['SCRATCH']); p.mkdir(parents=True);"
        "(p / 'f').write_text('x'); print('scratch', p.is_dir(), 'name', os.environ['POD_NAME']);"
        "print('cred', os.environ.get('INJECTED_CREDENTIAL')); print('home', os.environ.get('XAC_HOME'))"
    )
    core.create_namespaced_pod(NS, _pod("ok", script))
    pod = _wait_phase(core, "ok", ("Succeeded", "Failed"))
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name == "loopback-cpu-1"  # the GPU node is tainted
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"
    assert pod.status.start_time <= terminated.finished_at
    log = _log(core, "ok", container="base")
    # the emptyDir mount path is rewritten into the pod's sandbox; the host's variables do not leak
    assert "scratch True name ok" in log and "cred from-pod-identity" in log and "home None" in log
    reasons = [
        e.reason for e in core.list_namespaced_event(NS, field_selector="involvedObject.name=ok").items
    ]
    assert reasons[:1] == ["Scheduled"] and "Started" in reasons


def test_a_failing_container_fails_the_pod_with_its_exit_code_and_message(core: Any) -> None:
    core.create_namespaced_pod(NS, _pod("fails", "import sys; print('boom'); sys.exit(3)"))
    pod = _wait_phase(core, "fails", ("Succeeded", "Failed"))
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 3, "Error")
    assert "boom" in terminated.message


def test_an_unknown_command_is_a_start_error(core: Any) -> None:
    body = _pod("nocmd", "")
    body["spec"]["containers"][0]["command"] = ["no-such-binary"]
    core.create_namespaced_pod(NS, body)
    pod = _wait_phase(core, "nocmd", ("Failed",))
    assert pod.status.container_statuses[0].state.terminated.exit_code == 128


def test_log_follow_streams_with_timestamps_and_since_tail(core: Any) -> None:
    from airflow.providers.cncf.kubernetes.utils.pod_manager import parse_log_line

    script = "import time\nfor i in range(5):\n    print('line', i, flush=True); time.sleep(0.2)"
    core.create_namespaced_pod(NS, _pod("logs", script))
    _wait_phase(core, "logs", ("Running", "Succeeded"))
    stream = core.read_namespaced_pod_log("logs", NS, follow=True, timestamps=True, _preload_content=False)
    lines = [raw.decode() for raw in stream.stream() for raw in raw.splitlines()]
    assert [parse_log_line(line)[1] for line in lines] == [f"line {i}" for i in range(5)]
    assert all(parse_log_line(line)[0] is not None for line in lines)
    assert _log(core, "logs", tail_lines=2).splitlines() == ["line 3", "line 4"]
    assert _log(core, "logs", since_seconds=3600).count("line") == 5


def test_selectors_patch_and_delete_kill_the_process(core: Any, api: kube_api.KubeApiDouble) -> None:
    core.create_namespaced_pod(NS, _pod("long", "import time; print('up', flush=True); time.sleep(60)"))
    _wait_phase(core, "long", ("Running",))
    assert [
        p.metadata.name for p in core.list_namespaced_pod(NS, label_selector="case=long,app in (t)").items
    ] == ["long"]
    assert core.list_namespaced_pod(NS, label_selector="case=long,!app").items == []
    core.patch_namespaced_pod("long", NS, {"metadata": {"labels": {"already_checked": "True"}}})
    assert core.list_namespaced_pod(NS, label_selector="case=long,already_checked!=True").items == []
    running = core.list_namespaced_pod(NS, field_selector="status.phase=Running,metadata.name=long").items
    assert len(running) == 1
    process = api.runs[(NS, "long")].process
    assert process is not None and process.poll() is None
    core.delete_namespaced_pod("long", NS)
    process.wait(timeout=10)  # SIGTERM reached the process group
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and core.list_namespaced_pod(NS, label_selector="case=long").items:
        time.sleep(0.05)
    assert core.list_namespaced_pod(NS, label_selector="case=long").items == []
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("long", NS)
    assert err.value.status == 404


def test_scheduling_follows_selectors_affinity_and_taints(core: Any) -> None:
    gpu = _pod(
        "gpu",
        "print('gpu')",
        nodeSelector={"nvidia.com/gpu.product": "Tesla-T4"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    core.create_namespaced_pod(NS, gpu)
    assert _wait_phase(core, "gpu", ("Succeeded",)).spec.node_name == "loopback-gpu-1"
    untolerated = _pod("notol", "print(1)", nodeSelector={"nvidia.com/gpu.product": "Tesla-T4"})
    core.create_namespaced_pod(NS, untolerated)
    time.sleep(0.3)
    pod = core.read_namespaced_pod("notol", NS)
    assert pod.status.phase == "Pending" and pod.spec.node_name is None
    events = core.list_namespaced_event(NS, field_selector="involvedObject.name=notol").items
    assert events[0].reason == "FailedScheduling" and "untolerated taint" in events[0].message
    node = core.read_node("loopback-gpu-1")
    assert node.metadata.labels["karpenter.sh/capacity-type"] == "spot"


def test_the_async_client_reads_pods_logs_and_watches_events(
    api: kube_api.KubeApiDouble, tmp_path: Path
) -> None:
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio import config as aconfig
    from kubernetes_asyncio import watch as awatch

    path = api.write_kubeconfig(tmp_path / "config", namespace=NS)

    async def scenario() -> tuple[str, list[str], str]:
        async with aclient.ApiClient(await _async_config(aconfig, path)) as connection:
            v1 = aclient.CoreV1Api(connection)
            await v1.create_namespaced_pod(NS, _pod("async", "print('hello async')"))
            reasons: list[str] = []
            watcher = awatch.Watch()
            async for item in watcher.stream(
                v1.list_namespaced_event,
                namespace=NS,
                field_selector="involvedObject.name=async",
                timeout_seconds=2,
            ):
                reasons.append(item["object"].reason)
            pod = await v1.read_namespaced_pod("async", NS)
            while pod.status.phase not in ("Succeeded", "Failed"):
                await asyncio.sleep(0.05)
                pod = await v1.read_namespaced_pod("async", NS)
            log = await v1.read_namespaced_pod_log("async", NS, timestamps=True)
            return pod.status.phase, reasons, log

    phase, reasons, log = asyncio.run(scenario())
    assert phase == "Succeeded" and "Scheduled" in reasons and "Started" in reasons
    assert log.strip().endswith("hello async")


async def _async_config(aconfig: Any, path: Path) -> Any:
    from kubernetes_asyncio.client import Configuration

    configuration = Configuration()
    await aconfig.load_kube_config(config_file=str(path), client_configuration=configuration)
    return configuration


def test_active_deadline_kills_the_pod(core: Any) -> None:
    core.create_namespaced_pod(NS, _pod("deadline", "import time; time.sleep(60)", activeDeadlineSeconds=1))
    pod = _wait_phase(core, "deadline", ("Failed",), timeout=15)
    assert pod.status.reason == "DeadlineExceeded"
    assert pod.status.container_statuses[0].state.terminated.reason == "DeadlineExceeded"
