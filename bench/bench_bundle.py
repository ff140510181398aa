"""Bundle publish and verify throughput against the loopback S3 server (moto).

Issue 7 targets: publish ≥ 100 MB/s for a 200 MB bundle; verify ≥ 200 MB/s. One run: a 200 MB bundle
(four 50 MB binary files + the small JSON files of a real run), signed, published create-only with
SHA-256 checksums, then verified from a local folder and from S3 (download + check).

    .venv/bin/python bench/bench_bundle.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from include.compliance import (  # noqa: E402
    build_bundle,
    load_or_create_signing_key,
    public_key_pem,
    publish_bundle,
    verify_bundle,
)
from include.embedded import s3_server  # noqa: E402
from include.storage import s3_client  # noqa: E402

MB = 10**6
FILES = 4
FILE_BYTES = 50 * MB


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, s3_server.start() as server:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        root = Path(tmp)
        staging = root / "bundle"
        (staging / "explanations").mkdir(parents=True)
        for i in range(FILES):
            (staging / f"frames-{i}.bin").write_bytes(os.urandom(FILE_BYTES))
        for i in range(100):
            (staging / "explanations" / f"P{i}.json").write_text(json.dumps({"id": i, "phi": [0.1] * 20}))
        signer = load_or_create_signing_key(root / "keys" / "bench.pem")
        started = time.perf_counter()
        manifest = build_bundle(staging, run={"model": "bench", "run_id": "r1"}, signer=signer)
        build_s = time.perf_counter() - started
        client = s3_client(server.endpoint_url)
        started = time.perf_counter()
        uri = publish_bundle(
            staging,
            s3_client=client,
            bucket="bench",
            prefix="b/1/runs/r1",
            public_key_pem=public_key_pem(signer),
        )
        publish_s = time.perf_counter() - started
        started = time.perf_counter()
        local = verify_bundle(str(staging), public_key_pem=public_key_pem(signer))
        verify_local_s = time.perf_counter() - started
        started = time.perf_counter()
        remote = verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=client)
        verify_s3_s = time.perf_counter() - started
        size = manifest.total_bytes
    result = {
        "benchmark": "bundle_publish_verify_loopback_moto",
        "bundle_bytes": size,
        "build_and_sign_seconds": round(build_s, 3),
        "publish_seconds": round(publish_s, 3),
        "publish_MB_per_s": round(size / MB / publish_s, 1),
        "verify_local_MB_per_s": round(size / MB / verify_local_s, 1),
        "verify_from_s3_MB_per_s": round(size / MB / verify_s3_s, 1),
        "verified": local.ok and remote.ok,
        "targets": {"publish_MB_per_s": 100, "verify_MB_per_s": 200},
        "meets_publish_target": size / MB / publish_s >= 100,
        "meets_verify_target_local": size / MB / verify_local_s >= 200,
        "meets_verify_target_from_s3": size / MB / verify_s3_s >= 200,
        "server": "moto 5.2.5 (ThreadedMotoServer, in memory) on 127.0.0.1",
        "cpus": os.cpu_count(),
    }
    (REPO_ROOT / "bench" / "results" / "bundle.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
