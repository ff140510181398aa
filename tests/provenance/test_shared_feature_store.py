"""A feature store every worker shares: the samples' repository on PostgreSQL (SQL registry, the
PostgreSQL offline store with the sources as tables, PostgreSQL online store), on the machine's
PostgreSQL (127.0.0.1:5432). The provenance stage reads it exactly as the file repository: the same
inference and background sets at the same timestamp, the same validation; the record names the
tables instead of pinning file bytes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from examples.feature_repo.data import apply_feature_repo, prepare_feature_data
from include.provenance.stage import run_provenance

pytestmark = pytest.mark.integration
POSTGRES = os.environ.get("XAC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def _postgres_up() -> bool:
    import sqlalchemy as sa

    try:
        sa.create_engine(
            f"{POSTGRES.replace('postgresql://', 'postgresql+psycopg://')}/postgres"
        ).connect().close()
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    if not _postgres_up():
        pytest.skip(f"no PostgreSQL at {POSTGRES}")
    from examples.feature_repo.postgres import write_postgres_repo
    from include.provenance.feature_data import FEATURE_REPO_DIR

    home = tmp_path_factory.mktemp("xac_home")
    database = f"xac_features_{os.getpid()}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XAC_HOME", str(home))
        prepare_feature_data()
        apply_feature_repo()
        shared = write_postgres_repo(home / "feature_repo_postgres", f"{POSTGRES}/{database}")
        yield {"file": FEATURE_REPO_DIR, "postgres": shared}
    import sqlalchemy as sa

    admin = sa.create_engine(f"{POSTGRES.replace('postgresql://', 'postgresql+psycopg://')}/postgres")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.parametrize("service", ["diagnosis_risk_tabular", "multimodal_image_classifier_v3"])
def test_the_postgres_feature_store_gives_the_file_stores_sets(
    service: str, repos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = {}
    for kind, repo in repos.items():
        monkeypatch.setenv("XAC_FEATURE_REPO", str(repo))
        results[kind] = run_provenance(
            feature_service=service,
            out_dir=tmp_path / kind,
            inference_ids=None,
            inference_count=4,
            background_strategy="random_subset",
            background_size=20,
            seed=5,
            salt="s",
        )
    file, shared = results["file"], results["postgres"]
    assert shared.inference_ids == file.inference_ids
    for name in ("inference", "background"):
        ours = pd.read_parquet(tmp_path / "postgres" / f"{name}.parquet")
        theirs = pd.read_parquet(tmp_path / "file" / f"{name}.parquet")
        features = [c for c in theirs.columns if c not in ("event_timestamp",) and not c.endswith("_seconds")]
        pd.testing.assert_frame_equal(
            ours[features].reset_index(drop=True), theirs[features].reset_index(drop=True), check_dtype=False
        )
    record = json.loads((tmp_path / "postgres" / "provenance.json").read_text())
    assert record["validation"]["passed"] is True or record["validation"].get("success") is True
    sources = [v["batch_source"] for v in record["feature_views"]]
    assert all(s["type"] == "PostgreSQLSource" and s["sha256"] is None for s in sources)
    assert {s["path"] for s in sources} <= {"patient_measurements", "digit_pixels", "digit_scan"}
    assert record["registry"]["path"].startswith("postgresql+psycopg://")
