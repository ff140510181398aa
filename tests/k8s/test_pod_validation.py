"""Every pod we can render is valid Kubernetes, and is the pod the real operator would create.

1. The manifests validate (strict: no unknown field anywhere) against the official Kubernetes
   OpenAPI schemas of 1.30 to 1.33 bundled in ``kubernetes-validate``, offline.
2. ``KubernetesPodOperator(**plan.kpo_kwargs()).build_pod_request_obj(dry_run=True)`` (provider
   10.25, no cluster, no kubeconfig) builds the same pod as ``plan.manifest()``: a kwarg the operator
   maps elsewhere, or a manifest key the client's models do not know, shows up as a difference.
"""

from __future__ import annotations

import json
import socket
import warnings
from datetime import timedelta
from typing import Any

import kubernetes_validate
import pytest

from include.configuration.schema import ExplainerConfiguration
from include.k8s.cluster import CAPACITIES, ClusterProfile
from include.k8s.podspec import PodPlan, PodSpecError, plan_pod, plan_shards, pod_template

from .conftest import run_for, shipped_configs, shipped_profile, with_resources

KUBERNETES_VERSIONS = ("1.30", "1.31", "1.32", "1.33")
CMD = ["xac", "explain", "--config", "include/configs/explainers/x.yaml", "--out", "/scratch/out"]


def _every_plan() -> list[tuple[str, PodPlan]]:
    """Each shipped config on each shipped profile, every capacity and GPU type that can plan,
    plus whole-GPU variants (the shipped configs ask for no GPU or a fraction)."""
    plans: list[tuple[str, PodPlan]] = []
    configs = shipped_configs()
    configs["whole-gpu"] = with_resources(configs["diagnosis-risk-kernelshap"], gpu="2")
    for profile_name in ("default", "gpu-eks"):
        profile = shipped_profile(profile_name)
        gpu_types: list[str | None] = [None, *(profile.spec.gpu.types if profile.spec.gpu else [])]
        for config_name, config in configs.items():
            for capacity in CAPACITIES:
                for gpu_type in gpu_types:
                    if gpu_type is not None and config.spec.resourceRequirements.gpu_count == 0:
                        continue
                    try:
                        plan = plan_pod(
                            config, profile, run_for(config), CMD, capacity=capacity, gpu_type=gpu_type
                        )
                    except PodSpecError:
                        continue  # refusals are tested in test_podspec.py
                    plans.append((f"{config_name}@{profile_name}/{capacity}/{gpu_type}", plan))
    return plans


PLANS = _every_plan()


def test_the_matrix_covers_every_gpu_mode_and_capacity() -> None:
    modes = {plan.template.gpu.mode for _, plan in PLANS}
    assert modes == {"none", "whole", "mig", "time-slicing"}
    assert {plan.template.capacity for _, plan in PLANS} == set(CAPACITIES)
    assert len(PLANS) >= 30


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_pod_validates_against_the_kubernetes_schema(version: str, offline: None) -> None:
    for name, plan in PLANS:
        manifest = plan.manifest()
        try:
            validated = kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        assert validated == version
        json.dumps(manifest)  # plain data only


def test_the_validator_does_reject_invalid_pods() -> None:
    # The same checks on broken copies: a validator that accepts anything proves nothing.
    manifest = PLANS[0][1].manifest()
    broken = [
        ("restartPolicy", ["Never"]),  # wrong type
        ("restartPolice", "Never"),  # unknown field (strict)
        ("activeDeadlineSeconds", "one hour"),
    ]
    for key, value in broken:
        bad = json.loads(json.dumps(manifest))
        bad["spec"][key] = value
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, "1.33", strict=True)
    bad = json.loads(json.dumps(manifest))
    bad["spec"]["containers"][0]["resources"]["limits"] = ["cpu"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30", strict=True)


# --- the real operator -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kpo() -> Any:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    return KubernetesPodOperator


def _pruned(value: Any) -> Any:
    """Drop what the operator fills in as empty defaults (None, [], {}, hostNetwork: false)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _pruned(item)
            if item in (None, [], {}) or (key == "hostNetwork" and item is False):
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _operator_pod(kpo: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    with warnings.catch_warnings():
        # a deprecated kwarg (e.g. reattach_on_restart) would warn here: fail instead
        warnings.simplefilter("error", DeprecationWarning)
        operator = kpo(task_id="explain", **kwargs)
    pod = operator.build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


@pytest.mark.parametrize("index", range(len(PLANS)))
def test_the_operator_builds_the_same_pod(kpo: Any, index: int) -> None:
    name, plan = PLANS[index]
    rendered = _operator_pod(kpo, plan.kpo_kwargs())
    ours = plan.manifest()
    # the operator's own additions: a random suffix on the name and its version label
    suffixed = rendered["metadata"].pop("name")
    assert suffixed.startswith(ours["metadata"].pop("name") + "-") and len(suffixed) <= 63, suffixed
    assert rendered["metadata"]["labels"].pop("airflow_version")
    assert _pruned(rendered) == _pruned(ours), name


def test_the_operator_gets_the_reliability_settings(kpo: Any) -> None:
    _, plan = next((n, p) for n, p in PLANS if "gpu-eks" in n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        operator = kpo(task_id="explain", **plan.kpo_kwargs())
    assert operator.deferrable is True
    assert operator.durable is True and operator.reattach_on_restart is True  # 10.25: durable
    assert operator.on_finish_action.value == "delete_succeeded_pod"
    assert operator.on_kill_action.value == "delete_pod"
    assert operator.get_logs is True and operator.do_xcom_push is False
    assert operator.log_events_on_failure is True
    assert operator.startup_timeout_seconds == 900 and operator.schedule_timeout_seconds == 1200
    assert operator.execution_timeout == timedelta(hours=2)
    assert operator.retries == 2 and operator.retry_delay == timedelta(seconds=30)
    assert operator.retry_exponential_backoff == 2.0 and operator.max_retry_delay == timedelta(minutes=15)
    assert operator.kubernetes_conn_id == "kubernetes_gpu_eks"
    assert operator.container_resources.limits["memory"] == operator.container_resources.requests["memory"]


def test_a_mapped_operator_takes_the_template_and_the_per_shard_kwargs(kpo: Any) -> None:
    from airflow.sdk import DAG

    configs = shipped_configs()
    config: ExplainerConfiguration = configs["multimodal-digits-ig"]
    profile: ClusterProfile = shipped_profile("gpu-eks")
    template = pod_template(config, profile, gpu_type="a100-mig")
    plans = plan_shards(config, profile, run_for(config), CMD, 4, gpu_type="a100-mig")
    with DAG("xac-k8s-mapping-test", schedule=None):
        mapped = kpo.partial(task_id="explain", **template.kpo_kwargs()).expand_kwargs(
            [p.shard_kpo_kwargs() for p in plans]
        )
    assert mapped.partial_kwargs["durable"] is True
    assert mapped.partial_kwargs["container_resources"].limits["nvidia.com/mig-1g.10gb"] == "1"
    # the two halves are exactly the single-shard kwargs
    for plan in plans:
        assert template.kpo_kwargs() | plan.shard_kpo_kwargs() == plan.kpo_kwargs()
    # and a shard's pod built from them is the one validated above
    rendered = _operator_pod(kpo, template.kpo_kwargs() | plans[3].shard_kpo_kwargs())
    assert rendered["spec"]["containers"][0]["args"][-2:] == ["--shard", "3/4"]
    assert rendered["metadata"]["labels"]["xac.dev/shard"] == "3"
