"""Set-up of the embedded default: feature data, the Feast registry, trained sample models, a key."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path


def prepare_samples(force: bool = False) -> Iterator[str]:
    """Idempotent: each step skips work that is already done unless ``force``."""
    from examples.feature_repo.data import apply_feature_repo, prepare_feature_data
    from examples.models import train_sample_models
    from include.compliance import load_or_create_signing_key
    from include.storage import default_signing_key_path

    started = time.perf_counter()
    sources = prepare_feature_data(force=force)
    yield f"feature data: {', '.join(str(p) for p in sources.values())}"
    apply_feature_repo()
    yield "feast apply: registry up to date"
    models = train_sample_models(force=force)
    yield f"models: {', '.join(str(p) for p in models.values())}"
    from include.explainers.model_store import push_model, remote_model_store

    if remote_model_store() is not None:  # a shared deployment's store: every worker reads it there
        from include.compliance import ensure_bucket, parse_s3_uri
        from include.storage import s3_client

        client = s3_client()
        ensure_bucket(client, parse_s3_uri(remote_model_store() + "/")[0])
        for path in models.values():
            yield f"pushed {push_model(path.parent.parent.name, path.parent.name, client)}"
    shared_features = os.environ.get("XAC_SAMPLES_FEATURE_DB")
    if shared_features:  # a shared deployment's feature store: the repository on PostgreSQL
        from examples.feature_repo.postgres import write_postgres_repo

        repo = os.environ.get("XAC_FEATURE_REPO")
        if not repo:
            raise ValueError(
                "XAC_SAMPLES_FEATURE_DB needs XAC_FEATURE_REPO: the folder to write the repository to"
            )
        yield f"shared feature store: {write_postgres_repo(Path(repo), shared_features)}"
    from examples.xgboost_model import train_xgboost_sample

    yield f"a team's own model (XGBoost, declared by its source): {train_xgboost_sample(force=force)}"
    load_or_create_signing_key(default_signing_key_path())
    yield f"signing key: {default_signing_key_path()}"
    yield f"set-up done in {time.perf_counter() - started:.1f}s"
