"""The store of scoped API keys (``auth.py`` checks them): each with an id, the models it may
call (or ``*``), a role and a request-rate limit, stored hashed in one JSON file beside the
registry (``<registry>/.maas/api_keys.json``, invisible to the registry's model listing), so every
replica on every node reads the same keys.

A key is ``maas_<id>.<secret>`` and is shown once, when it is created. The file keeps the id and
sha256 of the secret (a 256-bit random secret needs no slow hash: there is nothing to guess), so
neither the file nor a log line ever holds a usable key. Replicas re-read the file when it changes
(checked at most once a second), so ``python -m maas keys revoke`` applies to running replicas
without a restart. Rate limits are per replica (a token bucket per key): with N replicas a key
gets up to N times its rate.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from maas.errors import ConfigError
from maas.storage import files_for, replace_file

Role = Literal["predict", "admin"]
ROLES: tuple[str, ...] = ("predict", "admin")
KEYS_FILE = ".maas/api_keys.json"
PREFIX = "maas_"


def keys_path(registry_root: str) -> str:
    return f"{registry_root.rstrip('/')}/{KEYS_FILE}"


def digest(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    hash: str
    models: tuple[str, ...]
    role: str = "predict"
    rate_per_s: float | None = None
    label: str = ""
    created_at: str = ""
    revoked_at: str | None = None

    def may_call(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "hash": self.hash, "models": list(self.models), "role": self.role,
                "rate_per_s": self.rate_per_s, "label": self.label, "created_at": self.created_at,
                "revoked_at": self.revoked_at}


class KeyFile:
    """Create, list and revoke keys in the store (the CLI's side)."""

    def __init__(self, path: str):
        self.path = path
        self.fs, self.inner = files_for(path)

    def read(self) -> list[ApiKey]:
        try:
            with self.fs.open_input_stream(self.inner) as stream:
                rows = json.loads(stream.read()).get("keys", [])
        except FileNotFoundError:
            return []
        return [ApiKey(**{**row, "models": tuple(row["models"])}) for row in rows]

    def _write(self, keys: list[ApiKey]) -> None:
        body = json.dumps({"keys": [k.row() for k in keys]}, indent=2).encode()
        parent = self.inner.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        replace_file(self.fs, self.inner, body)

    def create(self, models: list[str], role: str = "predict", rate_per_s: float | None = None,
               label: str = "") -> tuple[ApiKey, str]:
        """The new key's record and the key itself (shown once, stored only as a hash)."""
        if role not in ROLES:
            raise ConfigError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if not models:
            raise ConfigError("a key needs the models it may call: names, or '*' for all")
        if rate_per_s is not None and rate_per_s <= 0:
            raise ConfigError(f"rate {rate_per_s}: expected a positive number of requests per second")
        key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        record = ApiKey(key_id, digest(secret), tuple(models), role, rate_per_s, label,
                        datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self._write([*self.read(), record])
        self._audit("key.created", key_id=key_id, role=role, models=list(models), rate_per_s=rate_per_s)
        return record, f"{PREFIX}{key_id}.{secret}"

    def _audit(self, action: str, **fields: Any) -> None:
        from maas.audit import record

        record(f"{self.path.rsplit('/', 1)[0]}/audit", action, **fields)  # <registry>/.maas/audit

    def revoke(self, key_id: str) -> ApiKey:
        keys = self.read()
        found = next((k for k in keys if k.id == key_id), None)
        if found is None:
            raise ConfigError(f"no key with id '{key_id}' (ids: {', '.join(k.id for k in keys) or 'none'})")
        revoked = ApiKey(**{**found.row(), "models": found.models,
                            "revoked_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self._write([revoked if k.id == key_id else k for k in keys])
        self._audit("key.revoked", key_id=key_id)
        return revoked
