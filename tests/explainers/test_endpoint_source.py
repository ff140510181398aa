"""Models behind an Open Inference Protocol endpoint (``oip:URL``): batching, the concurrency cap,
retries and clear failures, against a real HTTP server on 127.0.0.1 that injects faults
(tests/explainers/v2_server.py). The same model in-process and behind the endpoint must give the
same attributions; against a real MLServer that is checked in test_mlserver.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.cli.main import main as xac
from tests.explainers.v2_server import V2Server

COLUMNS = ["age", "bmi", "glucose", "pressure", "insulin"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    """A scikit-learn classifier, also saved with skops for the in-process run."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    x = pd.DataFrame(rng.normal(size=(300, 5)), columns=COLUMNS)
    y = (x["age"] + 0.5 * x["bmi"] - x["glucose"] * x["pressure"] > 0).astype(int)
    model = LogisticRegression().fit(x.to_numpy(), y)
    path = tmp_path_factory.mktemp("model") / "clf.skops"
    sio.dump(model, path)
    return model, f"skops:{path}"


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("rows") / "rows.parquet"
    pd.DataFrame(rng.normal(size=(8, 5)), columns=COLUMNS).to_parquet(path, index=False)
    return path


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAC_OIP_RETRIES", "3")
    monkeypatch.setenv("XAC_OIP_TIMEOUT", "2")


def _run(model: str, rows: Path, out: Path, method: str = "KernelSHAP", *extra: str) -> int:
    return xac(
        [
            "explain",
            "--model",
            model,
            "--data",
            str(rows),
            "--method",
            method,
            "--out",
            str(out),
            "--seed",
            "11",
            *extra,
        ]
    )


def _attributions(out: Path) -> np.ndarray:
    docs = [json.loads(p.read_text()) for p in sorted((out / "explanations").glob("*.json"))]
    return np.array([[d["attributions"]["features"][c] for c in COLUMNS] for d in docs])


@pytest.mark.parametrize("method", ["KernelSHAP", "LIME"])
def test_the_endpoint_gives_the_in_process_attributions_in_few_batched_requests(
    method: str, classifier: tuple, rows: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, local = classifier
    monkeypatch.setenv("XAC_OIP_BATCH_ROWS", "2048")
    monkeypatch.setenv("XAC_OIP_CONCURRENCY", "2")
    assert _run(local, rows, tmp_path / "local", method) == 0
    with V2Server("risk", model.predict_proba) as server:
        assert _run(f"oip:{server.url}", rows, tmp_path / "remote", method) == 0
        assert server.max_concurrent <= 2
        # KernelSHAP: 8 rows x 500 coalitions x background rows, in requests of up to 2,048 rows
        assert server.rows / server.infer_requests > 200, (server.rows, server.infer_requests)
    np.testing.assert_allclose(
        _attributions(tmp_path / "remote"), _attributions(tmp_path / "local"), atol=1e-6, rtol=0
    )
    doc = json.loads(next((tmp_path / "remote" / "explanations").glob("*.json")).read_text())
    assert doc["model"]["source"]["source"] == "oip" and doc["model"]["source"]["uri"] == server.url
    assert doc["model"]["source"]["details"]["output"] == "(server default)"


@pytest.mark.parametrize(
    "faults",
    [
        [("status", 500)] * 3,
        [("retry-after", 1)],
        [("drop", 0)],
        [("slow", 3)],  # past the 2 s read timeout once, then answered
        [("status", 503), ("drop", 0), ("status", 502)],
    ],
    ids=["500-burst", "429-retry-after", "dropped", "slow-once", "mixed"],
)
def test_transient_faults_are_retried(
    faults: list, classifier: tuple, rows: Path, tmp_path: Path, fast_retries: None
) -> None:
    model, _ = classifier
    with V2Server("risk", model.predict_proba) as server:
        server.faults.extend(faults)
        assert _run(f"oip:{server.url}", rows, tmp_path / "out", "LIME") == 0
        assert not server.faults  # every fault was met, and survived


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ([("status", 500)] * 10, "answered HTTP 500"),
        ([("slow", 3)] * 10, "timed out"),
        ([("drop", 0)] * 10, "failed after 3 retries"),
        ([("garbage", 0)], "not JSON"),
    ],
    ids=["persistent-500", "always-slow", "always-dropped", "not-v2"],
)
def test_persistent_faults_fail_naming_the_endpoint_and_write_nothing(
    faults: list,
    expected: str,
    classifier: tuple,
    rows: Path,
    tmp_path: Path,
    fast_retries: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, _ = classifier
    with V2Server("risk", model.predict_proba) as server:
        server.faults.extend(faults)
        capsys.readouterr()
        assert _run(f"oip:{server.url}", rows, tmp_path / "out", "LIME") == 3
        err = capsys.readouterr().err
    assert server.url in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_declared_inputs_are_checked_before_any_work(
    classifier: tuple, rows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = classifier
    wrong = {
        "name": "risk",
        "inputs": [{"name": c, "datatype": "FP64", "shape": [-1, 1]} for c in reversed(COLUMNS)],
    }
    with V2Server("risk", model.predict_proba, metadata=wrong) as server:
        capsys.readouterr()
        assert _run(f"oip:{server.url}", rows, tmp_path / "out") == 1
        assert server.infer_requests == 0
    err = capsys.readouterr().err
    assert "model inputs (5): insulin, pressure, glucose, bmi, age" in err
    assert "feature columns (5): age, bmi, glucose, pressure, insulin" in err
    narrow = {"name": "risk", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []}
    with V2Server("risk", model.predict_proba, metadata=narrow) as server:
        assert _run(f"oip:{server.url}", rows, tmp_path / "out") == 1
        assert server.infer_requests == 0
    assert "takes 4 input features, the data has 5" in capsys.readouterr().err
    declared = {
        "name": "risk",
        "inputs": [],
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
    }
    with V2Server("risk", model.predict_proba, metadata=declared) as server:
        assert (
            _run(f"oip:{server.url}", rows, tmp_path / "out", "KernelSHAP", "--endpoint-output", "proba") == 1
        )
    assert "no output 'proba'; the model declares predict" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unreachable_or_malformed_endpoints_are_clear_errors(
    rows: Path, tmp_path: Path, fast_retries: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v2/models/risk"
    capsys.readouterr()
    assert _run(f"oip:{url}", rows, tmp_path / "out") == 3
    assert f"inference endpoint {url} is not usable" in capsys.readouterr().err
    assert _run("oip:http://127.0.0.1:1/predict", rows, tmp_path / "out") == 1
    assert "expected the model's V2 URL" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_headers_reach_the_server_and_secrets_stay_off_the_command_line(
    classifier: tuple, rows: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.explainers.errors import ModelLoadError
    from include.explainers.sources import LoadOptions
    from include.explainers.sources.oip import _headers

    monkeypatch.setenv("RISK_TOKEN", "s3cret")
    headers = _headers(LoadOptions(headers=("Authorization: env:RISK_TOKEN", "X-Team: clinical")))
    assert headers["Authorization"] == "s3cret" and headers["X-Team"] == "clinical"
    with pytest.raises(ModelLoadError, match="MISSING_TOKEN is not set"):
        _headers(LoadOptions(headers=("Authorization: env:MISSING_TOKEN",)))


def _catalogue(tmp_path: Path, source: str) -> Path:
    catalogue = tmp_path / "models.yaml"
    catalogue.write_text(
        f"models:\n  risk-served:\n    source: {source}\n    defaultVersion: '1'\n"
        "    featureService: risk_features\n    entity: patient\n"
    )
    return catalogue


def test_a_configs_inference_service_ref_names_the_endpoint(
    classifier: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's spec.integration.inferenceServiceRef (name, namespace) resolves to the KServe V2 URL
    of a catalogue model declared as an endpoint without a URI (the URL template points at loopback)."""
    from include.configuration import load_config
    from include.explainers.sources.oip import KSERVE_URL_TEMPLATE, inference_service_url
    from include.orchestration.explain_job import run_explain_job

    assert (
        KSERVE_URL_TEMPLATE.format(name="risk", namespace="ai")
        == "http://risk.ai.svc.cluster.local/v2/models/risk"
    )
    assert inference_service_url("risk", "ai") == "http://risk.ai.svc.cluster.local/v2/models/risk"
    model, _ = classifier
    monkeypatch.setenv("XAC_MODEL_CATALOGUE", str(_catalogue(tmp_path, "{type: oip, output: predict_proba}")))
    config = tmp_path / "risk.yaml"
    config.write_text(
        "apiVersion: ai.apexlogic.com/v1alpha1\nkind: ExplainerConfiguration\n"
        "metadata: {name: risk-served-lime, namespace: ai}\n"
        "spec:\n  modelName: risk-served\n  explainerType: LIME\n"
        "  explainerConfig: {method: LIME, seed: 2}\n"
        "  integration: {inferenceServiceRef: {name: risk}}\n"
        "  storage: {type: s3, bucket: risk-bundles, path: 'risk/{model_version}/{inference_id}.json'}\n"
        "  monitoring: {enabled: true, fidelityThreshold: 0.1}\n"
        "  owner: {team: t, email: t@example.com, costCenter: c1}\n"
        "  budget: {maxCostPerRun: 1, currency: USD}\n"
    )
    rng = np.random.default_rng(9)
    frame = pd.DataFrame(rng.normal(size=(12, 5)), columns=COLUMNS)
    frame.insert(0, "patient", [f"p{k}" for k in range(12)])
    frame.iloc[:4].to_parquet(tmp_path / "inference.parquet", index=False)
    frame.iloc[4:].to_parquet(tmp_path / "background.parquet", index=False)
    with V2Server("risk", model.predict_proba) as server:
        monkeypatch.setenv("XAC_KSERVE_URL_TEMPLATE", f"http://127.0.0.1:{server.port}/v2/models/{{name}}")
        run_explain_job(
            load_config(config),
            out_dir=tmp_path / "out",
            inference_uri=str(tmp_path / "inference.parquet"),
            background_uri=str(tmp_path / "background.parquet"),
        )
        assert server.infer_requests > 0
    doc = json.loads(next((tmp_path / "out" / "explanations").glob("*.json")).read_text())
    assert doc["model"]["source"]["uri"] == server.url and doc["model"]["name"] == "risk-served"
    assert doc["model"]["task"] == "binary"


def test_an_airflow_connection_gives_the_endpoint_its_url_and_credentials(
    classifier: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``source.connection``: the URL (host + /v2/models/<model>), a Bearer token (password) and
    extra.headers come from Airflow's JSON form of the connection, never from the command line,
    and the record names the URL only."""
    import torch

    from include.explainers.model_store import load_source_model

    model, _ = classifier
    catalogue = _catalogue(tmp_path, "{type: oip, connection: risk_endpoint, output: predict_proba}")
    monkeypatch.setenv("XAC_MODEL_CATALOGUE", str(catalogue))
    with V2Server("risk-served", model.predict_proba) as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_RISK_ENDPOINT",
            json.dumps(
                {
                    "conn_type": "http",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "schema": "http",
                    "password": "tok-123",
                    "extra": {"headers": {"X-Team": "clinical"}},
                }
            ),
        )
        loaded = load_source_model("risk-served", "1", COLUMNS)
        out = loaded.module(torch.zeros((3, 5), dtype=torch.float64))
        assert out.shape == (3, 2)
        assert server.headers["Authorization"] == "Bearer tok-123" and server.headers["X-Team"] == "clinical"
        assert loaded.origin.uri == server.url
        assert "tok-123" not in json.dumps(loaded.origin.to_json())
        # login + password: Basic auth; a full URL as the host is taken as it is
        monkeypatch.setenv(
            "AIRFLOW_CONN_RISK_ENDPOINT",
            json.dumps({"conn_type": "http", "host": server.url, "login": "svc", "password": "pw"}),
        )
        load_source_model("risk-served", "1", COLUMNS).module(torch.zeros((1, 5), dtype=torch.float64))
        assert server.headers["Authorization"] == "Basic c3ZjOnB3"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "is not available to this process: the explain task passes it as $AIRFLOW_CONN_RISK_ENDPOINT"),
        ("http://u:p@host", "not Airflow's JSON connection form"),
        ('{"conn_type": "http", "extra": {"headers": {"X": 1}}}', "extra.headers must map header names"),
        ('{"conn_type": "http", "host": "ftp://h/x"}', "host makes no V2 URL"),
        ('{"conn_type": "http"}', "names no host, and the source no uri"),
    ],
    ids=["missing", "uri-form", "bad-headers", "bad-host", "no-host"],
)
def test_a_bad_or_missing_endpoint_connection_is_a_clear_error(
    value: str | None, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.explainers.errors import ModelLoadError
    from include.explainers.model_store import load_source_model

    monkeypatch.setenv(
        "XAC_MODEL_CATALOGUE", str(_catalogue(tmp_path, "{type: oip, connection: risk_endpoint}"))
    )
    if value is None:
        monkeypatch.delenv("AIRFLOW_CONN_RISK_ENDPOINT", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW_CONN_RISK_ENDPOINT", value)
    with pytest.raises(ModelLoadError) as caught:
        load_source_model("risk-served", "1", COLUMNS)
    assert expected in str(caught.value) and "risk_endpoint" in str(caught.value)


def test_only_an_endpoint_source_declares_a_connection() -> None:
    from include.explainers.sources import SourceDeclaration

    declared, problems = SourceDeclaration.parse({"type": "skops", "uri": "m.skops", "connection": "c"})
    assert declared is None and problems[0].field == "source.connection"
    declared, problems = SourceDeclaration.parse({"type": "oip", "connection": "bad id!"})
    assert declared is None and "Airflow connection id" in problems[0].message
    declared, problems = SourceDeclaration.parse({"type": "oip", "connection": "risk_endpoint"})
    assert declared is not None and not declared.from_inference_service and not problems
