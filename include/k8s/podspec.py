"""One explainer shard as a Kubernetes pod: a plain manifest and the KubernetesPodOperator's kwargs.

    template = pod_template(config, profile, capacity="spot-preferred")   # no run needed
    plan = plan_pod(config, profile, run, ["xac", "explain", ...])        # one shard of one run
    plan.manifest()          # {"apiVersion": "v1", "kind": "Pod", ...}
    plan.kpo_kwargs()        # KubernetesPodOperator(task_id=..., **plan.kpo_kwargs())

For a mapped task (one pod per shard) the kwargs split in two: ``template.kpo_kwargs()`` does not
depend on the run (resources, scheduling, security, reliability: ``.partial()``), and
``plan.shard_kpo_kwargs()`` is small and JSON-serialisable (name, arguments, labels, annotations:
``.expand_kwargs()`` over an upstream task's XCom).

Every check runs before any pod exists and all problems are reported at once (PodSpecError).
Neither this module nor its imports load Airflow or the Kubernetes client at import time: the
DAG file may import it while parsing; the client models are imported inside ``kpo_kwargs``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal, cast

from include.configuration.schema import ExplainerConfiguration, parse_cpu, parse_gpu
from include.k8s.cluster import CAPACITIES, Capacity, ClusterProfile, GpuType, MigSharing, TimeSlicing
from include.k8s.names import dns_label_safe, image_reference_problem, label_safe, qualified_name_problem

# The KubernetesPodOperator's container name; its log streaming and exit-code checks look for it.
BASE_CONTAINER = "base"
# Writable paths of a pod whose root filesystem is read-only; the image declares the same
# (include/explainers/Dockerfile: XAC_HOME=/scratch/xac, HOME=/scratch).
SCRATCH_DIR = "/scratch"
TMP_DIR = "/tmp"
WHOLE_GPU_RESOURCE = "nvidia.com/gpu"
LABEL_PREFIX = "xac.dev/"
# Exponential backoff multiplier between retries (Airflow 3: a float; 2.0 doubles the delay).
RETRY_BACKOFF = 2.0

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

GpuMode = Literal["none", "whole", "mig", "time-slicing"]


class PodSpecError(ValueError):
    """The pod cannot be planned; ``problems`` lists every reason, each one actionable."""

    def __init__(self, subject: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"cannot plan the explainer pod for {subject}:\n{lines}")


@dataclass(frozen=True)
class RunContext:
    """What identifies one shard of one run (labels, annotations, the --shard argument)."""

    dag_id: str
    run_id: str
    model: str
    model_version: str
    team: str
    cost_center: str | None = None
    shard_index: int = 0
    shard_count: int = 1
    config_sha256: str | None = None

    @classmethod
    def for_config(
        cls,
        config: ExplainerConfiguration,
        *,
        dag_id: str,
        run_id: str,
        model_version: str,
        shard_index: int = 0,
        shard_count: int = 1,
        config_sha256: str | None = None,
    ) -> RunContext:
        """Team and cost centre from ``spec.owner`` (the policy gate guarantees an owner)."""
        owner = config.spec.owner
        if owner is None:
            raise PodSpecError(config.metadata.name, ["spec.owner is missing: the pod's cost labels need it"])
        return cls(
            dag_id=dag_id,
            run_id=run_id,
            model=config.spec.modelName,
            model_version=model_version,
            team=owner.team,
            cost_center=owner.costCenter,
            shard_index=shard_index,
            shard_count=shard_count,
            config_sha256=config_sha256,
        )

    def shard(self, index: int, count: int | None = None) -> RunContext:
        return replace(self, shard_index=index, shard_count=self.shard_count if count is None else count)


@dataclass(frozen=True)
class GpuAllocation:
    """How a ``resourceRequirements.gpu`` request maps onto the cluster's devices."""

    mode: GpuMode
    requested: str
    gpu_type: str | None = None
    resource: str | None = None
    count: int = 0
    share: Fraction = Fraction(0)  # GPUs reserved: whole count, or the slice/share of one GPU
    node_labels: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.mode == "none":
            return "none"
        return f"{self.mode} {self.gpu_type}: {self.count} x {self.resource} ({self.share} GPU)"


@dataclass(frozen=True)
class PodTemplate:
    """Everything about the pod that does not depend on the run (one per config, cluster, capacity)."""

    profile_name: str
    config_name: str
    namespace: str
    image: str
    image_pull_policy: str
    service_account_name: str
    image_pull_secrets: tuple[str, ...]
    env_from_secrets: tuple[str, ...]
    priority_class_name: str | None
    requests: Mapping[str, str]
    limits: Mapping[str, str]
    node_selector: Mapping[str, str]
    affinity: Mapping[str, Any] | None
    tolerations: tuple[Mapping[str, Any], ...]
    env: Mapping[str, str]
    gpu: GpuAllocation
    capacity: Capacity
    run_as_user: int
    run_as_group: int
    scratch_size_limit: str
    profile_annotations: Mapping[str, str]
    kubernetes_conn_id: str | None
    deferrable: bool
    schedule_timeout_seconds: int
    startup_timeout_seconds: int
    execution_timeout_seconds: int
    termination_grace_period_seconds: int
    poll_interval_seconds: float
    retries: int
    retry_delay_seconds: int
    max_retry_delay_seconds: int

    # -- the pod, as a manifest ----------------------------------------------------------------
    def pod_spec(self, cmds: Sequence[str], arguments: Sequence[str]) -> dict[str, Any]:
        """``spec`` of the pod (camelCase, as the API server and kubectl take it)."""
        resources: dict[str, Any] = {"requests": dict(self.requests), "limits": dict(self.limits)}
        container: dict[str, Any] = {
            "name": BASE_CONTAINER,
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy,
            "command": list(cmds),
            "args": list(arguments),
            "env": [{"name": k, "value": v} for k, v in self.env.items()],
            "resources": resources,
            "securityContext": _container_security_context(),
            "volumeMounts": [
                {"name": "scratch", "mountPath": SCRATCH_DIR},
                {"name": "tmp", "mountPath": TMP_DIR},
            ],
            # On a crash the last log lines become the termination message the operator reports.
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        if self.env_from_secrets:  # credentials (e.g. an endpoint's connection) never in the spec
            container["envFrom"] = [{"secretRef": {"name": n}} for n in self.env_from_secrets]
        spec: dict[str, Any] = {
            "restartPolicy": "Never",  # a failed shard is retried by Airflow, which records the try
            "serviceAccountName": self.service_account_name,
            "containers": [container],
            "securityContext": self._pod_security_context(),
            "volumes": [
                {"name": "scratch", "emptyDir": {"sizeLimit": self.scratch_size_limit}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            ],
            "terminationGracePeriodSeconds": self.termination_grace_period_seconds,
            # The pod never outlives the task's execution_timeout, even if Airflow is gone.
            "activeDeadlineSeconds": self.execution_timeout_seconds,
        }
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.affinity:
            spec["affinity"] = _deep_copy(self.affinity)
        if self.tolerations:
            spec["tolerations"] = [dict(t) for t in self.tolerations]
        if self.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": n} for n in self.image_pull_secrets]
        if self.priority_class_name:
            spec["priorityClassName"] = self.priority_class_name
        return spec

    def _pod_security_context(self) -> dict[str, Any]:
        return {
            "runAsNonRoot": True,
            "runAsUser": self.run_as_user,
            "runAsGroup": self.run_as_group,
            "fsGroup": self.run_as_group,  # the emptyDir volumes become writable by the user
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    # -- the operator's kwargs -----------------------------------------------------------------
    def kpo_kwargs(self) -> dict[str, Any]:
        """KubernetesPodOperator kwargs that do not depend on the run (for ``.partial()``)."""
        from kubernetes.client import models as k8s

        spec = self.pod_spec([], [])
        container = spec["containers"][0]
        kwargs: dict[str, Any] = {
            "namespace": self.namespace,
            "image": self.image,
            "image_pull_policy": self.image_pull_policy,
            "container_resources": _model(container["resources"], "V1ResourceRequirements"),
            "node_selector": dict(self.node_selector),
            "affinity": _model(spec["affinity"], "V1Affinity") if "affinity" in spec else None,
            "tolerations": [_model(t, "V1Toleration") for t in spec.get("tolerations", [])],
            "service_account_name": self.service_account_name,
            "image_pull_secrets": [k8s.V1LocalObjectReference(name=n) for n in self.image_pull_secrets],
            "priority_class_name": self.priority_class_name,
            "security_context": _model(spec["securityContext"], "V1PodSecurityContext"),
            "container_security_context": _model(container["securityContext"], "V1SecurityContext"),
            "env_vars": [k8s.V1EnvVar(name=e["name"], value=e["value"]) for e in container["env"]],
            "env_from": [_model(e, "V1EnvFromSource") for e in container.get("envFrom", [])],
            "volumes": [_model(v, "V1Volume") for v in spec["volumes"]],
            "volume_mounts": [_model(m, "V1VolumeMount") for m in container["volumeMounts"]],
            "termination_message_policy": container["terminationMessagePolicy"],
            "termination_grace_period": self.termination_grace_period_seconds,
            "active_deadline_seconds": self.execution_timeout_seconds,
            # reliability
            "deferrable": self.deferrable,
            # provider 10.25 on Airflow 3.3: `durable` replaces the deprecated `reattach_on_restart`
            # (reattach to the running pod after a worker/scheduler restart, from persisted state)
            "durable": True,
            "on_finish_action": "delete_succeeded_pod",  # a failed pod stays for `kubectl logs`
            "on_kill_action": "delete_pod",  # a task marked failed/cleared stops burning GPU time
            "get_logs": True,
            "log_events_on_failure": True,
            "do_xcom_push": False,  # results go to object storage; no sidecar
            "schedule_timeout_seconds": self.schedule_timeout_seconds,
            "startup_timeout_seconds": self.startup_timeout_seconds,
            "poll_interval": self.poll_interval_seconds,
            "random_name_suffix": True,  # each try gets a fresh pod name
            "execution_timeout": timedelta(seconds=self.execution_timeout_seconds),
            "retries": self.retries,
            "retry_delay": timedelta(seconds=self.retry_delay_seconds),
            "retry_exponential_backoff": RETRY_BACKOFF,
            "max_retry_delay": timedelta(seconds=self.max_retry_delay_seconds),
        }
        if self.kubernetes_conn_id:
            kwargs["kubernetes_conn_id"] = self.kubernetes_conn_id
        return kwargs


@dataclass(frozen=True)
class PodPlan:
    """One shard of one run: the template plus its name, command, labels and annotations."""

    template: PodTemplate
    run: RunContext
    name: str
    cmds: tuple[str, ...]
    arguments: tuple[str, ...]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    def manifest(self) -> dict[str, Any]:
        """The pod as a plain dict (``apiVersion: v1``, ``kind: Pod``)."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.template.namespace,
                "labels": dict(self.labels),
                "annotations": dict(self.annotations),
            },
            "spec": self.template.pod_spec(self.cmds, self.arguments),
        }

    def shard_kpo_kwargs(self) -> dict[str, Any]:
        """The per-shard kwargs: JSON-serialisable, for ``.expand_kwargs()`` over an XCom list."""
        return {
            "name": self.name,
            "cmds": list(self.cmds),
            "arguments": list(self.arguments),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }

    def kpo_kwargs(self) -> dict[str, Any]:
        """Every KubernetesPodOperator kwarg of this shard (``task_id`` is the caller's)."""
        return self.template.kpo_kwargs() | self.shard_kpo_kwargs()


# --- planning -----------------------------------------------------------------------------


def pod_template(
    config: ExplainerConfiguration,
    profile: ClusterProfile,
    *,
    capacity: str | None = None,
    gpu_type: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
) -> PodTemplate:
    """The run-independent part of the pod for ``config`` on ``profile``.

    ``capacity``: "spot-preferred" | "spot-required" | "on-demand" (default: the profile's
    ``defaultCapacity``); ``gpu_type``: a key of the profile's ``gpu.types`` (default
    ``gpu.defaultType``); ``namespace``: default the config's ``metadata.namespace``, else the
    profile's default; ``image``: overrides the profile's (must be pinned too); ``env``: extra
    environment variables (e.g. ``S3_ENDPOINT_URL``).
    """
    spec = profile.spec
    problems: list[str] = []

    ns = namespace or config.metadata.namespace or spec.namespaces.default
    if ns not in spec.namespaces.allowed:
        problems.append(
            f"namespace {ns!r} is not allowed on cluster {profile.name!r} "
            f"(allowed: {', '.join(spec.namespaces.allowed)})"
        )

    chosen_image = image if image is not None else spec.image
    image_problem = image_reference_problem(chosen_image)
    if image_problem:
        problems.append(f"image {image_problem}")

    chosen_capacity = capacity if capacity is not None else spec.defaultCapacity
    if chosen_capacity not in CAPACITIES:
        problems.append(f"capacity {chosen_capacity!r} is not one of {', '.join(CAPACITIES)}")
    elif chosen_capacity == "spot-required" and not spec.spot.supported:
        problems.append(f"capacity 'spot-required': cluster {profile.name!r} declares no spot capacity")

    gpu, gpu_problems = _allocate_gpu(config, profile, gpu_type)
    problems.extend(gpu_problems)

    node_selector: dict[str, str] = dict(spec.pod.nodeSelector)
    for key, value in gpu.node_labels.items():
        if node_selector.get(key, value) != value:
            problems.append(
                f"node label {key}: the GPU type wants {value!r} but the profile's pod.nodeSelector "
                f"says {node_selector[key]!r}"
            )
        node_selector[key] = value

    extra_env = dict(env or {})
    bad_env = [k for k in extra_env if not _ENV_NAME.match(k)]
    if bad_env:
        problems.append(f"environment variable name {bad_env[0]!r} is not valid")

    if problems:
        raise PodSpecError(f"config {config.metadata.name!r} on cluster {profile.name!r}", problems)

    resources = config.spec.resourceRequirements
    requests = {"cpu": resources.cpu, "memory": resources.memory}
    # memory limit = request: a pod that grows past what it reserved is OOM-killed, never a
    # neighbour; the cost meter prices max(request, usage), so this also bounds the bill.
    limits = {"memory": resources.memory}
    if spec.pod.cpuLimit == "request":
        limits["cpu"] = resources.cpu
    if gpu.resource:
        # Extended resources are set as limits (the request defaults to the limit; overcommit is
        # impossible) and must be whole numbers.
        limits[gpu.resource] = str(gpu.count)

    capacity_value = cast(Capacity, chosen_capacity)
    affinity, spot_tolerations = _capacity_scheduling(profile, capacity_value)
    tolerations: list[dict[str, Any]] = [t.as_dict() for t in spec.pod.tolerations]
    if gpu.mode != "none" and spec.gpu is not None:
        tolerations += [t.as_dict() for t in spec.gpu.tolerations]
    tolerations += spot_tolerations
    unique_tolerations: list[dict[str, Any]] = []
    for toleration in tolerations:
        if toleration not in unique_tolerations:
            unique_tolerations.append(toleration)

    threads = str(max(1, math.ceil(parse_cpu(resources.cpu))))
    base_env = {
        "XAC_HOME": f"{SCRATCH_DIR}/xac",
        "HOME": SCRATCH_DIR,
        "TMPDIR": TMP_DIR,
        "MPLCONFIGDIR": f"{TMP_DIR}/matplotlib",
        # torch and BLAS size their thread pools from the node's cores, not the pod's CPU
        # request: on a 64-core node a 1-CPU pod would run 64 threads and be throttled.
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "PYTHONUNBUFFERED": "1",  # log lines reach `kubectl logs` (and the task log) at once
    }
    if gpu.resource and spec.gpu is not None and spec.gpu.requireDevice:
        # A pod given a GPU computes on it: with no visible device the explainer stops before any
        # work (exit 1) instead of running a GPU-priced pod on its CPU (include/explainers/device.py).
        base_env["XAC_EXPLAIN_DEVICE"] = "cuda"
    settings = config.spec.explainerConfig
    if settings is not None and settings.compile:
        # torch.compile's artifacts shared by the shards and by later runs of the model (keyed by
        # weights, torch version and GPU inside the folder); torch's own cache on the pod's scratch.
        base_env["XAC_COMPILE_CACHE"] = f"s3://{config.spec.storage.bucket}/_xac/compile-cache"
        base_env["TORCHINDUCTOR_CACHE_DIR"] = f"{TMP_DIR}/inductor"
    airflow = config.spec.airflow
    rel = spec.reliability
    return PodTemplate(
        profile_name=profile.name,
        config_name=config.metadata.name,
        namespace=ns,
        image=chosen_image,
        image_pull_policy=spec.imagePullPolicy,
        service_account_name=spec.serviceAccountName,
        image_pull_secrets=tuple(spec.imagePullSecrets),
        env_from_secrets=tuple(spec.envFromSecrets),
        priority_class_name=spec.pod.priorityClassName,
        requests=requests,
        limits=limits,
        node_selector=node_selector,
        affinity=affinity,
        tolerations=tuple(unique_tolerations),
        env=base_env | extra_env,
        gpu=gpu,
        capacity=capacity_value,
        run_as_user=spec.pod.runAsUser,
        run_as_group=spec.pod.runAsGroup,
        scratch_size_limit=spec.pod.scratchSizeLimit,
        profile_annotations=dict(spec.pod.annotations),
        kubernetes_conn_id=spec.kubernetesConnId,
        deferrable=rel.deferrable,
        schedule_timeout_seconds=rel.scheduleTimeoutSeconds,
        startup_timeout_seconds=rel.startupTimeoutSeconds,
        execution_timeout_seconds=rel.executionTimeoutSeconds,
        termination_grace_period_seconds=rel.terminationGracePeriodSeconds,
        poll_interval_seconds=rel.pollIntervalSeconds,
        retries=airflow.retries,
        retry_delay_seconds=airflow.retryDelaySeconds,
        max_retry_delay_seconds=rel.maxRetryDelaySeconds,
    )


def plan_pod(
    config: ExplainerConfiguration,
    profile: ClusterProfile,
    run: RunContext,
    command: Sequence[str],
    *,
    template: PodTemplate | None = None,
    **template_options: Any,
) -> PodPlan:
    """One shard's pod. ``command`` is the ``xac explain`` argv (``["xac", "explain", ...]``, or the
    local form ``[python, "-m", "include.cli", "explain", ...]`` whose interpreter path belongs to
    the Airflow worker and is dropped). ``--shard i/n`` is appended from ``run`` when absent.
    ``template_options`` go to :func:`pod_template` (or pass a ``template`` built once)."""
    if template is None:
        template = pod_template(config, profile, **template_options)
    elif template_options:
        raise TypeError("pass either template or template options, not both")
    subject = f"config {config.metadata.name!r} on cluster {profile.name!r}"
    problems = _run_problems(run)
    cmds, arguments, command_problems = _pod_command(command, run.shard_index, run.shard_count)
    problems += command_problems
    if problems:
        raise PodSpecError(subject, problems)
    labels, annotations = _metadata(config, template, run)
    base = dns_label_safe(f"xac-{config.metadata.name}", max_length=40)
    name = f"{base}-{run.shard_index}-of-{run.shard_count}"
    return PodPlan(template, run, name, tuple(cmds), tuple(arguments), labels, annotations)


def plan_shards(
    config: ExplainerConfiguration,
    profile: ClusterProfile,
    run: RunContext,
    command: Sequence[str],
    shard_count: int,
    **template_options: Any,
) -> list[PodPlan]:
    """The pods of a run split in ``shard_count`` shards (one template, checked once)."""
    if shard_count < 1:
        raise PodSpecError(config.metadata.name, [f"shard_count must be at least 1, got {shard_count}"])
    template = pod_template(config, profile, **template_options)
    return [
        plan_pod(config, profile, run.shard(i, shard_count), command, template=template)
        for i in range(shard_count)
    ]


# --- helpers ------------------------------------------------------------------------------


def _allocate_gpu(
    config: ExplainerConfiguration, profile: ClusterProfile, gpu_type: str | None
) -> tuple[GpuAllocation, list[str]]:
    raw = str(config.spec.resourceRequirements.gpu)
    amount: Decimal = parse_gpu(raw)
    where = f"spec.resourceRequirements.gpu {raw!r}"
    gpu_settings = profile.spec.gpu
    if amount == 0:
        if gpu_type is not None:
            return GpuAllocation("none", raw), [f"gpu_type {gpu_type!r} given but {where} asks for no GPU"]
        return GpuAllocation("none", raw), []
    if gpu_settings is None:
        return GpuAllocation("none", raw), [f"{where}: cluster {profile.name!r} has no GPUs"]
    type_name = gpu_type or gpu_settings.defaultType
    kind: GpuType | None = gpu_settings.types.get(type_name)
    if kind is None:
        known = ", ".join(gpu_settings.types)
        return GpuAllocation("none", raw), [
            f"GPU type {type_name!r} is not on cluster {profile.name!r} (types: {known})"
        ]
    labels = dict(kind.nodeLabels)

    if amount >= 1:
        count = int(amount)
        limit = min(gpu_settings.maxPerPod, kind.maxPerPod or gpu_settings.maxPerPod)
        problems = []
        if count > limit:
            problems.append(f"{where}: at most {limit} GPU(s) per pod on {profile.name!r}/{type_name}")
        if not kind.wholeGpus:
            whole = [n for n, t in gpu_settings.types.items() if t.wholeGpus]
            problems.append(
                f"{where}: GPU type {type_name!r} offers only shares of a GPU ({kind.sharing.mode}); "
                f"whole GPUs are on: {', '.join(whole) or 'no type of this cluster'}"
            )
        share = Fraction(count)
        return GpuAllocation("whole", raw, type_name, WHOLE_GPU_RESOURCE, count, share, labels), problems

    wanted = Fraction(amount)
    sharing = kind.sharing
    if isinstance(sharing, MigSharing):
        fitting = sorted((p for p in sharing.profiles if p.share >= wanted), key=lambda p: p.share)
        if not fitting:
            biggest = max(p.share for p in sharing.profiles)
            return GpuAllocation("none", raw), [
                f"{where}: the largest MIG slice of {type_name!r} is {biggest} of a GPU; "
                "ask for at most that, or a whole GPU on a type that offers them"
            ]
        slice_ = fitting[0]
        return GpuAllocation(
            "mig", raw, type_name, slice_.resource, 1, slice_.share, labels | dict(slice_.nodeLabels)
        ), []
    if isinstance(sharing, TimeSlicing):
        if wanted > sharing.share:
            return GpuAllocation("none", raw), [
                f"{where}: GPU type {type_name!r} is time-sliced in {sharing.replicas} shares, so a pod "
                f"is guaranteed only {sharing.share} of a GPU; ask for at most {float(sharing.share):g} "
                "or for a whole GPU"
            ]
        return GpuAllocation("time-slicing", raw, type_name, sharing.resource, 1, sharing.share, labels), []
    sharing_types = [n for n, t in gpu_settings.types.items() if t.sharing.mode != "none"]
    return GpuAllocation("none", raw), [
        f"{where} is a fraction of a GPU but GPU type {type_name!r} on cluster {profile.name!r} declares "
        f"no GPU sharing (mode: none): ask for a whole GPU ('1') or use a type with MIG or time-slicing "
        f"({', '.join(sharing_types) or 'this cluster has none'})"
    ]


def _capacity_scheduling(
    profile: ClusterProfile, capacity: Capacity
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Node affinity and tolerations for spot-preferred / spot-required / on-demand."""
    spot = profile.spec.spot
    if not spot.supported:
        # Nothing tells spot from on-demand here; spot-preferred degrades to "any node".
        return None, []
    if capacity == "on-demand":
        # NotIn also matches nodes without the label (e.g. GKE labels only its spot nodes).
        term = {"key": spot.nodeLabel, "operator": "NotIn", "values": [spot.spotValue]}
        required = {"nodeSelectorTerms": [{"matchExpressions": [term]}]}
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}, []
    term = {"key": spot.nodeLabel, "operator": "In", "values": [spot.spotValue]}
    tolerations = [t.as_dict() for t in spot.tolerations]
    if capacity == "spot-required":
        required = {"nodeSelectorTerms": [{"matchExpressions": [term]}]}
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}, tolerations
    preferred = [{"weight": spot.preferredWeight, "preference": {"matchExpressions": [term]}}]
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}, tolerations


def _run_problems(run: RunContext) -> list[str]:
    problems: list[str] = []
    for name in ("dag_id", "run_id", "model", "model_version", "team"):
        if not str(getattr(run, name)).strip():
            problems.append(f"run context: {name} is empty")
    if run.shard_count < 1 or not 0 <= run.shard_index < run.shard_count:
        problems.append(f"run context: shard {run.shard_index} of {run.shard_count} (need 0 <= i < n)")
    return problems


def _pod_command(command: Sequence[str], index: int, count: int) -> tuple[list[str], list[str], list[str]]:
    argv = list(command)
    if any(not isinstance(a, str) for a in argv):
        return [], [], ["command: every argument must be a string"]
    if argv[:2] == ["xac", "explain"]:
        arguments = argv[2:]
    elif len(argv) >= 4 and argv[1:4] == ["-m", "include.cli", "explain"]:
        arguments = argv[4:]  # the worker's interpreter path means nothing inside the image
    else:
        shown = " ".join(argv[:4]) or "(empty)"
        return [], [], [f"command must be 'xac explain ...' (got {shown!r})"]
    wanted = f"{index}/{count}"
    given = [arguments[i + 1] for i, a in enumerate(arguments[:-1]) if a == "--shard"]
    given += [a.split("=", 1)[1] for a in arguments if a.startswith("--shard=")]
    if any(g != wanted for g in given):
        return [], [], [f"command has --shard {given[0]} but this pod is shard {wanted}"]
    if not given:
        arguments += ["--shard", wanted]
    return ["xac", "explain"], arguments, []


def _metadata(
    config: ExplainerConfiguration, template: PodTemplate, run: RunContext
) -> tuple[dict[str, str], dict[str, str]]:
    """Cost-allocation labels (label-safe) and annotations (full values)."""
    cost_center = run.cost_center or "unassigned"
    labels = {
        "app.kubernetes.io/name": "xac-explainer",
        "app.kubernetes.io/component": "explainer",
        "app.kubernetes.io/part-of": "explainability-as-code",
        "app.kubernetes.io/managed-by": "airflow",
        f"{LABEL_PREFIX}model": label_safe(run.model),
        f"{LABEL_PREFIX}model-version": label_safe(run.model_version),
        f"{LABEL_PREFIX}team": label_safe(run.team),
        f"{LABEL_PREFIX}cost-center": label_safe(cost_center),
        f"{LABEL_PREFIX}config": label_safe(config.metadata.name),
        f"{LABEL_PREFIX}dag-id": label_safe(run.dag_id),
        f"{LABEL_PREFIX}run-id": label_safe(run.run_id),
        f"{LABEL_PREFIX}shard": str(run.shard_index),
        f"{LABEL_PREFIX}shard-count": str(run.shard_count),
        f"{LABEL_PREFIX}capacity": template.capacity,
        f"{LABEL_PREFIX}gpu-mode": template.gpu.mode,
        f"{LABEL_PREFIX}cluster-profile": template.profile_name,
    }
    annotations = dict(template.profile_annotations) | {
        f"{LABEL_PREFIX}model": run.model,
        f"{LABEL_PREFIX}model-version": run.model_version,
        f"{LABEL_PREFIX}team": run.team,
        f"{LABEL_PREFIX}cost-center": cost_center,
        f"{LABEL_PREFIX}dag-id": run.dag_id,
        f"{LABEL_PREFIX}run-id": run.run_id,
        # the cost stage reads the shard as an integer (annotations win over labels there)
        f"{LABEL_PREFIX}shard": str(run.shard_index),
        f"{LABEL_PREFIX}shard-count": str(run.shard_count),
        f"{LABEL_PREFIX}gpu-request": template.gpu.requested,
        f"{LABEL_PREFIX}gpu-allocation": template.gpu.describe(),
        # what the cost meter bills for the GPU: the share reserved, not the request
        f"{LABEL_PREFIX}gpu-share": str(template.gpu.share),
    }
    if run.config_sha256:
        annotations[f"{LABEL_PREFIX}config-sha256"] = run.config_sha256
    for key in [*labels, *annotations]:
        problem = qualified_name_problem(key)
        assert problem is None, problem  # keys are ours; a bad one is a bug here, not bad input
    return labels, annotations


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,  # writable: /scratch and /tmp (emptyDir)
        "capabilities": {"drop": ["ALL"]},
    }


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_copy(v) for v in value]
    return value


_API_CLIENT: Any = None


def _model(data: Mapping[str, Any], klass: str) -> Any:
    """A camelCase manifest fragment as a kubernetes.client model (the client's own deserialiser,
    as the provider's converters use it), so the manifest and the kwargs have one source."""
    global _API_CLIENT
    if _API_CLIENT is None:
        from kubernetes.client import ApiClient, Configuration

        _API_CLIENT = ApiClient(configuration=Configuration())
    return _API_CLIENT._ApiClient__deserialize(_deep_copy(data), klass)
