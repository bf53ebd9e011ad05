"""What the admin routes (``serve/admin.py``) accept and answer, without Ray: the request bodies
(the words of ``python -m maas serve versions|rollback``, so the command line and HTTP say the
same thing), the audit query and what of the trail a key may read, and Triton's repository index.

Every admin route needs a scoped key with role ``admin`` (``KeyChecker.authorize_admin``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from maas.schema import StrictSchema, validate_config
from maas.serving.keys import ApiKey
from maas.serving.settings import ModelSettings

MAX_AUDIT_ENTRIES = 10_000


class VersionsRequest(StrictSchema):
    """``POST /v1/admin/models/{name}:versions``: ``python -m maas serve versions``'s options."""

    versions: str | None = Field(None, description="'latest', 'latest:N' or numbers like '3' or '3,4'.")
    label: list[str] = Field(default_factory=list,
                             description="NAME=VERSION, NAME=latest, or NAME= to remove.")
    default: str | None = Field(None, description="The label for requests naming no version ('' clears).")
    poll: float | None = Field(None, ge=0, le=86400, description="Seconds between registry polls (0: off).")

    def changes(self, current: ModelSettings) -> dict[str, Any]:
        from maas.servectl import version_changes

        return version_changes(self.versions, self.label, self.default, self.poll, current)


class RollbackRequest(StrictSchema):
    """``POST /v1/admin/models/{name}:rollback``: an empty body pins the version before the
    served one."""

    to: int | None = Field(None, ge=1, description="This version instead of the previous one.")


class RepositoryIndexRequest(StrictSchema):
    """Triton's ``POST /v2/repository/index`` body."""

    ready: bool = Field(False, description="Only versions ready for inference.")


class RepositoryLoadRequest(StrictSchema):
    """Triton's ``POST /v2/repository/models/{name}/load`` body: empty. Triton's ``parameters``
    (a config or files to load instead) are refused: a model's settings change through
    ``:versions``, its files only through the registry."""


class AuditQuery(StrictSchema):
    """``GET /v1/admin/audit``'s query: ``python -m maas audit show``'s filters."""

    model: str | None = Field(None, description="Entries about this model.")
    since: str | None = Field(None, description="ISO time, inclusive: 2026-11-24 or 2026-11-24T10:00.")
    action: str | None = Field(None, description="Action prefix: serve., model.published, key., prediction.")
    limit: int = Field(100, ge=1, le=MAX_AUDIT_ENTRIES, description="The newest this many.")


def parse_body(schema: type[StrictSchema], body: bytes) -> Any:
    """An admin request body (JSON; empty means every default)."""
    import orjson

    from maas.errors import RequestError

    try:
        raw = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    return validate_config(schema, raw, "request body")


def parse_audit_query(params: dict[str, str]) -> AuditQuery:
    return validate_config(AuditQuery, params, "query")


def visible_entries(entries: list[dict[str, Any]], key: ApiKey, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` entries the key may read: every entry for a key over ``*``; else only
    entries about its models (an entry about no model, such as a key being created, is not
    about its models)."""
    if "*" not in key.models:
        entries = [e for e in entries if e.get("model") in key.models]
    return entries[-limit:]


def repository_index(statuses: dict[str, dict[str, Any]], ready_only: bool) -> list[dict[str, Any]]:
    """Triton's model repository index: one row per served version (``state`` READY), or one
    UNAVAILABLE row with the reason for a model that serves nothing; ``statuses`` maps each
    model to its status (``ModelHost.status``) or its error reply."""
    from maas.errors import is_error_reply

    rows = []
    for name, status in sorted(statuses.items()):
        if is_error_reply(status):
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": status["error"]})
            continue
        rows.extend({"name": name, "version": str(v), "state": "READY", "reason": ""}
                    for v in status["served_versions"])
    return [r for r in rows if r["state"] == "READY"] if ready_only else rows
