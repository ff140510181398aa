"""The `xac` command line as CI pipelines and auditors use it: exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TABULAR = REPO_ROOT / "include/configs/explainers/diagnosis-risk-kernelshap.yaml"
XAC = [sys.executable, "-m", "include.cli"]


def xac(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XAC, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def prepared() -> None:
    from examples.prepare import prepare_samples

    for _ in prepare_samples():
        pass


def test_usage_errors_exit_2() -> None:
    assert xac().returncode == 2
    assert xac("explain", "--config", str(TABULAR), "--out", "x", "--shard", "3/2").returncode == 2


def test_console_script_is_installed() -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "xac"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "config" in out.stdout


@pytest.fixture(scope="module")
def checked(prepared: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `xac provenance check` run, shared: each costs the Feast and GX imports (~10 s)."""
    out = tmp_path_factory.mktemp("checked")
    result = xac("provenance", "check", "--config", str(TABULAR), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    return out


def test_provenance_check_passes_on_the_sample_data(checked: Path) -> None:
    assert (checked / "provenance.json").is_file() and (checked / "validation.json").is_file()


def test_provenance_check_fails_with_exit_1_on_bad_data(prepared: None, tmp_path: Path) -> None:
    import pandas as pd

    from examples.feature_repo.data import prepare_feature_data

    source = prepare_feature_data()["patient_measurements"]
    original = source.read_bytes()
    frame = pd.read_parquet(source)
    victim = str(frame["patient_id"].iloc[0])
    frame.loc[frame["patient_id"] == victim, "mean_texture"] = float("nan")
    frame.to_parquet(source, index=False)
    try:
        result = xac(
            "provenance", "check", "--config", str(TABULAR), "--out", str(tmp_path), "--inference-ids", victim
        )
    finally:
        source.write_bytes(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout and "mean_texture" in result.stdout


def test_explain_refuses_a_missing_model_version_with_exit_3(prepared: None, tmp_path: Path) -> None:
    result = xac("explain", "--config", str(TABULAR), "--out", str(tmp_path / "out"), "--model-version", "99")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "diagnosis-risk-tabular" in result.stderr and "99" in result.stderr
    assert not (tmp_path / "out").exists()


def test_explain_refuses_a_frame_that_provenance_did_not_validate(checked: Path, tmp_path: Path) -> None:
    result = xac(
        "explain",
        "--config",
        str(TABULAR),
        "--out",
        str(tmp_path / "out"),
        "--inference",
        str(checked / "inference.parquet"),
        "--background",
        str(checked / "background.parquet"),
        "--inference-sha256",
        "0" * 64,
    )
    assert result.returncode == 1
    assert "refusing to explain data that was not validated" in result.stderr
    assert not (tmp_path / "out").exists()


def test_explain_writes_explanations_for_validated_frames(checked: Path, tmp_path: Path) -> None:
    import json

    digest = json.loads((checked / "provenance.json").read_text())["frames"]["inference"]["sha256"]
    result = xac(
        "explain",
        "--config",
        str(TABULAR),
        "--out",
        str(tmp_path / "out"),
        "--inference",
        str(checked / "inference.parquet"),
        "--background",
        str(checked / "background.parquet"),
        "--inference-sha256",
        digest,
        "--shard",
        "0/2",
    )
    assert result.returncode == 0, result.stderr
    explained = sorted(p.stem for p in (tmp_path / "out" / "explanations").iterdir())
    assert len(explained) == 4  # shard 0 of 2 of the 8 most recent patients


def test_bundle_verify_of_a_missing_folder_fails(tmp_path: Path, prepared: None) -> None:
    result = xac("bundle", "verify", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "NOT verified" in result.stdout


def _config_with(tmp_path: Path, name: str, model: str, explainer: str) -> Path:
    """The tabular sample config with another model and explainer block (a user's new config)."""
    import yaml

    config = yaml.safe_load(TABULAR.read_text())
    config["metadata"]["name"] = name
    config["spec"]["modelName"] = model
    config["spec"].pop("modelVersion", None)
    config["spec"]["explainerType"], config["spec"]["explainerConfig"] = yaml.safe_load(explainer)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("model", "explainer", "metric"),
    [
        ("diagnosis-risk-gbt", "[SHAP, {method: TreeSHAP, seed: 3}]", "local_accuracy"),
        ("diagnosis-risk-transformer", "[Attention, {method: AttentionRollout}]", "gradient_agreement"),
        ("diagnosis-risk-tabular", "[LIME, {method: LIME, numSamples: 800}]", "local_r2"),
        ("diagnosis-risk-tabular", "[Captum, {method: Saliency, abs: true}]", "min(infidelity_score"),
    ],
)
def test_new_methods_run_from_a_config(
    checked: Path, tmp_path: Path, model: str, explainer: str, metric: str
) -> None:
    """Each method is selectable from an ExplainerConfiguration: validate it, explain the validated frames."""
    import json

    path = _config_with(tmp_path, "new-method", model, explainer)
    validated = xac("config", "validate", str(path))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    out = tmp_path / "out"
    result = xac(
        "explain",
        "--config",
        str(path),
        "--out",
        str(out),
        "--inference",
        str(checked / "inference.parquet"),
        "--background",
        str(checked / "background.parquet"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["fidelity"]["metric"].startswith(metric) and summary["counts"]["explanations"] > 0


def test_a_method_that_does_not_fit_the_model_fails_before_any_output(checked: Path, tmp_path: Path) -> None:
    path = _config_with(tmp_path, "treeshap-on-mlp", "diagnosis-risk-tabular", "[SHAP, {method: TreeSHAP}]")
    assert xac("config", "validate", str(path)).returncode == 0  # the config is well-formed ...
    out = tmp_path / "out"
    result = xac(
        "explain",
        "--config",
        str(path),
        "--out",
        str(out),
        "--inference",
        str(checked / "inference.parquet"),
        "--background",
        str(checked / "background.parquet"),
    )
    assert result.returncode == 1 and "TreeSHAP" in result.stderr  # ... but the method cannot explain an MLP
    assert not out.exists()
