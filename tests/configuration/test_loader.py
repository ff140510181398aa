"""Config validation: the shipped configs pass; each kind of bad input is one located line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from include.configuration import ConfigError, discover_config_files, load_config, parse_config_text
from include.configuration.layout import bundle_prefix, explanation_file_name, model_listing_prefix
from include.configuration.schema import json_schema

SEED_EXAMPLE = """\
apiVersion: ai.apexlogic.com/v1alpha1
kind: ExplainerConfiguration
metadata:
  name: image-classifier-shap-explainer
  namespace: ai-prod
spec:
  modelName: multimodal-image-classifier-v3
  explainerType: SHAP
  explainerConfig:
    method: KernelSHAP
    numSamples: 500
    backgroundDataStrategy: "random_subset"
    backgroundDataSubsetSize: 100
  integration:
    inferenceServiceRef:
      name: image-classifier-service
      namespace: ai-prod
    explanationEndpoint: "/explain"
  outputFormat: "json"
  storage:
    type: "s3"
    bucket: "apexlogic-ai-explanations"
    path: "multimodal-image-classifier/shap/{model_version}/{inference_id}.json"
  resourceRequirements:
    cpu: "200m"
    memory: "512Mi"
    gpu: "0.1" # Fractional GPU for explainability
  monitoring:
    enabled: true
    alertOnFidelityDrop: true
    fidelityThreshold: 0.85
"""


def problems_of(text: str, name: str = "cfg.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, name)
    return [str(p) for p in info.value.problems]


def test_seed_example_validates_as_written_and_is_shipped() -> None:
    loaded = parse_config_text(SEED_EXAMPLE, "seed.yaml")
    assert loaded.config.spec.resourceRequirements.gpu_count == pytest.approx(0.1)
    assert loaded.defaults_applied == ("spec.owner", "spec.budget")
    shipped = [p for p in discover_config_files() if p.read_text() == SEED_EXAMPLE]
    assert shipped, "the seed example must ship unchanged under include/configs/explainers/"


def test_every_shipped_config_validates() -> None:
    files = discover_config_files()
    assert len(files) >= 3
    names = [load_config(p).name for p in files]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("numSamples: 500", "numSamples: 0", "cfg.yaml:11: spec.explainerConfig.numSamples: Input should be"),
        (
            'memory: "512Mi"',
            'memory: "lots"',
            "cfg.yaml:26: spec.resourceRequirements.memory: 'lots' is not a",
        ),
        ('gpu: "0.1"', 'gpu: "1.5"', "cfg.yaml:27: spec.resourceRequirements.gpu: '1.5': more than one GPU"),
        (
            "{model_version}/",
            "{modelversion}/",
            "cfg.yaml:23: spec.storage.path: unknown placeholder(s) {modelversion}",
        ),
        (
            "modelName: multimodal-image-classifier-v3",
            "modelName: no-such-model",
            "cfg.yaml:7: spec.modelName: model 'no-such-model' is not in the model catalogue",
        ),
        (
            "    numSamples: 500",
            "    numSamples: 500\n    colour: red",
            "cfg.yaml:12: spec.explainerConfig.colour: unknown field",
        ),
        (
            "numSamples: 500",
            "numSamples: many",
            "cfg.yaml:11: spec.explainerConfig.numSamples: Input should be a valid integer",
        ),
        (
            "method: KernelSHAP",
            "method: TreeMagic",
            "cfg.yaml:10: spec.explainerConfig.method: Input should be",
        ),
        (
            "fidelityThreshold: 0.85",
            "fidelityThreshold: 7",
            "cfg.yaml:31: spec.monitoring.fidelityThreshold: Input should be less",
        ),
        (
            "explainerType: SHAP",
            "explainerType: Captum",
            "cfg.yaml:10: spec.explainerConfig.method: 'KernelSHAP' is not a Captum method",
        ),
        (
            'outputFormat: "json"',
            'outputFormat: "parquet"',
            "cfg.yaml:23: spec.storage.path: ends in .json but outputFormat",
        ),
    ],
)
def test_bad_input_is_one_located_line(old: str, new: str, expected: str) -> None:
    assert old in SEED_EXAMPLE
    problems = problems_of(SEED_EXAMPLE.replace(old, new, 1))
    assert any(p.startswith(expected) for p in problems), problems


def test_malformed_yaml_names_the_line() -> None:
    problems = problems_of(SEED_EXAMPLE.replace("  storage:\n", "  storage: [\n", 1))
    assert len(problems) == 1
    assert problems[0].startswith("cfg.yaml:") and "(yaml): malformed YAML" in problems[0]


def test_policy_gate_refuses_missing_owner_budget_threshold_outside_default_namespaces() -> None:
    text = SEED_EXAMPLE.replace("namespace: ai-prod\nspec", "namespace: ai-research\nspec", 1)
    text = text.replace("    fidelityThreshold: 0.85\n", "")
    problems = problems_of(text)
    fields = {p.split(": ")[1] for p in problems}
    assert {"spec.owner", "spec.budget", "spec.monitoring.fidelityThreshold"} <= fields
    assert all("required by policy" in p for p in problems)


def test_policy_gate_refuses_config_without_explainer() -> None:
    text = SEED_EXAMPLE.replace("  explainerType: SHAP\n", "")
    assert any(": spec.explainerType: required by policy" in p for p in problems_of(text))


def test_storage_layout_is_derived_from_the_template() -> None:
    config = parse_config_text(SEED_EXAMPLE, "seed.yaml").config
    assert model_listing_prefix(config) == "multimodal-image-classifier/shap/"
    assert bundle_prefix(config, "3", "manual__2026-11-27T08:00:00+00:00") == (
        "multimodal-image-classifier/shap/3/runs/manual__2026-11-27T08_00_00_00_00/"
    )
    assert explanation_file_name(config, "3", "IMG/../1") == "IMG_.._1.json"


def test_json_schema_is_exported_and_describes_the_fields() -> None:
    schema = json_schema()
    assert schema["title"] == "ExplainerConfiguration"
    assert "spec" in schema["properties"]
    out = subprocess.run(
        [sys.executable, "-m", "include.cli", "config", "schema"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["title"] == "ExplainerConfiguration"


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(SEED_EXAMPLE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(SEED_EXAMPLE.replace("numSamples: 500", "numSamples: -3"))
    run = [sys.executable, "-m", "include.cli", "config", "validate"]
    assert subprocess.run([*run, str(good)], capture_output=True).returncode == 0
    failed = subprocess.run([*run, str(good), str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert f"{bad}:11: spec.explainerConfig.numSamples:" in failed.stdout


def test_schema_choices_agree_with_the_explainer_runtime() -> None:
    """The schema (validated at parse time) and the runtime (validated in the pod) list the same choices."""
    from typing import get_args

    from include.configuration.schema import ExplainerSettings
    from include.explainers.params import BACKGROUND_STRATEGIES, INTEGRATION_METHODS, known_methods

    fields = ExplainerSettings.model_fields
    optional_literal = fields["integrationMethod"].annotation  # Literal[...] | None
    integration_methods = set(get_args(get_args(optional_literal)[0]))

    assert integration_methods == set(INTEGRATION_METHODS)
    assert set(get_args(fields["backgroundDataStrategy"].annotation)) == set(BACKGROUND_STRATEGIES)
    assert set(get_args(fields["method"].annotation)) == set(known_methods())


def test_a_bad_model_source_in_the_catalogue_is_located_by_file_line_and_field(tmp_path: Path) -> None:
    from include.configuration.loader import catalogue_problems, model_catalogue

    catalogue = tmp_path / "models.yaml"
    catalogue.write_text(
        "models:\n"
        "  risk:\n"
        "    featureService: fs\n"
        "    source:\n"
        "      type: pickle\n"
        "      uri: ''\n"
        "      trustedTypes: sklearn.tree._tree.Tree\n"
        "      colour: red\n"
        "  fine:\n"
        "    source: {type: onnx, uri: 's3://models/fine/{version}/model.onnx'}\n"
    )
    problems = {(p.line, p.field): p.message for p in catalogue_problems("risk", catalogue)}
    assert set(problems) == {
        (5, "models.risk.source.type"),
        (6, "models.risk.source.uri"),
        (7, "models.risk.source.trustedTypes"),
        (8, "models.risk.source.colour"),
    }, problems
    assert "'pickle' is not one of torchscript" in problems[(5, "models.risk.source.type")]
    assert all(p.path == str(catalogue) for p in catalogue_problems("risk", catalogue))
    assert catalogue_problems("fine", catalogue) == [] and model_catalogue(catalogue)["fine"]


def test_a_model_version_cannot_walk_out_of_its_source_location() -> None:
    import pytest

    from include.explainers.errors import ModelLoadError
    from include.explainers.sources import SourceDeclaration

    declared, problems = SourceDeclaration.parse(
        {"type": "xgboost", "uri": "s3://models/risk/{version}/m.json"}
    )
    assert declared is not None and not problems
    assert declared.location("3.1-rc_2", "/home") == "s3://models/risk/3.1-rc_2/m.json"
    for version in ("../other-model/1", "a/b", ".hidden", "x" * 65, ""):
        with pytest.raises(ModelLoadError, match="cannot name a location"):
            declared.location(version, "/home")


def _sample_text() -> str:
    return (REPO_ROOT_FOR_SAMPLES / "diagnosis-risk-kernelshap.yaml").read_text()


REPO_ROOT_FOR_SAMPLES = Path(__file__).resolve().parents[2] / "include" / "configs" / "explainers"


def test_hostile_yaml_is_refused_fast_and_located() -> None:
    """Issue 18, item 4: aliases expand exponentially (a 1.5 KB file took 16 s and 1.1 GB)."""
    import time

    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 9)
    ]
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        parse_config_text(_sample_text() + "\n".join(rows) + "\n", "bomb.yaml")
    assert time.perf_counter() - started < 1.0
    assert "YAML aliases (*name) are not allowed" in str(caught.value)
    with pytest.raises(ConfigError, match=r"nested|nesting"):
        parse_config_text("spec: " + "[" * 400 + "]" * 400 + "\n", "deep.yaml")
    with pytest.raises(ConfigError, match="over 262144 bytes"):
        parse_config_text("#" * 300_000, "huge.yaml")


@pytest.mark.parametrize(
    ("airflow", "field"),
    [
        ("  airflow:\n    tags: [" + "t" * 101 + "]\n", "spec.airflow.tags[0]"),
        ("  airflow:\n    schedule: every day at six\n", "spec.airflow.schedule"),
        ("  airflow:\n    schedule: '61 * * * *'\n", "spec.airflow.schedule"),
    ],
    ids=["tag-over-100", "schedule-words", "schedule-bad-minute"],
)
def test_what_airflow_would_refuse_is_refused_by_validation(airflow: str, field: str) -> None:
    """Issue 18, item 3: such configs validated, then made the DAG processor drop every DAG."""
    text = _sample_text()
    start = text.index("  airflow:")
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text[:start] + airflow, "bad.yaml")
    assert any(p.field == field for p in caught.value.problems), caught.value.problems
    good = text[:start] + "  airflow:\n    schedule: '0 6 * * *'\n    tags: [churn]\n"
    assert parse_config_text(good, "good.yaml").config.spec.airflow.schedule == "0 6 * * *"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("./risk/{inference_id}.json", "empty or '.' segments"),
        ("risk//{inference_id}.json", "empty or '.' segments"),
        ("risk\\\\v1/{inference_id}.json", "backslashes or control characters"),
        ("risk\\u0007/{inference_id}.json", "backslashes or control characters"),
        ("_keys/{inference_id}.json", "reserved (_keys/, _staging/)"),
        ("_staging/x/{inference_id}.json", "reserved (_keys/, _staging/)"),
        ("r" * 600 + "/{inference_id}.json", "over 512 bytes"),
    ],
    ids=["dot", "double-slash", "backslash", "control", "keys", "staging", "long"],
)
def test_storage_paths_that_would_fail_at_publish_fail_validation(path: str, message: str) -> None:
    """Issue 18, item 7: these validated, then failed only at publish after all the work (or, for
    a//b, published bundles the compliance page never showed)."""
    text = _sample_text().replace(
        'path: "diagnosis-risk/kernelshap/{model_version}/{inference_id}.json"', f'path: "{path}"'
    )
    assert f'path: "{path}"' in text
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "bad.yaml")
    assert any(p.field == "spec.storage.path" and message in p.message for p in caught.value.problems), (
        caught.value.problems
    )


def test_duplicate_keys_are_refused_at_their_line() -> None:
    """Issue 18, item 13: YAML keeps the last of two equal keys, so a reviewer read one DAG id and
    Airflow ran another."""
    text = _sample_text().replace(
        "  name: diagnosis-risk-kernelshap\n", "  name: diagnosis-risk-kernelshap\n  name: another-dag\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "twice.yaml")
    (problem,) = caught.value.problems
    assert problem.line == 6 and "duplicate key 'name'" in problem.message
    # equal items in a list, and equal keys in different mappings, are fine
    parse_config_text(_sample_text().replace("tags: [tabular, shap]", "tags: [tabular, tabular]"), "ok.yaml")


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("numSamples: 1022", "numSamples: true", "spec.explainerConfig.numSamples"),
        ("count: 8", "count: '8'", "spec.inference.count"),
        ('memory: "1Gi"', 'memory: "0.5"', "spec.resourceRequirements.memory"),
        ("bucket: xac-explanations", "bucket: xac..explanations", "spec.storage.bucket"),
        ("bucket: xac-explanations", "bucket: 10.0.0.1", "spec.storage.bucket"),
        ("bucket: xac-explanations", "bucket: xn--explanations", "spec.storage.bucket"),
    ],
    ids=["bool-as-int", "string-as-int", "half-a-byte", "double-dot-bucket", "ip-bucket", "reserved-bucket"],
)
def test_values_that_only_look_valid_are_refused(old: str, new: str, field: str) -> None:
    """Issue 18, item 13: these were accepted (True as a sample count, 0 bytes of memory, buckets S3
    refuses)."""
    text = _sample_text()
    assert old in text
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text.replace(old, new), "x.yaml")
    assert [p.field for p in caught.value.problems] == [field]
