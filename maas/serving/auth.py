"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Scoped keys (``keys.py``: models, role, rate) are checked by ``KeyChecker``; plain keys listed in
the app's ``api_keys`` (the older form) keep working on predict routes and may call every model.
Admin routes (``serve/admin.py``) take only a scoped key with role ``admin`` whose models cover
the model acted on, and stay closed when no such key exists (predict is open without keys; admin
never is).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maas.errors import RateLimitError, RequestError
from maas.serving.keys import PREFIX, ApiKey, KeyFile, digest


def check_api_key(headers: Mapping[str, str], keys: list[str]) -> None:
    """401 if no key is sent, 403 if it is not one of ``keys``; open when ``keys`` is empty."""
    KeyChecker(None, keys).authorize(headers, "*")


def claimed_key_id(headers: Mapping[str, str]) -> str | None:
    """The id a scoped key names (``maas_<id>.<secret>``), whether or not it checks out: the audit
    trail records which key a refused request claimed to be. Never the secret."""
    try:
        given = presented_key(headers)
    except RequestError:
        return None
    key_id = given.removeprefix(PREFIX).partition(".")[0] if given.startswith(PREFIX) else None
    return key_id[:64] if key_id else None


def presented_key(headers: Mapping[str, str]) -> str:
    given = headers.get("x-api-key") or ""
    authorization = headers.get("authorization") or ""
    if not given and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given:
        raise RequestError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                           status=401)
    return given


def require_scope(key: ApiKey, model: str) -> None:
    """403 unless ``key`` may act on ``model``."""
    if not key.may_call(model):
        raise RequestError(f"API key {key.id} may not manage model '{model}' (its models: "
                           f"{', '.join(key.models)})", status=403)


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class KeyChecker:
    """The serving side: who may call which model, how often. Plain keys from the app's
    ``api_keys`` (the older form) keep working and may call every model."""

    def __init__(self, path: str | None, plain_keys: list[str] | None = None,
                 clock: Any = time.monotonic):
        self.file = KeyFile(path) if path else None
        self.plain = list(plain_keys or [])
        self.keys: dict[str, ApiKey] = {}
        self._clock, self._checked, self._stamp = clock, float("-inf"), None
        self._buckets: dict[str, _Bucket] = {}
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Re-read the key file if it changed; at most once a second unless forced."""
        now = self._clock()
        if self.file is None or (not force and now - self._checked < 1.0):
            return
        self._checked = now
        info = self.file.fs.get_file_info(self.file.inner)
        stamp = (info.mtime_ns, info.size)
        if stamp != self._stamp:
            self._stamp = stamp
            self.keys = {k.id: k for k in self.file.read()}

    @property
    def open(self) -> bool:
        return not self.plain and not self.keys

    def authorize(self, headers: Any, model: str) -> str | None:
        """The caller's key id (``"plain"`` for an older plain key; None when no keys exist), or
        401 without a key, 403 for a key that is unknown, revoked or outside its models, 429
        past its rate."""
        self.refresh()
        if self.open:
            return None
        given = presented_key(headers)
        # compare_digest: the time taken does not tell an attacker how much of a key matched
        if any(hmac.compare_digest(given.encode(), k.encode()) for k in self.plain):
            return "plain"
        if not self.keys:
            raise RequestError("API key not accepted", status=403)
        key = self._scoped(given)
        if not key.may_call(model):
            raise RequestError(f"API key {key.id} may not call model '{model}' (its models: "
                               f"{', '.join(key.models)})", status=403)
        self._spend(key)
        return key.id

    def authorize_admin(self, headers: Any, model: str | None) -> ApiKey:
        """The caller's scoped key for an admin route acting on ``model`` (None: a route over
        every model it may manage, which filters by ``ApiKey.may_call``): 401 without a key; 403
        for a plain key, an unknown or revoked key, a key of role ``predict``, or a key outside
        its models; 429 past its rate."""
        self.refresh()
        given = presented_key(headers)
        if not self.keys:
            raise RequestError("admin routes need a scoped API key with role admin "
                               "(python -m maas keys create --role admin --models NAME|'*')", status=403)
        if any(hmac.compare_digest(given.encode(), k.encode()) for k in self.plain):
            raise RequestError("plain API keys (api_keys) may only predict; admin routes need a "
                               "scoped key with role admin", status=403)
        key = self._scoped(given)
        if key.role != "admin":
            raise RequestError(f"API key {key.id} has role {key.role}; this route needs role admin",
                               status=403)
        if model is not None:
            require_scope(key, model)
        self._spend(key)
        return key

    def _scoped(self, given: str) -> ApiKey:
        key_id, _, secret = given.removeprefix(PREFIX).partition(".")
        key = self.keys.get(key_id) if given.startswith(PREFIX) else None
        if key is None or not hmac.compare_digest(key.hash, digest(secret)):
            raise RequestError("API key not accepted", status=403)
        if key.revoked_at:
            raise RequestError(f"API key {key.id} was revoked at {key.revoked_at}", status=403)
        return key

    def _spend(self, key: ApiKey) -> None:
        if key.rate_per_s is None:
            return
        now = self._clock()
        bucket = self._buckets.setdefault(key.id, _Bucket(key.rate_per_s, now))
        burst = max(1.0, key.rate_per_s)  # a second's worth of requests at once
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * key.rate_per_s)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / key.rate_per_s
            raise RateLimitError(f"API key {key.id} is over its rate of {key.rate_per_s:g} requests/s",
                                 retry_after_s=wait)
        bucket.tokens -= 1.0
