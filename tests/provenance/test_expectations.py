"""Expectation suites kept as data (examples/expectations/*.json, GX 1.x's own format, or YAML):
drafted by `xac expectations init`, checked against the feature service before any data is read,
run by real Great Expectations on a real Feast repository."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.feature_repo.data import apply_feature_repo, prepare_feature_data
from include.cli.main import main as xac
from include.provenance.expectations import SuiteError, all_suites, declared_ranges
from include.provenance.stage import run_provenance

TABULAR = "diagnosis_risk_tabular"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("xac_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XAC_HOME", str(folder))
        prepare_feature_data()
        apply_feature_repo()
        yield folder


@pytest.fixture
def suites(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty suites folder searched before the samples' (XAC_EXPECTATIONS_DIR)."""
    monkeypatch.setenv("XAC_HOME", str(home))
    folder = tmp_path / "expectations"
    folder.mkdir()
    monkeypatch.setenv("XAC_EXPECTATIONS_DIR", str(folder))
    return folder


def _run(out: Path):
    return run_provenance(
        feature_service=TABULAR,
        out_dir=out,
        inference_ids=None,
        inference_count=5,
        background_strategy="random_subset",
        background_size=30,
        seed=3,
        salt="s",
    )


def test_the_sample_suites_are_files_and_declare_the_ranges(home: Path) -> None:
    names = {suite.name for suite in all_suites()}
    assert {TABULAR, "multimodal_image_classifier_v3"} <= names
    ranges = declared_ranges(all_suites())
    assert ranges["mean_radius"] == (0.0, 50.0) and ranges["mean_texture"] == (0.0, 128.0)
    assert ranges["scan_noise"] == (-6.0, 6.0) and ranges["px_r3c4"] == (0.0, 16.0)


def test_a_drafted_suite_validates_the_data_it_was_drafted_from(suites: Path, tmp_path: Path) -> None:
    assert xac(["expectations", "init", "--feature-service", TABULAR]) == 0
    draft = json.loads((suites / f"{TABULAR}.json").read_text())
    between = {
        e["kwargs"]["column"]: e["kwargs"]
        for e in draft["expectations"]
        if e["type"].endswith("_be_between") and "column" in e["kwargs"]
    }
    assert between["mean_radius"]["min_value"] == 0.0 and 28 < between["mean_radius"]["max_value"] < 60
    assert any(e["type"] == "expect_column_max_to_be_between" for e in draft["expectations"])  # freshness
    assert xac(["expectations", "init", "--feature-service", TABULAR]) == 1  # never overwritten silently
    result = _run(tmp_path / "run")
    assert result.passed, result.summary
    assert xac(["expectations", "check", "--feature-service", TABULAR]) == 0


def test_a_yaml_list_suite_is_used_and_can_fail_the_run(suites: Path, tmp_path: Path) -> None:
    (suites / f"{TABULAR}.yaml").write_text(
        "- type: expect_column_values_to_be_between\n"
        "  kwargs: {column: mean_radius, min_value: 0, max_value: 10}\n"
        "  notes: deliberately too tight\n"
    )
    result = _run(tmp_path / "run")
    assert not result.passed
    assert "expect_column_values_to_be_between column=mean_radius" in result.summary


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"name": "diagnosis_risk_tabular", "expectations": [', ".json", ":1: not valid JSON"),
        (
            '{"expectations": [{"type": "expect_the_moon", "kwargs": {}}]}',
            ".json",
            "expectations[0].type: 'expect_the_moon' is not a Great Expectations 1.x expectation",
        ),
        (
            '{"expectations": [{"type": "expect_column_values_to_be_between", '
            '"kwargs": {"column": "mean_radius", "min_valu": 1}}]}',
            ".json",
            "expectations[0].kwargs: invalid arguments for expect_column_values_to_be_between",
        ),
        (
            '{"expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "shoe_size"}}]}',
            ".json",
            "expectations[0].kwargs.column: expect_column_to_exist on column 'shoe_size', which",
        ),
        (
            '{"name": "another_service", "expectations": '
            '[{"type": "expect_column_to_exist", "kwargs": {"column": "x"}}]}',
            ".json",
            "name: 'another_service'",
        ),
        ("expectations: []\n", ".yaml", "expectations: expected a non-empty list"),
    ],
    ids=["malformed", "unknown-type", "bad-kwargs", "unknown-column", "wrong-name", "empty"],
)
def test_bad_suites_are_refused_naming_file_and_field_before_any_data(
    content: str, suffix: str, message: str, suites: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suites / f"{TABULAR}{suffix}"
    path.write_text(content)
    with pytest.raises(SuiteError) as caught:
        _run(tmp_path / "run")
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing retrieved
    capsys.readouterr()
    assert xac(["expectations", "check", "--feature-service", TABULAR]) == 1
    assert message in capsys.readouterr().err


def test_a_feature_service_without_a_suite_says_how_to_draft_one(suites: Path, home: Path) -> None:
    from include.provenance.expectations import load_suite_file

    with pytest.raises(SuiteError, match="xac expectations init --feature-service churn_features"):
        load_suite_file("churn_features")
