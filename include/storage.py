"""Object storage access shared by the CLI and the stages (plain boto3, no Airflow).

The endpoint comes from ``S3_ENDPOINT_URL`` (or boto3's own ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``); credentials and region from the usual AWS chain. Inside Airflow tasks the
DAG passes a client made by the ``aws_default`` connection's S3 hook instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from include.paths import keys_dir

SIGNING_KEY_NAME = "xac-signing"


def s3_client(endpoint_url: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("S3_ENDPOINT_URL") or None
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )


def default_signing_key_path() -> Path:
    """The embedded default's demo signing key (generated on first use)."""
    return Path(os.environ.get("XAC_SIGNING_KEY", keys_dir() / f"{SIGNING_KEY_NAME}.pem"))


def default_public_key_path() -> Path:
    """The public key that ``xac bundle verify`` trusts when ``--public-key`` is not given."""
    env = os.environ.get("XAC_PUBLIC_KEY")
    if env:
        return Path(env)
    return keys_dir() / f"{SIGNING_KEY_NAME}.pub.pem"
