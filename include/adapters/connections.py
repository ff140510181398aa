"""Secrets and shared services from Airflow connections (so from any secrets backend), else the
environment; on the embedded default, generated demo values under ``$XAC_HOME``.

=====================  ==========================================  ===================================
What                   Airflow connection (first choice)           Otherwise
=====================  ==========================================  ===================================
object storage         ``aws_default`` (S3 hook)                   ``S3_ENDPOINT_URL`` / boto3's chain
signing key            ``xac_signing``: password = PEM private key  ``XAC_SIGNING_KEY`` (a key file);
                                                                   embedded: a generated demo key
provenance salt        ``xac_provenance_salt``: password = salt    ``XAC_PROVENANCE_SALT``; embedded:
                                                                   a generated per-install salt
trusted public keys    ``xac_keyring``: password = PEM public      ``XAC_PUBLIC_KEY`` (PEM, folder or
                       key(s)                                      keyring YAML); the demo key
cost store             ``xac_cost_store`` (postgres)               ``XAC_COST_STORE_URL``; embedded:
                                                                   SQLite under ``$XAC_HOME``
a model endpoint       the catalogue's ``source.connection``       ``AIRFLOW_CONN_<ID>`` already in
                       (URL, login/password or token, headers)     the shard's environment
=====================  ==========================================  ===================================

On a shared deployment (:mod:`include.orchestration.deployment`) nothing is generated: a missing
signing key, salt or cost store fails the first task that needs it, naming the connection to create.
"""

from __future__ import annotations

import os
from typing import Any

AWS_CONN_ID = "aws_default"
SIGNING_CONN_ID = "xac_signing"
SALT_CONN_ID = "xac_provenance_salt"
KEYRING_CONN_ID = "xac_keyring"
COST_STORE_CONN_ID = "xac_cost_store"


def connection(conn_id: str) -> Any | None:
    """The Airflow connection ``conn_id`` (from the metadata DB, the environment or a secrets
    backend), or None when none is defined or no Airflow is at hand."""
    try:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:  # a process without Airflow (the CLI in a pod)
        return None
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    except Exception:  # no way to ask here (a bare script, a server without comms): the caller's
        return None  # fallback applies, and on a shared deployment that is an error


def deployment() -> str:
    """``embedded`` or ``shared``: ``XAC_DEPLOYMENT``, ``[xac] deployment``, else the executor."""
    from include.orchestration.deployment import deployment_mode

    configured = executor = None
    try:
        from airflow.configuration import conf

        configured = conf.get("xac", "deployment", fallback=None)
        executor = conf.get("core", "executor", fallback=None)
    except ImportError:  # a component with only the task SDK: the environment decides
        pass
    return deployment_mode(configured=configured, executor=executor)


def s3_client() -> Any:
    """The ``aws_default`` connection's client when one is configured, else the environment's."""
    from include.storage import s3_client as environment_client

    if os.environ.get("S3_ENDPOINT_URL") or connection(AWS_CONN_ID) is None:
        return environment_client()
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=AWS_CONN_ID).get_conn()


def signer() -> Any:
    """The bundle signing key (see the module's table)."""
    from include.compliance import load_or_create_signing_key, load_signing_key_pem
    from include.orchestration.deployment import EMBEDDED, missing
    from include.storage import default_signing_key_path

    conn = connection(SIGNING_CONN_ID)
    if conn is not None and conn.password:
        return load_signing_key_pem(conn.password.encode())
    mode = deployment()
    if mode == EMBEDDED:  # XAC_SIGNING_KEY or the demo key, generated on first use
        return load_or_create_signing_key(default_signing_key_path())
    explicit = os.environ.get("XAC_SIGNING_KEY")
    if explicit:  # a key file mounted from a secret: used, never created
        from pathlib import Path

        try:
            return load_signing_key_pem(Path(explicit).read_bytes())
        except OSError as exc:
            raise missing(
                "signing key", f"XAC_SIGNING_KEY={explicit} cannot be read ({exc.strerror})", mode
            ) from None
    raise missing(
        "signing key",
        f"create the Airflow connection {SIGNING_CONN_ID!r} whose password is the PEM private key "
        "(e.g. in your secrets backend), or mount a key file and set XAC_SIGNING_KEY",
        mode,
    )


def provenance_salt() -> str:
    """The secret salt of the entity-key hashes in ``provenance.json`` (see the module's table)."""
    from include.orchestration.pipeline import provenance_salt_from_environment

    conn = connection(SALT_CONN_ID)
    if conn is not None and conn.password:
        return str(conn.password)
    return provenance_salt_from_environment(deployment())


def trusted_keys() -> Any:
    """The keys the compliance page trusts: the ``xac_keyring`` connection's PEM public keys, else
    ``XAC_PUBLIC_KEY`` (a PEM, a folder of *.pub.pem or a keyring YAML), else the demo key's public
    half; None when there is none."""
    from include.compliance.keys import keyring_from_pem_text, load_keyring
    from include.storage import default_public_key_path

    conn = connection(KEYRING_CONN_ID)
    if conn is not None and conn.password:
        return keyring_from_pem_text(conn.password, source=f"Airflow connection {KEYRING_CONN_ID}")
    path = default_public_key_path()
    return load_keyring([path]) if path.exists() else None


def cost_store() -> Any:
    """The cost store: the ``xac_cost_store`` connection's database, else ``XAC_COST_STORE_URL``,
    else (embedded only) the SQLite file under ``$XAC_HOME``."""
    from include.finops.store import CostStore
    from include.orchestration.deployment import EMBEDDED, missing

    conn = connection(COST_STORE_CONN_ID)
    if conn is not None:
        return CostStore(conn.get_uri())
    if os.environ.get("XAC_COST_STORE_URL"):
        return CostStore(os.environ["XAC_COST_STORE_URL"])
    mode = deployment()
    if mode != EMBEDDED:
        raise missing(
            "cost store",
            f"create the Airflow connection {COST_STORE_CONN_ID!r} (type postgres) or set "
            "XAC_COST_STORE_URL; every worker must write the same store",
            mode,
        )
    return CostStore()


def model_connection_environment(model_name: str) -> dict[str, str]:
    """``AIRFLOW_CONN_<ID>`` (Airflow's JSON form) for the shard process of a model whose endpoint
    declares an Airflow connection (``source.connection``), resolved here through Airflow (metadata
    DB, environment or secrets backend); the shard reads it with ``oip.endpoint_connection``. Empty
    when the model declares none or Airflow has no such connection (the shard then names it)."""
    from include.explainers.catalogue import catalogue_entries
    from include.explainers.sources.oip import connection_variable

    entry = catalogue_entries().get(model_name)
    source = entry.source if entry is not None else None
    if source is None or not source.connection:
        return {}
    conn = connection(source.connection)
    return {connection_variable(source.connection): conn.as_json()} if conn is not None else {}
