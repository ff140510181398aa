"""The run's logs in the bundle: Airflow's task-log layout, every attempt, secrets redacted and counted."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from include.compliance import build_bundle, verify_directory
from include.compliance.bundle import Manifest
from include.compliance.logs import (
    REDACTED,
    Redactor,
    TaskLogSource,
    collect_run_logs,
    find_task_logs,
    is_sensitive_name,
    secrets_from_environment,
)

from .conftest import sample_run, write_sample_files

# Secret-shaped values made up for the tests (none is a real credential).
AWS_KEY_ID = "AKIA" + "Q3EXAMPLE7KEY9ZZ"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhdWRpdG9yIn0.c2lnbmF0dXJlLW5vdC1yZWFs"
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIGW0bGx0ZXN0LW9ubHktbm90LWEtcmVhbC1rZXktISE=\n"
    "-----END PRIVATE KEY-----"
)
CONN_PASSWORD = "s3cr3t-Pa55/word"
VARIABLE_SECRET = "var-value-9f8e7d6c"


def test_each_pattern_is_redacted_and_counted() -> None:
    text = "\n".join(
        [
            f"using key id {AWS_KEY_ID} for uploads",
            f"aws_secret_access_key = {AWS_SECRET}",
            "Authorization: Bearer abcdefghijklmnop.qrstuv",
            f"session jwt {JWT} accepted",
            "connecting to postgresql://etl:hunter2hunter2@db.internal:5432/meta",
            "signing with",
            PEM,
            'config {"password": "pa55word-x", "max_tokens": 500, "tokenizer_steps": 3}',
            "api_key=abc123def456 and secret=***",
        ]
    )
    redacted, counts = Redactor().redact(text)
    for secret in (
        AWS_KEY_ID,
        AWS_SECRET,
        "abcdefghijklmnop",
        JWT,
        "hunter2hunter2",
        "MC4CAQAw",
        "pa55word-x",
    ):
        assert secret not in redacted, secret
    assert "abc123def456" not in redacted
    assert counts == {
        "aws_access_key_id": 1,
        "aws_secret_access_key": 1,
        "bearer_token": 1,
        "jwt": 1,
        "url_password": 1,
        "pem_private_key": 1,
        "sensitive_assignment": 2,
    }, counts
    # What is not secret stays readable: names, hosts, counts, and an already masked value.
    assert "postgresql://etl:***@db.internal:5432/meta" in redacted
    assert '"max_tokens": 500' in redacted and '"tokenizer_steps": 3' in redacted
    assert "secret=***" in redacted and "using key id ***" in redacted


def test_pem_inside_a_json_log_line_is_redacted() -> None:
    # Airflow 3 task logs are JSON lines: the key's newlines arrive escaped.
    line = json.dumps({"event": f"loaded {PEM}", "level": "info"})
    redacted, counts = Redactor().redact(line)
    assert "MC4CAQAw" not in redacted and counts["pem_private_key"] == 1
    assert json.loads(redacted)["level"] == "info"


def test_known_secret_values_in_every_form_a_log_holds_them() -> None:
    secret = 'multi "line"\nsecret-value'
    redactor = Redactor([secret, CONN_PASSWORD, "abc", "airflow"])
    text = "\n".join(
        [
            f"raw {secret} end",
            json.dumps({"event": f"json {secret} end"}),
            "url https://host/?p=s3cr3t-Pa55%2Fword end",
            f"plain {CONN_PASSWORD}",
            "abc and airflow are too short or too common to mask",
        ]
    )
    redacted, counts = redactor.redact(text)
    assert "secret-value" not in redacted and CONN_PASSWORD not in redacted
    assert "s3cr3t-Pa55%2Fword" not in redacted
    assert counts["known_secret"] == 4
    assert "abc and airflow are too short" in redacted


def test_airflow_masker_is_applied_through_its_public_redact() -> None:
    """The task's masker (airflow.sdk.log.redact, public) replaces what Airflow knows is secret: a
    connection's password the task fetched, a value masked with mask_secret; both count."""
    from airflow.sdk.log import mask_secret, redact

    mask_secret(CONN_PASSWORD)
    mask_secret("k-1234567890")
    redactor = Redactor(mask=lambda text: str(redact(text)))
    redacted, counts = redactor.redact(f"login {CONN_PASSWORD} key k-1234567890 at db.internal")
    assert redacted == f"login {REDACTED} key {REDACTED} at db.internal"
    assert counts["known_secret"] == 2


def test_the_task_log_source_refuses_to_bundle_without_airflows_masker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import builtins

    from include.adapters.tasks import task_log_source

    real_import = builtins.__import__

    def no_sdk_log(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "airflow.sdk.log":
            raise ImportError("no module named airflow.sdk.log")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sdk_log)
    with pytest.raises(RuntimeError, match=r"public masking API \(airflow.sdk.log.redact\) is missing"):
        task_log_source({"ti": object()})


def test_secrets_from_environment() -> None:
    environ = {
        "AIRFLOW_CONN_WAREHOUSE": "postgresql://etl:p%40ss-word-1@db:5432/x?sslmode=require&api_key=k-999999",
        "AIRFLOW_CONN_JSONCONN": json.dumps(
            {"conn_type": "http", "password": "json-pass-1", "extra": {"token": "tok-abcdef", "timeout": 30}}
        ),
        "AIRFLOW_VAR_PARTNER_API_KEY": VARIABLE_SECRET,
        "AIRFLOW_VAR_REPORT_TITLE": "Quarterly report",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "HOME": "/root",
    }
    found = set(secrets_from_environment(environ))
    assert {"p@ss-word-1", "k-999999", "json-pass-1", "tok-abcdef", VARIABLE_SECRET, AWS_SECRET} <= found
    assert "Quarterly report" not in found and "/root" not in found and "require" not in found
    assert is_sensitive_name("PARTNER_API_KEY") and not is_sensitive_name("report_title")


def _airflow_log_path(
    base: Path, dag_id: str, run_id: str, task_id: str, attempt: int, map_index: int
) -> Path:
    """The file Airflow writes for one attempt, from the installed version's own filename template."""
    import jinja2
    from airflow.configuration import conf

    template = conf.get("logging", "log_filename_template")
    ti = SimpleNamespace(
        dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, try_number=attempt
    )
    return base / jinja2.Template(template).render(ti=ti, try_number=attempt)


def _json_line(event: str) -> str:
    return json.dumps(
        {"timestamp": "2026-11-27T10:00:00Z", "level": "info", "event": event, "logger": "task"}
    )


@pytest.fixture
def airflow_logs(tmp_path: Path) -> tuple[Path, str, str]:
    base = tmp_path / "airflow-logs"
    dag_id, run_id = "diagnosis-risk-kernelshap", "manual__2026-11-27T10:00:00+00:00"
    files = {
        ("load_config", 1, -1): [_json_line("config loaded")],
        ("explain", 1, -1): [_json_line(f"connecting with {CONN_PASSWORD}"), _json_line("Task failed")],
        ("explain", 2, -1): [_json_line(f"token from variable {VARIABLE_SECRET}"), _json_line("done")],
        ("shard", 1, 0): [_json_line(f"presigned https://x/?X-Amz-Credential={AWS_KEY_ID}")],
        ("publish_bundle", 1, -1): [_json_line("publishing with"), _json_line(json.dumps(PEM)[1:-1])],
    }
    for (task_id, attempt, map_index), lines in files.items():
        path = _airflow_log_path(base, dag_id, run_id, task_id, attempt, map_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    # Another run of the same DAG must not leak into this bundle.
    other = _airflow_log_path(base, dag_id, "scheduled__2026-11-26", "explain", 1, -1)
    other.parent.mkdir(parents=True)
    other.write_text(_json_line("other run") + "\n")
    return base, dag_id, run_id


def test_find_task_logs_follows_airflows_layout(airflow_logs: tuple[Path, str, str]) -> None:
    base, dag_id, run_id = airflow_logs
    found = [(task, attempt, index) for _, task, attempt, index in find_task_logs(base, dag_id, run_id)]
    assert found == [
        ("explain", 1, None),
        ("explain", 2, None),
        ("load_config", 1, None),
        ("publish_bundle", 1, None),
        ("shard", 1, 0),
    ]


def test_collect_bundles_every_attempt_redacted_and_marks_the_publish_log(
    airflow_logs: tuple[Path, str, str], tmp_path: Path, signer: Any
) -> None:
    base, dag_id, run_id = airflow_logs
    # A symlink planted in the log folder must not pull an outside file into the bundle.
    outside = tmp_path / "outside.txt"
    outside.write_text("not a log")
    link = base / f"dag_id={dag_id}" / f"run_id={run_id}" / "task_id=explain" / "attempt=3.log"
    link.symlink_to(outside)
    workspace_logs = tmp_path / "workspace" / "logs"
    workspace_logs.mkdir(parents=True)
    (workspace_logs / "explain.log").write_text(f"explaining 2 rows\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n")

    staging = tmp_path / "bundle"
    write_sample_files(staging)
    source = TaskLogSource(
        base_log_folder=base,
        dag_id=dag_id,
        run_id=run_id,
        current_task_id="publish_bundle",
        current_try=1,
        secrets=(CONN_PASSWORD, VARIABLE_SECRET),
    )
    collection = collect_run_logs(staging / "logs", process_logs=workspace_logs.glob("*.log"), source=source)

    paths = [f.path for f in collection.files]
    assert paths == [
        "logs/explain.log",
        "logs/airflow/explain/attempt=1.log",
        "logs/airflow/explain/attempt=2.log",
        "logs/airflow/load_config/attempt=1.log",
        "logs/airflow/publish_bundle/attempt=1.log",
        "logs/airflow/shard/map_index=0/attempt=1.log",
    ]
    everything = "".join((staging / p).read_text() for p in paths)
    for secret in (
        CONN_PASSWORD,
        VARIABLE_SECRET,
        AWS_KEY_ID,
        AWS_SECRET,
        "MC4CAQAw",
        "not a log",
        "other run",
    ):
        assert secret not in everything, secret
    assert "Task failed" in everything and "explaining 2 rows" in everything
    assert collection.redactions == {
        "aws_access_key_id": 1,
        "aws_secret_access_key": 1,
        "known_secret": 2,
        "pem_private_key": 1,
    }
    [publish] = [f for f in collection.files if f.task_id == "publish_bundle"]
    assert publish.complete is False and all(f.complete for f in collection.files if f is not publish)
    record = collection.to_run_record()
    assert record["incomplete"] == ["logs/airflow/publish_bundle/attempt=1.log"]
    assert any("still running" in note for note in record["notes"])
    index = json.loads((staging / "logs" / "index.json").read_text())
    assert index["redactions"] == collection.redactions and len(index["files"]) == 6

    # The logs are bundle members like any file; the manifest records counts, never a secret.
    run = sample_run() | {"logs": record}
    manifest = build_bundle(staging, run=run, signer=signer)
    assert verify_directory(staging, None).ok
    listed = {entry.path for entry in manifest.files}
    assert set(paths) | {"logs/index.json"} <= listed
    raw = (staging / "manifest.json").read_text()
    for secret in (CONN_PASSWORD, VARIABLE_SECRET, AWS_KEY_ID, AWS_SECRET):
        assert secret not in raw
    assert Manifest.from_bytes(raw.encode()).run["logs"]["redactions"]["known_secret"] == 2


def test_without_task_log_files_the_bundle_says_so(tmp_path: Path) -> None:
    workspace_logs = tmp_path / "logs"
    workspace_logs.mkdir()
    (workspace_logs / "explain.log").write_text("explained\n")
    source = TaskLogSource(base_log_folder=tmp_path / "empty", dag_id="d", run_id="r")
    collection = collect_run_logs(
        tmp_path / "bundle" / "logs", process_logs=[workspace_logs / "explain.log"], source=source
    )
    assert [f.path for f in collection.files] == ["logs/explain.log"]
    assert any("no Airflow task log files" in note for note in collection.notes)
    alone = collect_run_logs(tmp_path / "bundle2" / "logs", process_logs=[workspace_logs / "explain.log"])
    assert any("no Airflow log folder" in note for note in alone.notes)


def test_remote_task_logs_are_read_back_in_airflows_layout(
    airflow_logs: tuple[Path, str, str], s3: Any, tmp_path: Path, unique: Any
) -> None:
    """With remote logging, each worker uploads its attempts to S3: the publish task reads them all
    from there, in the local folder's layout (keys outside it are skipped)."""
    from include.compliance.logs import fetch_remote_task_logs

    base, dag_id, run_id = airflow_logs
    bucket = unique("logs")
    s3.create_bucket(Bucket=bucket)
    for path, *_ in find_task_logs(base, dag_id, run_id):
        s3.upload_file(str(path), bucket, f"airflow-logs/{path.relative_to(base).as_posix()}")
    run_prefix = f"airflow-logs/dag_id={dag_id}/run_id={run_id}/"
    s3.put_object(Bucket=bucket, Key=run_prefix + "task_id=explain/notes.txt", Body=b"not a log")
    s3.put_object(
        Bucket=bucket, Key=f"airflow-logs/dag_id={dag_id}/run_id=other/task_id=x/attempt=1.log", Body=b""
    )
    copied = tmp_path / "copy"
    count = fetch_remote_task_logs(s3, f"s3://{bucket}/airflow-logs", dag_id, run_id, copied)
    assert count == len(find_task_logs(base, dag_id, run_id)) == 5
    assert [(t, a, i) for _, t, a, i in find_task_logs(copied, dag_id, run_id)] == [
        (t, a, i) for _, t, a, i in find_task_logs(base, dag_id, run_id)
    ]
    with pytest.raises(ValueError, match="exceed 10 bytes"):
        fetch_remote_task_logs(
            s3, f"s3://{bucket}/airflow-logs/", dag_id, run_id, tmp_path / "small", max_bytes=10
        )
