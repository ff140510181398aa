"""Idle share of a node's unrequested capacity, against hand-computed figures.

Catalogue (include/configs/pricing.yaml), per hour: CPU 0.031611 / vCPU, spotCPU 0.009483,
RAM 0.004237 / GiB, nvidia-h100-80gb 6.98 / GPU (spot 2.45).

The node in most tests: 8 vCPU and 32 GiB allocatable; the pods on it (this one included) request
6 vCPU and 16 GiB, so 2 vCPU and 16 GiB are idle. The pod requests 2 vCPU and 4 GiB for 1 hour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from include.finops.cli import run_cost_command
from include.finops.idle import IDLE_CONTAINER, IdleShare, idle_share_settings, requested_on_node
from include.finops.pod import price_pod, pricing_rules
from include.finops.pricing import PricingError, load_catalogue

Pod = Callable[..., dict[str, Any]]
CATALOGUE = load_catalogue()
NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "node-a", "labels": {"karpenter.sh/capacity-type": "on-demand"}},
    "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}},
}
REQUESTED = {"cpu": "6", "memory": "16Gi"}


def idle_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["x_Resource"]: r for r in rows if r["x_Container"] == IDLE_CONTAINER}


@pytest.fixture
def pod(pod_factory: Pod, container_factory: Pod) -> dict[str, Any]:
    return pod_factory([container_factory(requests={"cpu": "2", "memory": "4Gi"})], seconds=3600)


def test_off_by_default(pod: dict[str, Any]) -> None:
    cost = price_pod(pod, CATALOGUE, node=NODE, node_requested=REQUESTED)
    assert idle_rows(cost.rows) == {}
    off = price_pod(pod, CATALOGUE, node=NODE, node_requested=REQUESTED, cluster_profile={"idleShare": 0})
    assert idle_rows(off.rows) == {} and off.total == cost.total
    assert cost.total == pytest.approx(0.080170)  # 2 x 0.031611 + 4 x 0.004237


def test_half_the_idle_cost_by_share_of_allocatable(pod: dict[str, Any]) -> None:
    profile = {"idleShare": {"fraction": 0.5}}  # basis: allocatable (default)
    cost = price_pod(pod, CATALOGUE, node=NODE, node_requested=REQUESTED, cluster_profile=profile)
    idle = idle_rows(cost.rows)
    assert set(idle) == {"CPU", "RAM"}
    # CPU: 0.5 x idle 2 vCPU x pod share 2/8 = 0.25 vCPU ; x 1 h x 0.031611 = 0.00790275
    assert idle["CPU"]["x_RequestQuantity"] == pytest.approx(0.25)
    assert idle["CPU"]["BilledCost"] == pytest.approx(0.00790275)
    # RAM: 0.5 x idle 16 GiB x pod share 4/32 = 1 GiB ; x 1 h x 0.004237 = 0.004237
    assert idle["RAM"]["x_RequestQuantity"] == pytest.approx(1.0)
    assert idle["RAM"]["BilledCost"] == pytest.approx(0.004237)
    assert cost.total == pytest.approx(0.080170 + 0.00790275 + 0.004237)
    assert {r["x_UsageSource"] for r in idle.values()} == {"idle-share"}
    assert "node node-a idle 2 vCPU" in idle["CPU"]["x_QuantityDetail"]
    # the pod's own rows are unchanged
    own = [r for r in cost.rows if r["x_Container"] == "explain"]
    assert sum(r["BilledCost"] for r in own) == pytest.approx(0.080170)


def test_all_the_idle_cost_by_share_of_requests(pod: dict[str, Any]) -> None:
    profile = {"idleShare": {"fraction": 1, "basis": "requested"}}
    cost = price_pod(pod, CATALOGUE, node=NODE, node_requested=REQUESTED, cluster_profile=profile)
    idle = idle_rows(cost.rows)
    # CPU: 1 x idle 2 x 2/6 = 2/3 vCPU x 0.031611 = 0.021074
    # RAM: 1 x idle 16 x 4/16 = 4 GiB x 0.004237 = 0.016948
    assert idle["CPU"]["BilledCost"] == pytest.approx(0.021074)
    assert idle["RAM"]["BilledCost"] == pytest.approx(0.016948)


def test_idle_gpus_on_a_spot_h100_node(pod_factory: Pod, container_factory: Pod) -> None:
    gpu_pod = pod_factory(
        [container_factory(requests={"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"})], seconds=1800
    )
    node = {
        "metadata": {
            "name": "gpu-node",
            "labels": {
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "karpenter.sh/capacity-type": "spot",
            },
        },
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}},
    }
    requested = {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "2"}  # CPU and RAM fully requested
    cost = price_pod(
        gpu_pod, CATALOGUE, node=node, node_requested=requested, cluster_profile={"idleShare": 1.0}
    )
    idle = idle_rows(cost.rows)
    assert set(idle) == {"GPU"}  # nothing idle on CPU and RAM
    # GPU: 1 x idle 6 GPUs x pod share 1/8 = 0.75 GPU ; x 0.5 h x spot H100 2.45 = 0.91875
    assert idle["GPU"]["x_RequestQuantity"] == pytest.approx(0.75)
    assert idle["GPU"]["BilledCost"] == pytest.approx(0.91875)
    assert idle["GPU"]["x_GpuModel"] == "nvidia-h100-80gb" and idle["GPU"]["PricingCategory"] == "Dynamic"


def test_time_sliced_node_counts_gpus_not_replicas(pod_factory: Pod, container_factory: Pod) -> None:
    shared_pod = pod_factory([container_factory(requests={"nvidia.com/gpu": "1"})], seconds=3600)
    node = {
        "metadata": {"name": "ts-node", "labels": {"nvidia.com/gpu.replicas": "4"}},
        "status": {"allocatable": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "8"}},  # 2 GPUs x 4
    }
    cost = price_pod(
        shared_pod,
        CATALOGUE,
        node=node,
        node_requested={"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "4"},
        cluster_profile={"idleShare": 1.0},
    )
    # 2 GPUs allocatable, 1 requested: 1 idle ; pod holds 1/4 GPU = 1/8 of 2 ; 1 x 1/8 x 2.50 = 0.3125
    assert idle_rows(cost.rows)["GPU"]["BilledCost"] == pytest.approx(0.3125)


def test_overcommitted_node_has_no_idle_share(pod: dict[str, Any]) -> None:
    cost = price_pod(
        pod,
        CATALOGUE,
        node=NODE,
        node_requested={"cpu": "9", "memory": "40Gi"},
        cluster_profile={"idleShare": 1},
    )
    assert idle_rows(cost.rows) == {}


def test_missing_node_figures_are_noted_not_guessed(pod: dict[str, Any]) -> None:
    cost = price_pod(pod, CATALOGUE, node=NODE, cluster_profile={"idleShare": 0.5})
    assert idle_rows(cost.rows) == {}
    assert any("idle share configured" in n and "node-a" in n for n in cost.notes)


def test_node_figures_from_the_cluster_profile_and_the_cli(
    pod: dict[str, Any], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    profile = {
        "idleShare": {"fraction": 0.5},
        "nodes": {
            "node-a": {"labels": {}, "allocatable": {"cpu": "8", "memory": "32Gi"}, "requested": REQUESTED}
        },
    }
    cost = price_pod(pod, CATALOGUE, cluster_profile=profile)
    assert idle_rows(cost.rows)["CPU"]["BilledCost"] == pytest.approx(0.00790275)
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    code = run_cost_command(tmp_path / "pod.json", None, None, cluster_profile_path=tmp_path / "profile.json")
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert idle_rows(rows)["RAM"]["BilledCost"] == pytest.approx(0.004237)


def test_cluster_profile_document_carries_the_setting() -> None:
    document = {"kind": "ClusterProfile", "spec": {}, "idleShare": {"fraction": 0.25, "basis": "requested"}}
    assert idle_share_settings(pricing_rules(document)["idleShare"]) == IdleShare(0.25, "requested")


def test_settings_are_validated() -> None:
    assert not idle_share_settings(None).enabled
    assert idle_share_settings(0.3) == IdleShare(0.3)
    with pytest.raises(PricingError, match="fraction"):
        idle_share_settings({"fraction": 1.5})
    with pytest.raises(PricingError, match="basis"):
        idle_share_settings({"fraction": 0.5, "basis": "capacity"})


def test_requested_on_node_sums_effective_requests(pod_factory: Pod, container_factory: Pod) -> None:
    a = pod_factory([container_factory(requests={"cpu": "1", "memory": "1Gi"})], name="a")
    b = pod_factory(
        [container_factory(requests={"cpu": "500m"}), container_factory("side", requests={"cpu": "250m"})],
        name="b",
        # a plain init container asking for more than the app containers together: 2 > 0.75
        init_containers=[container_factory("init", requests={"cpu": "2", "memory": "512Mi"})],
        overhead={"cpu": "100m"},
    )
    # a: 1 cpu, 1 GiB ; b: max(0.75, 2) + 0.1 = 2.1 cpu, 512 MiB -> 3.1 cpu, 1.5 GiB
    total = requested_on_node([a, b])
    assert total["cpu"] == pytest.approx(3.1)
    assert total["memory"] == pytest.approx(1.5 * 2**30)
