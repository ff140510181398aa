"""The provenance stage against a real Feast repository (SQLite registry, Parquet sources) and real GX.

One feature repository is prepared and applied per module under a temporary ``XAC_HOME``;
tests that damage a source restore its bytes afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from examples.datasets import PIXEL_FEATURES, SCAN_FEATURES, TABULAR_FEATURES
from examples.feature_repo.data import apply_feature_repo, load_training_frame, prepare_feature_data
from include.provenance.feature_data import get_store, load_repo_config
from include.provenance.retrieval import UnknownEntityError, UnknownFeatureServiceError, select_background
from include.provenance.stage import entity_hash, git_state, run_provenance

TABULAR = "diagnosis_risk_tabular"
IMAGE = "multimodal_image_classifier_v3"
SALT = "test-salt"


@pytest.fixture(scope="module")
def feature_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A prepared and applied feature repository under a temporary XAC_HOME (one per module)."""
    home = tmp_path_factory.mktemp("xac_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XAC_HOME", str(home))
        paths = prepare_feature_data()
        apply_feature_repo()
        yield paths


@pytest.fixture
def sources(feature_repo: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """The source files; whatever a test does to them is undone byte for byte afterwards."""
    # Re-assert the module's XAC_HOME for this test (function-scoped, as the tests expect).
    monkeypatch.setenv("XAC_HOME", str(feature_repo["patient_measurements"].parents[3]))
    saved = {view: path.read_bytes() for view, path in feature_repo.items()}
    yield feature_repo
    for view, path in feature_repo.items():
        path.write_bytes(saved[view])


def _run(out: Path, feature_service: str = TABULAR, **overrides: object):
    args: dict[str, object] = {
        "feature_service": feature_service,
        "out_dir": out,
        "inference_ids": None,
        "inference_count": 5,
        "background_strategy": "random_subset",
        "background_size": 40,
        "seed": 11,
        "salt": SALT,
    }
    args.update(overrides)
    return run_provenance(**args)  # type: ignore[arg-type]


def test_feature_store_yaml_resolves_under_xac_home(sources: dict[str, Path]) -> None:
    config = load_repo_config()
    home = str(sources["patient_measurements"].parents[3])
    assert config.registry.registry_type == "sql"
    assert config.registry.path == f"sqlite:///{home}/data/feast/registry.db"
    assert config.online_store.path == f"{home}/data/feast/online_store.db"
    assert config.offline_store.type == "file"
    # Feast's own loader (what the `feast` CLI uses) expands ${XAC_HOME} from the environment.
    from feast.repo_config import load_repo_config as feast_load

    from include.provenance.feature_data import FEATURE_REPO_DIR, FEATURE_STORE_YAML

    assert feast_load(FEATURE_REPO_DIR, FEATURE_STORE_YAML).registry.path == config.registry.path
    for path in sources.values():
        assert path.is_relative_to(home)


def test_apply_is_idempotent_and_registers_metadata(sources: dict[str, Path]) -> None:
    store = get_store()
    before = store.get_feature_view("digit_scan").last_updated_timestamp
    apply_feature_repo()  # the second apply of the module must not fail nor change anything
    store = get_store()
    assert store.get_feature_view("digit_scan").last_updated_timestamp == before
    assert {s.name for s in store.list_feature_services()} == {TABULAR, IMAGE}
    assert {e.name for e in store.list_entities()} >= {"patient", "image"}
    for view in store.list_feature_views():
        assert view.owner and view.description and view.tags
        assert view.ttl == timedelta(days=30)
    service = store.get_feature_service(IMAGE)
    assert [p.name for p in service.feature_view_projections] == ["digit_pixels", "digit_scan"]
    assert "malignant" not in [f.name for f in store.get_feature_view("patient_measurements").features]


def test_prepare_keeps_existing_files_unless_forced(sources: dict[str, Path]) -> None:
    before = {view: path.read_bytes() for view, path in sources.items()}
    prepare_feature_data()
    assert {view: path.read_bytes() for view, path in sources.items()} == before
    prepare_feature_data(now=datetime(2030, 1, 1, tzinfo=UTC), force=True)
    assert sources["digit_scan"].read_bytes() != before["digit_scan"]


def test_training_frame_has_features_in_service_order_and_target(sources: dict[str, Path]) -> None:
    tabular = load_training_frame(TABULAR)
    assert list(tabular.columns) == ["patient_id", "event_timestamp", *TABULAR_FEATURES, "malignant"]
    assert len(tabular) == 569 and set(tabular["malignant"].unique()) == {0, 1}
    image = load_training_frame(IMAGE)
    assert list(image.columns) == ["image_id", "event_timestamp", *PIXEL_FEATURES, *SCAN_FEATURES, "digit"]
    assert len(image) == 1797 and image["digit"].nunique() == 10
    with pytest.raises(UnknownFeatureServiceError):
        load_training_frame("no_such_service")


def test_tabular_passes_with_most_recent_ids(sources: dict[str, Path], tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert result.passed, result.summary
    assert "passed" in result.summary

    source = pd.read_parquet(sources["patient_measurements"])
    newest = source.sort_values(["event_timestamp", "patient_id"], ascending=[False, True])
    assert result.inference_ids == list(newest["patient_id"][:5])

    inference = pd.read_parquet(result.inference_path)
    background = pd.read_parquet(result.background_path)
    expected_columns = ["patient_id", "event_timestamp", *TABULAR_FEATURES]
    assert list(inference.columns) == expected_columns and list(background.columns) == expected_columns
    assert list(inference["patient_id"]) == result.inference_ids
    assert len(background) == 40
    assert not set(background["patient_id"]) & set(result.inference_ids)
    # Point-in-time values are the source's values for those patients.
    by_id = source.set_index("patient_id")
    for _, row in inference.iterrows():
        assert row["mean_area"] == pytest.approx(by_id.loc[row["patient_id"], "mean_area"])

    provenance = json.loads(result.provenance_path.read_text())
    assert provenance["registry"]["type"] == "sql"
    assert provenance["registry"]["last_updated"]
    view = provenance["feature_views"][0]
    assert view["name"] == "patient_measurements" and view["ttl_seconds"] == 30 * 86400
    assert view["batch_source"]["timestamp_field"] == "event_timestamp"
    assert len(view["batch_source"]["sha256"]) == 64
    assert provenance["frames"]["inference"]["rows"] == 5
    assert provenance["frames"]["inference"]["columns"] == 12
    assert provenance["frames"]["background"]["rows"] == 40
    assert provenance["retrieval"]["feature_refs"][0] == "patient_measurements:mean_radius"
    assert set(provenance["feature_repo"]["git"]) == {"in_git_checkout", "commit", "dirty"}
    validation = json.loads(result.validation_path.read_text())
    assert validation["passed"] is True and set(validation["frames"]) == {"inference", "background"}


def test_image_passes_with_explicit_ids_and_all_background(sources: dict[str, Path], tmp_path: Path) -> None:
    ids = ["IMG10042", "IMG10007", "IMG11000"]
    result = _run(tmp_path, IMAGE, inference_ids=ids, background_strategy="all")
    assert result.passed, result.summary
    assert result.inference_ids == ids
    inference = pd.read_parquet(result.inference_path)
    assert list(inference.columns) == ["image_id", "event_timestamp", *PIXEL_FEATURES, *SCAN_FEATURES]
    assert list(inference["image_id"]) == ids  # requested order kept
    assert "digit" not in inference.columns
    background = pd.read_parquet(result.background_path)
    assert len(background) == 1797 - len(ids)
    provenance = json.loads(result.provenance_path.read_text())
    assert [v["name"] for v in provenance["feature_views"]] == ["digit_pixels", "digit_scan"]


def test_random_subset_is_reproducible_and_excludes_inference() -> None:
    universe = [f"E{i:03d}" for i in range(100)]
    first = select_background(universe, ["E001", "E002"], "random_subset", 10, seed=3)
    assert first == select_background(universe, ["E001", "E002"], "random_subset", 10, seed=3)
    assert first != select_background(universe, ["E001", "E002"], "random_subset", 10, seed=4)
    assert len(first) == 10 and not {"E001", "E002"} & set(first)
    assert len(select_background(universe, ["E001"], "kmeans", 10, seed=3)) == 99
    with pytest.raises(ValueError, match="strategy"):
        select_background(universe, [], "everything", 10, seed=3)


def test_injected_nulls_fail(sources: dict[str, Path], tmp_path: Path) -> None:
    ids = ["P100001", "P100002"]
    frame = pd.read_parquet(sources["patient_measurements"])
    frame.loc[frame["patient_id"].isin(ids), "mean_texture"] = np.nan
    frame.to_parquet(sources["patient_measurements"], index=False)

    result = _run(tmp_path, inference_ids=ids)
    assert not result.passed
    assert result.summary.splitlines() == [
        "[inference] expect_column_values_to_not_be_null column=mean_texture: "
        "observed 2 of 2 values unexpected (100.0%), e.g. [nan, nan]; expected no nulls"
    ]


def test_out_of_range_value_fails(sources: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_parquet(sources["patient_measurements"])
    frame.loc[frame["patient_id"] == "P100003", "mean_fractal_dimension"] = 1.5
    frame.to_parquet(sources["patient_measurements"], index=False)

    result = _run(tmp_path, inference_ids=["P100003", "P100004"])
    assert not result.passed
    lines = result.summary.splitlines()
    assert lines == [
        "[inference] expect_column_values_to_be_between column=mean_fractal_dimension: "
        "observed 1 of 2 values unexpected (50.0%), e.g. [1.5]; expected between 0.0 and 1.0"
    ]


def test_stale_timestamps_fail_freshness(sources: dict[str, Path], tmp_path: Path) -> None:
    prepare_feature_data(now=datetime.now(UTC) - timedelta(days=45), force=True)

    result = _run(tmp_path)
    assert not result.passed
    freshness = [line for line in result.summary.splitlines() if "expect_column_max_to_be_between" in line]
    assert len(freshness) == 2  # inference and background
    assert "column=patient_measurements__feature_age_seconds" in freshness[0]
    assert "expected between 0.0 and 2592000.0" in freshness[0]
    # Feast drops rows older than the ttl; they come back as nulls, and are reported too.
    assert "expect_column_values_to_not_be_null column=mean_radius" in result.summary


def test_missing_column_fails_without_raising(sources: dict[str, Path], tmp_path: Path) -> None:
    scan = pd.read_parquet(sources["digit_scan"]).drop(columns=["vertical_balance"])
    scan.to_parquet(sources["digit_scan"], index=False)

    result = _run(tmp_path, IMAGE)
    assert not result.passed
    assert "[inference] expect_column_to_exist column=vertical_balance" in result.summary
    assert "missing ['vertical_balance']" in result.summary
    inference = pd.read_parquet(result.inference_path)
    assert "vertical_balance" not in inference.columns and "scan_noise" in inference.columns
    provenance = json.loads(result.provenance_path.read_text())
    assert provenance["retrieval"]["missing_source_features"] == {"digit_scan": ["vertical_balance"]}


def test_source_digest_changes_with_one_byte(sources: dict[str, Path], tmp_path: Path) -> None:
    first = _run(tmp_path / "first")
    first_provenance = json.loads(first.provenance_path.read_text())
    again = _run(tmp_path / "again", previous=first_provenance)
    again_provenance = json.loads(again.provenance_path.read_text())
    digest = first_provenance["feature_views"][0]["batch_source"]["sha256"]
    assert again_provenance["feature_views"][0]["batch_source"]["sha256"] == digest
    assert again_provenance["feature_views"][0]["batch_source"]["digest_changed"] is False

    # Change one byte of the file's footer metadata (the writer's version string): the file
    # still reads the same, only the bytes differ.
    path = sources["patient_measurements"]
    data = bytearray(path.read_bytes())
    at = data.rindex(b"parquet-cpp-arrow version ") + len(b"parquet-cpp-arrow version ")
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    path.write_bytes(bytes(data))

    changed = _run(tmp_path / "changed", previous=first_provenance)
    assert changed.passed, changed.summary
    changed_provenance = json.loads(changed.provenance_path.read_text())
    record = changed_provenance["feature_views"][0]["batch_source"]
    assert record["sha256"] != digest and record["digest_changed"] is True
    assert changed_provenance["drift"]["changed_sources"] == ["patient_measurements"]


def test_raw_entity_ids_never_recorded(sources: dict[str, Path], tmp_path: Path) -> None:
    ids = ["P100010", "P100011", "P100012"]
    result = _run(tmp_path, inference_ids=ids, background_strategy="all")
    assert result.passed, result.summary
    provenance_text = result.provenance_path.read_text()
    validation_text = result.validation_path.read_text()
    every_id = pd.read_parquet(sources["patient_measurements"], columns=["patient_id"])["patient_id"]
    for entity_id in every_id:
        assert entity_id not in provenance_text
        assert entity_id not in validation_text
    provenance = json.loads(provenance_text)
    assert provenance["frames"]["inference"]["entity_hashes"] == [entity_hash(SALT, i) for i in ids]
    # A different salt gives different hashes (the salt is the HMAC key).
    assert entity_hash("other", ids[0]) != entity_hash(SALT, ids[0])


def test_unknown_ids_and_service_raise(sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnknownEntityError, match="NOPE-1") as caught:
        _run(tmp_path, inference_ids=["P100001", "NOPE-1"])
    assert isinstance(caught.value, ValueError) and caught.value.ids == ["NOPE-1"]
    with pytest.raises(UnknownFeatureServiceError, match="no_such_service"):
        _run(tmp_path, "no_such_service")
    with pytest.raises(ValueError, match="salt"):
        _run(tmp_path, salt="")


def test_git_state_outside_a_checkout(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"in_git_checkout": False, "commit": None, "dirty": None}
