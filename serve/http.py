"""The FastAPI app every route hangs on, its JSON responses, and the exception handlers,
registered once: any ``MaasError`` a route raises becomes ``{"error": message}`` with the kind's
HTTP status, so no route wraps itself in a guard."""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

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
