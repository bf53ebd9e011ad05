"""API keys on predict routes: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from maas.errors import RequestError


def check_api_key(headers: Mapping[str, str], keys: list[str]) -> None:
    """401 if no key is sent, 403 if it is not one of ``keys``; open when ``keys`` is empty."""
    if not keys:
        return
    given = headers.get("x-api-key") or ""
    authorization = headers.get("authorization") or ""
    if not given and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given:
        raise RequestError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                           status=401)
    # compare_digest: the time taken does not tell an attacker how much of a key matched
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise RequestError("API key not accepted", status=403)
