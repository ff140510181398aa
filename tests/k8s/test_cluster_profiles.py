"""Cluster profiles: the shipped ones load; broken ones are refused with file, line and field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from include.k8s.cluster import (
    CLUSTERS_DIR,
    ClusterProfileError,
    discover_profiles,
    load_cluster_profile,
    parse_profile_text,
)
from include.k8s.names import image_reference_problem, label_safe, label_value_problem, qualified_name_problem

SHIPPED = discover_profiles()
DIGEST = "sha256:" + "ab" * 32


def test_the_shipped_profiles_load() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"default", "gpu-eks"} <= names
    for path in SHIPPED:
        loaded = load_cluster_profile(path.stem)
        assert loaded.profile.name == path.stem
        assert loaded.path == path.resolve()
    eks = load_cluster_profile("gpu-eks").profile.spec
    assert eks.spot.supported and eks.spot.nodeLabel == "karpenter.sh/capacity-type"
    assert eks.gpu is not None and eks.gpu.types["a100-mig"].sharing.mode == "mig"
    assert load_cluster_profile("default").profile.spec.gpu.types["t4-shared"].sharing.mode == "time-slicing"


def test_a_profile_loads_by_path_and_an_unknown_name_lists_the_known_ones() -> None:
    assert load_cluster_profile(CLUSTERS_DIR / "gpu-eks.yaml").profile.name == "gpu-eks"
    with pytest.raises(ClusterProfileError) as err:
        load_cluster_profile("nope")
    assert "no cluster profile 'nope'" in str(err.value) and "gpu-eks" in str(err.value)


def _broken(mutate: Callable[[dict[str, Any]], None], name: str = "gpu-eks") -> ClusterProfileError:
    data = yaml.safe_load((CLUSTERS_DIR / f"{name}.yaml").read_text())
    data = copy.deepcopy(data)
    mutate(data)
    text = yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(ClusterProfileError) as err:
        parse_profile_text(text, f"{name}.yaml")
    return err.value


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[parts[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("spec.image", "registry.example.com/xac/explainer", "spec.image", "is not pinned"),
        ("spec.image", "registry.example.com:5000/xac/explainer", "spec.image", "is not pinned"),
        ("spec.image", "registry.example.com/xac/explainer:latest", "spec.image", "'latest' is not a pin"),
        ("spec.image", "registry.example.com/xac/explainer@sha256:abc", "spec.image", "digest"),
        ("spec.image", "Registry/Explainer:1.0", "spec.image", "repository name"),
        ("spec.namespaces.default", "ai-elsewhere", "spec.namespaces", "is not in allowed"),
        ("spec.namespaces.allowed", ["AI_PROD"], "spec.namespaces", "not a DNS label"),
        ("spec.serviceAccountName", "Xac Explainer", "spec.serviceAccountName", "service account"),
        ("spec.gpu.defaultType", "v100", "spec.gpu", "not one of the declared types"),
        ("spec.gpu.maxPerPod", 0, "spec.gpu.maxPerPod", "greater than or equal to 1"),
        ("spec.gpu.types.a100-mig.sharing.profiles.0.fraction", "8/7", "fraction", "at most 1"),
        ("spec.gpu.types.a100-mig.sharing.profiles.0.fraction", "1/0", "fraction", "not a fraction"),
        ("spec.gpu.types.a100-mig.sharing.profiles.0.resource", "mig-1g.10gb", "resource", "qualified"),
        ("spec.gpu.types.a100-mig.sharing.profiles", [], "profiles", "at least 1 item"),
        ("spec.gpu.types.a100-mig.sharing.mode", "mps", "spec.gpu.types.a100-mig.sharing", "mig"),
        ("spec.gpu.types.a10g.nodeLabels", {"nvidia.com/gpu.product": "A10G GPU"}, "nodeLabels", "letters"),
        ("spec.gpu.tolerations.0.value", "yes", "spec.gpu.tolerations[0]", "Exists takes no value"),
        ("spec.gpu.colour", "green", "spec.gpu.colour", "unknown field"),
        ("spec.spot.nodeLabel", "-bad-", "spec.spot", "name part"),
        ("spec.spot.supported", False, "spec", "defaultCapacity 'spot-preferred' needs spot.supported"),
        ("spec.pod.scratchSizeLimit", "lots", "spec.pod.scratchSizeLimit", "not a memory quantity"),
        ("spec.pod.annotations", {"bad key!": "x"}, "spec.pod.annotations", "annotation key"),
        ("spec.reliability.startupTimeoutSeconds", 5, "startupTimeoutSeconds", "greater than or equal"),
        ("metadata.name", "other", "metadata.name", "must equal the file name"),
    ],
)
def test_a_broken_profile_is_refused_at_its_field(path: str, value: Any, field: str, message: str) -> None:
    error = _broken(_set(path, value))
    shown = "\n".join(str(p) for p in error.problems)
    assert any(field in p.field and message in p.message for p in error.problems), shown
    assert all(p.path == "gpu-eks.yaml" for p in error.problems)


def test_a_problem_names_the_line_of_its_field() -> None:
    text = (CLUSTERS_DIR / "default.yaml").read_text()
    lines = text.splitlines()
    image_line = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("image:"))
    broken = text.replace("xac-explainer:0.1.0", "xac-explainer")
    with pytest.raises(ClusterProfileError) as err:
        parse_profile_text(broken, "default.yaml")
    (problem,) = err.value.problems
    assert (problem.line, problem.field) == (image_line, "spec.image")
    assert str(problem).startswith(f"default.yaml:{image_line}: spec.image: ")


def test_malformed_yaml_is_reported_with_its_line() -> None:
    with pytest.raises(ClusterProfileError) as err:
        parse_profile_text("apiVersion: x\nspec: [\n", "default.yaml")
    assert err.value.problems[0].field == "(yaml)"


@pytest.mark.parametrize(
    "reference",
    [
        "python:3.11",
        "ghcr.io/apexlogic/xac-explainer:0.1.0",
        "localhost:5000/xac:1",
        "registry.example.com:5000/a/b/c:v1.2.3-rc.1",
        f"xac@{DIGEST}",
        f"registry.example.com/xac:latest@{DIGEST}",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/xac-explainer:0.1.0",
    ],
)
def test_pinned_image_references_are_accepted(reference: str) -> None:
    assert image_reference_problem(reference) is None


@pytest.mark.parametrize(
    "reference",
    ["python", "python:latest", "localhost:5000/xac", "", " python:3.11", "xac@sha256:short", "a//b:1"],
)
def test_unpinned_or_malformed_image_references_are_refused(reference: str) -> None:
    assert image_reference_problem(reference) is not None


def test_label_safe_keeps_valid_values_and_makes_others_valid_and_distinct() -> None:
    assert label_safe("multimodal-image-classifier-v3") == "multimodal-image-classifier-v3"
    odd = [
        "manual__2026-11-27T08:28:12.890877+00:00",
        "manual__2026-11-27T08_28_12.890877_00_00",  # differs from the first only where labels cannot
        "scheduled__2026-11-27T00:00:00+00:00",
        "x" * 64,
        "ML Platform (EMEA)",
        "-leading-and-trailing-",
        "::",
    ]
    safe = [label_safe(v) for v in odd]
    assert all(label_value_problem(s) is None for s in safe), safe
    assert len(set(safe)) == len(safe)
    assert safe[1] == odd[1]  # already valid: unchanged


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("xac.dev/run-id", True),
        ("nvidia.com/mig-1g.10gb", True),
        ("team", True),
        ("Xac.dev/x", False),
        ("/x", False),
        ("xac.dev/", False),
        ("xac.dev/" + "a" * 64, False),
    ],
)
def test_qualified_names(key: str, ok: bool) -> None:
    assert (qualified_name_problem(key) is None) is ok


def test_every_shipped_profile_is_its_own_file(tmp_path: Path) -> None:
    # a copy under another file name is refused: the name is how DAGs select a cluster
    copy_path = tmp_path / "renamed.yaml"
    copy_path.write_text((CLUSTERS_DIR / "default.yaml").read_text())
    with pytest.raises(ClusterProfileError) as err:
        load_cluster_profile(copy_path)
    assert "must equal the file name" in str(err.value)


def test_a_problem_inside_a_sharing_mode_names_the_field_s_own_line() -> None:
    # pydantic puts the discriminator ('mig') in the location; the report uses the file's path
    text = (CLUSTERS_DIR / "gpu-eks.yaml").read_text()
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip() == "fraction: 2/7")
    with pytest.raises(ClusterProfileError) as err:
        parse_profile_text(text.replace("fraction: 2/7", "fraction: 9/7"), "gpu-eks.yaml")
    (problem,) = err.value.problems
    assert problem.field == "spec.gpu.types.a100-mig.sharing.profiles[1].fraction"
    assert problem.line == line
