"""Cluster profiles: what one Kubernetes cluster offers the explainer pods, and its rules.

One YAML file per cluster in ``include/configs/clusters/<name>.yaml`` declares the namespaces the
explainer may use, the pinned explainer image, the service account, the GPU types (node labels,
sharing: none, MIG or time-slicing), the most GPUs one pod may ask for, spot capacity (node label
and taints) and the reliability settings of the KubernetesPodOperator. Errors name file, line and
field like the ExplainerConfiguration loader's (``PATH:LINE: field: message``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from include.configuration.loader import (
    ConfigError,
    Problem,
    _line_for,
    _line_index,
    _problems_from_validation,
    format_location,
)
from include.configuration.schema import parse_memory
from include.k8s.names import (
    image_reference_problem,
    is_dns1123_label,
    label_value_problem,
    qualified_name_problem,
)
from include.paths import CONFIGS_DIR

CLUSTERS_DIR = CONFIGS_DIR / "clusters"
API_VERSION = "ai.apexlogic.com/v1alpha1"
KIND = "ClusterProfile"
DEFAULT_PROFILE = "default"


class ClusterProfileError(ConfigError):
    """A cluster profile was refused; ``problems`` holds one located entry per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        problem = qualified_name_problem(key) or label_value_problem(value)
        if problem:
            raise ValueError(f"label {problem}")
    return labels


def _check_resource_name(name: str) -> str:
    # Extended resources (GPUs, MIG slices, time-sliced shares) are always vendor-qualified.
    if "/" not in name:
        raise ValueError(f"{name!r}: a device resource name is qualified (e.g. nvidia.com/gpu)")
    problem = qualified_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def _parse_fraction(value: str | float | int) -> Fraction:
    try:
        fraction = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{value!r} is not a fraction of a GPU (examples: '1/7', '0.5')") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"{value!r}: a share of one GPU is greater than 0 and at most 1")
    return fraction


class Toleration(_Strict):
    """A Kubernetes toleration (field names as in the pod spec)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.key is not None:
            problem = qualified_name_problem(self.key)
            if problem:
                raise ValueError(f"key {problem}")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds applies only to effect NoExecute")
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class NoSharing(_Strict):
    mode: Literal["none"]


class MigProfile(_Strict):
    """One MIG slice a pod can request (mixed strategy: its own resource name)."""

    resource: str = Field(description="Extended resource, e.g. nvidia.com/mig-1g.10gb.")
    fraction: str | float = Field(description="Share of one GPU, e.g. '1/7' for 1g.10gb on an A100/H100.")
    nodeLabels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra node labels (single strategy: the MIG product label; the resource is nvidia.com/gpu)."
        ),
    )

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: str) -> str:
        return _check_resource_name(value)

    @field_validator("nodeLabels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, value: str | float) -> str:
        return str(_parse_fraction(value))

    @property
    def share(self) -> Fraction:
        return Fraction(str(self.fraction))


class MigSharing(_Strict):
    mode: Literal["mig"]
    profiles: Annotated[list[MigProfile], Field(min_length=1)]

    @field_validator("profiles")
    @classmethod
    def _distinct(cls, profiles: list[MigProfile]) -> list[MigProfile]:
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for profile in profiles:
            key = (profile.resource, tuple(sorted(profile.nodeLabels.items())))
            if key in seen:
                raise ValueError(f"MIG profile {profile.resource} is declared twice")
            seen.add(key)
        return profiles


class TimeSlicing(_Strict):
    mode: Literal["time-slicing"]
    resource: str = Field(
        default="nvidia.com/gpu.shared",
        description="What the device plugin advertises (nvidia.com/gpu.shared with renameByDefault).",
    )
    replicas: Annotated[int, Field(ge=2, le=256)] = Field(
        description="Shares per GPU (the device plugin's timeSlicing replicas)."
    )

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: str) -> str:
        return _check_resource_name(value)

    @property
    def share(self) -> Fraction:
        return Fraction(1, self.replicas)


Sharing = Annotated[NoSharing | MigSharing | TimeSlicing, Field(discriminator="mode")]


class GpuType(_Strict):
    nodeLabels: Annotated[dict[str, str], Field(min_length=1)] = Field(
        description="Node labels of this GPU type, e.g. nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB."
    )
    wholeGpus: bool = Field(
        default=True,
        description="Whether its nodes advertise whole nvidia.com/gpu (false when every GPU is sliced).",
    )
    maxPerPod: Annotated[int, Field(ge=1, le=16)] | None = None
    sharing: Sharing = Field(default_factory=lambda: NoSharing(mode="none"))

    @field_validator("nodeLabels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)


class GpuSettings(_Strict):
    maxPerPod: Annotated[int, Field(ge=1, le=16)] = Field(description="Most whole GPUs one pod may request.")
    defaultType: str
    types: Annotated[dict[str, GpuType], Field(min_length=1)]
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Added to every pod that requests a GPU (GPU nodes are tainted)."
    )
    requireDevice: bool = Field(
        default=True,
        description=(
            "Pods that request a GPU set XAC_EXPLAIN_DEVICE=cuda: with no visible GPU the explainer stops "
            "before any work instead of running on the CPU. false only where pods cannot see GPUs by design "
            "(the loopback test double runs pods as local processes)."
        ),
    )

    @model_validator(mode="after")
    def _default_type_exists(self) -> GpuSettings:
        if self.defaultType not in self.types:
            raise ValueError(
                f"defaultType {self.defaultType!r} is not one of the declared types: {', '.join(self.types)}"
            )
        for name in self.types:
            if not is_dns1123_label(name):
                raise ValueError(f"GPU type name {name!r} must be a DNS label (lower case, digits, '-')")
        return self


class SpotSettings(_Strict):
    supported: bool
    nodeLabel: str = Field(
        default="karpenter.sh/capacity-type",
        description="Node label that tells spot from on-demand capacity.",
    )
    spotValue: str = Field(default="spot", description="Its value on spot nodes.")
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of the taints on spot nodes (if they are tainted)."
    )
    preferredWeight: Annotated[int, Field(ge=1, le=100)] = 100

    @model_validator(mode="after")
    def _label(self) -> SpotSettings:
        problem = qualified_name_problem(self.nodeLabel) or label_value_problem(self.spotValue)
        if problem:
            raise ValueError(problem)
        return self


Capacity = Literal["spot-preferred", "spot-required", "on-demand"]
CAPACITIES: tuple[str, ...] = ("spot-preferred", "spot-required", "on-demand")


class Namespaces(_Strict):
    allowed: Annotated[list[str], Field(min_length=1)]
    default: str

    @model_validator(mode="after")
    def _valid(self) -> Namespaces:
        bad = [n for n in self.allowed if not is_dns1123_label(n)]
        if bad:
            raise ValueError(f"namespace {bad[0]!r} is not a DNS label")
        if self.default not in self.allowed:
            raise ValueError(f"default {self.default!r} is not in allowed: {', '.join(self.allowed)}")
        return self


class Reliability(_Strict):
    """How the KubernetesPodOperator waits for, watches and cleans up the pod."""

    deferrable: bool = Field(default=True, description="Wait in the triggerer, not in a worker slot.")
    scheduleTimeoutSeconds: Annotated[int, Field(ge=30, le=86_400)] = Field(
        default=900, description="How long the pod may stay unscheduled (GPU nodes may scale up from zero)."
    )
    startupTimeoutSeconds: Annotated[int, Field(ge=30, le=86_400)] = Field(
        default=600, description="How long the scheduled pod may take to start (the image is several GB)."
    )
    executionTimeoutSeconds: Annotated[int, Field(ge=60, le=7 * 86_400)] = Field(
        default=3600, description="Task execution_timeout, and the pod's activeDeadlineSeconds."
    )
    terminationGracePeriodSeconds: Annotated[int, Field(ge=0, le=3600)] = 60
    pollIntervalSeconds: Annotated[float, Field(ge=1, le=300)] = 10
    maxRetryDelaySeconds: Annotated[int, Field(ge=1, le=86_400)] = 600


class Sharding(_Strict):
    """How many pods (shards) one run's inference rows are split over on this cluster."""

    instancesPerShard: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=64, description="Rows one pod explains at most: n = ceil(instances / instancesPerShard)."
    )
    maxShards: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=16, description="Most pods of one run (caps n; each pod pays the start-up and import cost)."
    )


class PodSettings(_Strict):
    runAsUser: Annotated[int, Field(ge=1, le=2**31 - 1)] = Field(
        default=10001,
        description="Non-root uid; must match the image's user (include/explainers/Dockerfile).",
    )
    runAsGroup: Annotated[int, Field(ge=1, le=2**31 - 1)] = 10001
    cpuLimit: Literal["request", "none"] = Field(
        default="request",
        description="'request': CPU limit = request (Guaranteed QoS, last to be evicted); 'none': may burst.",
    )
    scratchSizeLimit: str = Field(default="10Gi", description="emptyDir size limit of the writable /scratch.")
    priorityClassName: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")] | None = None
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="Added to every pod.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Added to every pod.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Added to every pod (e.g. karpenter.sh/do-not-disrupt)."
    )

    @field_validator("nodeSelector")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("scratchSizeLimit")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_memory(value)
        return value

    @field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            problem = qualified_name_problem(key)
            if problem:
                raise ValueError(f"annotation key {problem}")
        return annotations


class ProfileSpec(_Strict):
    namespaces: Namespaces
    image: str = Field(description="Explainer image, pinned by tag or digest (never 'latest').")
    imagePullPolicy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    imagePullSecrets: list[str] = Field(default_factory=list)
    envFromSecrets: list[str] = Field(
        default_factory=list,
        description="Secrets whose every key becomes an environment variable of the explainer pods, "
        "e.g. AIRFLOW_CONN_<ID> (the JSON form) of a model endpoint's connection.",
    )
    serviceAccountName: str
    kubernetesConnId: str | None = Field(
        default=None, description="Airflow connection of the cluster (None: the provider's default)."
    )
    gpu: GpuSettings | None = Field(default=None, description="Absent: the cluster has no GPUs.")
    spot: SpotSettings = Field(default_factory=lambda: SpotSettings(supported=False))
    defaultCapacity: Capacity = "on-demand"
    pod: PodSettings = Field(default_factory=PodSettings)
    reliability: Reliability = Field(default_factory=Reliability)
    sharding: Sharding = Field(default_factory=Sharding)

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        problem = image_reference_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("serviceAccountName")
    @classmethod
    def _sa(cls, value: str) -> str:
        if not is_dns1123_label(value):
            raise ValueError(f"{value!r} is not a valid service account name (DNS label)")
        return value

    @field_validator("imagePullSecrets", "envFromSecrets")
    @classmethod
    def _secrets(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not is_dns1123_label(n)]
        if bad:
            raise ValueError(f"secret name {bad[0]!r} is not a DNS label")
        return names

    @model_validator(mode="after")
    def _spot_default(self) -> ProfileSpec:
        if self.defaultCapacity != "on-demand" and not self.spot.supported:
            raise ValueError(f"defaultCapacity {self.defaultCapacity!r} needs spot.supported: true")
        return self


class ProfileMetadata(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    description: str | None = None


class ClusterProfile(_Strict):
    apiVersion: Literal["ai.apexlogic.com/v1alpha1"]
    kind: Literal["ClusterProfile"]
    metadata: ProfileMetadata
    spec: ProfileSpec

    @property
    def name(self) -> str:
        return self.metadata.name


@dataclass(frozen=True)
class LoadedProfile:
    path: Path
    profile: ClusterProfile
    sha256: str


def parse_profile_text(text: str, path: Path | str) -> LoadedProfile:
    """Validate one cluster profile; raise ClusterProfileError with every problem, located."""
    shown = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ClusterProfileError([Problem(shown, line, "(yaml)", f"malformed YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ClusterProfileError([Problem(shown, 1, "(document)", "expected a mapping (a ClusterProfile)")])
    located: list[tuple[tuple[str | int, ...], str]] = []
    profile: ClusterProfile | None = None
    try:
        profile = ClusterProfile.model_validate(data)
    except ValidationError as exc:
        located.extend((_drop_sharing_tag(loc), msg) for loc, msg in _problems_from_validation(exc))
    stem = Path(path).stem
    if profile is not None and profile.name != stem:
        located.append((("metadata", "name"), f"{profile.name!r} must equal the file name ({stem!r})"))
    if located:
        index = _line_index(text)
        raise ClusterProfileError(
            [Problem(shown, _line_for(index, loc), format_location(loc), msg) for loc, msg in located]
        )
    assert profile is not None
    return LoadedProfile(Path(path), profile, hashlib.sha256(text.encode()).hexdigest())


_SHARING_MODES = {"none", "mig", "time-slicing"}


def _drop_sharing_tag(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """pydantic puts the discriminator's value in the location (``sharing.mig.profiles``); the
    file has no such key, so drop it to report the path (and line) a user edits."""
    return tuple(
        part for i, part in enumerate(loc) if not (i and loc[i - 1] == "sharing" and part in _SHARING_MODES)
    )


@lru_cache(maxsize=32)
def _load_cached(path: Path, mtime: float) -> LoadedProfile:
    return parse_profile_text(path.read_text(encoding="utf-8"), path)


def load_cluster_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> LoadedProfile:
    """A profile by name (``include/configs/clusters/<name>.yaml``) or by path."""
    text = str(name_or_path)
    path = Path(text) if ("/" in text or text.endswith((".yaml", ".yml"))) else CLUSTERS_DIR / f"{text}.yaml"
    try:
        mtime = path.stat().st_mtime
    except OSError:
        known = ", ".join(p.stem for p in discover_profiles())
        raise ClusterProfileError(
            [Problem(str(path), 1, "(file)", f"no cluster profile {text!r} (known: {known or 'none'})")]
        ) from None
    return _load_cached(path.resolve(), mtime)


def discover_profiles(directory: Path = CLUSTERS_DIR) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
