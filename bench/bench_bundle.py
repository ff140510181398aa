"""Bundle publish and verify throughput against the loopback S3 server (moto).

Issue 7 targets: publish ≥ 100 MB/s for a 200 MB bundle; verify ≥ 200 MB/s. One run: a 200 MB bundle
(four 50 MB binary files + the small JSON files of a real run), signed, published create-only with
SHA-256 checksums, then verified from a local folder and from S3. Verification from S3 streams: every
object is hashed while it downloads, several objects at a time, nothing written to disk (the default
path, whole-object GETs below 64 MiB); the same bundle is also verified with parallel ranged GETs
(16 MiB parts, forced by a low threshold) and downloaded to a folder, for comparison. Then a chain of
four such bundles is verified with ``chain=True`` (every predecessor re-verified). Publishing goes through
boto3's transfer manager (default TransferConfig of ``publish_bundle``); the three chain publishes are
timed too, so the publish figure comes with four samples (``publish_MB_per_s`` is the first, as before).

    .venv/bin/python bench/bench_bundle.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from include.compliance import (  # noqa: E402
    build_bundle,
    download_bundle,
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
    load_before = round(os.getloadavg()[0], 2)
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
        started = time.perf_counter()
        ranged = verify_bundle(
            uri, public_key_pem=public_key_pem(signer), s3_client=client, range_threshold=16 * 1024 * 1024
        )
        verify_ranged_s = time.perf_counter() - started
        started = time.perf_counter()
        download_bundle(client, uri, root / "downloaded")
        download_s = time.perf_counter() - started
        size = manifest.total_bytes
        # A chain of four 200 MB bundles: the head links to the three before it.
        previous = {"uri": uri, "bundle_id": manifest.bundle_id}
        publish_runs = [publish_s]
        for i in range(2, 5):
            linked = build_bundle(
                staging, run={"model": "bench", "run_id": f"r{i}"}, signer=signer, previous=previous
            )
            started = time.perf_counter()
            head = publish_bundle(
                staging,
                s3_client=client,
                bucket="bench",
                prefix=f"b/1/runs/r{i}",
                public_key_pem=public_key_pem(signer),
            )
            publish_runs.append(time.perf_counter() - started)
            previous = {"uri": head, "bundle_id": linked.bundle_id}
        started = time.perf_counter()
        walked = verify_bundle(head, public_key_pem=public_key_pem(signer), s3_client=client, chain=True)
        chain_s = time.perf_counter() - started
    result = {
        "benchmark": "bundle_publish_verify_loopback_moto",
        "bundle_bytes": size,
        "build_and_sign_seconds": round(build_s, 3),
        "publish_seconds": round(publish_s, 3),
        "publish_MB_per_s": round(size / MB / publish_s, 1),
        "publish_MB_per_s_runs": [round(size / MB / seconds, 1) for seconds in publish_runs],
        "publish_MB_per_s_median": round(size / MB / statistics.median(publish_runs), 1),
        "publish_method": (
            "boto3 transfer manager (s3transfer, classic), 4 threads, single PUT per file below 256 MiB, "
            "If-None-Match: * added by a botocore event handler"
        ),
        "verify_local_MB_per_s": round(size / MB / verify_local_s, 1),
        "verify_from_s3_MB_per_s": round(size / MB / verify_s3_s, 1),
        "verify_from_s3_method": "whole-object GETs hashed while they stream, 8 at once, no temp files",
        "verify_from_s3_ranged_MB_per_s": round(size / MB / verify_ranged_s, 1),
        "download_MB_per_s": round(size / MB / download_s, 1),
        "chain_of_4_verify_seconds": round(chain_s, 3),
        "chain_of_4_MB_per_s": round(walked.bytes_checked / MB / chain_s, 1),
        "verified": local.ok and remote.ok and ranged.ok and walked.ok and len(walked.chain) == 4,
        "targets": {"publish_MB_per_s": 100, "verify_MB_per_s": 200},
        "meets_publish_target": size / MB / publish_s >= 100,
        "meets_verify_target_local": size / MB / verify_local_s >= 200,
        "meets_verify_target_from_s3": size / MB / verify_s3_s >= 200,
        "server": "moto 5.2.5 (ThreadedMotoServer, in memory) on 127.0.0.1",
        "cpus": os.cpu_count(),
        # Other work on the machine skews every figure here: the 1-minute load before and after the run.
        "load_average_1m": [load_before, round(os.getloadavg()[0], 2)],
    }
    (REPO_ROOT / "bench" / "results" / "bundle.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
