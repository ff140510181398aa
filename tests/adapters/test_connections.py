"""Secrets and shared services from Airflow connections; nothing generated on a shared deployment.

Connections are given the way a secrets backend or a Helm chart gives them to every component:
``AIRFLOW_CONN_<ID>`` environment variables (Airflow's JSON form), read through Airflow's own
``BaseHook.get_connection``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.adapters import connections
from include.compliance import key_id, load_or_create_signing_key, public_key_pem
from include.orchestration.deployment import MissingDeploymentSetting, deployment_mode


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A shared deployment (Celery workers) with an empty XAC_HOME and no secrets configured."""
    monkeypatch.setenv("XAC_DEPLOYMENT", "shared")
    monkeypatch.setenv("XAC_HOME", str(tmp_path / "home"))
    for name in ("XAC_SIGNING_KEY", "XAC_PROVENANCE_SALT", "XAC_COST_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def _connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "generic", **fields}))


@pytest.mark.parametrize(
    ("env", "executor", "expected"),
    [
        ({}, "LocalExecutor", "embedded"),
        ({}, "", "embedded"),
        ({}, "CeleryExecutor", "shared"),
        ({}, "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor", "shared"),
        ({}, "LocalExecutor,CeleryExecutor", "shared"),
        ({"XAC_DEPLOYMENT": "embedded"}, "CeleryExecutor", "embedded"),
        ({"XAC_DEPLOYMENT": "Shared"}, "LocalExecutor", "shared"),
    ],
)
def test_the_executor_decides_unless_the_deployment_is_named(
    env: dict[str, str], executor: str, expected: str
) -> None:
    assert deployment_mode(env, executor=executor) == expected


def test_an_unknown_deployment_is_refused() -> None:
    with pytest.raises(ValueError, match="XAC_DEPLOYMENT='cluster': choose one of embedded, shared"):
        deployment_mode({"XAC_DEPLOYMENT": "cluster"})


def test_a_shared_deployment_without_secrets_fails_clearly_and_generates_nothing(shared: Path) -> None:
    with pytest.raises(MissingDeploymentSetting, match="no signing key: this is a shared deployment") as exc:
        connections.signer()
    assert "'xac_signing'" in str(exc.value)
    with pytest.raises(MissingDeploymentSetting, match="'xac_provenance_salt'"):
        connections.provenance_salt()
    with pytest.raises(MissingDeploymentSetting, match="'xac_cost_store'"):
        connections.cost_store()
    assert not shared.exists()  # no demo key, salt or SQLite store was made on this worker


def test_secrets_come_from_connections(shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path / "keys" / "org.pem")
    pem = (tmp_path / "keys" / "org.pem").read_text()
    _connection(monkeypatch, "xac_signing", password=pem)
    _connection(monkeypatch, "xac_provenance_salt", password="a-long-random-salt")
    _connection(monkeypatch, "xac_keyring", password=public_key_pem(key).decode())
    assert key_id(connections.signer()) == key_id(key)
    assert connections.provenance_salt() == "a-long-random-salt"
    (trusted,) = connections.trusted_keys().keys
    assert trusted.key.keyid == key_id(key) and "xac_keyring" in trusted.source
    assert not shared.exists()


def test_a_signing_key_file_from_a_secret_is_read_and_never_created(
    shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XAC_SIGNING_KEY", str(tmp_path / "mounted" / "key.pem"))
    with pytest.raises(MissingDeploymentSetting, match=r"XAC_SIGNING_KEY=.*key\.pem cannot be read"):
        connections.signer()
    assert not (tmp_path / "mounted").exists()
    key = load_or_create_signing_key(tmp_path / "mounted" / "key.pem")
    assert key_id(connections.signer()) == key_id(key)


def test_a_private_key_in_the_keyring_connection_is_refused(
    shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from include.compliance.keys import KeyringError

    load_or_create_signing_key(tmp_path / "k.pem")
    _connection(monkeypatch, "xac_keyring", password=(tmp_path / "k.pem").read_text())
    with pytest.raises(KeyringError, match="Airflow connection xac_keyring: holds a private key"):
        connections.trusted_keys()


def test_the_embedded_default_makes_its_demo_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XAC_DEPLOYMENT", "embedded")
    monkeypatch.setenv("XAC_HOME", str(tmp_path / "home"))
    for name in ("XAC_SIGNING_KEY", "XAC_PROVENANCE_SALT", "XAC_COST_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    first, again = connections.signer(), connections.signer()
    assert key_id(first) == key_id(again)
    salt = connections.provenance_salt()
    assert len(salt) == 64 and connections.provenance_salt() == salt
    assert (tmp_path / "home" / "keys" / "provenance-salt").exists()


def test_the_cost_store_comes_from_its_connection(
    shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every worker writes the one store the connection names (a SQLite URL stands in here; the
    PostgreSQL back end is tested in tests/finops/test_store.py)."""
    monkeypatch.setenv("AIRFLOW_CONN_XAC_COST_STORE", f"sqlite:///{tmp_path / 'shared' / 'costs.db'}")
    store = connections.cost_store()
    assert store.path == tmp_path / "shared" / "costs.db" and store.path.exists()
    monkeypatch.delenv("AIRFLOW_CONN_XAC_COST_STORE")
    monkeypatch.setenv("XAC_COST_STORE_URL", f"sqlite:///{tmp_path / 'env' / 'costs.db'}")
    assert connections.cost_store().path == tmp_path / "env" / "costs.db"
    assert not shared.exists()


def test_a_model_endpoints_airflow_connection_reaches_its_shard_as_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The explain task resolves the catalogue's ``source.connection`` through Airflow (here the URI
    form of AIRFLOW_CONN_*, as a secrets backend may hold it) and hands the shard process Airflow's
    JSON form, which ``oip.endpoint_connection`` reads; models without one get nothing."""
    from include.explainers.sources.oip import endpoint_connection

    catalogue = tmp_path / "models.yaml"
    catalogue.write_text(
        "models:\n  risk-served:\n    source: {type: oip, connection: risk_endpoint}\n"
        "    defaultVersion: '1'\n    featureService: risk_features\n    entity: patient\n"
    )
    monkeypatch.setenv("XAC_MODEL_CATALOGUE", str(catalogue))
    monkeypatch.setenv("AIRFLOW_CONN_RISK_ENDPOINT", "https://svc:pw@models.example.com:8443/")
    environment = connections.model_connection_environment("risk-served")
    assert set(environment) == {"AIRFLOW_CONN_RISK_ENDPOINT"}
    assert json.loads(environment["AIRFLOW_CONN_RISK_ENDPOINT"])["password"] == "pw"
    monkeypatch.setenv("AIRFLOW_CONN_RISK_ENDPOINT", environment["AIRFLOW_CONN_RISK_ENDPOINT"])
    linked = endpoint_connection("risk_endpoint", "risk-served")
    assert linked.url == "https://models.example.com:8443/v2/models/risk-served"
    assert linked.headers["Authorization"] == "Basic c3ZjOnB3"
    assert connections.model_connection_environment("diagnosis-risk") == {}
    monkeypatch.delenv("AIRFLOW_CONN_RISK_ENDPOINT")
    assert connections.model_connection_environment("risk-served") == {}  # the shard names it
