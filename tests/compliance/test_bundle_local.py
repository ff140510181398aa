"""Keys, bundle building and local verification (no S3 involved)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from include.compliance import (
    MANIFEST_NAME,
    PREDICATE_TYPE,
    STATEMENT_NAME,
    STATEMENT_TYPE,
    UnsafeBundleError,
    build_bundle,
    compute_bundle_id,
    key_id,
    load_or_create_signing_key,
    load_signing_key_pem,
    path_problem,
    public_key_path,
    public_key_pem,
    verify_bundle,
)
from include.compliance.bundle import short

from .conftest import sample_run, write_sample_files


def test_key_created_once_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "k" / "demo.pem"
    signer = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_path(path) == tmp_path / "k" / "demo.pub.pem"
    assert public_key_path(path).read_bytes() == public_key_pem(signer)
    again = load_or_create_signing_key(path)
    assert key_id(again) == key_id(signer) == key_id(public_key_pem(signer))
    # The same key handed over as a secret string, even with escaped newlines (env var style).
    escaped = path.read_text().replace("\n", "\\n")
    assert key_id(load_signing_key_pem(escaped)) == key_id(signer)
    assert key_id(load_signing_key_pem(path.read_bytes())) == key_id(signer)


def test_mismatched_public_key_file_is_refused(tmp_path: Path) -> None:
    first = load_or_create_signing_key(tmp_path / "a.pem")
    load_or_create_signing_key(tmp_path / "b.pem")
    shutil.copy(tmp_path / "b.pub.pem", tmp_path / "a.pub.pem")
    with pytest.raises(ValueError, match="does not match"):
        load_or_create_signing_key(tmp_path / "a.pem")
    assert key_id(first) != key_id((tmp_path / "b.pub.pem").read_bytes())


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../evil", "'..' component"),
        ("a/../../evil", "'..' component"),
        ("/etc/passwd", "absolute path"),
        ("a\\b", "backslash in path"),
        ("C:/x", "drive-qualified path"),
        ("a//b", "empty or '.' component"),
        ("./a", "empty or '.' component"),
        ("", "empty or non-string path"),
        ("a\nb", "control character in path"),
        (MANIFEST_NAME, "reserved name"),
    ],
)
def test_path_problem_rejects(path: str, reason: str) -> None:
    assert path_problem(path) == reason


def test_path_problem_accepts_normal_paths() -> None:
    for path in ("explanations/P1.json", "plots/a b.png", "logs/2024-01-01/x.log", "sub/manifest.json"):
        assert path_problem(path) is None


def test_build_writes_manifest_and_signed_statement(tmp_path: Path, signer: Any) -> None:
    staging = tmp_path / "stage"
    write_sample_files(staging)
    previous = {"uri": "s3://b/p/", "bundle_id": "sha256:" + "1" * 64}
    manifest = build_bundle(staging, run=sample_run(), signer=signer, previous=previous)

    doc = json.loads((staging / MANIFEST_NAME).read_text())
    paths = [item["path"] for item in doc["files"]]
    assert paths == sorted(paths)
    assert set(paths) == {
        "config.yaml",
        "explanations/P1.json",
        "explanations/P2.json",
        "logs/explain.log",
        "plots/P1.png",
        "provenance.json",
        "validation.json",
    }
    for item in doc["files"]:
        data = (staging / item["path"]).read_bytes()
        assert item["size"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["bundle_id"] == manifest.bundle_id == compute_bundle_id(manifest.files)
    assert doc["previous_bundle"] == previous
    assert doc["run"] == sample_run()

    envelope = json.loads((staging / STATEMENT_NAME).read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert [sig["keyid"] for sig in envelope["signatures"]] == [key_id(signer)]
    import base64

    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == STATEMENT_TYPE
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["predicate"] == sample_run()
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects.pop(MANIFEST_NAME) == hashlib.sha256((staging / MANIFEST_NAME).read_bytes()).hexdigest()
    assert subjects == {item["path"]: item["sha256"] for item in doc["files"]}

    report = verify_bundle(str(staging), public_key_pem=public_key_pem(signer))
    assert report.ok, report.problems
    assert report.files_checked == 7
    assert report.bytes_checked == sum(item["size"] for item in doc["files"])


def test_bundle_id_ignores_run_metadata_but_not_content(tmp_path: Path, signer: Any) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_sample_files(a)
    write_sample_files(b)
    write_sample_files(c, seed="other")
    id_a = build_bundle(a, run=sample_run(run_id="one"), signer=signer).bundle_id
    id_b = build_bundle(b, run=sample_run(run_id="two"), signer=signer).bundle_id
    id_c = build_bundle(c, run=sample_run(run_id="one"), signer=signer).bundle_id
    assert id_a == id_b
    assert id_a != id_c


def test_symlinks_are_refused(tmp_path: Path, signer: Any) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the bundle")
    staging = tmp_path / "stage"
    write_sample_files(staging)
    (staging / "explanations" / "link.json").symlink_to(outside)
    with pytest.raises(UnsafeBundleError, match=re.escape("explanations/link.json: symbolic links")):
        build_bundle(staging, run=sample_run(), signer=signer)

    staging2 = tmp_path / "stage2"
    write_sample_files(staging2)
    (staging2 / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UnsafeBundleError, match="linked_dir: symbolic links"):
        build_bundle(staging2, run=sample_run(), signer=signer)
    assert not (staging2 / MANIFEST_NAME).exists()


def test_bad_run_dict_is_refused(tmp_path: Path, signer: Any) -> None:
    staging = tmp_path / "stage"
    write_sample_files(staging)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        build_bundle(staging, run={"when": object()}, signer=signer)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        build_bundle(staging, run={"x": float("nan")}, signer=signer)


def test_local_tampering_is_reported_precisely(tmp_path: Path, signer: Any) -> None:
    staging = tmp_path / "stage"
    write_sample_files(staging)
    manifest = build_bundle(staging, run=sample_run(), signer=signer)
    entries = {entry.path: entry for entry in manifest.files}
    pem = public_key_pem(signer)

    target = staging / "explanations" / "P1.json"
    data = bytearray(target.read_bytes())
    data[3] ^= 0x01
    target.write_bytes(bytes(data))
    (staging / "validation.json").unlink()
    (staging / "plots" / "injected.png").write_bytes(b"x")

    report = verify_bundle(str(staging), public_key_pem=pem)
    assert not report.ok
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert report.problems == [
        f"explanations/P1.json: sha256 mismatch (manifest {short(entries['explanations/P1.json'].sha256)}, "
        f"file {short(actual)})",
        "validation.json: missing (listed in manifest)",
        "extra file not in manifest: plots/injected.png",
    ]
    assert report.bundle_id == manifest.bundle_id


def test_a_bundled_config_other_than_the_signed_digest_is_reported(tmp_path: Path, signer: Any) -> None:
    """The run signs the digest of the config it staged; a bundle holding another config.yaml, even
    one whose manifest entry matches its bytes, does not verify."""
    text = b"apiVersion: xac/v1\nkind: ExplainerConfiguration\n"
    for label, run_digest in (("same", hashlib.sha256(text).hexdigest()), ("other", "0" * 64)):
        staging = tmp_path / label
        write_sample_files(staging)
        (staging / "config.yaml").write_bytes(text)
        build_bundle(staging, run=sample_run() | {"config_sha256": run_digest}, signer=signer)
        report = verify_bundle(str(staging), public_key_pem=public_key_pem(signer))
        if label == "same":
            assert report.ok, report.problems
        else:
            assert not report.ok
            assert [p for p in report.problems if p.startswith("config.yaml: sha256")] == [
                f"config.yaml: sha256 {hashlib.sha256(text).hexdigest()} is not the run's signed config "
                f"digest {'0' * 64}"
            ]
