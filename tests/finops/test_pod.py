"""Pricing finished Kubernetes pods against hand-computed figures.

Catalogue (include/configs/pricing.yaml), per hour: CPU 0.031611 / vCPU, spotCPU 0.009483,
RAM 0.004237 / GiB, spotRAM 0.001271, GPU 2.50 (default), spotGPU 0.95,
nvidia-h100-80gb 6.98 (spot 2.45), nvidia-a100-80gb 4.10 (spot 1.44).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from include.finops.cli import run_cost_command
from include.finops.pod import parse_quantity, price_pod
from include.finops.pricing import PricingError, load_catalogue

Pod = Callable[..., dict[str, Any]]
CATALOGUE = load_catalogue()
H100_NODE = {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}
A100_NODE = {"labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}


def by(rows: list[dict[str, Any]], resource: str, container: str = "explain") -> dict[str, Any]:
    (row,) = [r for r in rows if r["x_Resource"] == resource and r["x_Container"] == container]
    return row


def test_cpu_only_pod(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory([container_factory(requests={"cpu": "2", "memory": "4Gi"})], seconds=3600)
    cost = price_pod(pod, CATALOGUE)
    # CPU: 2 cores x 1 h x 0.031611 = 0.063222 ; RAM: 4 GiB x 1 h x 0.004237 = 0.016948
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.063222)
    assert by(cost.rows, "RAM")["BilledCost"] == pytest.approx(0.016948)
    assert {r["x_Resource"] for r in cost.rows} == {"CPU", "RAM"}
    assert cost.total == pytest.approx(0.080170)  # 0.063222 + 0.016948
    assert cost.capacity == "on-demand" and cost.capacity_source == "default"
    assert by(cost.rows, "CPU")["PricingCategory"] == "Standard"


def test_whole_gpu_on_h100_node_with_limits_only(pod_factory: Pod, container_factory: Pod) -> None:
    # Only limits are set: Kubernetes makes them the requests.
    pod = pod_factory(
        [container_factory(limits={"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"})], seconds=1800
    )
    cost = price_pod(pod, CATALOGUE, node=H100_NODE)
    # GPU: 1 x 0.5 h x 6.98 (H100 price, from the node's product label) = 3.49
    # CPU: 4 x 0.5 h x 0.031611 = 0.063222 ; RAM: 16 x 0.5 h x 0.004237 = 0.033896
    assert by(cost.rows, "GPU")["BilledCost"] == pytest.approx(3.49)
    assert by(cost.rows, "GPU")["x_GpuModel"] == "nvidia-h100-80gb"
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.063222)
    assert by(cost.rows, "RAM")["BilledCost"] == pytest.approx(0.033896)
    assert cost.total == pytest.approx(3.587118)


def test_gpu_without_node_labels_uses_the_default_gpu_price(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory([container_factory(requests={"cpu": "1", "nvidia.com/gpu": "2"})], seconds=3600)
    cost = price_pod(pod, CATALOGUE)
    # GPU: 2 x 1 h x 2.50 (default GPU price) = 5.00
    assert by(cost.rows, "GPU")["BilledCost"] == pytest.approx(5.0)
    assert by(cost.rows, "GPU")["x_GpuModel"] is None
    assert any("GPU model is unknown" in n for n in cost.notes)


def test_mig_slice_is_g_sevenths_of_a_gpu(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory(
        [container_factory(requests={"cpu": "1", "memory": "2Gi", "nvidia.com/mig-1g.10gb": "2"})],
        seconds=3600,
    )
    cost = price_pod(pod, CATALOGUE, node=A100_NODE)
    # two 1g slices = 2/7 GPU ; 2/7 x 1 h x 4.10 (A100-80GB) = 1.1714285714...
    gpu = by(cost.rows, "GPU")
    assert gpu["PricingQuantity"] == pytest.approx(2 / 7)
    assert gpu["BilledCost"] == pytest.approx(8.2 / 7)
    assert "2/7" not in gpu["x_QuantityDetail"] and "1/7" in gpu["x_QuantityDetail"]
    # a 3g.40gb slice for 30 min: 3/7 x 0.5 h x 4.10 = 0.8785714285...
    three = pod_factory([container_factory(requests={"nvidia.com/mig-3g.40gb": "1"})], seconds=1800)
    assert by(price_pod(three, CATALOGUE, node=A100_NODE).rows, "GPU")["BilledCost"] == pytest.approx(
        3 / 7 * 0.5 * 4.10
    )
    # a cluster profile may price the slice by memory instead: 1/8 of the GPU
    profile = {"migFractions": {"nvidia.com/mig-1g.10gb": 0.125}}
    # 2 x 1/8 x 1 h x 4.10 = 1.025
    overridden = price_pod(pod, CATALOGUE, node=A100_NODE, cluster_profile=profile)
    assert by(overridden.rows, "GPU")["BilledCost"] == pytest.approx(1.025)


def test_mig_single_strategy_reads_the_product_label(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory([container_factory(requests={"nvidia.com/gpu": "1"})], seconds=3600)
    node = {"labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB-MIG-2g.20gb"}}
    # the advertised "GPU" is a 2g slice of an A100-80GB: 2/7 x 1 h x 4.10
    assert by(price_pod(pod, CATALOGUE, node=node).rows, "GPU")["BilledCost"] == pytest.approx(8.2 / 7)


def test_time_sliced_share(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory([container_factory(requests={"nvidia.com/gpu.shared": "1"})], seconds=7200)
    profile = {"timeSlicing": {"nvidia.com/gpu.shared": {"replicas": 10}}}
    cost = price_pod(pod, CATALOGUE, cluster_profile=profile)
    # 1/10 GPU x 2 h x 2.50 = 0.50
    assert by(cost.rows, "GPU")["BilledCost"] == pytest.approx(0.5)
    # the device plugin without renaming: nvidia.com/gpu on a node labelled with 4 replicas
    plain = pod_factory([container_factory(requests={"nvidia.com/gpu": "1"})], seconds=3600)
    node = {"labels": {"nvidia.com/gpu.product": "NVIDIA-L4-SHARED", "nvidia.com/gpu.replicas": "4"}}
    # 1/4 x 1 h x 0.805 (L4) = 0.20125
    assert by(price_pod(plain, CATALOGUE, node=node).rows, "GPU")["BilledCost"] == pytest.approx(0.20125)


def test_cluster_profile_document_shape(pod_factory: Pod, container_factory: Pod) -> None:
    """A ``kind: ClusterProfile`` document (include/configs/clusters/) drives the same rules."""
    profile = {
        "apiVersion": "ai.apexlogic.com/v1alpha1",
        "kind": "ClusterProfile",
        "metadata": {"name": "gpu"},
        "spec": {
            "gpu": {
                "types": {
                    "t4-shared": {
                        "sharing": {
                            "mode": "time-slicing",
                            "resource": "nvidia.com/gpu.shared",
                            "replicas": 5,
                        }
                    },
                    "a100-mig": {
                        "sharing": {
                            "mode": "mig",
                            "profiles": [{"resource": "nvidia.com/mig-1g.10gb", "fraction": "1/8"}],
                        }
                    },
                }
            },
            "spot": {"supported": True, "nodeLabel": "example.com/lifecycle", "spotValue": "Ec2Spot"},
        },
    }
    shared = pod_factory([container_factory(requests={"nvidia.com/gpu.shared": "1"})], seconds=3600)
    # 1/5 GPU x 1 h x 2.50 = 0.50
    assert by(price_pod(shared, CATALOGUE, cluster_profile=profile).rows, "GPU")[
        "BilledCost"
    ] == pytest.approx(0.5)
    mig = pod_factory([container_factory(requests={"nvidia.com/mig-1g.10gb": "1"})], seconds=3600)
    # 1/8 GPU x 1 h x 4.10 = 0.5125
    cost = price_pod(mig, CATALOGUE, cluster_profile=profile, node=A100_NODE)
    assert by(cost.rows, "GPU")["BilledCost"] == pytest.approx(0.5125)
    # the profile's own spot label: spot GPU price for A100: 1/8 x 1 h x 1.44 = 0.18
    spot_node = {"labels": {**A100_NODE["labels"], "example.com/lifecycle": "Ec2Spot"}}
    spot = price_pod(mig, CATALOGUE, cluster_profile=profile, node=spot_node)
    assert spot.capacity == "spot" and by(spot.rows, "GPU")["BilledCost"] == pytest.approx(0.18)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("karpenter.sh/capacity-type", "spot"),
        ("eks.amazonaws.com/capacityType", "SPOT"),
        ("cloud.google.com/gke-spot", "true"),
        ("kubernetes.azure.com/scalesetpriority", "spot"),
    ],
)
def test_spot_node(pod_factory: Pod, container_factory: Pod, key: str, value: str) -> None:
    pod = pod_factory([container_factory(requests={"cpu": "1", "memory": "2Gi"})], seconds=3600)
    cost = price_pod(pod, CATALOGUE, node={"metadata": {"name": "node-a", "labels": {key: value}}})
    # spot: CPU 1 x 1 h x 0.009483 ; RAM 2 x 1 h x 0.001271 = 0.002542
    assert cost.capacity == "spot" and cost.capacity_source == "node-labels"
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.009483)
    assert by(cost.rows, "RAM")["BilledCost"] == pytest.approx(0.002542)
    assert by(cost.rows, "CPU")["PricingCategory"] == "Dynamic"


def test_on_demand_node_label_wins_over_a_spot_selector(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory(
        [container_factory(requests={"cpu": "1"})], node_selector={"karpenter.sh/capacity-type": "spot"}
    )
    cost = price_pod(pod, CATALOGUE, node={"labels": {"karpenter.sh/capacity-type": "on-demand"}})
    assert cost.capacity == "on-demand"
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.031611)


def test_spot_from_node_selector_and_affinity(pod_factory: Pod, container_factory: Pod) -> None:
    c = [container_factory(requests={"cpu": "1"})]
    selector = pod_factory(c, node_selector={"cloud.google.com/gke-spot": "true"})
    assert price_pod(selector, CATALOGUE).capacity_source == "node-selector"
    spot_expr = {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}
    zone_expr = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-west-1a"]}
    affinity = pod_factory(c, affinity_terms=[[spot_expr, zone_expr], [spot_expr]])
    cost = price_pod(affinity, CATALOGUE)
    assert (cost.capacity, cost.capacity_source) == ("spot", "node-affinity")
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.009483)
    # one alternative term allows any capacity: the pod may have run on-demand
    either = pod_factory(c, affinity_terms=[[spot_expr], [zone_expr]])
    assert price_pod(either, CATALOGUE).capacity == "on-demand"


def test_usage_above_request_is_billed(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory([container_factory(requests={"cpu": "500m", "memory": "512Mi"})], seconds=3600)
    usage = {"containers": {"explain": {"cpu_cores_avg": 1.5, "memory_peak_bytes": 2 * 2**30}}}
    cost = price_pod(pod, CATALOGUE, usage=usage)
    # CPU: max(0.5, 1.5) = 1.5 x 1 h x 0.031611 = 0.0474165 ; RAM: max(0.5, 2) GiB x 0.004237 = 0.008474
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.0474165)
    assert by(cost.rows, "RAM")["BilledCost"] == pytest.approx(0.008474)
    assert {r["x_UsageSource"] for r in cost.rows} == {"usage-file"}
    assert cost.usage_source == "usage-file" and not cost.notes
    # usage below the request: the request is billed (0.5 x 0.031611 = 0.0158055)
    low = price_pod(pod, CATALOGUE, usage={"explain": {"cpu_cores_avg": 0.1, "memory_peak_bytes": 2**20}})
    assert by(low.rows, "CPU")["BilledCost"] == pytest.approx(0.0158055)
    assert by(low.rows, "CPU")["x_UsageQuantity"] == pytest.approx(0.1)


def test_gpu_utilisation_is_recorded_not_billed(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory([container_factory(requests={"nvidia.com/gpu": "1"})], seconds=3600)
    cost = price_pod(pod, CATALOGUE, usage={"explain": {"gpu_utilisation": 0.4}}, node=H100_NODE)
    gpu = by(cost.rows, "GPU")
    assert gpu["BilledCost"] == pytest.approx(6.98)  # the whole GPU was held: 1 x 1 h x 6.98
    assert gpu["x_UsageQuantity"] == pytest.approx(0.4)


def test_twenty_second_pod(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory([container_factory(requests={"cpu": "1", "memory": "1Gi"})], seconds=20)
    cost = price_pod(pod, CATALOGUE)
    # exact runtime, no rounding to a scrape interval: 20 s = 1/180 h
    # CPU: 1 x 20/3600 x 0.031611 = 0.00017561666... -> 0.0001756167 (1e-10 precision)
    # RAM: 1 x 20/3600 x 0.004237 = 0.00002353888... -> 0.0000235389
    assert cost.runtime_seconds == 20
    assert by(cost.rows, "CPU")["BilledCost"] == 0.0001756167
    assert by(cost.rows, "RAM")["BilledCost"] == 0.0000235389
    assert by(cost.rows, "CPU")["ChargePeriodEnd"] == "2026-11-27T08:00:20Z"


def test_pod_that_failed_after_three_minutes_is_billed(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory(
        [container_factory(requests={"cpu": "2", "memory": "8Gi"})], seconds=180, phase="Failed", exit_code=1
    )
    cost = price_pod(pod, CATALOGUE)
    # 3 min = 0.05 h ; CPU: 2 x 0.05 x 0.031611 = 0.0031611 ; RAM: 8 x 0.05 x 0.004237 = 0.0016948
    assert cost.phase == "Failed"
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.0031611)
    assert by(cost.rows, "RAM")["BilledCost"] == pytest.approx(0.0016948)
    assert cost.total == pytest.approx(0.0048559)
    assert by(cost.rows, "CPU")["x_PodPhase"] == "Failed"


def test_no_usage_data_falls_back_to_requests_and_says_so(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory([container_factory(requests={"cpu": "250m", "memory": "256Mi"})], seconds=3600)
    # usage for another container only: this one has none
    cost = price_pod(pod, CATALOGUE, usage={"containers": {"sidecar": {"cpu_cores_avg": 4.0}}})
    # CPU: 0.25 x 0.031611 = 0.00790275 ; RAM: 0.25 GiB x 0.004237 = 0.00105925
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.00790275)
    assert by(cost.rows, "RAM")["BilledCost"] == pytest.approx(0.00105925)
    assert {r["x_UsageSource"] for r in cost.rows} == {"requests-only"}
    assert all(r["x_UsageQuantity"] is None for r in cost.rows)
    assert cost.usage_source == "requests-only"
    assert any("requests are billed" in n for n in cost.notes)


def test_runtime_from_container_start_when_start_time_is_absent(
    pod_factory: Pod, container_factory: Pod
) -> None:
    pod = pod_factory([container_factory(requests={"cpu": "1"})], seconds=900, start_time=False)
    cost = price_pod(pod, CATALOGUE)
    assert cost.runtime_seconds == 900
    assert by(cost.rows, "CPU")["BilledCost"] == pytest.approx(0.25 * 0.031611)  # 1 core x 0.25 h


def test_init_excess_sidecar_and_overhead(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory(
        [container_factory(requests={"cpu": "1", "memory": "1Gi"})],
        init_containers=[
            container_factory("proxy", requests={"cpu": "500m"}, restart_policy="Always"),
            container_factory("fetch-model", requests={"cpu": "3", "memory": "512Mi"}),
        ],
        overhead={"cpu": "250m"},
        seconds=3600,
    )
    cost = price_pod(pod, CATALOGUE)
    # steady: explain 1 CPU + sidecar proxy 0.5 CPU = 1.5 CPU ; the init container runs beside
    # the proxy (declared before it): 3 + 0.5 = 3.5 CPU reserved -> 2 CPU above the steady 1.5;
    # its memory (0.5 GiB) is below the steady 1 GiB -> no RAM row for it; overhead 0.25 CPU.
    assert by(cost.rows, "CPU", "proxy")["BilledCost"] == pytest.approx(0.5 * 0.031611)
    init_cpu = by(cost.rows, "CPU", "fetch-model (init, above app requests)")
    assert init_cpu["PricingQuantity"] == pytest.approx(2.0)
    assert [
        r for r in cost.rows if r["x_Container"].startswith("fetch-model") and r["x_Resource"] == "RAM"
    ] == []
    assert by(cost.rows, "CPU", "pod overhead")["BilledCost"] == pytest.approx(0.25 * 0.031611)
    # 1 + 0.5 + 2 + 0.25 = 3.75 CPU-hours ; 1 GiB-hour of RAM
    assert cost.total == pytest.approx(3.75 * 0.031611 + 0.004237)


def test_init_containers_reserve_their_peak_once(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory(
        [container_factory(requests={"cpu": "1"})],
        init_containers=[
            container_factory("a", requests={"cpu": "3"}),
            container_factory("b", requests={"cpu": "4", "memory": "2Gi"}),
        ],
        seconds=3600,
    )
    rows = price_pod(pod, CATALOGUE).rows
    # init containers run one after the other: the pod reserves max(1, 3, 4) = 4 CPU, i.e. 3 above
    # the app's 1 (not 2 + 3), and b's 2 GiB above the app's none; both charged to b
    assert [r for r in rows if r["x_Container"].startswith("a ")] == []
    assert by(rows, "CPU", "b (init, above app requests)")["PricingQuantity"] == pytest.approx(3.0)
    assert by(rows, "RAM", "b (init, above app requests)")["PricingQuantity"] == pytest.approx(2.0)
    # 1 + 3 CPU-hours and 2 GiB-hours: 4 x 0.031611 + 2 x 0.004237 = 0.134918
    assert sum(r["BilledCost"] for r in rows) == pytest.approx(0.134918)


def test_labels_and_annotations_fill_the_x_columns(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory(
        [container_factory(requests={"cpu": "1"})],
        labels={"xac.dev/model": "m-label", "xac.dev/shard": "3", "xac.dev/team": "t", "app": "x"},
        annotations={"xac.dev/model": "m-annotation", "xac.dev/run-id": "manual__2026-11-27T08:00:00+00:00"},
    )
    pod["spec"]["nodeName"] = "gpu-7"
    profile = {"nodes": {"gpu-7": {"labels": {"topology.kubernetes.io/region": "eu-west-1"}}}}
    row = price_pod(pod, CATALOGUE, cluster_profile=profile).rows[0]
    assert row["x_Model"] == "m-annotation"  # annotations win: label values are length-limited
    assert row["x_RunId"] == "manual__2026-11-27T08:00:00+00:00"
    assert row["x_Shard"] == 3 and row["x_Team"] == "t" and row["x_CostCenter"] is None
    assert row["x_ModelVersion"] == "unknown" and row["x_ConfigName"] == "explain-0"
    assert row["SubAccountId"] == "ai-prod" and row["RegionId"] == "eu-west-1"
    assert row["ResourceId"] == "kubernetes/ai-prod/pods/explain-0/uid-explain-0"
    assert row["Tags"]["app"] == "x" and row["Tags"]["xac.dev/model"] == "m-annotation"


def test_airflow_pod_operator_labels_are_a_fallback(pod_factory: Pod, container_factory: Pod) -> None:
    pod = pod_factory(
        [container_factory(requests={"cpu": "1"})],
        labels={"dag_id": "diagnosis-risk-kernelshap", "run_id": "manual__2026-11-27", "map_index": "2"},
        annotations={},
    )
    row = price_pod(pod, CATALOGUE).rows[0]
    assert (row["x_ConfigName"], row["x_RunId"], row["x_Shard"]) == (
        "diagnosis-risk-kernelshap",
        "manual__2026-11-27",
        2,
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", 0.5),
        ("2", 2.0),
        ("1.5", 1.5),
        ("512Mi", 2**29),
        ("1Gi", 2**30),
        ("1G", 1e9),
        ("1e3", 1000.0),
        ("100k", 1e5),
    ],
)
def test_kubernetes_quantities(text: str, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


def test_unpriceable_pods(pod_factory: Pod, container_factory: Pod, tmp_path: Path) -> None:
    c = [container_factory(requests={"cpu": "1"})]
    with pytest.raises(PricingError, match="no start time"):
        price_pod(pod_factory(c, start_time=False, finished=False), CATALOGUE)
    with pytest.raises(PricingError, match="has not finished"):
        price_pod(pod_factory(c, phase="Running", finished=False), CATALOGUE)
    with pytest.raises(PricingError, match="no resources to price"):
        price_pod(pod_factory([container_factory()]), CATALOGUE)
    with pytest.raises(PricingError, match=r"nvidia.com/gpu.shared.*has no price"):
        price_pod(pod_factory([container_factory(requests={"nvidia.com/gpu.shared": "1"})]), CATALOGUE)
    with pytest.raises(PricingError, match="not a Kubernetes quantity"):
        price_pod(pod_factory([container_factory(requests={"cpu": "lots"})]), CATALOGUE)
    # a catalogue with no GPU price (OpenCost file with CPU and RAM only)
    no_gpu = tmp_path / "opencost.json"
    no_gpu.write_text(json.dumps({"CPU": "0.03", "RAM": "0.004"}))
    gpu_pod = pod_factory([container_factory(requests={"nvidia.com/gpu": "1"})])
    with pytest.raises(PricingError, match=r"explain-0: container explain: .*no 'GPU' price"):
        price_pod(gpu_pod, load_catalogue(no_gpu))


def test_cli_prints_rows_and_refuses_unpriceable_pods(
    pod_factory: Pod, container_factory: Pod, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(pod_factory([container_factory(requests={"cpu": "1", "memory": "1Gi"})])))
    usage_file = tmp_path / "usage.json"
    usage_file.write_text(json.dumps({"containers": {"explain": {"cpu_cores_avg": 2.0}}}))
    assert run_cost_command(pod_file, None, usage_file) == 0
    rows = json.loads(capsys.readouterr().out)
    # CPU: max(1, 2) x 1 h x 0.031611 = 0.063222
    assert {r["x_Resource"]: r["BilledCost"] for r in rows}["CPU"] == pytest.approx(0.063222)

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(pod_factory([container_factory()])))
    assert run_cost_command(bad, None, None) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no resources to price" in captured.err
    assert run_cost_command(tmp_path / "missing.json", None, None) == 2
