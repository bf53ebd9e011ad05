"""Signed versions: the publisher signs every version's metadata (identity fields, content hash,
schema, metrics: everything but the signature itself and the movable labels) with an Ed25519
private key kept outside the registry; serving, configured with the public key, refuses a version
that is unsigned, signed by another key, or changed after signing.

Why Ed25519 from ``cryptography`` and not the OpenSSF ``model-signing`` format: it needs nothing
beyond a package Ray already installs, works offline, and signs the registry's own metadata,
which already binds every file through the content hash (``registry.hash_files``). The signature
travels inside ``metadata.json``, so an object store needs no second file and no second commit.
A cloud KMS fits behind ``Signer``: anything with ``key_id`` and ``sign(bytes) -> bytes``.

Keys: ``python -m maas models keygen DIR`` writes ``signing.key`` (private, mode 0600) and
``signing.pub``. Publishers point ``MAAS_SIGNING_KEY`` at the private key; serving gets the
public key through the app's ``verify_key`` (a path or the PEM text) or ``MAAS_VERIFY_KEY``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas.errors import ConfigError, IntegrityError

SIGNING_KEY_ENV = "MAAS_SIGNING_KEY"
VERIFY_KEY_ENV = "MAAS_VERIFY_KEY"
ALGORITHM = "ed25519"
UNSIGNED_FIELDS = ("signature", "labels")  # labels move between versions after publishing


def signing_payload(metadata: dict[str, Any]) -> bytes:
    """The exact bytes signed: the metadata less the signature and labels, as canonical JSON."""
    body = {key: value for key, value in metadata.items() if key not in UNSIGNED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _pem(source: str) -> bytes:
    """PEM text given inline, or read from the file it names."""
    if source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"key file '{path}' does not exist")
    return path.read_bytes()


def _load_key(source: str, private: bool) -> Any:
    """An Ed25519 key from PEM (text or file); a ConfigError naming the source otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

    role, kind = ("signing", "private") if private else ("verify", "public")
    shown = source[:60]
    try:
        pem = _pem(source)
        key = load_pem_private_key(pem, password=None) if private else load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigError(f"{role} key '{shown}' is not a PEM {kind} key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise ConfigError(f"{role} key '{shown}' is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Signer:
    private_key: Any  # cryptography Ed25519PrivateKey

    @classmethod
    def load(cls, source: str) -> Signer:
        return cls(_load_key(source, private=True))

    @classmethod
    def from_env(cls) -> Signer | None:
        source = os.environ.get(SIGNING_KEY_ENV)
        return cls.load(source) if source else None

    @property
    def key_id(self) -> str:
        return _key_id(self.private_key.public_key())

    def sign(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """``metadata`` with its ``signature`` entry."""
        value = self.private_key.sign(signing_payload(metadata))
        signature = {"algorithm": ALGORITHM, "key_id": self.key_id,
                     "value": base64.b64encode(value).decode()}
        return {**metadata, "signature": signature}


@dataclass(frozen=True)
class Verifier:
    public_key: Any  # cryptography Ed25519PublicKey

    @classmethod
    def load(cls, source: str) -> Verifier:
        return cls(_load_key(source, private=False))

    @classmethod
    def from_setting(cls, setting: str | None) -> Verifier | None:
        """The app's ``verify_key``, else ``$MAAS_VERIFY_KEY``, else none (no verification)."""
        source = setting or os.environ.get(VERIFY_KEY_ENV)
        return cls.load(source) if source else None

    @property
    def key_id(self) -> str:
        return _key_id(self.public_key)

    def verify(self, metadata: dict[str, Any]) -> None:
        """Raise ``IntegrityError`` unless this key signed exactly this metadata."""
        from cryptography.exceptions import InvalidSignature

        what = f"model '{metadata.get('name')}' version {metadata.get('version')}"
        signature = metadata.get("signature")
        if not isinstance(signature, dict) or "value" not in signature:
            raise IntegrityError(f"{what} is not signed; serving requires versions signed by key "
                                 f"{self.key_id}")
        if signature.get("algorithm") != ALGORITHM or signature.get("key_id") != self.key_id:
            raise IntegrityError(f"{what} is signed by key {signature.get('key_id')!r} "
                                 f"({signature.get('algorithm')}), not by the trusted key {self.key_id}")
        try:
            self.public_key.verify(base64.b64decode(signature["value"]), signing_payload(metadata))
        except (InvalidSignature, ValueError):
            raise IntegrityError(f"{what}: its signature does not match its metadata (changed after "
                                 "signing)") from None


def generate_keys(directory: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair: ``signing.key`` (private, 0600) and ``signing.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "signing.key", directory / "signing.pub"
    if private.exists():
        raise ConfigError(f"'{private}' already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
