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
