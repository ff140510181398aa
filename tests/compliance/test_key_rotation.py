"""Key rotation: a model's chain signed by several keys verifies against a keyring of trusted keys.

Each bundle is verified with the trusted key its envelope names, within that key's trusted period
(``notBefore`` / ``notAfter`` of a keyring file, judged on the bundle's signed ``created_at``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from include.compliance import (
    KeyringError,
    key_id,
    load_keyring,
    load_or_create_signing_key,
    public_key_pem,
    verify_bundle,
)

from .test_chain_walk import _chain

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """The key of 2025 (retired) and the key of 2026, with their public halves in one folder."""
    folder = tmp_path_factory.mktemp("rotation")
    old = load_or_create_signing_key(folder / "signing-2025.pem")
    new = load_or_create_signing_key(folder / "signing-2026.pem")
    public = folder / "public"
    public.mkdir()
    for name, signer in (("signing-2025", old), ("signing-2026", new)):
        (public / f"{name}.pub.pem").write_bytes(public_key_pem(signer))
    return old, new, public


def _rotated_chain(s3: Any, signers: list[Any], tmp_path: Path, bucket: str) -> list[tuple[str, str]]:
    """One bundle per signer, a day apart from START: (uri, bundle_id), oldest first."""
    return _chain(s3, None, tmp_path, bucket, signers=signers, start=START)


def _keyring_file(folder: Path, text: str, name: str = "keyring.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_chain_across_a_rotation_verifies_with_both_keys_and_not_with_one(
    s3: Any, rotated: tuple[Any, Any, Path], tmp_path: Path, unique: Callable[[str], str]
) -> None:
    old, new, public = rotated
    chain = _rotated_chain(s3, [old, old, new, new], tmp_path, unique("rotation"))
    head = chain[-1][0]

    # The current key alone: the two older bundles fail, each naming the key that signed it.
    only_new = verify_bundle(head, public_key_pem=public_key_pem(new), s3_client=s3, chain=True)
    expected = f"signature does not verify with key {key_id(new)} (envelope signed by key {key_id(old)})"
    assert only_new.problems == [f"{uri}: {expected}" for uri, _ in chain[1::-1]]
    assert [link["ok"] for link in only_new.chain] == [True, True, False, False]

    # Both keys (as two files, or as the folder of *.pub.pem): every bundle with its own signer's key.
    for keyring in (
        load_keyring([public / "signing-2026.pub.pem", public / "signing-2025.pub.pem"]),
        load_keyring([public]),
    ):
        report = verify_bundle(head, keyring=keyring, s3_client=s3, chain=True)
        assert report.ok, report.problems
        assert report.key_id == key_id(new)
        assert [link["key_id"] for link in report.chain] == [key_id(new)] * 2 + [key_id(old)] * 2
        assert [(link["uri"], link["bundle_id"]) for link in report.chain] == chain[::-1]


def test_a_keyring_file_bounds_each_key_to_its_period(
    s3: Any, rotated: tuple[Any, Any, Path], tmp_path: Path, unique: Callable[[str], str]
) -> None:
    old, new, public = rotated
    # Bundles created 2026-01-01, -02 (old key), -03, -04 (new key), at noon UTC.
    chain = _rotated_chain(s3, [old, old, new, new], tmp_path, unique("periods"))
    head = chain[-1][0]

    exact = _keyring_file(
        public,
        "keys:\n"
        "  - publicKey: signing-2025.pub.pem\n"
        "    notAfter: 2026-01-02T23:59:59Z\n"
        "  - publicKey: signing-2026.pub.pem\n"
        "    notBefore: 2026-01-03\n",
    )
    report = verify_bundle(head, keyring=load_keyring([exact]), s3_client=s3, chain=True)
    assert report.ok, report.problems

    # The old key retired a day earlier: the bundle it signed on 2026-01-02 is refused, by name.
    early = _keyring_file(
        public,
        "keys:\n"
        "  - publicKey: signing-2025.pub.pem\n"
        "    notAfter: 2026-01-02\n"
        "  - publicKey: signing-2026.pub.pem\n",
        "early.yaml",
    )
    report = verify_bundle(head, keyring=load_keyring([early]), s3_client=s3, chain=True)
    assert report.problems == [
        f"{chain[1][0]}: signed with key {key_id(old)}, retired for bundles created after "
        f"2026-01-02T00:00:00+00:00 ({early}:2), but the bundle was created 2026-01-02T12:00:00+00:00"
    ]

    # The new key trusted from a day later: its first bundle is refused.
    late = _keyring_file(
        public,
        "keys:\n"
        "  - publicKey: signing-2025.pub.pem\n"
        "  - publicKey: signing-2026.pub.pem\n"
        "    notBefore: 2026-01-04T00:00:00Z\n",
        "late.yaml",
    )
    report = verify_bundle(head, keyring=load_keyring([late]), s3_client=s3, chain=True)
    assert [p.split(": ", 1)[0] for p in report.problems] == [chain[2][0]]
    assert "trusted only for bundles created from 2026-01-04T00:00:00+00:00" in report.problems[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys: []\n", ":1: field 'keys': expected a non-empty list"),
        ("trusted: x\nkeys:\n  - publicKey: a.pub.pem\n", ":1: unknown field(s) trusted"),
        ("keys:\n  - notAfter: 2026-01-01\n", ":2: keys[0]: field 'publicKey': the path of a PEM public key"),
        (
            "keys:\n  - publicKey: a.pub.pem\n    expires: 2026-01-01\n",
            ":2: keys[0]: unknown field(s) expires",
        ),
        (
            "keys:\n  - publicKey: a.pub.pem\n    notAfter: next year\n",
            ":3: keys[0].notAfter: 'next year' is not",
        ),
        (
            "keys:\n  - publicKey: a.pub.pem\n    notBefore: 2026-02-01\n    notAfter: 2026-01-01\n",
            ":2: keys[0]: notBefore is after notAfter",
        ),
        ("keys:\n  - publicKey: missing.pub.pem\n", ":2: keys[0].publicKey missing.pub.pem: cannot read"),
        ("keys:\n  - publicKey: a.pem\n", ":2: keys[0].publicKey a.pem: holds a private key"),
        ("keys:\n  - publicKey: a.pub.pem\n  - publicKey: a.pub.pem\n", "is given twice"),
        ("keys: [\n", ": not valid YAML"),
    ],
)
def test_a_broken_keyring_file_names_file_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    signer = load_or_create_signing_key(tmp_path / "a.pem")
    assert (tmp_path / "a.pub.pem").is_file()
    path = _keyring_file(tmp_path, text)
    with pytest.raises(KeyringError) as caught:
        load_keyring([path])
    assert str(caught.value).startswith(str(path)) or "given twice" in message, caught.value
    assert message in str(caught.value)
    assert key_id(signer)  # the key itself is fine: only the file is broken


def test_other_bad_key_sources_are_refused(tmp_path: Path) -> None:
    load_or_create_signing_key(tmp_path / "a.pem")
    with pytest.raises(KeyringError, match="not found"):
        load_keyring([tmp_path / "nowhere.pub.pem"])
    with pytest.raises(KeyringError, match="holds a private key"):
        load_keyring([tmp_path / "a.pem"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyringError, match=r"no \*\.pub\.pem public keys"):
        load_keyring([empty])
    (tmp_path / "junk.pub.pem").write_text("not a key\n")
    with pytest.raises(KeyringError, match="not a PEM public key"):
        load_keyring([tmp_path / "junk.pub.pem"])
    with pytest.raises(KeyringError, match="no trusted public key"):
        load_keyring([])


def test_cli_verify_takes_repeated_keys_a_folder_or_a_keyring_file(
    s3_server: Any,
    s3: Any,
    rotated: tuple[Any, Any, Path],
    tmp_path: Path,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from include.cli.main import EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_OK, main

    old, new, public = rotated
    chain = _rotated_chain(s3, [old, new], tmp_path, unique("rotation-cli"))
    head = chain[-1][0]
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint_url)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    verify = ["bundle", "verify", head, "--chain"]
    new_pem, old_pem = str(public / "signing-2026.pub.pem"), str(public / "signing-2025.pub.pem")

    assert main([*verify, "--public-key", new_pem]) == EXIT_CHECK_FAILED
    assert f"envelope signed by key {key_id(old)}" in capsys.readouterr().out

    assert main([*verify, "--public-key", new_pem, "--public-key", old_pem]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"chain[0] ok {chain[1][0]} {chain[1][1]}" in out and f"key {key_id(new)}" in out
    assert f"chain[1] ok {chain[0][0]} {chain[0][1]} created" in out and f"key {key_id(old)}" in out

    assert main([*verify, "--public-key", str(public)]) == EXIT_OK
    capsys.readouterr()
    # --json: the whole report, same exit codes
    assert main([*verify, "--public-key", str(public), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["target"] == head and report["key_id"] == key_id(new)
    assert [link["key_id"] for link in report["chain"]] == [key_id(new), key_id(old)]
    assert main([*verify, "--public-key", new_pem, "--json"]) == EXIT_CHECK_FAILED
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and [link["ok"] for link in report["chain"]] == [True, False]
    refused = f"signature does not verify with key {key_id(new)} (envelope signed by key {key_id(old)})"
    assert report["problems"] == [f"{chain[0][0]}: {refused}"]
    # XAC_PUBLIC_KEY may name a folder or a keyring file too (the default when --public-key is absent).
    keyring = _keyring_file(
        public,
        "keys:\n  - publicKey: signing-2025.pub.pem\n    notAfter: 2026-01-01T23:00:00Z\n"
        "  - publicKey: signing-2026.pub.pem\n",
        "cli.yaml",
    )
    monkeypatch.setenv("XAC_PUBLIC_KEY", str(keyring))
    assert main(verify) == EXIT_OK
    capsys.readouterr()

    assert main([*verify, "--public-key", str(tmp_path / "missing.pub.pem")]) == EXIT_ERROR
    assert "not found" in capsys.readouterr().err
    assert os.environ["XAC_PUBLIC_KEY"] == str(keyring)
