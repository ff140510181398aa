"""The embedded moto server: detached CLI lifecycle and restart behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from include.compliance import (
    STATEMENT_NAME,
    PublishStats,
    build_bundle,
    list_bundles,
    public_key_pem,
    publish_bundle,
    verify_bundle,
)
from include.embedded.s3_server import answers, free_port, start
from include.paths import REPO_ROOT

from .conftest import make_client, sample_run, write_sample_files

pytestmark = pytest.mark.integration


def _cli(xac_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XAC_HOME=str(xac_home), PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "include.embedded.s3_server", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_start_is_idempotent_and_stop_is_safe(tmp_path: Path) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    assert _cli(tmp_path, "stop").returncode == 0
    assert _cli(tmp_path, "status").returncode == 3
    try:
        first = _cli(tmp_path, "start", "--port", str(port), "--ephemeral")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == endpoint
        assert (tmp_path / "run" / "s3.pid").exists()
        assert answers(endpoint)
        second = _cli(tmp_path, "start", "--port", str(port), "--ephemeral")
        assert second.returncode == 0 and second.stdout.strip() == endpoint
        status = _cli(tmp_path, "status")
        assert status.returncode == 0 and endpoint in status.stdout
        make_client(endpoint).create_bucket(Bucket="cli-bucket")
    finally:
        stopped = _cli(tmp_path, "stop")
    assert stopped.returncode == 0
    assert not answers(endpoint)
    assert not (tmp_path / "run" / "s3.pid").exists()
    assert _cli(tmp_path, "status").returncode == 3
    assert _cli(tmp_path, "stop").returncode == 0


def test_ephemeral_restart_loses_buckets() -> None:
    port = free_port()
    with start(port) as server:
        make_client(server.endpoint_url).create_bucket(Bucket="gone-after-restart")
    with start(port) as server:
        assert make_client(server.endpoint_url).list_buckets()["Buckets"] == []


def test_server_killed_mid_publish_then_retry_completes_with_recording(tmp_path: Path, signer: Any) -> None:
    """Stop the server in the middle of a publish; restart it from its recording; the retry finishes."""
    staging = tmp_path / "stage"
    write_sample_files(staging)
    manifest = build_bundle(staging, run=sample_run(), signer=signer)
    state = tmp_path / "s3-state"
    server = start(state_dir=state)
    try:
        client = make_client(server.endpoint_url)
        puts = {"n": 0}

        def stop_server_midway(**_: Any) -> None:
            puts["n"] += 1
            if puts["n"] == 5:  # key, claim and 2 payload files made it
                server.stop()

        client.meta.events.register("before-call.s3.PutObject", stop_server_midway)
        with pytest.raises(EndpointConnectionError):
            publish_bundle(
                staging,
                s3_client=client,
                bucket="bundles",
                prefix="m/1/run",
                public_key_pem=public_key_pem(signer),
                max_workers=1,
            )
    finally:
        server.stop()

    with start(state_dir=state) as restarted:
        client = make_client(restarted.endpoint_url)
        # The recording replayed the partial publish: present but not complete.
        assert list_bundles(client, "bundles") == []
        [partial] = list_bundles(client, "bundles", include_incomplete=True)
        assert partial.bundle_id == manifest.bundle_id and not partial.complete
        stats = PublishStats()
        uri = publish_bundle(
            staging,
            s3_client=client,
            bucket="bundles",
            prefix="m/1/run",
            public_key_pem=public_key_pem(signer),
            stats=stats,
        )
        assert len(stats.already_present) == 4
        assert stats.uploaded[-1] == f"m/1/run/{STATEMENT_NAME}"
        assert verify_bundle(uri, public_key_pem=public_key_pem(signer), s3_client=client).ok

    with start(state_dir=state) as again:
        client = make_client(again.endpoint_url)
        [complete] = list_bundles(client, "bundles")
        assert complete.bundle_id == manifest.bundle_id
        report = verify_bundle(complete.uri, public_key_pem=public_key_pem(signer), s3_client=client)
        assert report.ok, report.problems


def test_start_refuses_a_busy_port() -> None:
    with start() as server, pytest.raises(OSError, match="already in use"):
        start(server.port)


def test_a_recording_torn_by_a_kill_mid_write_still_replays(tmp_path: Path) -> None:
    """Issue 18, item 9: a truncated last line made every later start fail until edited by hand."""
    port = free_port()
    with start(port, state_dir=tmp_path) as server:
        client = make_client(server.endpoint_url)
        client.create_bucket(Bucket="kept")
        client.put_object(Bucket="kept", Key="a.json", Body=b"{}")
    recording = tmp_path / "moto-recording.jsonl"
    complete = recording.read_bytes()
    recording.write_bytes(complete + b'{"module": "s3", "method": "PUT", "path": "/kept/b.js')  # killed here
    with start(port, state_dir=tmp_path) as server:
        client = make_client(server.endpoint_url)
        assert client.get_object(Bucket="kept", Key="a.json")["Body"].read() == b"{}"
    assert recording.read_bytes().startswith(complete)
    (aside,) = tmp_path.glob("moto-recording.jsonl.torn-*")
    assert aside.read_bytes().endswith(b"/kept/b.js")
