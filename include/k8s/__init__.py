"""Kubernetes backend of the explainer: cluster profiles and explainer pod specs.

Importing this package loads neither Airflow nor the Kubernetes client (the DAG file may import
it while parsing); ``PodTemplate.kpo_kwargs`` imports the client models when it runs.
"""

from include.k8s.cluster import (
    CLUSTERS_DIR,
    ClusterProfile,
    ClusterProfileError,
    LoadedProfile,
    discover_profiles,
    load_cluster_profile,
)
from include.k8s.podspec import (
    GpuAllocation,
    PodPlan,
    PodSpecError,
    PodTemplate,
    RunContext,
    plan_pod,
    plan_shards,
    pod_template,
)

__all__ = [
    "CLUSTERS_DIR",
    "ClusterProfile",
    "ClusterProfileError",
    "GpuAllocation",
    "LoadedProfile",
    "PodPlan",
    "PodSpecError",
    "PodTemplate",
    "RunContext",
    "discover_profiles",
    "load_cluster_profile",
    "plan_pod",
    "plan_shards",
    "pod_template",
]
