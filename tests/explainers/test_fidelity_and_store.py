"""Fidelity scores, the parameter checks and the model store (training, loading, errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from include.explainers import known_methods, known_models, normalise_params
from include.explainers.errors import (
    MethodNotApplicableError,
    ModelLoadError,
    ModelNotFoundError,
    ParameterError,
    UnknownMethodError,
)
from include.explainers.fidelity import additivity_score, spearman


def test_additivity_score() -> None:
    scores = additivity_score(
        np.array([0.5, 0.45, 2.0, 0.0]), np.array([1.0, 1.0, 1.0, 0.3]), np.zeros(4) + 0.5
    )
    np.testing.assert_allclose(scores, [1.0, 0.9, 0.0, 1.0 - 0.2 / 0.2])
    # A zero output change and zero attributions: complete, not a division by zero.
    assert additivity_score(np.array([0.0]), np.array([0.7]), np.array([0.7]))[0] == 1.0


def test_spearman() -> None:
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == 1.0
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == 0.0  # clipped at 0
    assert spearman(np.zeros(4), np.zeros(4)) == 1.0
    assert spearman(np.zeros(4), np.arange(4.0)) == 0.0
    assert 0.0 < spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])) < 1.0


def test_parameter_validation() -> None:
    assert known_methods()[:2] == ["KernelSHAP", "IntegratedGradients"]
    assert {
        "LIME",
        "TreeSHAP",
        "Saliency",
        "GradientSHAP",
        "DeepSHAP",
        "Occlusion",
        "AttentionRollout",
    } <= set(known_methods())
    assert known_models() == [
        "diagnosis-risk-gbt",
        "diagnosis-risk-tabular",
        "diagnosis-risk-transformer",
        "diagnosis-risk-xgb",
        "multimodal-image-classifier-v3",
    ]
    defaults = normalise_params("KernelSHAP", {})
    assert defaults == {
        "numSamples": 500,
        "backgroundDataStrategy": "random_subset",
        "backgroundDataSubsetSize": 100,
        "imageSuperpixel": 2,
    }
    with pytest.raises(ParameterError, match="numSample"):
        normalise_params("KernelSHAP", {"numSample": 10})
    with pytest.raises(ParameterError, match="integer"):
        normalise_params("KernelSHAP", {"numSamples": True})
    with pytest.raises(ParameterError, match="one of"):
        normalise_params("KernelSHAP", {"backgroundDataStrategy": "median"})
    with pytest.raises(MethodNotApplicableError, match="image"):
        normalise_params("KernelSHAP", {"imageSuperpixel": 2}, has_image=False)
    with pytest.raises(ParameterError, match="modality"):
        normalise_params("IntegratedGradients", {"baseline": {"audio": "zeros"}}, modalities=["image"])
    with pytest.raises(UnknownMethodError, match="NoSuchMethod"):
        normalise_params("NoSuchMethod", {})


def test_sample_models_are_trained_and_recorded(sample_models: dict) -> None:
    from include.explainers.model_store import is_source_model, load_model, sha256_file

    for name in (n for n in known_models() if not is_source_model(n)):  # sources: test_model_sources.py
        loaded = load_model(name, "1")
        meta = json.loads((loaded.path.parent / "model.json").read_text())
        assert meta["sha256"] == sha256_file(loaded.path) == loaded.sha256
        assert meta["metrics"]["heldout_accuracy"] >= 0.9, meta["metrics"]
        assert meta["torch_version"] and meta["created_at"]
    tab = load_model("diagnosis-risk-tabular", "1")
    assert tab.feature_columns[0] == "mean_radius" and len(tab.feature_columns) == 10
    assert tab.task == "binary" and tab.class_names == ["benign", "malignant"]
    mm = load_model("multimodal-image-classifier-v3", "1")
    assert [m.name for m in mm.modalities] == ["image", "tabular"]
    assert mm.modalities[0].shape == (1, 8, 8) and mm.modalities[0].columns[9] == "px_r1c1"
    assert mm.modalities[1].columns == ("ink_mean", "ink_coverage", "vertical_balance", "scan_noise")


def test_training_is_idempotent(sample_models: dict) -> None:
    from examples.models import train_sample_models

    before = {name: path.stat().st_mtime_ns for name, path in sample_models.items()}
    again = train_sample_models()
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == before


def test_load_errors(sample_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from include.explainers.model_store import load_model

    source = sample_models["diagnosis-risk-tabular"].parent
    monkeypatch.setenv("XAC_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as missing:
        load_model("diagnosis-risk-tabular", "7")
    assert "diagnosis-risk-tabular" in str(missing.value) and "'7'" in str(missing.value)
    assert str(tmp_path / "models" / "diagnosis-risk-tabular" / "7" / "model.pt") in str(missing.value)

    tampered = tmp_path / "models" / "diagnosis-risk-tabular" / "2"
    shutil.copytree(source, tampered)
    with (tampered / "model.pt").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model("diagnosis-risk-tabular", "2")

    garbage = tmp_path / "models" / "diagnosis-risk-tabular" / "3"
    shutil.copytree(source, garbage)
    (garbage / "model.pt").write_bytes(b"not a torch file")
    meta = json.loads((garbage / "model.json").read_text())
    meta["sha256"] = __import__("hashlib").sha256(b"not a torch file").hexdigest()
    (garbage / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model("diagnosis-risk-tabular", "3")


def test_a_model_version_cannot_leave_the_model_store(sample_models: dict) -> None:
    """`../other-model/1` from a trigger form must never explain another model (issue 18, item 5)."""
    from include.explainers.errors import ModelLoadError
    from include.explainers.model_store import load_model, model_dir
    from include.orchestration.pipeline import RunParams

    assert load_model("diagnosis-risk-tabular", "1").version == "1"
    for version in ("../diagnosis-risk-gbt/1", "1/../../x", "..", ".hidden", "a" * 65, "1\n"):
        with pytest.raises(ModelLoadError, match="cannot name a model store folder"):
            model_dir("diagnosis-risk-tabular", version)
        with pytest.raises(ValueError, match="run parameter model_version"):
            RunParams.from_mapping({"model_version": version})
    assert RunParams.from_mapping({"model_version": "2.1-rc_3"}).model_version == "2.1-rc_3"
