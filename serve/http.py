"""The FastAPI app every route hangs on, its JSON responses, and the exception handlers,
registered once: any ``MaasError`` a route raises becomes ``{"error": message}`` with the kind's
HTTP status, so no route wraps itself in a guard."""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
import math
import re
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette._utils import get_route_path

from maas.errors import MaasError, OverloadError
from maas.serving.oip_binary import BINARY_MEDIA_TYPE, INFERENCE_HEADER

http = FastAPI(title="maas model server",
               description="TensorFlow Serving REST (/v1) and Open Inference Protocol (/v2) over Ray Serve")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson: numpy-aware and several times faster than the standard json module
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=headers)


def binary_response(header: bytes, data: bytes, headers: dict[str, str] | None = None) -> Response:
    """A v2 answer with binary tensor data: the JSON header, then the tensors' bytes; its length
    in ``Inference-Header-Content-Length``, as Triton answers (``maas.serving.oip_binary``)."""
    return Response(header + data, media_type=BINARY_MEDIA_TYPE,
                    headers={**(headers or {}), INFERENCE_HEADER: str(len(header))})


def error_response(message: str, status: int, retry_after_s: float | None = None) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return json_response({"error": message}, status, headers or None)


@http.exception_handler(MaasError)
async def _user_error(request: Request, exc: MaasError) -> Response:
    retry = exc.retry_after_s if isinstance(exc, OverloadError) else None
    return error_response(str(exc), exc.status, retry_after_s=retry)


@http.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    # Keep the protocols' error shape for anything FastAPI rejects before our code runs.
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error_response(f"invalid request: {problems}", 400)


def body_spec(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a route that reads its JSON body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class FastRoutes:
    """ASGI middleware for the hot routes (predict): a request whose method and path match one of
    ``routes`` goes straight to its handler, ``handler(instance, request, **path_params)``, on the
    replica's deployment instance; everything else goes through FastAPI as before. FastAPI's route
    matching over every route and its dependency solving took about half of the ingress's own CPU
    per predict request (cProfile of a replica's app). Errors are answered the same way as the
    exception handlers above answer them; the routes stay declared in FastAPI for the docs."""

    def __init__(self, app: Any, routes: list[tuple[str, str, Any]]):
        self.app = app
        self.routes = [(method, re.compile(pattern), handler) for method, pattern, handler in routes]
        self._instance: Any = None

    def instance(self) -> Any:
        if self._instance is None:
            from ray import serve

            self._instance = serve.get_replica_context().servable_object
        return self._instance

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], get_route_path(scope)
            for route_method, pattern, handler in self.routes:
                if method == route_method and (match := pattern.match(path)):
                    request = Request(scope, receive)
                    try:
                        response = await handler(self.instance(), request, **match.groupdict())
                    except MaasError as exc:
                        response = await _user_error(request, exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
