"""Fixtures for the compliance tests: a real moto S3 server on 127.0.0.1 and real Ed25519 keys."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from include.compliance import build_bundle, load_or_create_signing_key
from include.compliance.bundle import Manifest
from include.embedded.s3_server import S3Server, start


def make_client(endpoint_url: str) -> Any:
    import boto3

    # moto accepts any credentials; explicit ones keep the tests away from the developer's AWS profile.
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with start() as server:
        yield server


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> Any:
    return make_client(s3_server.endpoint_url)


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def signer(keys_dir: Path) -> Any:
    return load_or_create_signing_key(keys_dir / "bundle-signing.pem")


@pytest.fixture(scope="module")
def other_signer(keys_dir: Path) -> Any:
    return load_or_create_signing_key(keys_dir / "someone-else.pem")


_counter = itertools.count()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique S3-safe names so tests sharing the module server never see each other's objects."""
    return lambda base: f"{base}-{os.getpid()}-{next(_counter)}"


def write_sample_files(staging: Path, *, seed: str = "a", big_bytes: int = 0) -> None:
    """A small bundle shaped like a real run's output."""
    (staging / "explanations").mkdir(parents=True, exist_ok=True)
    (staging / "plots").mkdir(exist_ok=True)
    (staging / "logs").mkdir(exist_ok=True)
    (staging / "explanations" / "P1.json").write_text(f'{{"patient_id": "P1", "seed": "{seed}"}}\n')
    (staging / "explanations" / "P2.json").write_text(f'{{"patient_id": "P2", "seed": "{seed}"}}\n')
    (staging / "plots" / "P1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + seed.encode() * 200)
    (staging / "provenance.json").write_text('{"feature_service": "diagnosis_risk_tabular"}\n')
    (staging / "validation.json").write_text('{"success": true}\n')
    (staging / "config.yaml").write_text("model: diagnosis-risk-tabular\nversion: '1'\n")
    (staging / "logs" / "explain.log").write_text("explained 2 rows\n")
    if big_bytes:
        (staging / "plots" / "big.bin").write_bytes(os.urandom(big_bytes))


def sample_run(model: str = "diagnosis-risk-tabular", run_id: str = "manual__1") -> dict[str, Any]:
    return {
        "dag_id": f"xac__{model}",
        "run_id": run_id,
        "model": model,
        "version": "1",
        "config_digest": "sha256:" + "0" * 64,
        "git_commit": "deadbeef",
    }


@pytest.fixture
def staged(tmp_path: Path, signer: Any) -> Callable[..., tuple[Path, Manifest]]:
    """Build a signed bundle in a fresh staging folder: ``staged(name, seed=..., run=...)``."""

    def _make(
        name: str = "stage",
        *,
        seed: str = "a",
        run: dict[str, Any] | None = None,
        big_bytes: int = 0,
        previous: dict[str, str] | None = None,
        location: str | None = None,
    ) -> tuple[Path, Manifest]:
        staging = tmp_path / name
        write_sample_files(staging, seed=seed, big_bytes=big_bytes)
        manifest = build_bundle(
            staging, run=run or sample_run(), signer=signer, previous=previous, location=location
        )
        return staging, manifest

    return _make
