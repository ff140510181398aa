"""Signed compliance bundles: build, publish to S3 (create-only), list, download and verify.

Heavy libraries (securesystemslib, boto3/botocore) are imported inside functions so that importing this
package from a CLI stays fast.
"""

from include.compliance.bundle import (
    CLAIM_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_NAME,
    STATEMENT_TYPE,
    FileEntry,
    Manifest,
    build_bundle,
    compute_bundle_id,
    path_problem,
)
from include.compliance.errors import (
    BundleConflictError,
    BundleError,
    IncompleteBundleError,
    ManifestError,
    UnsafeBundleError,
    UnsafePathError,
)
from include.compliance.keys import (
    key_id,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key_pem,
    public_key_path,
    public_key_pem,
)
from include.compliance.store import (
    BundleSummary,
    PublishStats,
    download_bundle,
    ensure_bucket,
    fetch_public_key,
    list_bundles,
    parse_s3_uri,
    presign_bundle,
    publish_bundle,
)
from include.compliance.verify import VerificationReport, verify_bundle, verify_directory

__all__ = [
    "CLAIM_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_NAME",
    "STATEMENT_TYPE",
    "BundleConflictError",
    "BundleError",
    "BundleSummary",
    "FileEntry",
    "IncompleteBundleError",
    "Manifest",
    "ManifestError",
    "PublishStats",
    "UnsafeBundleError",
    "UnsafePathError",
    "VerificationReport",
    "build_bundle",
    "compute_bundle_id",
    "download_bundle",
    "ensure_bucket",
    "fetch_public_key",
    "key_id",
    "list_bundles",
    "load_or_create_signing_key",
    "load_public_key",
    "load_signing_key_pem",
    "parse_s3_uri",
    "path_problem",
    "presign_bundle",
    "public_key_path",
    "public_key_pem",
    "publish_bundle",
    "verify_bundle",
    "verify_directory",
]
