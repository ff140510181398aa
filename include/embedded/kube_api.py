"""A test double of the Kubernetes API on 127.0.0.1 that runs each pod's container as a local process.

There is no cluster where this project is developed and tested, yet the explain step runs through the
real ``KubernetesPodOperator`` (sync and deferrable mode). This server answers the REST calls that the
operator, its trigger and the ``kubernetes`` / ``kubernetes_asyncio`` clients make, and "runs" a pod by
starting its container's ``command`` + ``args`` as a local process::

    with start() as api:                       # picks a free port
        api.write_kubeconfig(path)             # cluster server: http://127.0.0.1:PORT
        ...                                    # KubernetesPodOperator(config_file=path, ...)

    python -m include.embedded.kube_api --kubeconfig kube.yaml     # foreground, Ctrl-C stops

What it serves (``/api/v1``): namespaces (read, list); pods: create, read (also ``/status``), list
(``labelSelector`` with ``=``/``==``/``!=``/``in``/``notin``/``key``/``!key``, ``fieldSelector`` on
``metadata.name``, ``metadata.namespace``, ``spec.nodeName``, ``status.phase``; per namespace and across
all), patch (a JSON merge patch, or a JSON patch when the body is a list), delete; the pod log
(``container``, ``follow`` streamed while the process runs, ``timestamps``, ``sinceSeconds``,
``sinceTime``, ``tailLines``); events (list with ``fieldSelector=involvedObject.name=...``, and
``watch=true`` streams with ``resourceVersion`` and ``timeoutSeconds``); nodes (read, list).

What a pod does here: it is "scheduled" at once onto the first node (of a small fixed set,
:data:`DEFAULT_NODES`, or the ``nodes`` given) whose labels match its ``nodeSelector`` and required
node affinity and whose taints it tolerates (preferred affinity breaks ties); without one it stays
``Pending`` with a ``FailedScheduling`` event. It then runs the first container as a process:
``Pending`` → ``Running`` → ``Succeeded`` (exit 0) or ``Failed``, with ``startTime``, the container's
``startedAt``/``finishedAt``, ``exitCode``, ``reason``, the termination message (last log lines on
failure), ``spec.nodeName`` and events (Scheduled, Pulled, Created, Started, Killing). The command is
resolved through ``command_map`` (by default the explainer image's entrypoint ``xac`` is the ``xac``
beside this interpreter); an unknown command fails the container with exit code 128 (StartError). The
process gets only the pod's environment (literal ``value``s; ``fieldRef`` to the pod's name, namespace,
uid, node name and service account), a minimal ``PATH``/locale, and the variables that
``service_account_env`` holds for the pod's service account: the stand-in for a pod identity webhook
(IRSA) that injects cloud credentials. ``emptyDir`` volumes are folders in a private sandbox per pod;
an environment value that starts with a mount path of one is rewritten to point into it (there is no
mount namespace). ``activeDeadlineSeconds`` kills the process (reason ``DeadlineExceeded``). Deleting
a pod marks it terminating, sends SIGTERM to the process group, SIGKILL after the grace period (capped
at ``max_grace_seconds``), and removes the pod once the process is gone.

What it does NOT cover (it is a double of the API, not a cluster): real scheduling (no resource
accounting, capacity, preemption or autoscaling; the node set is fixed), resource requests and limits
(not enforced: no cgroups, no OOM kills), images (nothing is pulled; the command runs from this venv),
volumes other than ``emptyDir`` (and even those only through environment values), ``securityContext``
(user, read-only root, capabilities are ignored), init and sidecar containers (only the first
container runs), ``restartPolicy`` other than ``Never``, exec/attach/port-forward (no XCom sidecar),
authentication and RBAC (any token is accepted), admission, watches of pods, ``Job`` and other kinds,
server-side apply and strategic-merge semantics beyond a JSON merge patch, and persistence (state lives
in memory).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

HOST = "127.0.0.1"
BASE_CONTAINER_EXIT_START_ERROR = 128
# Log lines kept in the termination message of a failed container (FallbackToLogsOnError).
TERMINATION_MESSAGE_LINES = 20

# Two nodes: an on-demand CPU node and a spot GPU node whose T4 is time-sliced in 10 shares (the
# labels GPU feature discovery and Karpenter write), enough for the shipped cluster profiles' pods.
DEFAULT_NODES: tuple[dict[str, Any], ...] = (
    {
        "name": "loopback-cpu-1",
        "labels": {
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": "loopback-cpu-1",
            "node.kubernetes.io/instance-type": "m6i.xlarge",
            "karpenter.sh/capacity-type": "on-demand",
            "topology.kubernetes.io/region": "eu-west-1",
            "topology.kubernetes.io/zone": "eu-west-1a",
        },
        "taints": [],
        "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
    },
    {
        "name": "loopback-gpu-1",
        "labels": {
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": "loopback-gpu-1",
            "node.kubernetes.io/instance-type": "g4dn.xlarge",
            "karpenter.sh/capacity-type": "spot",
            "topology.kubernetes.io/region": "eu-west-1",
            "topology.kubernetes.io/zone": "eu-west-1b",
            "nvidia.com/gpu.product": "Tesla-T4",
            "nvidia.com/gpu.replicas": "10",
            "nvidia.com/gpu.count": "1",
        },
        "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
        "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110", "nvidia.com/gpu.shared": "10"},
    },
)

TERMINAL_PHASES = ("Succeeded", "Failed")


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime) -> str:
    """RFC 3339 with second precision, as the API server writes object timestamps."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_ts(moment: datetime) -> str:
    """RFC 3339 with fractional seconds, as the kubelet prefixes log lines (timestamps=true)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- selectors


_SET_TERM = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on commas that are not inside ``( )`` (set-based terms list values with commas)."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def label_selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics (equality- and set-based)."""
    for term in _split_selector(selector or ""):
        match = _SET_TERM.match(term)
        if match:
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            present = key in labels and labels[key] in values
            if (op == "in" and not present) or (op == "notin" and present):
                return False
        elif "!=" in term:
            key, value = (p.strip() for p in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (p.strip() for p in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(obj: Mapping[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return None if value is None else str(value)


def field_selector_matches(selector: str | None, obj: Mapping[str, Any]) -> bool:
    for term in _split_selector(selector or ""):
        negate = "!=" in term
        key, value = (p.strip() for p in term.replace("==", "=").replace("!=", "=").split("=", 1))
        if (_field(obj, key) == value) == negate:
            return False
    return True


# --------------------------------------------------------------------------- scheduling


def _expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), [str(v) for v in expr.get("values") or []]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _term_matches(term: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])


def _tolerates(tolerations: list[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol.get("key") == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value") == taint.get("value"):
            return True
    return False


def choose_node(spec: Mapping[str, Any], nodes: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The node a pod lands on (labels, required/preferred affinity, taints), or None and why."""
    selector = spec.get("nodeSelector") or {}
    affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = (affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
        "nodeSelectorTerms"
    ) or []
    preferred = affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    tolerations = spec.get("tolerations") or []
    reasons: dict[str, int] = {}
    candidates = []
    for node in nodes:
        labels = node.get("labels") or {}
        if any(labels.get(k) != str(v) for k, v in selector.items()):
            reasons["didn't match Pod's node affinity/selector"] = (
                reasons.get("didn't match Pod's node affinity/selector", 0) + 1
            )
            continue
        if required and not any(_term_matches(t, labels) for t in required):
            reasons["didn't match Pod's node affinity/selector"] = (
                reasons.get("didn't match Pod's node affinity/selector", 0) + 1
            )
            continue
        untolerated = [
            t
            for t in node.get("taints") or []
            if t.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(tolerations, t)
        ]
        if untolerated:
            why = f"had untolerated taint {{{untolerated[0]['key']}: {untolerated[0].get('value', '')}}}"
            reasons[why] = reasons.get(why, 0) + 1
            continue
        score = sum(
            int(p.get("weight", 0)) for p in preferred if _term_matches(p.get("preference") or {}, labels)
        )
        candidates.append((-score, node["name"], node))
    if not candidates:
        detail = ", ".join(f"{n} node(s) {why}" for why, n in sorted(reasons.items()))
        return None, f"0/{len(nodes)} nodes are available: {detail}."
    return sorted(candidates, key=lambda c: (c[0], c[1]))[0][2], ""


# --------------------------------------------------------------------------- state


@dataclass
class _LogLine:
    at: datetime
    text: str


@dataclass
class _PodRun:
    """The runtime side of one pod: its process, log, sandbox."""

    key: tuple[str, str]
    sandbox: Path
    log: list[_LogLine] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    finished: bool = False
    deleting: bool = False
    killed_by: str | None = None  # "delete" or "deadline"
    exit_code: int | None = None


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


class KubeApiDouble:
    """The API's state and the pods' processes; :class:`_Handler` serves it over HTTP."""

    def __init__(
        self,
        *,
        nodes: list[dict[str, Any]] | None = None,
        command_map: Mapping[str, str] | None = None,
        service_account_env: Mapping[str, Mapping[str, str]] | None = None,
        namespaces: list[str] | None = None,
        max_grace_seconds: float = 5.0,
        sandbox_root: Path | None = None,
    ):
        self.nodes = [copy.deepcopy(n) for n in (nodes if nodes is not None else DEFAULT_NODES)]
        venv_xac = Path(sys.executable).parent / "xac"
        self.command_map = dict(command_map) if command_map is not None else {"xac": str(venv_xac)}
        # service account name ("*": any) -> variables injected into its pods (a pod identity
        # webhook's job, e.g. IRSA's AWS credentials)
        self.service_account_env = {k: dict(v) for k, v in (service_account_env or {}).items()}
        self.namespaces = list(namespaces) if namespaces else None  # None: any namespace exists
        self.max_grace_seconds = max_grace_seconds
        self._own_sandbox = sandbox_root is None
        self.sandbox_root = Path(sandbox_root or tempfile.mkdtemp(prefix="xac-kube-"))
        self._lock = threading.Condition()
        self._rv = 0
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.runs: dict[tuple[str, str], _PodRun] = {}
        self.events: list[dict[str, Any]] = []
        # every pod ever created, with its last state (a deleted pod keeps its final object here)
        self.history: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []  # (method, path?query) of every call, for tests
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, port: int | None = None) -> KubeApiDouble:
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer((HOST, port or 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kube-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and kill every pod's process still running."""
        with self._lock:
            runs = list(self.runs.values())
        for run in runs:
            self._kill(run, grace=0.0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_sandbox:
            shutil.rmtree(self.sandbox_root, ignore_errors=True)

    def __enter__(self) -> KubeApiDouble:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "loopback", "cluster": {"server": self.endpoint_url}}],
            "users": [{"name": "loopback", "user": {"token": "loopback-double"}}],
            "contexts": [
                {
                    "name": "loopback",
                    "context": {"cluster": "loopback", "user": "loopback", "namespace": namespace},
                }
            ],
            "current-context": "loopback",
        }

    def write_kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False))
        return path

    # ------------------------------------------------------------------ helpers
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _check_namespace(self, namespace: str) -> None:
        if self.namespaces is not None and namespace not in self.namespaces:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')

    def _event(self, pod: dict[str, Any], reason: str, message: str, kind: str = "Normal") -> None:
        """Record an event (call with the lock held)."""
        meta = pod["metadata"]
        now = _ts(_now())
        self.events.append(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                    "namespace": meta["namespace"],
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self._next_rv(),
                    "creationTimestamp": now,
                },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "reason": reason,
                "message": message,
                "type": kind,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": "kube-api-double"},
                "reportingComponent": "kube-api-double",
            }
        )
        self._lock.notify_all()

    def _touch(self, pod: dict[str, Any]) -> None:
        pod["metadata"]["resourceVersion"] = self._next_rv()
        self._lock.notify_all()

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            found = self.pods.get((namespace, name))
            if found is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            return copy.deepcopy(found)

    def list_pods(
        self, namespace: str | None, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(p)
                for (ns, _), p in sorted(self.pods.items())
                if (namespace is None or ns == namespace)
                and label_selector_matches(label_selector, p["metadata"].get("labels") or {})
                and field_selector_matches(field_selector, p)
            ]

    def node(self, name: str) -> dict[str, Any]:
        for node in self.nodes:
            if node["name"] == name:
                return self._node_object(node)
        raise ApiError(404, "NotFound", f'nodes "{name}" not found')

    def _node_object(self, node: Mapping[str, Any]) -> dict[str, Any]:
        capacity = dict(node.get("capacity") or {})
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node["name"], "labels": dict(node.get("labels") or {}), "uid": node["name"]},
            "spec": {"taints": [dict(t) for t in node.get("taints") or []]},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    # ------------------------------------------------------------------ pods
    def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check_namespace(namespace)
        if not isinstance(body, dict) or body.get("kind", "Pod") != "Pod":
            raise ApiError(400, "BadRequest", "body must be a Pod")
        pod = copy.deepcopy(body)
        meta = pod.setdefault("metadata", {})
        name = meta.get("name") or (
            meta.get("generateName") + uuid.uuid4().hex[:5] if meta.get("generateName") else None
        )
        if not name:
            raise ApiError(422, "Invalid", "Pod is invalid: metadata.name: Required value")
        containers = (pod.get("spec") or {}).get("containers") or []
        if not containers:
            raise ApiError(422, "Invalid", "Pod is invalid: spec.containers: Required value")
        meta_ns = meta.get("namespace")
        if meta_ns and meta_ns != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
        with self._lock:
            if (namespace, name) in self.pods:
                raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists')
            meta.update(
                name=name,
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=_ts(_now()),
                resourceVersion=self._next_rv(),
            )
            pod["apiVersion"], pod["kind"] = "v1", "Pod"
            pod["status"] = {"phase": "Pending", "qosClass": _qos(containers)}
            self.pods[(namespace, name)] = pod
            self.history.append(pod)
            node, why = choose_node(pod["spec"], self.nodes)
            if node is None:
                pod["status"]["conditions"] = [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}
                ]
                self._event(pod, "FailedScheduling", why, "Warning")
                return copy.deepcopy(pod)
            pod["spec"]["nodeName"] = node["name"]
            pod["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": _ts(_now())}
            ]
            self._event(pod, "Scheduled", f"Successfully assigned {namespace}/{name} to {node['name']}")
            sandbox = self.sandbox_root / namespace / f"{name}-{meta['uid'][:8]}"
            run = _PodRun(key=(namespace, name), sandbox=sandbox)
            self.runs[(namespace, name)] = run
            created = copy.deepcopy(pod)
        threading.Thread(target=self._run_pod, args=(run,), name=f"pod-{name}", daemon=True).start()
        return created

    def _pod_env(self, pod: dict[str, Any], container: dict[str, Any], sandbox: Path) -> dict[str, str]:
        spec, meta = pod["spec"], pod["metadata"]
        mounts = {}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name")) or {}
            if "emptyDir" in volume:
                folder = sandbox / "volumes" / str(mount["name"])
                folder.mkdir(parents=True, exist_ok=True)
                mounts[str(mount["mountPath"]).rstrip("/")] = str(folder)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for key in ("LANG", "LC_ALL"):
            if key in os.environ:
                env[key] = os.environ[key]
        env["HOSTNAME"] = meta["name"]
        account = spec.get("serviceAccountName") or "default"
        env.update(self.service_account_env.get(account, self.service_account_env.get("*", {})))
        field_refs = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        }
        for item in container.get("env") or []:
            if "value" in item:
                value = str(item["value"])
            else:
                ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                if ref not in field_refs:
                    continue  # secrets, config maps, resource fields: not served by the double
                value = field_refs[ref]
            for mount_path, folder in sorted(mounts.items(), key=lambda m: -len(m[0])):
                if value == mount_path or value.startswith(mount_path + "/"):
                    value = folder + value[len(mount_path) :]
                    break
            env[item["name"]] = value
        return env

    def _run_pod(self, run: _PodRun) -> None:
        try:
            self._run_pod_process(run)
        except Exception as exc:  # a bug of the double must show as a failed pod, not a silent hang
            import traceback

            detail = traceback.format_exc()
            print(
                f"kube_api double: pod {run.key} crashed the runner:\n{detail}", file=sys.stderr, flush=True
            )
            if not run.finished:
                self._finish(run, _now(), BASE_CONTAINER_EXIT_START_ERROR, "StartError", f"{exc}\n{detail}")

    def _run_pod_process(self, run: _PodRun) -> None:
        with self._lock:
            pod = self.pods.get(run.key)
            if pod is None or run.deleting:
                return
            container = pod["spec"]["containers"][0]
            argv = [*(container.get("command") or []), *(container.get("args") or [])]
            resolved = self.command_map.get(argv[0]) if argv else None
            if resolved is None and argv and os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK):
                resolved = argv[0]
            image = str(container.get("image", ""))
            self._event(
                pod, "Pulled", f'Container image "{image}" already present on machine (not pulled: double)'
            )
        run.sandbox.mkdir(parents=True, exist_ok=True)
        env = self._pod_env(pod, container, run.sandbox)
        started = _now()
        if resolved is None:
            self._finish(
                run,
                started,
                BASE_CONTAINER_EXIT_START_ERROR,
                "StartError",
                f"exec: {argv[0] if argv else '(no command)'!r}: executable file not found",
            )
            return
        try:
            process = subprocess.Popen(
                [resolved, *argv[1:]],
                env=env,
                cwd=run.sandbox,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: delete kills what it started too
            )
        except OSError as exc:
            self._finish(run, started, BASE_CONTAINER_EXIT_START_ERROR, "StartError", str(exc))
            return
        with self._lock:
            run.process = process
            pod = self.pods.get(run.key)
            if pod is None or run.deleting:
                self._kill(run, grace=0.0, locked=True)
            else:
                self._event(pod, "Created", f"Created container {container.get('name', 'base')}")
                self._event(pod, "Started", f"Started container {container.get('name', 'base')}")
                status = pod["status"]
                status.update(
                    phase="Running",
                    startTime=_ts(started),
                    hostIP=HOST,
                    podIP=HOST,
                    conditions=[
                        {"type": t, "status": "True", "lastTransitionTime": _ts(started)}
                        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                    ],
                    containerStatuses=[
                        _container_status(
                            container, ready=True, state={"running": {"startedAt": _ts(started)}}
                        )
                    ],
                )
                self._touch(pod)
        deadline = pod["spec"].get("activeDeadlineSeconds") if pod else None
        timer = None
        if deadline:
            timer = threading.Timer(float(deadline), self._deadline, args=(run,))
            timer.daemon = True
            timer.start()
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            with self._lock:
                run.log.append(_LogLine(_now(), line))
                self._lock.notify_all()
        code = process.wait()
        if timer is not None:
            timer.cancel()
        reason = "Completed" if code == 0 else "Error"
        if run.killed_by == "deadline":
            reason = "DeadlineExceeded"
        self._finish(run, started, code if code >= 0 else 128 - code, reason, None)

    def _finish(self, run: _PodRun, started: datetime, code: int, reason: str, message: str | None) -> None:
        finished = _now()
        with self._lock:
            run.finished, run.exit_code = True, code
            pod = self.pods.get(run.key)
            if pod is not None:
                container = pod["spec"]["containers"][0]
                if message is None and code != 0:
                    message = "\n".join(line.text for line in run.log[-TERMINATION_MESSAGE_LINES:])
                terminated: dict[str, Any] = {
                    "exitCode": code,
                    "reason": reason,
                    "startedAt": _ts(started),
                    "finishedAt": _ts(finished),
                    "containerID": f"loopback://{run.key[1]}",
                }
                if message:
                    terminated["message"] = message
                status = pod["status"]
                status["phase"] = "Succeeded" if code == 0 else "Failed"
                status.setdefault("startTime", _ts(started))
                if reason == "DeadlineExceeded":
                    status["reason"] = "DeadlineExceeded"
                    status["message"] = "Pod was active on the node longer than the specified deadline"
                status["conditions"] = [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": _ts(started)},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": _ts(started)},
                    {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"},
                    {"type": "Ready", "status": "False", "reason": "PodCompleted"},
                ]
                status["containerStatuses"] = [
                    _container_status(container, ready=False, state={"terminated": terminated})
                ]
                self._touch(pod)
                if run.deleting:
                    self._remove(run)
            self._lock.notify_all()

    def _deadline(self, run: _PodRun) -> None:
        with self._lock:
            if run.finished:
                return
            run.killed_by = "deadline"
            pod = self.pods.get(run.key)
            if pod is not None:
                self._event(
                    pod, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline"
                )
        self._kill(run, grace=0.0)

    def _kill(self, run: _PodRun, grace: float, locked: bool = False) -> None:
        process = run.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def escalate() -> None:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        if grace <= 0:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            threading.Thread(target=escalate, daemon=True).start()

    def _remove(self, run: _PodRun) -> None:
        """Forget a pod (lock held); its last object stays in ``history``."""
        self.pods.pop(run.key, None)
        self.runs.pop(run.key, None)
        shutil.rmtree(run.sandbox, ignore_errors=True)
        self._lock.notify_all()

    def delete_pod(self, namespace: str, name: str, grace_period: float | None) -> dict[str, Any]:
        with self._lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            run = self.runs.get((namespace, name))
            spec_grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            grace = float(spec_grace if grace_period is None else grace_period)
            grace = min(grace, self.max_grace_seconds)
            pod["metadata"]["deletionTimestamp"] = _ts(_now() + timedelta(seconds=grace))
            pod["metadata"]["deletionGracePeriodSeconds"] = int(grace)
            self._touch(pod)
            answer = copy.deepcopy(pod)
            if run is None:  # never scheduled: nothing runs
                self.pods.pop((namespace, name), None)
                self._lock.notify_all()
                return answer
            if run.finished or run.process is None:  # done, or not started yet (_run_pod sees it)
                run.deleting = True
                self._remove(run)
                return answer
            run.deleting = True
            run.killed_by = "delete"
            self._event(pod, "Killing", f"Stopping container {pod['spec']['containers'][0].get('name')}")
        self._kill(run, grace)
        return answer

    def patch_pod(self, namespace: str, name: str, patch: Any) -> dict[str, Any]:
        with self._lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            if isinstance(patch, list):
                _json_patch(pod, patch)
            elif isinstance(patch, dict):
                _merge_patch(pod, patch)
            else:
                raise ApiError(400, "BadRequest", "a patch is a JSON object or a JSON patch list")
            self._touch(pod)
            return copy.deepcopy(pod)

    # ------------------------------------------------------------------ logs and events
    def log_lines(
        self,
        namespace: str,
        name: str,
        *,
        follow: bool,
        timestamps: bool,
        since: datetime | None,
        tail: int | None,
        stop: threading.Event,
    ) -> Iterator[str]:
        with self._lock:
            if (namespace, name) not in self.pods:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            run = self.runs.get((namespace, name))
            if run is None:
                raise ApiError(
                    400, "BadRequest", f'container "base" in pod "{name}" is waiting to start: not scheduled'
                )
            lines = [ln for ln in run.log if since is None or ln.at >= since]
            if tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            index = len(run.log)
        for line in lines:
            yield (f"{_log_ts(line.at)} {line.text}" if timestamps else line.text) + "\n"
        while follow and not stop.is_set():
            with self._lock:
                while len(run.log) <= index and not run.finished and not stop.is_set():
                    self._lock.wait(timeout=0.5)
                fresh = run.log[index:]
                index = len(run.log)
                done = run.finished and index == len(run.log)
            for line in fresh:
                yield (f"{_log_ts(line.at)} {line.text}" if timestamps else line.text) + "\n"
            if done:
                return

    def list_events(
        self, namespace: str, field_selector: str | None, after_rv: int = 0
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self.events
                if e["metadata"]["namespace"] == namespace
                and int(e["metadata"]["resourceVersion"]) > after_rv
                and field_selector_matches(field_selector, e)
            ]

    def wait_for_change(self, timeout: float) -> None:
        with self._lock:
            self._lock.wait(timeout=timeout)

    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)


def _qos(containers: list[dict[str, Any]]) -> str:
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k)
        and (r.get("limits") or {}).get(k) == (r.get("requests") or {}).get(k, (r.get("limits") or {}).get(k))
        for r in resources
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _container_status(container: Mapping[str, Any], *, ready: bool, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": container.get("name", "base"),
        "image": container.get("image", ""),
        "imageID": f"loopback-double://{container.get('image', '')}",
        "ready": ready,
        "started": "running" in state,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386 JSON merge patch (what a strategic merge patch of maps amounts to)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _json_patch(target: dict[str, Any], ops: list[Mapping[str, Any]]) -> None:
    """RFC 6902 add / replace / remove on object members (enough for labels and annotations)."""
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op.get("path", "")).split("/")[1:]]
        if not parts:
            raise ApiError(422, "Invalid", "a JSON patch operation needs a path")
        parent: Any = target
        for part in parts[:-1]:
            parent = parent.setdefault(part, {}) if op.get("op") == "add" else parent.get(part)
            if not isinstance(parent, dict):
                raise ApiError(422, "Invalid", f"path {op.get('path')} does not exist")
        if op.get("op") in ("add", "replace"):
            parent[parts[-1]] = copy.deepcopy(op.get("value"))
        elif op.get("op") == "remove":
            parent.pop(parts[-1], None)
        else:
            raise ApiError(422, "Invalid", f"JSON patch operation {op.get('op')!r} is not supported")


# --------------------------------------------------------------------------- HTTP


_NAMESPACED = re.compile(r"^/api/v1/namespaces/([^/]+)(?:/(pods|events)(?:/([^/]+)(?:/(log|status))?)?)?$")
_NODES = re.compile(r"^/api/v1/nodes(?:/([^/]+))?$")


class _Handler(BaseHTTPRequestHandler):
    api: KubeApiDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and task logs do not need an access log

    # -- plumbing
    def _query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ApiError(400, "BadRequest", "the body is not JSON") from None

    def _send_json(self, code: int, data: Any) -> None:
        payload = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        self.api.requests.append((method, self.path))
        try:
            self._route(method, path)
        except ApiError as exc:
            self._send_json(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- routes
    def _route(self, method: str, path: str) -> None:
        api, query = self.api, self._query()
        if path in ("/version",):
            return self._send_json(
                200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-loopback-double"}
            )
        if path == "/api":
            return self._send_json(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/api/v1/namespaces" and method == "GET":
            names = api.namespaces or sorted({ns for ns, _ in api.pods} | {"default"})
            return self._send_json(
                200,
                {
                    "kind": "NamespaceList",
                    "apiVersion": "v1",
                    "metadata": {},
                    "items": [_namespace(n) for n in names],
                },
            )
        if path == "/api/v1/pods" and method == "GET":
            items = api.list_pods(None, query.get("labelSelector"), query.get("fieldSelector"))
            return self._send_json(200, _list("PodList", items, api.resource_version()))
        nodes = _NODES.match(path)
        if nodes and method == "GET":
            if nodes.group(1):
                return self._send_json(200, api.node(nodes.group(1)))
            items = [api._node_object(n) for n in api.nodes]
            return self._send_json(200, _list("NodeList", items, api.resource_version()))
        match = _NAMESPACED.match(path)
        if not match:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace, kind, name, sub = match.groups()
        if kind is None:
            if method != "GET":
                raise ApiError(
                    405, "MethodNotAllowed", f"{method} on a namespace is not served by the double"
                )
            api._check_namespace(namespace)
            return self._send_json(200, _namespace(namespace))
        if kind == "events":
            if method != "GET" or name:
                raise ApiError(405, "MethodNotAllowed", "the double serves only listing and watching events")
            return self._events(namespace, query)
        if name is None:
            if method == "GET":
                api._check_namespace(namespace)
                items = api.list_pods(namespace, query.get("labelSelector"), query.get("fieldSelector"))
                return self._send_json(200, _list("PodList", items, api.resource_version()))
            if method == "POST":
                return self._send_json(201, api.create_pod(namespace, self._body()))
            raise ApiError(405, "MethodNotAllowed", f"{method} on pods is not served by the double")
        if sub == "log":
            return self._log(namespace, name, query)
        if method == "GET":
            return self._send_json(200, api.pod(namespace, name))
        if method == "PATCH":
            return self._send_json(200, api.patch_pod(namespace, name, self._body()))
        if method == "DELETE":
            body = self._body() or {}
            grace = query.get("gracePeriodSeconds")
            grace = body.get("gracePeriodSeconds") if grace is None and isinstance(body, dict) else grace
            return self._send_json(
                200, api.delete_pod(namespace, name, None if grace is None else float(grace))
            )
        raise ApiError(405, "MethodNotAllowed", f"{method} on a pod is not served by the double")

    def _log(self, namespace: str, name: str, query: dict[str, str]) -> None:
        follow = query.get("follow", "false").lower() == "true"
        timestamps = query.get("timestamps", "false").lower() == "true"
        since = None
        if query.get("sinceSeconds"):
            since = _now() - timedelta(seconds=int(query["sinceSeconds"]))
        elif query.get("sinceTime"):
            since = _parse_ts(query["sinceTime"])
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        stop = threading.Event()
        lines = self.api.log_lines(
            namespace, name, follow=follow, timestamps=timestamps, since=since, tail=tail, stop=stop
        )
        try:
            first = next(lines, None)  # raises ApiError before any header is sent
            self._start_stream("text/plain")
            if first is not None:
                self._chunk(first.encode())
                for line in lines:
                    self._chunk(line.encode())
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            stop.set()

    def _events(self, namespace: str, query: dict[str, str]) -> None:
        api = self.api
        selector = query.get("fieldSelector")
        after = int(query.get("resourceVersion") or 0)
        if query.get("watch", "false").lower() not in ("true", "1"):
            items = api.list_events(namespace, selector, after if query.get("resourceVersionMatch") else 0)
            return self._send_json(200, _list("EventList", items, api.resource_version()))
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        self._start_stream("application/json")
        try:
            while time.monotonic() < deadline:
                for event in api.list_events(namespace, selector, after):
                    after = max(after, int(event["metadata"]["resourceVersion"]))
                    self._chunk(json.dumps({"type": "ADDED", "object": event}).encode() + b"\n")
                api.wait_for_change(min(0.5, max(deadline - time.monotonic(), 0)))
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "status": {"phase": "Active"},
    }


def _list(kind: str, items: list[dict[str, Any]], rv: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}


def start(port: int | None = None, **options: Any) -> KubeApiDouble:
    """Start the double on 127.0.0.1 (``port=None``: a free one); options go to :class:`KubeApiDouble`."""
    return KubeApiDouble(**options).start(port)


S3_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def explainer_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """The S3 credentials of ``env`` for the explainer's service account (what IRSA gives a pod)."""
    return {k: env[k] for k in S3_CREDENTIAL_VARIABLES} | {"AWS_EC2_METADATA_DISABLED": "true"}


def backend_environment(kubeconfig: Path, cluster_profile: Path) -> dict[str, str]:
    """The environment that points the explainer backend of Airflow's tasks at a double: the
    ``kubernetes_default`` connection (a kubeconfig of :meth:`KubeApiDouble.write_kubeconfig`) and
    the cluster profile."""
    connection = {
        "conn_type": "kubernetes",
        "extra": {"kube_config_path": str(kubeconfig), "in_cluster": False},
    }
    return {
        "XAC_EXPLAIN_BACKEND": "kubernetes",
        "XAC_CLUSTER_PROFILE": str(cluster_profile),
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(connection),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.embedded.kube_api",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--kubeconfig", default=None, help="write a kubeconfig for clients here")
    parser.add_argument("--nodes", default=None, help="YAML list of nodes (name, labels, taints, capacity)")
    parser.add_argument(
        "--pass-env",
        nargs="*",
        default=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"],
        help="variables of this process injected into every pod (stand-in for pod identity credentials)",
    )
    args = parser.parse_args(argv)
    nodes = yaml.safe_load(Path(args.nodes).read_text()) if args.nodes else None
    injected = {k: os.environ[k] for k in args.pass_env if k in os.environ}
    api = start(args.port, nodes=nodes, service_account_env={"*": injected})
    if args.kubeconfig:
        print(f"kubeconfig: {api.write_kubeconfig(args.kubeconfig)}", file=sys.stderr)
    print(api.endpoint_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
