"""Open Inference Protocol (v2) routes: server and model health, metadata, infer."""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
from fastapi import APIRouter, Request
from fastapi.responses import Response

import maas
from maas.serving.oip import v2_model_metadata, v2_response
from serve.http import body_spec, json_response

V2_TENSOR = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string"}, "data": {"type": "array"}}}
V2_BODY = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "inputs": {"type": "array", "items": V2_TENSOR}}}

v2 = APIRouter()


class V2Endpoints:
    """Mixed into the ingress deployment, which provides ``_status`` and ``_predict``
    (``serve.dataplane.Dataplane``)."""

    @v2.get("/v2")
    async def v2_server(self) -> Response:
        return json_response({"name": "maas", "version": maas.__version__, "extensions": []})

    @v2.get("/v2/health/live")
    async def v2_live(self) -> Response:
        return json_response({"live": True})

    @v2.get("/v2/health/ready")
    async def v2_ready(self) -> Response:
        return json_response({"ready": True})

    @v2.get("/v2/models/{name}")
    async def v2_metadata(self, name: str) -> Response:
        return json_response(v2_model_metadata(await self._status(name)))

    @v2.get("/v2/models/{name}/versions/{version}")
    async def v2_version_metadata(self, name: str, version: str) -> Response:
        return json_response(v2_model_metadata(await self._status(name, version)))

    @v2.get("/v2/models/{name}/ready")
    async def v2_model_ready(self, name: str) -> Response:
        status = await self._status(name)
        return json_response({"name": name, "ready": status["state"] == "AVAILABLE"})

    @v2.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_version_ready(self, name: str, version: str) -> Response:
        await self._status(name, version)
        return json_response({"name": name, "ready": True})

    @v2.post("/v2/models/{name}/infer", openapi_extra=body_spec(V2_BODY))
    async def v2_infer(self, name: str, request: Request) -> Response:
        return await self._v2(request, name, None)

    @v2.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=body_spec(V2_BODY))
    async def v2_infer_version(self, name: str, version: str, request: Request) -> Response:
        return await self._v2(request, name, version)

    async def _v2(self, request: Request, name: str, version: str | None) -> Response:
        def respond(result: dict, request_id: object) -> dict:
            return v2_response(name, result["version"], result["outputs"], request_id)

        return await self._predict(request, name, "v2", respond, version=version)
