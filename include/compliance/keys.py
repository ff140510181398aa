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
from pathlib import Path
from typing import TYPE_CHECKING

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
