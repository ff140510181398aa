"""Ed25519 signing keys for compliance bundles (securesystemslib signers over pyca/cryptography keys).

Key ids are securesystemslib's default key id (sha256 over the canonical public key dict), so a verifier
that only holds the public PEM computes the same id as the signer, and the id names the published
``_keys/<key_id>.pub.pem`` object.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from securesystemslib.signer import CryptoSigner, SSlibKey

logger = logging.getLogger(__name__)


def public_key_path(private_key_path: Path) -> Path:
    """``keys/demo.pem`` -> ``keys/demo.pub.pem`` (``keys/demo`` -> ``keys/demo.pub.pem``)."""
    name = private_key_path.name
    stem = name[: -len(".pem")] if name.endswith(".pem") else name
    return private_key_path.with_name(f"{stem}.pub.pem")


def _normalise_pem(pem: bytes | str) -> bytes:
    data = pem.encode("ascii") if isinstance(pem, str) else bytes(pem)
    data = data.strip()
    # Secrets copied into env vars / Airflow connection extras often arrive with literal "\n".
    if b"\n" not in data and b"\\n" in data:
        data = data.replace(b"\\n", b"\n")
    return data + b"\n"


def load_signing_key_pem(pem: bytes | str) -> CryptoSigner:
    """A signer from an unencrypted PKCS#8 PEM private key (e.g. held by an Airflow connection)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    private_key = load_pem_private_key(_normalise_pem(pem), password=None)
    # CryptoSigner derives the public key (and so the default key id) from the private key.
    return CryptoSigner(private_key)


def _write_new_file(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` atomically with ``mode``; False when it already exists (another process won)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # link() refuses to replace an existing file, so two first-time callers cannot both win.
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def load_or_create_signing_key(path: Path) -> CryptoSigner:
    """Load the Ed25519 key at ``path``, creating it (mode 0600) and ``<name>.pub.pem`` on first use."""
    from securesystemslib.signer import CryptoSigner

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fresh = CryptoSigner.generate_ed25519()
        if _write_new_file(path, fresh.private_bytes, 0o600):
            logger.info("created signing key %s (key id %s)", path, fresh.public_key.keyid)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("signing key %s is readable by others (mode %o); expected 0600", path, mode)
    signer = load_signing_key_pem(path.read_bytes())

    pub_path = public_key_path(path)
    pub_pem = public_key_pem(signer)
    if not pub_path.exists():
        _write_new_file(pub_path, pub_pem, 0o644)
    elif key_id(pub_path.read_bytes()) != signer.public_key.keyid:
        # Never silently "repair": a mismatched public key may mean one of the files was swapped.
        raise ValueError(f"{pub_path} does not match the private key {path}")
    return signer


def load_public_key(pem: bytes | str) -> SSlibKey:
    """An SSlibKey (with the default key id) from a SubjectPublicKeyInfo PEM."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.signer import SSlibKey

    return SSlibKey.from_crypto(load_pem_public_key(_normalise_pem(pem)))


def public_key_pem(signer: CryptoSigner) -> bytes:
    """The signer's public key as a SubjectPublicKeyInfo PEM."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = signer.public_key
    value = key.keyval["public"]
    if key.keytype == "ed25519":
        # securesystemslib stores Ed25519 public keys as raw hex, every other type as PEM already.
        raw = Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))
        return raw.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return value.encode("ascii")


def key_id(signer_or_pem: CryptoSigner | bytes | str) -> str:
    """The key id of a signer or of a public key PEM."""
    if isinstance(signer_or_pem, bytes | str):
        return str(load_public_key(signer_or_pem).keyid)
    return str(signer_or_pem.public_key.keyid)


# --------------------------------------------------------------------------- trusted keys (rotation)

KEYRING_SUFFIXES = (".yaml", ".yml")


class KeyringError(ValueError):
    """A trusted-key source that cannot be used (missing, not a public key, a bad keyring file)."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key a verifier trusts, with the period in which it may have signed bundles.

    ``not_before`` / ``not_after`` bound the bundles' signed ``created_at`` (both inclusive, either
    open): after a rotation the retired key stays trusted for what it signed before its retirement, and
    anything it "signed" later is refused.
    """

    key: SSlibKey
    source: str
    not_before: datetime | None = None
    not_after: datetime | None = None

    @property
    def keyid(self) -> str:
        return str(self.key.keyid)

    def period_problem(self, created_at: datetime) -> str | None:
        """Why a bundle created at ``created_at`` may not carry this key's signature, or None."""
        if self.not_before is not None and created_at < self.not_before:
            return (
                f"signed with key {self.keyid}, trusted only for bundles created from "
                f"{self.not_before.isoformat()} ({self.source}), but the bundle was created "
                f"{created_at.isoformat()}"
            )
        if self.not_after is not None and created_at > self.not_after:
            return (
                f"signed with key {self.keyid}, retired for bundles created after "
                f"{self.not_after.isoformat()} ({self.source}), but the bundle was created "
                f"{created_at.isoformat()}"
            )
        return None


@dataclass(frozen=True)
class Keyring:
    """The public keys a verifier trusts, by key id: what ``xac bundle verify`` checks signatures with.

    One bundle is signed by one key; a model's chain spans every key the deployment has rotated
    through. Each bundle is verified with the trusted key its envelope names (and only that key),
    within that key's trusted period.
    """

    keys: tuple[TrustedKey, ...]

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for trusted in self.keys:
            if trusted.keyid in seen:
                raise KeyringError(
                    f"key {trusted.keyid} is given twice ({seen[trusted.keyid]} and {trusted.source})"
                )
            seen[trusted.keyid] = trusted.source

    @property
    def keyids(self) -> list[str]:
        return [trusted.keyid for trusted in self.keys]

    def get(self, keyid: str) -> TrustedKey | None:
        return next((trusted for trusted in self.keys if trusted.keyid == keyid), None)

    @classmethod
    def of(cls, *pems: bytes | str) -> Keyring:
        """A keyring of PEM public keys, each trusted without a time limit."""
        return cls(tuple(TrustedKey(load_public_key(pem), f"key {i + 1}") for i, pem in enumerate(pems)))


def _timestamp(value: str | None, where: str) -> datetime | None:
    """ISO 8601 text -> aware datetime; a date alone is midnight UTC, naive timestamps are UTC."""
    from include.compliance.bundle import parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise KeyringError(f"{where}: {value!r} is not an ISO 8601 date or timestamp") from exc


def _public_key_file(path: Path, source: str) -> SSlibKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyringError(f"{source}: cannot read ({exc.strerror or exc})") from exc
    if b"PRIVATE KEY" in data:
        raise KeyringError(f"{source}: holds a private key; give the public key (.pub.pem) to verifiers")
    try:
        return load_public_key(data)
    except Exception as exc:
        raise KeyringError(f"{source}: not a PEM public key ({type(exc).__name__})") from exc


def _keyring_file(path: Path) -> list[TrustedKey]:
    """A keyring YAML: ``keys: [{publicKey: PATH, notBefore: DATE, notAfter: DATE}, ...]``; paths are
    relative to the file. Errors name the file, line and field."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyringError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise KeyringError(f"{path}: not valid YAML ({exc})") from exc

    def at(node: Any) -> str:
        return f"{path}:{node.start_mark.line + 1}"

    if not isinstance(root, yaml.MappingNode):
        raise KeyringError(f"{path}: expected a mapping with a 'keys' list")
    fields = {k.value: v for k, v in root.value}
    entries = fields.get("keys")
    if not isinstance(entries, yaml.SequenceNode) or not entries.value:
        raise KeyringError(f"{at(root)}: field 'keys': expected a non-empty list of trusted keys")
    unknown = sorted(set(fields) - {"keys"})
    if unknown:
        raise KeyringError(f"{at(root)}: unknown field(s) {', '.join(unknown)} (expected 'keys')")
    out: list[TrustedKey] = []
    for index, node in enumerate(entries.value):
        where = f"{at(node)}: keys[{index}]"
        if not isinstance(node, yaml.MappingNode):
            raise KeyringError(f"{where}: expected a mapping with publicKey, notBefore, notAfter")
        item = {k.value: v for k, v in node.value}
        unknown = sorted(set(item) - {"publicKey", "notBefore", "notAfter"})
        if unknown:
            raise KeyringError(
                f"{where}: unknown field(s) {', '.join(unknown)} (expected publicKey, notBefore, notAfter)"
            )
        key_node = item.get("publicKey")
        if not isinstance(key_node, yaml.ScalarNode) or not key_node.value:
            raise KeyringError(f"{where}: field 'publicKey': the path of a PEM public key is required")
        bounds: dict[str, datetime | None] = {}
        for name in ("notBefore", "notAfter"):
            value_node = item.get(name)
            if value_node is not None and not isinstance(value_node, yaml.ScalarNode):
                raise KeyringError(f"{at(value_node)}: keys[{index}].{name}: expected a date or timestamp")
            value = value_node.value if value_node is not None and value_node.value else None
            bounds[name] = _timestamp(value, f"{at(value_node or node)}: keys[{index}].{name}")
        if bounds["notBefore"] and bounds["notAfter"] and bounds["notBefore"] > bounds["notAfter"]:
            raise KeyringError(f"{where}: notBefore is after notAfter")
        key_path = path.parent / key_node.value
        source = f"{path}:{key_node.start_mark.line + 1}"
        out.append(
            TrustedKey(
                _public_key_file(key_path, f"{source}: keys[{index}].publicKey {key_node.value}"),
                source,
                bounds["notBefore"],
                bounds["notAfter"],
            )
        )
    return out


def load_keyring(sources: Iterable[str | Path]) -> Keyring:
    """The trusted keys named by ``sources``, each one of:

    * a PEM public key file (trusted without a time limit);
    * a folder: every ``*.pub.pem`` in it (without a time limit);
    * a keyring YAML (``.yaml``/``.yml``) listing keys with the period each may have signed in.
    """
    keys: list[TrustedKey] = []
    for raw in sources:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.pub.pem"))
            if not found:
                raise KeyringError(f"{path}: no *.pub.pem public keys in this folder")
            keys += [TrustedKey(_public_key_file(p, str(p)), str(p)) for p in found]
        elif path.suffix in KEYRING_SUFFIXES:
            keys += _keyring_file(path)
        elif path.is_file():
            keys.append(TrustedKey(_public_key_file(path, str(path)), str(path)))
        else:
            raise KeyringError(f"public key {path} not found")
    if not keys:
        raise KeyringError("no trusted public key given")
    return Keyring(tuple(keys))


PEM_PUBLIC_KEY_BLOCK = "-----BEGIN PUBLIC KEY-----"


def keyring_from_pem_text(text: str, source: str) -> Keyring:
    """The public keys of one or more PEM blocks in ``text`` (e.g. an Airflow connection's password),
    each trusted without a time limit; ``source`` names where they came from in errors."""
    text = text.replace("\\n", "\n")  # a secret pasted into a one-line field keeps escaped newlines
    if "PRIVATE KEY" in text:
        raise KeyringError(f"{source}: holds a private key; give the public key(s) to verifiers")
    blocks = [PEM_PUBLIC_KEY_BLOCK + part for part in text.split(PEM_PUBLIC_KEY_BLOCK)[1:]]
    if not blocks:
        raise KeyringError(f"{source}: no PEM public key ({PEM_PUBLIC_KEY_BLOCK})")
    keys = []
    for index, block in enumerate(blocks):
        try:
            keys.append(
                TrustedKey(load_public_key(block.strip().encode() + b"\n"), f"{source} key {index + 1}")
            )
        except Exception as exc:
            raise KeyringError(
                f"{source}: key {index + 1} is not a PEM public key ({type(exc).__name__})"
            ) from exc
    return Keyring(tuple(keys))
