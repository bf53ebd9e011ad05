"""The admin routes of the ``Ingress``: change what a model serves and read the audit trail, over
HTTP, for scoped keys with role ``admin`` whose models cover the model (401 without a key, 403
for any other key; ``maas.serving.auth.KeyChecker.authorize_admin``).

    GET  /v1/admin/models/{name}              its live settings and status   (maas serve show)
    POST /v1/admin/models/{name}:refresh      re-read the registry now       (maas serve refresh)
    POST /v1/admin/models/{name}:rollback     {"to": 3} or {}                (maas serve rollback)
    POST /v1/admin/models/{name}:versions     {"versions": "latest:2", "label": ["canary=latest"],
                                               "default": "stable", "poll": 10} (maas serve versions)
    GET  /v1/admin/audit?model=&since=&action=&limit=   entries + the chain check (maas audit show)
    POST /v2/repository/index                 Triton's model repository index
    POST /v2/repository/models/{name}/load    Triton's load: re-read the registry (= refresh)

A change goes where ``python -m maas serve`` sends it: into the app's deployed Serve config,
through the Serve controller (``maas.servectl.ServeController``; the dashboard is not needed),
so every replica and every replica started later applies it; the route answers once every
replica has (200), or after ``admin_wait_s`` with the change still going on (202). Only an app
deployed from a config file (``serve deploy`` / ``serve run file.yaml``, as shipped) can be
changed: one deployed from Python has no config to change (409). Triton's ``unload`` is not
offered: which models an app serves is its config's ``models`` list.

Every call writes one audit entry with the key's id (never the key): ``serve.settings_changed``
for a change, ``admin.read`` for a read, ``admin.refused`` (with the status and reason, and the
id the key claimed) for a refusal.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from maas.errors import MaasError
from maas.serving.admin import (
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    RollbackRequest,
    VersionsRequest,
    parse_audit_query,
    parse_body,
    repository_index,
    visible_entries,
)
from maas.serving.auth import claimed_key_id, require_scope
from maas.serving.keys import ApiKey
from serve.http import http, json_response

# work(key) -> (answer body, HTTP status)
Work = Callable[[ApiKey], Awaitable[tuple[Any, int]]]


class Admin:
    """Admin routes, mixed into the ``Ingress`` (they use its key checker, models and config)."""

    @http.get("/v1/admin/models/{name}")
    async def admin_show(self, name: str, request: Request) -> Response:
        async def work(key: ApiKey) -> tuple[Any, int]:
            settings = await self._controller_call(lambda api, app: _apply(api, app, name, "show"))
            await self._audit_admin(request, "admin.read", key, model=name)
            return {"model": name, "settings": settings, "status": await self._model(name).status()}, 200

        return await self._admin(request, name, work)

    @http.post("/v1/admin/models/{name}:refresh")
    async def admin_refresh(self, name: str, request: Request) -> Response:
        return await self._admin(request, name, lambda key: self._change(request, key, name, "refresh"))

    @http.post("/v1/admin/models/{name}:rollback")
    async def admin_rollback(self, name: str, request: Request) -> Response:
        async def work(key: ApiKey) -> tuple[Any, int]:
            body = parse_body(RollbackRequest, await self._read_body(request))
            return await self._change(request, key, name, "rollback", to=body.to)

        return await self._admin(request, name, work)

    @http.post("/v1/admin/models/{name}:versions")
    async def admin_versions(self, name: str, request: Request) -> Response:
        async def work(key: ApiKey) -> tuple[Any, int]:
            body = parse_body(VersionsRequest, await self._read_body(request))
            return await self._change(request, key, name, "versions", edit=body.changes)

        return await self._admin(request, name, work)

    @http.get("/v1/admin/audit")
    async def admin_audit(self, request: Request) -> Response:
        async def work(key: ApiKey) -> tuple[Any, int]:
            from maas import audit

            query = parse_audit_query(dict(request.query_params))
            if query.model is not None:
                require_scope(key, query.model)
            root = self.config.resolved_root()
            found, (checked, problems) = await asyncio.to_thread(
                lambda: (audit.entries(root, query.model, query.since, query.action), audit.verify(root)))
            await self._audit_admin(request, "admin.read", key, model=query.model,
                               query=query.model_dump(exclude_none=True))
            return {"entries": visible_entries(found, key, query.limit),
                    "chain": {"entries_checked": checked, "problems": problems}}, 200

        return await self._admin(request, None, work)

    @http.post("/v2/repository/index")
    async def repository_index(self, request: Request) -> Response:
        async def work(key: ApiKey) -> tuple[Any, int]:
            body = parse_body(RepositoryIndexRequest, await self._read_body(request))
            statuses = {name: await model.status() for name, model in self.models.items()
                        if key.may_call(name)}
            await self._audit_admin(request, "admin.read", key)
            return repository_index(statuses, body.ready), 200

        return await self._admin(request, None, work)

    @http.post("/v2/repository/models/{name}/load")
    async def repository_load(self, name: str, request: Request) -> Response:
        async def work(key: ApiKey) -> tuple[Any, int]:
            parse_body(RepositoryLoadRequest, await self._read_body(request))
            return await self._change(request, key, name, "refresh")

        return await self._admin(request, name, work)

    # --- shared ----------------------------------------------------------------------------

    async def _admin(self, request: Request, model: str | None, work: Work) -> Response:
        """The key check, then ``work``; a refusal is written to the audit trail and answered by
        the one exception handler (``serve/http.py``)."""
        try:
            key = self.keys.authorize_admin(request.headers, model)
            if model is not None:
                self._model(model)  # 404 for a model this app does not serve
            body, status = await work(key)
        except MaasError as exc:
            await self._audit_admin(request, "admin.refused", None, model=model, status=exc.status,
                               reason=str(exc))
            raise
        return json_response(body, status)

    async def _change(self, request: Request, key: ApiKey, name: str, action: str,
                      to: int | None = None, edit: Any = None) -> tuple[Any, int]:
        from maas.servectl import wait_running

        fields = {"key_id": key.id, "request_id": _request_id(request), "route": _route(request)}
        wait_s = self.config.admin_wait_s

        def change(api: Any, app: str) -> tuple[dict[str, Any], bool]:
            settings = _apply(api, app, name, action, to=to, edit=edit, audit=fields)
            return settings, wait_running(api, app, wait_s)

        settings, applied = await self._controller_call(change)
        answer = {"model": name, "action": action, "settings": settings, "applied": applied,
                  "status": await self._model(name).status()}
        return answer, 200 if applied else 202

    async def _controller_call(self, call: Callable[[Any, str], Any]) -> Any:
        """``call(api, app_name)`` in a thread (the controller client blocks), for this app."""
        from ray import serve

        from maas.servectl import ServeController

        app = serve.get_replica_context().app_name
        return await asyncio.to_thread(lambda: call(ServeController(), app))

    async def _audit_admin(self, request: Request, action: str, key: ApiKey | None, **fields: Any) -> None:
        from maas.audit import audit_root, record

        key_id = key.id if key is not None else claimed_key_id(request.headers)
        await asyncio.to_thread(record, audit_root(self.config.resolved_root()), action,
                                key_id=key_id, request_id=_request_id(request),
                                route=_route(request), **fields)


def _apply(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from maas.servectl import apply

    return apply(*args, **kwargs)


def _request_id(request: Request) -> str:
    """The caller's X-Request-ID, else one made up once for this request."""
    if not hasattr(request.state, "request_id"):
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return request.state.request_id


def _route(request: Request) -> str:
    return f"{request.method} {request.url.path}"
