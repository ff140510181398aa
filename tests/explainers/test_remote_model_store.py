"""The model store in object storage (``XAC_MODEL_STORE=s3://...``): what a run pins and fetches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.explainers.errors import ModelLoadError, ModelNotFoundError
from include.explainers.model_store import (
    model_dir,
    push_model,
    remote_model_sha256,
    remote_model_store,
    remote_model_uri,
)


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from include.embedded import s3_server
    from include.storage import s3_client

    with s3_server.environment() as server:
        client = s3_client(server.endpoint_url)
        client.create_bucket(Bucket="models")
        yield client


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A version in the local store (weights + the model.json recording their digest)."""
    monkeypatch.setenv("XAC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XAC_MODEL_STORE", "s3://models/team/")
    folder = model_dir("churn", "3")
    folder.mkdir(parents=True)
    weights = b"state dict bytes"
    (folder / "model.pt").write_bytes(weights)
    (folder / "model.json").write_text(json.dumps({"sha256": hashlib.sha256(weights).hexdigest()}))
    return hashlib.sha256(weights).hexdigest()


def test_a_pushed_version_is_pinned_by_the_digest_its_model_json_records(s3: Any, stored: str) -> None:
    assert remote_model_store() == "s3://models/team"
    assert push_model("churn", "3", s3) == remote_model_uri("churn", "3") == "s3://models/team/churn/3/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="team/churn/3/")["Contents"]]
    assert sorted(keys) == ["team/churn/3/model.json", "team/churn/3/model.pt"]
    assert remote_model_sha256("churn", "3", s3) == stored


def test_bad_stores_versions_and_records_are_refused(
    s3: Any, stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        ModelNotFoundError, match=r"'churn' version '4': s3://models/team/churn/4/model\.json"
    ):
        remote_model_sha256("churn", "4", s3)
    with pytest.raises(ModelNotFoundError, match="is not in the local store"):
        push_model("churn", "4", s3)
    with pytest.raises(ModelLoadError, match="cannot name a model store folder"):
        remote_model_uri("..", "3")
    s3.put_object(Bucket="models", Key="team/churn/5/model.json", Body=b'{"sha256": "not-a-digest"}')
    with pytest.raises(ModelLoadError, match="'not-a-digest' is not a hex digest"):
        remote_model_sha256("churn", "5", s3)
    s3.put_object(Bucket="models", Key="team/churn/6/model.json", Body=b"{" + b" " * (2 << 20) + b"}")
    with pytest.raises(ModelLoadError, match="over 1048576 bytes"):
        remote_model_sha256("churn", "6", s3)
    monkeypatch.setenv("XAC_MODEL_STORE", "/srv/models")
    with pytest.raises(ModelLoadError, match="expected an s3://bucket/prefix URI"):
        remote_model_store()
    monkeypatch.delenv("XAC_MODEL_STORE")
    assert remote_model_store() is None


def test_xac_models_push(
    s3: Any, stored: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from include.cli.main import main

    monkeypatch.setenv("S3_ENDPOINT_URL", s3.meta.endpoint_url)
    assert main(["models", "push", "churn", "3"]) == 0
    assert capsys.readouterr().out.strip() == "s3://models/team/churn/3/"
    assert main(["models", "push", "churn", "3", "9"]) == 1
    assert "'churn' version '9' is not in the local store" in capsys.readouterr().err
    monkeypatch.delenv("XAC_MODEL_STORE")
    assert main(["models", "push", "churn", "3"]) == 2
    assert "set XAC_MODEL_STORE" in capsys.readouterr().err
