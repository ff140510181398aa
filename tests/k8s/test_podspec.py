"""From config + cluster profile + run to a pod: resources, GPUs, spot, labels, and refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from typing import Any

import pytest

from include.configuration.schema import ExplainerConfiguration
from include.k8s.names import label_value_problem, qualified_name_problem
from include.k8s.podspec import PodSpecError, plan_pod, plan_shards, pod_template

from .conftest import RUN_ID, edited_profile, run_for, shipped_profile, with_resources

CMD = ["xac", "explain", "--config", "include/configs/explainers/x.yaml", "--out", "/scratch/out"]


@pytest.fixture(scope="module")
def default() -> Any:
    return shipped_profile("default")


@pytest.fixture(scope="module")
def eks() -> Any:
    return shipped_profile("gpu-eks")


@pytest.fixture(scope="module")
def tabular(configs: dict[str, ExplainerConfiguration]) -> ExplainerConfiguration:
    return configs["diagnosis-risk-kernelshap"]


@pytest.fixture(scope="module")
def seed(configs: dict[str, ExplainerConfiguration]) -> ExplainerConfiguration:
    return configs["image-classifier-shap-explainer"]  # the seed example: gpu "0.1", cpu 200m


def _container(plan: Any) -> dict[str, Any]:
    return plan.manifest()["spec"]["containers"][0]


def _problems(excinfo: pytest.ExceptionInfo[PodSpecError]) -> str:
    return "\n".join(excinfo.value.problems)


# --- resources ---------------------------------------------------------------------------------


def test_cpu_and_memory_become_requests_and_limits(tabular: ExplainerConfiguration, default: Any) -> None:
    plan = plan_pod(tabular, default, run_for(tabular), CMD)
    resources = _container(plan)["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    assert "nodeSelector" in plan.manifest()["spec"]  # the profile's os/arch selector
    assert plan.template.gpu.mode == "none" and "tolerations" not in plan.manifest()["spec"]
    env = {e["name"]: e["value"] for e in _container(plan)["env"]}
    assert env["OMP_NUM_THREADS"] == "1" and env["XAC_HOME"] == "/scratch/xac"


def test_cpu_limit_none_lets_the_pod_burst_but_memory_stays_bounded(tabular: ExplainerConfiguration) -> None:
    profile = edited_profile("default", lambda d: d["spec"]["pod"].update(cpuLimit="none"))
    config = with_resources(tabular, cpu="2500m", memory="3Gi")
    resources = _container(plan_pod(config, profile, run_for(config), CMD))["resources"]
    assert resources == {"requests": {"cpu": "2500m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}
    env = {e["name"]: e["value"] for e in _container(plan_pod(config, profile, run_for(config), CMD))["env"]}
    assert env["OMP_NUM_THREADS"] == "3"  # ceil(2.5 cores)


# --- GPUs --------------------------------------------------------------------------------------


def test_whole_gpus_are_an_integer_limit_with_the_type_s_node_labels(
    tabular: ExplainerConfiguration, eks: Any
) -> None:
    config = with_resources(tabular, gpu="2")
    plan = plan_pod(config, eks, run_for(config), CMD)  # default type a10g
    assert _container(plan)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    spec = plan.manifest()["spec"]
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-A10G"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert plan.template.gpu.share == 2 and plan.annotations["xac.dev/gpu-share"] == "2"
    eight = plan_pod(with_resources(tabular, gpu="8"), eks, run_for(config), CMD, gpu_type="h100")
    assert _container(eight)["resources"]["limits"]["nvidia.com/gpu"] == "8"


@pytest.mark.parametrize(
    ("gpu", "resource", "share"),
    [
        ("0.1", "nvidia.com/mig-1g.10gb", Fraction(1, 7)),
        ("0.142857", "nvidia.com/mig-1g.10gb", Fraction(1, 7)),  # just below 1/7
        ("0.15", "nvidia.com/mig-2g.20gb", Fraction(2, 7)),  # just above 1/7
        ("0.2", "nvidia.com/mig-2g.20gb", Fraction(2, 7)),
        ("0.4", "nvidia.com/mig-3g.40gb", Fraction(3, 7)),
    ],
)
def test_a_fraction_gets_the_smallest_mig_slice_that_covers_it(
    tabular: ExplainerConfiguration, eks: Any, gpu: str, resource: str, share: Fraction
) -> None:
    config = with_resources(tabular, gpu=gpu)
    plan = plan_pod(config, eks, run_for(config), CMD, gpu_type="a100-mig")
    limits = _container(plan)["resources"]["limits"]
    assert limits[resource] == "1" and "nvidia.com/gpu" not in limits
    assert plan.template.gpu.mode == "mig" and plan.template.gpu.share == share
    assert plan.manifest()["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert plan.annotations["xac.dev/gpu-request"] == gpu


def test_a_fraction_larger_than_every_mig_slice_is_refused(tabular: ExplainerConfiguration, eks: Any) -> None:
    config = with_resources(tabular, gpu="0.5")
    with pytest.raises(PodSpecError) as err:
        plan_pod(config, eks, run_for(config), CMD, gpu_type="a100-mig")
    assert "largest MIG slice of 'a100-mig' is 3/7" in _problems(err)


def test_the_seed_example_gets_a_time_sliced_share_on_the_default_cluster(
    seed: ExplainerConfiguration, default: Any
) -> None:
    plan = plan_pod(seed, default, run_for(seed), CMD)
    limits = _container(plan)["resources"]["limits"]
    assert limits == {"cpu": "200m", "memory": "512Mi", "nvidia.com/gpu.shared": "1"}
    assert plan.manifest()["spec"]["nodeSelector"]["nvidia.com/gpu.replicas"] == "10"
    assert plan.template.gpu.share == Fraction(1, 10)
    assert plan.labels["xac.dev/gpu-mode"] == "time-slicing"


def test_a_fraction_above_the_time_sliced_share_is_refused(
    seed: ExplainerConfiguration, default: Any
) -> None:
    config = with_resources(seed, gpu="0.2")
    with pytest.raises(PodSpecError) as err:
        plan_pod(config, default, run_for(config), CMD)
    assert "time-sliced in 10 shares" in _problems(err) and "at most 0.1" in _problems(err)


def test_a_fraction_on_a_type_without_sharing_is_refused_clearly(
    seed: ExplainerConfiguration, eks: Any
) -> None:
    with pytest.raises(PodSpecError) as err:
        plan_pod(seed, eks, run_for(seed), CMD, gpu_type="h100")
    text = _problems(err)
    assert "'0.1' is a fraction of a GPU" in text and "declares no GPU sharing" in text
    assert "a100-mig" in text  # where sharing is available


def test_gpus_beyond_the_profile_limit_are_refused(tabular: ExplainerConfiguration, eks: Any) -> None:
    config = with_resources(tabular, gpu="8")
    with pytest.raises(PodSpecError) as err:
        plan_pod(config, eks, run_for(config), CMD, gpu_type="a10g")
    assert "at most 4 GPU(s) per pod on 'gpu-eks'/a10g" in _problems(err)
    lowered = edited_profile("gpu-eks", lambda d: d["spec"]["gpu"].update(maxPerPod=2))
    with pytest.raises(PodSpecError) as err:
        plan_pod(with_resources(tabular, gpu="4"), lowered, run_for(config), CMD, gpu_type="h100")
    assert "at most 2 GPU(s)" in _problems(err)


def test_whole_gpus_on_a_sliced_only_type_and_gpus_on_a_cpu_cluster_are_refused(
    tabular: ExplainerConfiguration, default: Any
) -> None:
    config = with_resources(tabular, gpu="1")
    with pytest.raises(PodSpecError) as err:
        plan_pod(config, default, run_for(config), CMD)  # default type: t4-shared
    assert "offers only shares of a GPU" in _problems(err) and "l4" in _problems(err)
    assert plan_pod(config, default, run_for(config), CMD, gpu_type="l4").template.gpu.count == 1
    cpu_only = edited_profile("default", lambda d: d["spec"].pop("gpu"))
    with pytest.raises(PodSpecError) as err:
        plan_pod(config, cpu_only, run_for(config), CMD)
    assert "cluster 'default' has no GPUs" in _problems(err)
    with pytest.raises(PodSpecError) as err:
        plan_pod(config, default, run_for(config), CMD, gpu_type="v100")
    assert "GPU type 'v100' is not on cluster 'default'" in _problems(err)


# --- capacity ----------------------------------------------------------------------------------


def _node_affinity(plan: Any) -> dict[str, Any]:
    return plan.manifest()["spec"].get("affinity", {}).get("nodeAffinity", {})


def test_spot_preferred_required_and_on_demand(tabular: ExplainerConfiguration, eks: Any) -> None:
    spot_taint = {"key": "karpenter.sh/capacity-type", "operator": "Equal", "value": "spot"}
    spot_toleration = {**spot_taint, "effect": "NoSchedule"}
    expression = {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}

    preferred = plan_pod(tabular, eks, run_for(tabular), CMD, capacity="spot-preferred")
    terms = _node_affinity(preferred)["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms == [{"weight": 100, "preference": {"matchExpressions": [expression]}}]
    assert spot_toleration in preferred.manifest()["spec"]["tolerations"]

    required = plan_pod(tabular, eks, run_for(tabular), CMD, capacity="spot-required")
    selector = _node_affinity(required)["requiredDuringSchedulingIgnoredDuringExecution"]
    assert selector == {"nodeSelectorTerms": [{"matchExpressions": [expression]}]}
    assert spot_toleration in required.manifest()["spec"]["tolerations"]

    on_demand = plan_pod(tabular, eks, run_for(tabular), CMD, capacity="on-demand")
    selector = _node_affinity(on_demand)["requiredDuringSchedulingIgnoredDuringExecution"]
    assert selector["nodeSelectorTerms"][0]["matchExpressions"][0]["operator"] == "NotIn"
    assert "tolerations" not in on_demand.manifest()["spec"]  # no GPU, no spot: nothing to tolerate
    assert on_demand.labels["xac.dev/capacity"] == "on-demand"
    # the profile's default capacity applies when none is given
    assert plan_pod(tabular, eks, run_for(tabular), CMD).template.capacity == "spot-preferred"


def test_spot_on_a_cluster_without_spot(tabular: ExplainerConfiguration, default: Any) -> None:
    with pytest.raises(PodSpecError) as err:
        plan_pod(tabular, default, run_for(tabular), CMD, capacity="spot-required")
    assert "declares no spot capacity" in _problems(err)
    # preferred: any node will do, so it plans (without affinity) and records what was asked
    plan = plan_pod(tabular, default, run_for(tabular), CMD, capacity="spot-preferred")
    assert "affinity" not in plan.manifest()["spec"] and plan.labels["xac.dev/capacity"] == "spot-preferred"
    with pytest.raises(PodSpecError) as err:
        plan_pod(tabular, default, run_for(tabular), CMD, capacity="cheap")
    assert "capacity 'cheap' is not one of" in _problems(err)


# --- namespace, image, all problems at once ------------------------------------------------------


def test_namespace_and_image_are_checked_and_every_problem_is_reported(
    seed: ExplainerConfiguration, eks: Any
) -> None:
    assert plan_pod(seed, eks, run_for(seed), CMD, gpu_type="a100-mig").template.namespace == "ai-prod"
    assert plan_pod(seed, eks, run_for(seed), CMD, gpu_type="a100-mig", namespace="ai-vision")
    with pytest.raises(PodSpecError) as err:
        plan_pod(
            seed, eks, run_for(seed), CMD, gpu_type="h100", namespace="kube-system", image="xac-explainer"
        )
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert "namespace 'kube-system' is not allowed on cluster 'gpu-eks'" in problems[0]
    assert "is not pinned" in problems[1] and "declares no GPU sharing" in problems[2]
    assert str(err.value).startswith("cannot plan the explainer pod for config 'image-classifier")


def test_a_config_namespace_outside_the_profile_is_refused(tabular: ExplainerConfiguration) -> None:
    narrow = edited_profile(
        "default", lambda d: d["spec"].update(namespaces={"allowed": ["x"], "default": "x"})
    )
    with pytest.raises(PodSpecError) as err:
        plan_pod(tabular, narrow, run_for(tabular), CMD)
    assert "namespace 'ai-clinical' is not allowed" in _problems(err)


# --- labels, annotations, command, shards ----------------------------------------------------------


def test_cost_labels_are_valid_and_annotations_keep_the_full_values(
    tabular: ExplainerConfiguration, eks: Any
) -> None:
    long_team = "Clinical ML & Decision Support — Europe, Middle East and Africa (EMEA) region"
    run = run_for(tabular, team=long_team, cost_center=None, dag_id="d" * 70)
    plan = plan_pod(tabular, eks, run, CMD)
    for key, value in plan.labels.items():
        assert qualified_name_problem(key) is None and label_value_problem(value) is None, (key, value)
    for key in plan.annotations:
        assert qualified_name_problem(key) is None
    assert plan.labels["xac.dev/run-id"] != RUN_ID and plan.annotations["xac.dev/run-id"] == RUN_ID
    assert plan.annotations["xac.dev/team"] == long_team and plan.annotations["xac.dev/dag-id"] == "d" * 70
    assert plan.labels["xac.dev/cost-center"] == "unassigned"
    assert plan.labels["xac.dev/model"] == "diagnosis-risk-tabular"
    assert plan.labels["xac.dev/model-version"] == "1"
    assert plan.labels["xac.dev/config"] == "diagnosis-risk-kernelshap"
    assert plan.annotations["karpenter.sh/do-not-disrupt"] == "true"  # from the profile
    assert plan.annotations["xac.dev/config-sha256"] == "ab" * 32
    # from the config's owner when the run context is built for it
    assert plan_pod(tabular, eks, run_for(tabular), CMD).labels["xac.dev/cost-center"] == "cc-4711"


def test_the_command_is_xac_explain_with_this_pod_s_shard(tabular: ExplainerConfiguration, eks: Any) -> None:
    plan = plan_pod(tabular, eks, run_for(tabular, shard_index=2, shard_count=4), CMD)
    assert plan.cmds == ("xac", "explain") and plan.arguments[-2:] == ("--shard", "2/4")
    local = ["/home/ci/.venv/bin/python", "-m", "include.cli", "explain", "--config", "c.yaml"]
    assert plan_pod(tabular, eks, run_for(tabular), local).arguments == (
        "--config",
        "c.yaml",
        "--shard",
        "0/1",
    )
    same = plan_pod(tabular, eks, run_for(tabular, shard_index=1, shard_count=2), [*CMD, "--shard", "1/2"])
    assert same.arguments.count("--shard") == 1
    for bad, message in [
        ([*CMD, "--shard", "0/2"], "has --shard 0/2 but this pod is shard 1/2"),
        (["python", "train.py"], "command must be 'xac explain ...'"),
    ]:
        with pytest.raises(PodSpecError) as err:
            plan_pod(tabular, eks, run_for(tabular, shard_index=1, shard_count=2), bad)
        assert message in _problems(err)
    with pytest.raises(PodSpecError) as err:
        plan_pod(tabular, eks, run_for(tabular, shard_index=4, shard_count=4), CMD)
    assert "shard 4 of 4" in _problems(err)


def test_plan_shards_gives_one_distinct_pod_per_shard(tabular: ExplainerConfiguration, eks: Any) -> None:
    plans = plan_shards(tabular, eks, run_for(tabular), CMD, 8)
    assert [p.labels["xac.dev/shard"] for p in plans] == [str(i) for i in range(8)]
    assert [p.arguments[-1] for p in plans] == [f"{i}/8" for i in range(8)]
    assert len({p.name for p in plans}) == 8 and all(len(p.name) <= 54 for p in plans)
    assert all(p.template is plans[0].template for p in plans)  # checked and built once
    # the per-shard kwargs travel as XCom: JSON only
    for plan in plans:
        assert json.loads(json.dumps(plan.shard_kpo_kwargs())) == plan.shard_kpo_kwargs()
    with pytest.raises(PodSpecError):
        plan_shards(tabular, eks, run_for(tabular), CMD, 0)


def test_the_pod_runs_as_non_root_with_a_read_only_root(tabular: ExplainerConfiguration, eks: Any) -> None:
    spec = plan_pod(tabular, eks, run_for(tabular), CMD).manifest()["spec"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
    container = spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/scratch", "/tmp"}
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 7200
    assert spec["priorityClassName"] == "batch-low"


def test_the_template_does_not_depend_on_the_run(tabular: ExplainerConfiguration, eks: Any) -> None:
    template = pod_template(tabular, eks, capacity="on-demand")
    a = plan_pod(tabular, eks, run_for(tabular), CMD, template=template)
    b = plan_pod(tabular, eks, run_for(tabular, run_id="scheduled__2027-01-01T00:00:00+00:00"), CMD)
    assert a.manifest()["spec"]["affinity"] != b.manifest()["spec"].get("affinity")  # b: spot-preferred
    c = plan_pod(tabular, eks, run_for(tabular, run_id="other"), CMD, capacity="on-demand")
    assert a.manifest()["spec"] == c.manifest()["spec"]
    assert a.labels["xac.dev/run-id"] != c.labels["xac.dev/run-id"]
    with pytest.raises(TypeError):
        plan_pod(tabular, eks, run_for(tabular), CMD, template=template, capacity="on-demand")


def test_importing_the_k8s_package_loads_neither_airflow_nor_the_kubernetes_client() -> None:
    code = (
        "import sys, include.k8s, include.k8s.podspec;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'airflow', 'kubernetes'});"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_extra_environment_reaches_the_container_and_bad_names_are_refused(
    tabular: ExplainerConfiguration, eks: Any
) -> None:
    plan = plan_pod(tabular, eks, run_for(tabular), CMD, env={"S3_ENDPOINT_URL": "http://minio:9000"})
    env = {e["name"]: e["value"] for e in _container(plan)["env"]}
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000" and env["PYTHONUNBUFFERED"] == "1"
    with pytest.raises(PodSpecError) as err:
        plan_pod(tabular, eks, run_for(tabular), CMD, env={"1BAD-NAME": "x"})
    assert "environment variable name '1BAD-NAME'" in _problems(err)


def test_gpu_pods_require_their_device_and_compiled_ig_shares_its_cache(
    tabular: ExplainerConfiguration, configs: dict[str, ExplainerConfiguration], eks: Any
) -> None:
    def env_of(config: ExplainerConfiguration, profile: Any) -> dict[str, str]:
        return {
            e["name"]: e["value"] for e in _container(plan_pod(config, profile, run_for(config), CMD))["env"]
        }

    assert "XAC_EXPLAIN_DEVICE" not in env_of(tabular, eks)  # no GPU requested: the explainer chooses
    assert env_of(with_resources(tabular, gpu="1"), eks)["XAC_EXPLAIN_DEVICE"] == "cuda"
    # The loopback double runs pods as local processes that may have no GPU.
    loopback = shipped_profile("loopback")
    assert loopback.spec.gpu.requireDevice is False
    assert "XAC_EXPLAIN_DEVICE" not in env_of(with_resources(tabular, gpu="0.1"), loopback)

    ig = with_resources(configs["multimodal-digits-ig"], gpu="1")
    assert "XAC_COMPILE_CACHE" not in env_of(ig, eks)
    data = ig.model_dump(mode="json", exclude_none=True)
    data["spec"]["explainerConfig"]["compile"] = True
    compiled = env_of(ExplainerConfiguration.model_validate(data), eks)
    assert compiled["XAC_COMPILE_CACHE"] == f"s3://{ig.spec.storage.bucket}/_xac/compile-cache"
    assert compiled["TORCHINDUCTOR_CACHE_DIR"].endswith("/inductor")


def test_env_from_secrets_reach_the_pod_by_reference_only(tabular: ExplainerConfiguration) -> None:
    """A model endpoint's connection (AIRFLOW_CONN_<ID>) reaches the pods from a Secret named by the
    cluster profile: the pod spec and the operator's kwargs refer to it, never hold its value."""
    from include.k8s.cluster import ClusterProfileError

    profile = edited_profile("default", lambda d: d["spec"].update(envFromSecrets=["endpoint-connections"]))
    plan = plan_pod(tabular, profile, run_for(tabular), CMD)
    assert _container(plan)["envFrom"] == [{"secretRef": {"name": "endpoint-connections"}}]
    kwargs = pod_template(tabular, profile).kpo_kwargs()
    assert [e.secret_ref.name for e in kwargs["env_from"]] == ["endpoint-connections"]
    assert "envFrom" not in _container(plan_pod(tabular, shipped_profile("default"), run_for(tabular), CMD))
    with pytest.raises(ClusterProfileError, match="not a DNS label"):
        edited_profile("default", lambda d: d["spec"].update(envFromSecrets=["Endpoint_Connections"]))
