"""Models behind the Open Inference Protocol's gRPC service (``oip:grpc://…``): binary tensors,
retries and clear failures, against a real gRPC server on 127.0.0.1 that injects faults
(tests/explainers/v2_grpc_server.py); against a real MLServer in test_mlserver.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.explainers.test_endpoint_source import COLUMNS, _attributions, _run, classifier, fast_retries, rows
from tests.explainers.v2_grpc_server import V2GrpcServer

__all__ = ["classifier", "fast_retries", "rows"]  # fixtures shared with the REST tests

DECLARED = [("features", "FP64", [-1, len(COLUMNS)])]


@pytest.mark.parametrize("raw_outputs", [True, False], ids=["raw-outputs", "typed-contents"])
def test_grpc_gives_the_in_process_attributions_and_sends_binary_rows(
    raw_outputs: bool, classifier: tuple, rows: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, local = classifier
    monkeypatch.setenv("ENDPOINT_TOKEN", "s3cret")
    assert _run(local, rows, tmp_path / "local") == 0
    with V2GrpcServer("risk", model.predict_proba, DECLARED, raw_outputs=raw_outputs) as server:
        header = ["--header", "Authorization: env:ENDPOINT_TOKEN"]
        assert _run(f"oip:{server.url}", rows, tmp_path / "remote", "KernelSHAP", *header) == 0
        # batched: 8 rows x 30 coalitions x background rows, in requests of up to 16,384 rows
        assert server.rows / server.infer_requests > 200, (server.rows, server.infer_requests)
        assert server.headers["authorization"] == "s3cret"
    np.testing.assert_allclose(
        _attributions(tmp_path / "remote"), _attributions(tmp_path / "local"), atol=1e-6
    )
    doc = json.loads(next((tmp_path / "remote" / "explanations").glob("*.json")).read_text())
    source = doc["model"]["source"]
    assert source["source"] == "oip" and source["uri"] == server.url
    assert "(gRPC)" in json.dumps(source), source


@pytest.mark.parametrize(
    "faults",
    [[("code", "UNAVAILABLE")] * 2, [("code", "RESOURCE_EXHAUSTED")], [("slow", 3)]],
    ids=["unavailable-burst", "resource-exhausted", "slow-once"],
)
def test_transient_grpc_faults_are_retried(
    faults: list, classifier: tuple, rows: Path, tmp_path: Path, fast_retries: None
) -> None:
    model, _ = classifier
    with V2GrpcServer("risk", model.predict_proba, DECLARED) as server:
        server.faults.extend(faults)
        assert _run(f"oip:{server.url}", rows, tmp_path / "out", "LIME") == 0
        assert not server.faults


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ([("code", "INTERNAL")] * 10, "gRPC INTERNAL"),
        ([("slow", 3)] * 10, "gRPC DEADLINE_EXCEEDED"),
        ([("code", "INVALID_ARGUMENT")], "gRPC INVALID_ARGUMENT"),
        ([("shape", 0)], "output shape"),
    ],
    ids=["persistent-internal", "always-slow", "refused-at-once", "wrong-rows"],
)
def test_persistent_grpc_faults_fail_naming_the_endpoint_and_write_nothing(
    faults: list,
    expected: str,
    classifier: tuple,
    rows: Path,
    tmp_path: Path,
    fast_retries: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, _ = classifier
    with V2GrpcServer("risk", model.predict_proba, DECLARED) as server:
        server.faults.extend(faults)
        capsys.readouterr()
        assert _run(f"oip:{server.url}", rows, tmp_path / "out", "LIME") == 3
        err = capsys.readouterr().err
        if expected == "gRPC INVALID_ARGUMENT":
            assert server.infer_requests == 1  # not retried: the server refused the request itself
    assert server.url in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_grpc_metadata_is_checked_and_unknown_models_or_ports_are_clear_errors(
    classifier: tuple, rows: Path, tmp_path: Path, fast_retries: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    model, _ = classifier
    wrong = [("features", "FP64", [-1, 4])]
    with V2GrpcServer("risk", model.predict_proba, wrong) as server:
        capsys.readouterr()
        assert _run(f"oip:{server.url}", rows, tmp_path / "out") == 1
        assert server.infer_requests == 0
        assert "takes 4 input features, the data has 5" in capsys.readouterr().err
        other = server.url.replace("/risk", "/churn")
        assert _run(f"oip:{other}", rows, tmp_path / "out") == 3
        err = capsys.readouterr().err
        assert f"inference endpoint {other} is not usable" in err and "NOT_FOUND" in err
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gone = f"grpc://127.0.0.1:{port}/v2/models/risk"
    assert _run(f"oip:{gone}", rows, tmp_path / "out") == 3
    err = capsys.readouterr().err
    assert f"inference endpoint {gone} is not usable" in err and "UNAVAILABLE" in err
    assert _run("oip:grpc://127.0.0.1:1/models/risk", rows, tmp_path / "out") == 1
    assert "grpc(s)://HOST:PORT/v2/models/NAME" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_grpc_requests_stay_under_the_servers_message_limit(
    classifier: tuple, rows: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC servers refuse messages over 4 MiB unless configured: a request holds at most as many
    rows as fit XAC_OIP_GRPC_MAX_MESSAGE, whatever XAC_OIP_BATCH_ROWS says."""
    model, _ = classifier
    monkeypatch.setenv("XAC_OIP_GRPC_MAX_MESSAGE", str(256 << 10))
    with V2GrpcServer("risk", model.predict_proba, DECLARED) as server:
        assert _run(f"oip:{server.url}", rows, tmp_path / "out") == 0
    assert 0 < server.max_rows <= ((256 << 10) - (64 << 10)) // (len(COLUMNS) * 8)
    assert server.rows > server.max_rows  # so the passes were cut into several requests
