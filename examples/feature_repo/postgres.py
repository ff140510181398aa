"""The samples' feature store on PostgreSQL: a stand-in for a team's shared feature store.

Every worker of a multi-worker Airflow reads the same Feast state, so none of it may live on one
worker's disk. This writes a feature repository whose SQL registry, offline store (the sources, as
tables) and online store are one PostgreSQL database, loads the sample sources into it and applies
the sample objects, with the same public Feast mechanisms a team uses (``feast apply`` and
``feature_store.yaml``). The Celery tests point ``XAC_FEATURE_REPO`` at it
(:func:`scripts.airflow_stack.shared_services_environment`); the Compose Celery variant has
``xac samples prepare`` write it (``XAC_SAMPLES_FEATURE_DB``, see examples/prepare.py).

    python -m examples.feature_repo.postgres REPO_DIR postgresql://postgres@127.0.0.1:5432/xac_features
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

STORE_YAML = """\
# The samples' feature repository on PostgreSQL (examples/feature_repo/postgres.py).
project: xac
project_description: Explainability-as-Code sample models (shared on PostgreSQL)
provider: local
registry:
  registry_type: sql
  path: {registry}
  cache_ttl_seconds: 60
offline_store: &database  # the online store is the same database
  type: postgres
  host: {host}
  port: {port}
  database: {database}
  db_schema: public
  user: {user}
  password: "{password}"
  sslmode: {sslmode}
online_store: *database
entity_key_serialization_version: 3
auth:
  type: no_auth
"""


def _engine_url(url: str, database: str | None = None) -> str:
    """``url`` for SQLAlchemy's psycopg (3) driver, on ``database`` when given."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    return f"postgresql+psycopg://{parts.netloc}/{database or parts.path.lstrip('/')}{query}"


def create_database(url: str) -> None:
    """Create the database of ``url`` (postgresql://USER@HOST:PORT/DB) if it does not exist."""
    import sqlalchemy as sa

    parts = urlsplit(url)
    admin = sa.create_engine(_engine_url(url, "postgres"))
    name = parts.path.lstrip("/")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def write_postgres_repo(repo: Path, url: str) -> Path:
    """Write the repository's ``feature_store.yaml`` into ``repo``, load the sample sources into
    ``url``'s database as tables and apply the sample objects there (idempotent); returns ``repo``
    (what XAC_FEATURE_REPO names)."""
    import sqlalchemy as sa

    from examples.feature_repo.data import apply_feature_repo, prepare_feature_data
    from examples.feature_repo.definitions import build_objects

    parts = urlsplit(url)
    create_database(url)
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        STORE_YAML.format(
            registry=_engine_url(url),
            user=parts.username or "postgres",
            password=parts.password or "",
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            database=parts.path.lstrip("/"),
            # TLS when the server offers it (Feast's own default would require it): ?sslmode= overrides
            sslmode=parse_qs(parts.query).get("sslmode", ["prefer"])[0],
        )
    )
    import pandas as pd

    engine = sa.create_engine(_engine_url(url))
    with engine.begin() as conn:
        for view, path in prepare_feature_data().items():
            pd.read_parquet(path).to_sql(view, conn, if_exists="replace", index=False)
    engine.dispose()
    apply_feature_repo(repo, build_objects(tables=True))
    return repo


if __name__ == "__main__":
    print(write_postgres_repo(Path(sys.argv[1]), sys.argv[2]))
