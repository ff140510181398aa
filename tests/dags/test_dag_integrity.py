"""The DAG factory: every config becomes a well-formed DAG; a broken config hides nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from include.configuration import discover_config_files, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO_ROOT / "dags"
HEAVY = ("torch", "shap", "captum", "feast", "great_expectations", "pandas", "sklearn")


def dagbag(monkeypatch: pytest.MonkeyPatch, configs_dir: Path | None = None):
    from airflow.dag_processing.dagbag import DagBag

    if configs_dir is not None:
        monkeypatch.setenv("XAC_CONFIGS_DIR", str(configs_dir))
    return DagBag(dag_folder=str(DAGS_DIR))


def test_every_config_is_one_dag_without_import_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    bag = dagbag(monkeypatch)
    assert bag.import_errors == {}
    expected = {load_config(p).name for p in discover_config_files()}
    assert set(bag.dag_ids) == expected


def test_dags_carry_docs_tags_owner_retries_and_params(monkeypatch: pytest.MonkeyPatch) -> None:
    bag = dagbag(monkeypatch)
    for dag_id in bag.dag_ids:
        dag = bag.dags[dag_id]
        assert dag.doc_md and dag_id in dag.doc_md
        assert "explainability" in dag.tags
        assert [t.task_id for t in dag.topological_sort()] == [
            "load_config",
            "provenance",
            "plan",
            "shards",
            "explain",
            "join_shards",
            "meter_cost",
            "fidelity_gate",
            "publish_bundle",
        ]
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow"
        assert dag.get_task("explain").retries >= 1
        assert set(dag.params.keys()) == {
            "model_version",
            "inference_ids",
            "sample_budget",
            "dry_run_cost_only",
        }
        assert dag.params.get_param("dry_run_cost_only").schema["type"] == "boolean"
        assert dag.params.get_param("sample_budget").schema["type"] == ["null", "integer"]


def test_broken_config_becomes_a_failing_dag_and_hides_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for path in discover_config_files():
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "zz-broken.yaml").write_text("apiVersion: ai.apexlogic.com/v1alpha1\nkind: [\n")
    seed = (tmp_path / "image-classifier-shap-explainer.yaml").read_text()
    (tmp_path / "copy-of-seed.yaml").write_text(seed)  # same metadata.name twice
    bag = dagbag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert {load_config(p).name for p in discover_config_files()} <= set(bag.dag_ids)
    broken = bag.dags["xac-invalid-zz-broken"]
    assert re.search(r"zz-broken.yaml:[23]: \(yaml\): malformed YAML", broken.doc_md)
    assert "invalid-config" in broken.tags
    duplicate = [d for d in bag.dag_ids if d.startswith("xac-invalid-")]
    assert len(duplicate) == 2


def test_dag_file_imports_nothing_heavy() -> None:
    code = (
        "import sys, json, runpy; runpy.run_path(sys.argv[1]);"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(DAGS_DIR / "explainer_dags.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_product_imports_nothing_from_the_samples() -> None:
    """Samples are examples: include/, dags/ and plugins/ never import examples/ (the samples use the
    product's public mechanisms; `xac samples prepare` launches their set-up by name)."""
    import ast

    offenders = []
    for folder in ("include", "dags", "plugins"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                offenders += [
                    f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                    for n in names
                    if n.split(".")[0] == "examples"
                ]
    assert offenders == []


def test_a_config_airflow_refuses_becomes_a_failing_dag_and_hides_no_other(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 18, item 3: build_all caught only its own error types, so one DAG Airflow refused (a tag
    over 100 characters, a bad schedule) made the DAG processor drop every DAG of the file."""
    import importlib.util

    for path in discover_config_files():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setenv("XAC_CONFIGS_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("explainer_dags_under_test", DAGS_DIR / "explainer_dags.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = module.build_dag

    def refuse_one(loaded):  # what Airflow raises for a config our validation let through
        if loaded.name == "multimodal-digits-ig":
            raise ValueError("tag too long for the DAG's serialisation")
        return real(loaded)

    monkeypatch.setattr(module, "build_dag", refuse_one)
    dags = module.build_all(tmp_path)
    assert "xac-invalid-multimodal-digits-ig" in dags
    assert (
        "Airflow cannot build its DAG: ValueError: tag too long"
        in dags["xac-invalid-multimodal-digits-ig"].doc_md
    )
    others = {load_config(p).name for p in discover_config_files()} - {"multimodal-digits-ig"}
    assert others <= set(dags)


def test_invalid_configs_never_share_a_dag_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 18, item 8: broken.yaml and broken.yml, or a valid config named xac-invalid-..., made one
    error disappear silently."""
    (tmp_path / "broken.yaml").write_text("kind: [\n")
    (tmp_path / "broken.yml").write_text("apiVersion: 1\n")
    seed = (REPO_ROOT / "include/configs/explainers/diagnosis-risk-kernelshap.yaml").read_text()
    (tmp_path / "impostor.yaml").write_text(
        seed.replace("name: diagnosis-risk-kernelshap", "name: xac-invalid-broken")
    )
    bag = dagbag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    invalid = sorted(d for d in bag.dag_ids if d.startswith("xac-invalid-"))
    assert len(invalid) == 3, invalid
    assert "xac-invalid-broken" in invalid and "xac-invalid-impostor" in invalid
    impostor = bag.dags["xac-invalid-impostor"].doc_md
    assert "reserved for the DAGs of invalid configs" in impostor
