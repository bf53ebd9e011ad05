"""TensorFlow Serving REST (v1) routes: status, metadata and predict, by version or label."""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from maas.serving.tfserving import format_response, tf_serving_metadata, tf_serving_status
from serve.http import body_spec, json_response

ROW_BODY = {"type": "object", "properties": {
    "instances": {"type": "array", "description": "row format: one entry per example"},
    "inputs": {"description": "columnar format"}}}

v1 = APIRouter()


def _v1_body(result: dict, fmt: Any) -> dict:
    return format_response(result["outputs"], fmt)


class V1Endpoints:
    """Mixed into the ingress deployment, which provides ``_status`` and ``_predict``
    (``serve.dataplane.Dataplane``)."""

    @v1.get("/v1/models/{name}")
    async def model_status(self, name: str) -> Response:
        status = await self._status(name)
        return json_response(tf_serving_status([(v, "AVAILABLE", "") for v in status["served_versions"]]))

    @v1.get("/v1/models/{name}/versions/{version}")
    async def model_version_status(self, name: str, version: str) -> Response:
        status = await self._status(name, version)
        return json_response(tf_serving_status([(status["version"], status["state"], "")]))

    @v1.get("/v1/models/{name}/labels/{label}")
    async def model_label_status(self, name: str, label: str) -> Response:
        status = await self._status(name, label=label)
        return json_response(tf_serving_status([(status["version"], status["state"], "")]))

    @v1.get("/v1/models/{name}/metadata")
    async def model_metadata(self, name: str) -> Response:
        return json_response(tf_serving_metadata(await self._status(name)))

    @v1.post("/v1/models/{name}:predict", openapi_extra=body_spec(ROW_BODY))
    async def predict(self, name: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body)

    @v1.post("/v1/models/{name}/versions/{version}:predict", openapi_extra=body_spec(ROW_BODY))
    async def predict_version(self, name: str, version: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body, version=version)

    @v1.post("/v1/models/{name}/labels/{label}:predict", openapi_extra=body_spec(ROW_BODY))
    async def predict_label(self, name: str, label: str, request: Request) -> Response:
        return await self._predict(request, name, "v1", _v1_body, label=label)
