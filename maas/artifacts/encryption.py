"""Model files encrypted at rest with AES-256-GCM (envelope encryption).

Each version gets its own random 256-bit data key; every file is encrypted with it (a fresh
96-bit nonce per file, the file's path as associated data, so files cannot be swapped between
names), and the data key is stored in the version's metadata wrapped by a master key. The master
key never enters the registry: publishers and serving nodes read it from the file named by
``$MAAS_MASTER_KEY_FILE`` (32 random bytes, ``python -m maas models keygen --master``). The content
hash covers the encrypted bytes, so integrity (and the signature, which covers the wrapped key) is
checked without the key; serving decrypts in memory only (``keras_loader``).

Room for a cloud KMS: anything with ``key_id``, ``wrap(bytes) -> str`` and ``unwrap(str) -> bytes``
can stand in for ``MasterKey``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from maas.errors import ConfigError, IntegrityError

MASTER_KEY_ENV = "MAAS_MASTER_KEY_FILE"
ALGORITHM = "AES-256-GCM"
NONCE_BYTES = 12
_WRAP_CONTEXT = b"maas data key"


class KeyWrapper(Protocol):
    key_id: str

    def wrap(self, data_key: bytes) -> str: ...

    def unwrap(self, wrapped: str) -> bytes: ...


@dataclass(frozen=True)
class MasterKey:
    key: bytes

    @classmethod
    def load(cls, path: str) -> MasterKey:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"master key file '{file}' does not exist (${MASTER_KEY_ENV})")
        key = file.read_bytes()
        if len(key) != 32:
            raise ConfigError(f"master key file '{file}' must hold 32 bytes, it holds {len(key)}")
        return cls(key)

    @classmethod
    def from_env(cls) -> MasterKey | None:
        path = os.environ.get(MASTER_KEY_ENV)
        return cls.load(path) if path else None

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"maas master key id" + self.key).hexdigest()[:16]

    def wrap(self, data_key: bytes) -> str:
        return base64.b64encode(_seal(self.key, data_key, _WRAP_CONTEXT)).decode()

    def unwrap(self, wrapped: str) -> bytes:
        return _open(self.key, base64.b64decode(wrapped), _WRAP_CONTEXT)


def _seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def _open(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)


def encrypt_files(files: dict[str, bytes], wrapper: KeyWrapper) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(encrypted files, the envelope for the version's metadata)."""
    data_key = os.urandom(32)
    encrypted = {path: _seal(data_key, content, path.encode()) for path, content in files.items()}
    envelope = {"algorithm": ALGORITHM, "key_id": wrapper.key_id,
                "wrapped_key": wrapper.wrap(data_key), "files": sorted(files)}
    return encrypted, envelope


def decrypt_files(files: dict[str, bytes], envelope: dict[str, Any], wrapper: KeyWrapper | None,
                  what: str) -> dict[str, bytes]:
    """The plaintext of a version's files, in memory; a clear error naming the version when the
    key is missing or wrong."""
    from cryptography.exceptions import InvalidTag

    wanted = envelope.get("key_id")
    if wrapper is None:
        raise IntegrityError(f"{what} is encrypted (master key {wanted}) and this process has no "
                             f"master key: set ${MASTER_KEY_ENV} to the key file")
    if envelope.get("algorithm") != ALGORITHM:
        raise IntegrityError(f"{what} is encrypted with {envelope.get('algorithm')!r}; "
                             f"only {ALGORITHM} is read")
    try:
        data_key = wrapper.unwrap(envelope["wrapped_key"])
        return {path: _open(data_key, content, path.encode()) if path in envelope["files"] else content
                for path, content in files.items()}
    except (InvalidTag, ValueError, KeyError):
        raise IntegrityError(f"{what} cannot be decrypted with master key {wrapper.key_id} (it was "
                             f"encrypted with {wanted})") from None


def generate_master_key(path: str | Path) -> Path:
    """32 random bytes in a new file of mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise ConfigError(f"'{path}' already exists; refusing to overwrite a master key")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(os.urandom(32))
    return path
