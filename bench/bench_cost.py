"""Pricing 10,000 finished pods to FOCUS rows.

Target: <= 1 s for 10,000 pods. The pods are a fixed, seeded mix of what the explainer runs as:
CPU-only (1-2 containers, some with a sidecar), whole GPUs on known and unknown GPU models, MIG
slices, time-sliced shares, spot and on-demand nodes, failed pods, and pods with and without
usage data. We report the median of 5 runs of the pricing loop alone (building the pod dicts is
not timed), and, for information, the time to write the rows as a FOCUS CSV.

    .venv/bin/python bench/bench_cost.py
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from include.finops.focus import write_focus_csv
from include.finops.pod import price_pod
from include.finops.pricing import load_catalogue

RESULTS = Path(__file__).resolve().parent / "results" / "cost.json"
PODS = 10_000
TARGET_SECONDS = 1.0
PROFILE = {"timeSlicing": {"nvidia.com/gpu.shared": {"replicas": 10}}}
NODES = [
    {"labels": {"karpenter.sh/capacity-type": "on-demand", "topology.kubernetes.io/region": "eu-west-1"}},
    {"labels": {"karpenter.sh/capacity-type": "spot", "topology.kubernetes.io/region": "eu-west-1"}},
    {
        "labels": {
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "eks.amazonaws.com/capacityType": "ON_DEMAND",
        }
    },
    {"labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "cloud.google.com/gke-spot": "true"}},
    {"labels": {"nvidia.com/gpu.product": "Tesla-T4"}},
    None,
]


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_pods(n: int, seed: int = 0) -> list[tuple[dict[str, Any], dict[str, Any] | None, dict | None]]:
    rng = random.Random(seed)
    base = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        kind = rng.choice(["cpu", "cpu", "cpu", "sidecar", "gpu", "mig", "shared"])
        cpu, mem = rng.choice(["200m", "500m", "1", "2", "4"]), rng.choice(["512Mi", "1Gi", "4Gi", "16Gi"])
        requests: dict[str, str] = {"cpu": cpu, "memory": mem}
        if kind == "gpu":
            requests["nvidia.com/gpu"] = rng.choice(["1", "2"])
        elif kind == "mig":
            requests["nvidia.com/mig-" + rng.choice(["1g.10gb", "2g.20gb", "3g.40gb"])] = "1"
        elif kind == "shared":
            requests["nvidia.com/gpu.shared"] = "1"
        containers = [{"name": "explain", "resources": {"requests": requests}}]
        if kind == "sidecar":
            containers.append(
                {"name": "log-shipper", "resources": {"limits": {"cpu": "100m", "memory": "128Mi"}}}
            )
        start = base + timedelta(seconds=rng.randrange(0, 29 * 86400))
        end = start + timedelta(seconds=rng.randrange(20, 7200))
        failed = rng.random() < 0.1
        state = {
            "terminated": {"exitCode": 1 if failed else 0, "startedAt": _iso(start), "finishedAt": _iso(end)}
        }
        pod = {
            "metadata": {
                "name": f"explain-{i}",
                "namespace": "ai-prod",
                "uid": f"uid-{i}",
                "labels": {
                    "xac.dev/model": f"model-{i % 20}",
                    "xac.dev/team": "risk-ml",
                    "xac.dev/shard": str(i % 4),
                    "xac.dev/config": f"config-{i % 20}",
                },
                "annotations": {"xac.dev/run-id": f"scheduled__{i // 4}"},
            },
            "spec": {"nodeName": f"node-{i % 50}", "containers": containers},
            "status": {
                "phase": "Failed" if failed else "Succeeded",
                "startTime": _iso(start),
                "containerStatuses": [{"name": c["name"], "state": state} for c in containers],
            },
        }
        usage = None
        if rng.random() < 0.5:
            usage = {
                "containers": {
                    "explain": {
                        "cpu_cores_avg": rng.uniform(0.05, 3.0),
                        "memory_peak_bytes": rng.randrange(2**27, 2**34),
                        "gpu_utilisation": rng.random(),
                    }
                }
            }
        node = NODES[i % len(NODES)] if kind not in ("mig",) else NODES[3]
        out.append((pod, usage, node))
    return out


def main() -> int:
    catalogue = load_catalogue()
    pods = make_pods(PODS)
    timings, cpu_timings = [], []
    rows: list[dict[str, Any]] = []
    for _ in range(5):
        rows = []
        t0, c0 = time.perf_counter(), time.process_time()
        for pod, usage, node in pods:
            rows.extend(price_pod(pod, catalogue, usage=usage, cluster_profile=PROFILE, node=node).rows)
        timings.append(time.perf_counter() - t0)
        cpu_timings.append(time.process_time() - c0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_focus_csv(rows, Path(tmp) / "rows.csv")
        csv_seconds = time.perf_counter() - t0
    median = statistics.median(timings)
    result = {
        "benchmark": "price_10000_pods_to_focus_rows",
        "pods": PODS,
        "rows": len(rows),
        "seconds_median": round(median, 3),
        "seconds_runs": [round(t, 3) for t in timings],
        # CPU time of this process: what the wall time would be on an otherwise idle machine
        "cpu_seconds_median": round(statistics.median(cpu_timings), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "pods_per_second": round(PODS / median),
        "target_seconds": TARGET_SECONDS,
        "meets_target": median <= TARGET_SECONDS,
        # On a shared machine (load above the core count) wall time measures the neighbours too.
        "meets_target_on_cpu_time": statistics.median(cpu_timings) <= TARGET_SECONDS,
        "focus_csv_write_seconds": round(csv_seconds, 3),
        "machine": "2-core CPU runner (the project's CI size)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
