"""Test-session environment: generated state in a temporary XAC_HOME, Airflow pointed at it.

`make test` (scripts/run_tests.sh) already exports a fresh XAC_HOME; running pytest directly
gets one here. Nothing a test does touches the developer's `.xac/`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

if "XAC_HOME" not in os.environ or Path(os.environ["XAC_HOME"]).resolve() == (REPO_ROOT / ".xac").resolve():
    os.environ["XAC_HOME"] = tempfile.mkdtemp(prefix="xac-test-")
os.environ["AIRFLOW_HOME"] = str(Path(os.environ["XAC_HOME"]) / "airflow")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault(
    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
    '[{"name": "dags-folder", "kwargs": {},'
    ' "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle"}]',
)


def _postgres_metadata_db() -> str | None:
    """A fresh PostgreSQL database for Airflow's metadata when a server answers on 127.0.0.1:5432.

    Set XAC_TEST_METADATA_DB=sqlite to force the embedded default (SQLite) instead.
    """
    if os.environ.get("XAC_TEST_METADATA_DB", "postgres") != "postgres":
        return None
    try:
        import psycopg2
    except ImportError:
        return None
    name = f"xac_test_{os.getpid()}"
    try:
        conn = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2
        )
    except Exception:
        return None
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name


if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ:
    _PG_DB = _postgres_metadata_db()
    if _PG_DB:
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = (
            f"postgresql+psycopg2://postgres@127.0.0.1:5432/{_PG_DB}"
        )
else:
    _PG_DB = None


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    if not _PG_DB:
        return
    try:
        from airflow import settings

        settings.dispose_orm()
    except Exception:
        pass
    import psycopg2

    try:
        conn = psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{_PG_DB}" WITH (FORCE)')
        conn.close()
    except Exception:
        pass


def pytest_report_header(config: object) -> str:
    backend = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite (embedded default)")
    return f"XAC_HOME={os.environ['XAC_HOME']}; Airflow metadata DB: {backend}"
