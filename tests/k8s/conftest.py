"""Shared builders of the Kubernetes tests: shipped configs and profiles, and edited copies of them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from include.configuration import discover_config_files, load_config
from include.configuration.schema import ExplainerConfiguration
from include.k8s.cluster import CLUSTERS_DIR, ClusterProfile, parse_profile_text
from include.k8s.podspec import RunContext

RUN_ID = "manual__2026-11-27T08:28:12.890877+00:00"


def shipped_configs() -> dict[str, ExplainerConfiguration]:
    return {p.stem: load_config(p).config for p in discover_config_files()}


def shipped_profile(name: str) -> ClusterProfile:
    return parse_profile_text((CLUSTERS_DIR / f"{name}.yaml").read_text(), f"{name}.yaml").profile


def edited_profile(name: str, mutate: Callable[[dict[str, Any]], None]) -> ClusterProfile:
    data = copy.deepcopy(yaml.safe_load((CLUSTERS_DIR / f"{name}.yaml").read_text()))
    mutate(data)
    return parse_profile_text(yaml.safe_dump(data, sort_keys=False), f"{name}.yaml").profile


def with_resources(config: ExplainerConfiguration, **resources: str) -> ExplainerConfiguration:
    data = config.model_dump(mode="json", exclude_none=True)
    data["spec"]["resourceRequirements"].update(resources)
    return ExplainerConfiguration.model_validate(data)


def run_for(config: ExplainerConfiguration, **overrides: Any) -> RunContext:
    run = RunContext.for_config(
        config, dag_id=config.metadata.name, run_id=RUN_ID, model_version="1", config_sha256="ab" * 32
    )
    return RunContext(**{**run.__dict__, **overrides})


@pytest.fixture(scope="session")
def configs() -> dict[str, ExplainerConfiguration]:
    return shipped_configs()
